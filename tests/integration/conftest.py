"""Integration fixtures: the real Kafka broker and Redis must be up, or the tests fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from streams.kafka import wait_for_kafka
from streams.settings import Settings
from tests.harness import WorkerProcess, drop_topics, ensure_topics, fresh_settings, purge_redis


@pytest.fixture(scope="session")
def services() -> None:
    """Fail (never skip) when the stack is missing: CI must not pass on tests that did not run."""
    settings = fresh_settings()

    async def check() -> None:
        await wait_for_kafka(settings, within=30)
        client = aioredis.Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=5)
        try:
            await client.ping()
        except Exception as exc:
            start = "`ops/stack up redis-cluster`" if settings.redis_cluster else "`ops/stack up`"
            raise TimeoutError(
                f"Redis at {settings.redis_url} is not answering ({exc!r}); start it with "
                f"{start} or set LEADFLOW_REDIS_URL"
            ) from exc
        finally:
            await client.aclose()

    try:
        asyncio.run(check())
    except TimeoutError as exc:
        pytest.fail(f"integration services unavailable: {exc}", pytrace=False)


@pytest.fixture
async def settings(services: None) -> AsyncIterator[Settings]:
    """A fresh namespace (topics, consumer group, Redis keys) for one test."""
    s = fresh_settings()
    await ensure_topics(s)
    yield s
    await purge_redis(s)
    await drop_topics(s)


@pytest.fixture
def workers(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[WorkerProcess]]:
    """Start worker processes with `spawn()`; all are stopped (and their logs shown) at the end."""
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for i, w in enumerate(started):
            print(f"--- worker {i} log ---\n{w.tail(80)}")


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{report.when}", report)
