"""Waiting for a dependency at start-up: one line per attempt, backoff, one error naming the
variable at the deadline, and no waiting at all for a refusal (wrong credentials)."""

from __future__ import annotations

import asyncio

import pytest

from streams import startup
from streams.startup import Dependency, ServiceRefused, ServiceUnavailable, wait_for_all

pytestmark = pytest.mark.unit


class Refused(Exception):
    pass


def flaky(failures: int, error: Exception | None = None) -> tuple[Dependency, list[int]]:
    calls: list[int] = []

    async def probe() -> None:
        calls.append(1)
        if len(calls) <= failures:
            raise error or ConnectionRefusedError(111, "Connection refused")

    dep = Dependency("Redis", "redis://u:***@h:1/0", "LEADFLOW_REDIS_URL", probe, (Refused,))
    return dep, calls


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(startup, "FIRST_DELAY", 0.1)
    monkeypatch.setattr(startup, "MAX_DELAY", 0.2)


async def test_a_dependency_that_comes_up_is_waited_for_one_line_per_attempt() -> None:
    dep, calls = flaky(failures=3)
    said: list[tuple[str, str]] = []
    await wait_for_all([dep], 10, lambda line, reason: said.append((line, reason)))
    assert len(calls) == 4
    assert [line for line, _ in said] == [
        "waiting for Redis at redis://u:***@h:1/0 (attempt 1, next in 0.1 s)",
        "waiting for Redis at redis://u:***@h:1/0 (attempt 2, next in 0.2 s)",
        "waiting for Redis at redis://u:***@h:1/0 (attempt 3, next in 0.2 s)",
    ]
    assert all("Connection refused" in reason for _, reason in said)


async def test_after_the_timeout_one_error_names_the_variable() -> None:
    dep, calls = flaky(failures=1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(ServiceUnavailable) as info:
        await wait_for_all([dep], 0.5, lambda line, reason: None)
    assert loop.time() - started < 1.5
    message = str(info.value)
    assert isinstance(info.value, TimeoutError)  # the CLI's exit code 3
    assert "Redis at redis://u:***@h:1/0 did not answer within 0.5 s" in message
    assert "LEADFLOW_REDIS_URL" in message and "ops/stack up" in message
    assert f"{len(calls)} attempts" in message


async def test_zero_timeout_makes_exactly_one_attempt() -> None:
    dep, calls = flaky(failures=1000)
    with pytest.raises(ServiceUnavailable, match="1 attempt;"):
        await wait_for_all([dep], 0, lambda line, reason: None)
    assert len(calls) == 1


async def test_a_refusal_is_not_waited_for() -> None:
    dep, calls = flaky(failures=1000, error=Refused("WRONGPASS invalid username-password pair"))
    with pytest.raises(ServiceRefused, match="check the credentials in LEADFLOW_REDIS_URL"):
        await wait_for_all([dep], 10, lambda line, reason: None)
    assert len(calls) == 1


async def test_dependencies_share_one_deadline() -> None:
    first, _ = flaky(failures=2)
    second, calls = flaky(failures=1000)
    with pytest.raises(ServiceUnavailable):
        await wait_for_all([first, second], 0.8, lambda line, reason: None)
    assert calls  # the second was tried in the time left
