"""A real Redis outage under a real worker: frozen (SIGSTOP), then killed with -9 and restarted,
while the KPI refresh timer ticks every half second, the outbox and SLA timers run and /health
is polled. The worker must live through both, say that Redis is down, recover by itself, and
score what comes after (issue 10, item 0).

The Redis is a private redis-server on its own port and temp dir (tests/outages.py); the shared
one is never touched. Kafka is the shared broker, with this test's own namespace.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.settings import Settings
from tests.harness import (
    WorkerProcess,
    ensure_topics,
    eventually,
    fresh_settings,
    produce,
    qualifying,
    read_topic,
    wait_for,
)
from tests.outages import PrivateRedis

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    server = PrivateRedis(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def outage_settings(services: None, private_redis: PrivateRedis) -> AsyncIterator[Settings]:
    s = fresh_settings(redis_url=private_redis.url)
    await ensure_topics(s)
    yield s  # the private Redis goes away with its temp dir


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body, 503s included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(json.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read() or b"{}"))


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]] | None:
    """/health's status and body, 503s included (None: the worker does not answer at all)."""
    try:
        return get_json(f"{worker.url}/health")
    except OSError:
        return None


def failures(worker: WorkerProcess, task: str) -> float:
    """How often a background task failed for an outage (/metrics needs no Redis)."""
    total = 0.0
    for dependency in ("redis", "kafka"):
        total += (
            worker.metric("leadflow_background_failures_total", task=task, dependency=dependency)
            or 0.0
        )
    return total


def alive(worker: WorkerProcess) -> Callable[[], Awaitable[bool]]:
    def check() -> bool:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.tail(60)}")
        return True

    async def run() -> bool:
        return check()

    return run


async def until(worker: WorkerProcess, check: Callable[[], bool], within: float, what: str) -> None:
    """Poll `check` (in a thread: it does blocking HTTP), failing at once if the worker died."""

    async def ok() -> bool:
        await alive(worker)()
        return await asyncio.to_thread(check)

    await eventually(ok, within, what)


async def test_worker_survives_a_frozen_and_a_killed_redis(
    outage_settings: Settings,
    private_redis: PrivateRedis,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    settings = outage_settings
    worker = WorkerProcess(
        settings,
        tmp_path / "worker.log",
        extra_env={
            "LEADFLOW_KPI_REFRESH_INTERVAL": "0.5",
            "LEADFLOW_REDIS_RETRY_MAX_SECONDS": "1",
        },
    ).start()
    workers.append(worker)
    await worker.wait_ready()

    def mqls_7d() -> float:
        return worker.metric("leadflow_kpi_stage_count", stage="mql", window="7d") or 0.0

    # Before: 3 leads handed off, and the KPI gauges show them.
    before = [f"before-{i}" for i in range(3)]
    now = datetime.now(UTC)
    await produce(settings, [r for lead in before for r in qualifying(lead, now)])
    await wait_for(settings, settings.handoff, lambda rs: len(rs) == len(before), within=60)
    await until(worker, lambda: mqls_7d() == len(before), 30, "KPI gauge of 3 MQLs")

    # 1. Redis frozen: requests hang until the client's socket timeout.
    kpi_failures = failures(worker, "refresh_kpis")
    private_redis.freeze()
    try:
        await until(worker, lambda: (h := health(worker)) is not None and h[0] == 503, 30, "503")
        status, body = health(worker) or (0, {})
        assert status == 503 and body["redis"] is False, body
        assert "redis" in body["unavailable"], body
        status, body = await asyncio.to_thread(get_json, f"{worker.url}/leads/before-0/explain")
        assert status == 503 and body["unavailable"] == "redis", body
        await until(
            worker,
            lambda: failures(worker, "refresh_kpis") > kpi_failures,
            40,
            "a KPI refresh tick failing on the frozen Redis",
        )
    finally:
        private_redis.thaw()
    await until(worker, lambda: (h := health(worker)) is not None and h[0] == 200, 40, "200 again")

    # 2. Redis killed with -9 mid-run, restarted on the same port and data directory.
    kpi_failures = failures(worker, "refresh_kpis")
    private_redis.kill()
    await until(
        worker,
        lambda: failures(worker, "refresh_kpis") > kpi_failures,
        30,
        "a KPI refresh tick failing on the killed Redis",
    )
    status, body = health(worker) or (0, {})
    assert status == 503 and body["redis"] is False, body
    # Events that arrive while Redis is down wait in Kafka, and are scored once it is back.
    during = [f"during-{i}" for i in range(3)]
    await produce(settings, [r for lead in during for r in qualifying(lead, datetime.now(UTC))])
    await alive(worker)()
    private_redis.start()
    await until(worker, lambda: (h := health(worker)) is not None and h[0] == 200, 60, "200 again")

    # After: the worker is the same process, scores new events, and the gauges follow.
    after = [f"after-{i}" for i in range(3)]
    await produce(settings, [r for lead in after for r in qualifying(lead, datetime.now(UTC))])
    everyone = set(before + during + after)

    def handed_off(records: list[Any]) -> bool:
        return {orjson.loads(r.value)["lead_id"] for r in records} >= everyone

    await wait_for(settings, settings.handoff, handed_off, within=90)
    await until(worker, lambda: mqls_7d() == len(everyone), 30, "KPI gauge of 9 MQLs")
    handoffs = await read_topic(settings, settings.handoff)
    by_lead = {
        orjson.loads(r.value)["handoff_id"]: orjson.loads(r.value)["lead_id"] for r in handoffs
    }
    assert sorted(by_lead.values()) == sorted(everyone)  # one handoff id per lead

    # The SLA sweeper came back too: every uncontacted lead breaches once (5 s window).
    def breached(records: list[Any]) -> bool:
        return {orjson.loads(r.value)["lead_id"] for r in records} >= everyone

    alerts = await wait_for(settings, settings.alerts, breached, within=60)
    ids = [orjson.loads(r.value)["alert_id"] for r in alerts]
    assert len(set(ids)) == len(everyone), "one alert per deadline"
    await alive(worker)()
    assert worker.proc is not None and worker.proc.poll() is None
    log = worker.log_path.read_text(errors="replace")
    assert "Crashed reason" not in log
