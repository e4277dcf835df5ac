"""A real broker outage under a real worker (issue 10, item 0): the broker is killed with -9
while deadlines come due, and restarted on the same data directory.

The worker must stay the same process throughout (no background task may crash it: the outbox
delivery, the SLA sweeper, the KPI refresh, the consumer-lag report, the offset commits and
/health all meet the outage), /health must answer 503 naming Kafka while the broker is gone
(and /metrics keep answering), then 200 once it is back; the alerts that came due during the
outage leave from the outbox once each, and the worker scores new events and delivers their
handoffs, whose ids the core and the reference model predict (tests/oracle.py).

The broker is this test's own (tests/outages.py PrivateKafka: `ops/stack up kafka` on free ports
and a temp dir); the shared broker is never touched. Redis is the shared one, with this test's
own namespace.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaError

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord
from streams.kafka import KafkaPing
from streams.settings import Settings
from tests.harness import (
    ROOT,
    Consumed,
    WorkerProcess,
    ensure_topics,
    eventually,
    free_port,
    fresh_settings,
    produce,
    purge_redis,
    qualifying,
    wait_for,
)
from tests.oracle import expected_outcome, reference_disagreements
from tests.outages import PrivateKafka

pytestmark = pytest.mark.integration


@pytest.fixture
def private_kafka(services: None, tmp_path: Path) -> Iterator[PrivateKafka]:
    broker = PrivateKafka(tmp_path / "stack").start()  # fails the test if it cannot start
    yield broker
    broker.stop()


@pytest.fixture
async def on_private_kafka(private_kafka: PrivateKafka) -> AsyncIterator[Settings]:
    s = fresh_settings(kafka_bootstrap=private_kafka.bootstrap)
    await ensure_topics(s)
    yield s
    await purge_redis(s)


def health(worker: WorkerProcess) -> tuple[int, dict[str, Any]] | None:
    """/health's status and body, 503s included (None: the worker does not answer at all)."""
    try:
        with urllib.request.urlopen(f"{worker.url}/health", timeout=5) as resp:
            return int(resp.status), dict(orjson.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return int(exc.code), dict(orjson.loads(exc.read() or b"{}"))
    except OSError:
        return None


async def answers(worker: WorkerProcess, status: int, within: float, what: str) -> dict[str, Any]:
    """Poll /health until it answers `status`; fail at once if the worker process ended."""
    seen: dict[str, Any] = {}

    async def check() -> bool:
        assert worker.proc is not None
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.tail(60)}")
        got = await asyncio.to_thread(health, worker)
        if got is not None and got[0] == status:
            seen.update(got[1])
            return True
        return False

    await eventually(check, within, what)
    return seen


def leads_in(records: list[Consumed]) -> set[str]:
    return {orjson.loads(r.value or b"{}")["lead_id"] for r in records}


async def test_worker_lives_through_a_broker_kill_and_scores_after_the_restart(
    on_private_kafka: Settings,
    private_kafka: PrivateKafka,
    workers: list[WorkerProcess],
    tmp_path: Path,
) -> None:
    s = on_private_kafka
    worker = WorkerProcess(
        s,
        tmp_path / "worker.log",
        {"LEADFLOW_KPI_REFRESH_INTERVAL": "0.5", "LEADFLOW_OFFSETS_COMMIT_INTERVAL": "1"},
    ).start()
    workers.append(worker)
    await worker.wait_ready()
    pid = worker.proc.pid if worker.proc else None

    # Before: 3 leads handed off; nobody calls them (5 s first-contact deadline).
    t0 = datetime.now(UTC)
    before = [r for i in range(3) for r in qualifying(f"before-{i}", t0)]
    await produce(s, before)
    await wait_for(s, s.handoff, lambda rs: len(leads_in(rs)) == 3, within=60)

    # The broker killed while their deadlines come due: the sweeper's alerts cannot leave.
    killed = time.monotonic()
    await asyncio.to_thread(private_kafka.kill)
    body = await answers(worker, 503, 15, "/health 503 while the broker is gone")
    assert body["kafka"] is False and body["redis"] is True, body
    assert "LEADFLOW_KAFKA_BOOTSTRAP" in body["unavailable"]["kafka"]["hint"], body
    detected = time.monotonic() - killed
    assert worker.metric("leadflow_dependency_up", dependency="kafka") == 0
    # The deadlines pass during the outage (5 s after qualifying): the sweeper meets it.
    due = t0 + timedelta(seconds=5)

    async def passed() -> bool:
        return datetime.now(UTC) > due + timedelta(seconds=1)

    await eventually(passed, 30, "the deadlines to pass")
    await answers(worker, 503, 15, "/health still 503 after the deadlines passed")

    await asyncio.to_thread(private_kafka.start)  # same data directory, same ports
    await answers(worker, 200, 60, "/health 200 once the broker is back")
    recovered = time.monotonic() - killed

    # After: the same process scores new leads and delivers their handoffs.
    after = [r for i in range(3) for r in qualifying(f"after-{i}", datetime.now(UTC))]
    await produce(s, after)
    records = [SampleRecord(key, value, True) for key, value in before + after]
    expected = expected_outcome(records, load_rules(s.rules), s)

    def delivered(rs: list[Consumed]) -> bool:
        return {orjson.loads(r.value or b"{}")["handoff_id"] for r in rs} >= set(expected.handoffs)

    on_topic = await wait_for(s, s.handoff, delivered, within=90)
    handoffs = [MqlHandoff.model_validate_json(r.value or b"") for r in on_topic]
    assert {h.handoff_id for h in handoffs} == set(expected.handoffs)
    assert all(h == expected.handoffs[h.handoff_id] for h in handoffs)  # a re-send is the same
    store = open_store(s)
    try:
        stored = await store.read_all_leads()
    finally:
        await store.close()
    assert reference_disagreements(stored, handoffs, expected, load_rules(s.rules)) == []

    # One alert per missed deadline: the three that came due during the outage, and the three
    # after it (a re-send carries its alert_id).
    everyone = leads_in(on_topic)
    alerts_on_topic = await wait_for(s, s.alerts, lambda rs: leads_in(rs) >= everyone, within=60)
    alerts = {
        a.alert_id: a
        for a in (SlaAlert.model_validate_json(r.value or b"") for r in alerts_on_topic)
    }
    assert Counter(a.lead_id for a in alerts.values()) == Counter(dict.fromkeys(everyone, 1))

    # The same process throughout, healthy, and it never crashed.
    await answers(worker, 200, 10, "/health 200 at the end")
    assert worker.proc is not None and worker.proc.poll() is None and worker.proc.pid == pid
    assert "Crashed reason" not in worker.log_path.read_text(errors="replace")
    print(f"kafka outage: 503 after {detected:.1f}s, 200 again {recovered:.1f}s after the kill")


async def test_kafka_ping_answers_on_a_broker_and_fails_fast_without_one(services: None) -> None:
    """/health's Kafka ping (streams/kafka/ping.py): a Metadata request on the real broker; on a
    port where nothing listens it raises at once rather than waiting inside aiokafka."""
    up = KafkaPing(fresh_settings())
    try:
        await asyncio.wait_for(up(), timeout=10)
        await asyncio.wait_for(up(), timeout=2)  # the connection is kept: one round trip
    finally:
        await up.close()
    down = KafkaPing(fresh_settings(kafka_bootstrap=f"127.0.0.1:{free_port()}"))
    started = time.monotonic()
    try:
        with pytest.raises(KafkaError):
            await asyncio.wait_for(down(), timeout=5)
    finally:
        await down.close()
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "ports",
    [
        {"KAFKA_PROXIED_PORT": "19999"},
        {"KAFKA_PROXIED_PORT": "1", "KAFKA_PROXIED_ADVERTISED_PORT": "1"},
    ],
    ids=["advertised port missing", "same port twice"],
)
def test_ops_stack_refuses_a_half_configured_proxied_listener(
    tmp_path: Path, ports: dict[str, str]
) -> None:
    """KAFKA_PROXIED_PORT and KAFKA_PROXIED_ADVERTISED_PORT go together, and differ: ops/stack
    says so in one line before starting anything."""
    broker = PrivateKafka(tmp_path / "stack")
    env = {**broker.env(), **ports}
    done = subprocess.run(
        [str(ROOT / "ops" / "stack"), "up", "kafka"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "KAFKA_PROXIED" in done.stderr, done.stderr
    assert not broker.running() and not (tmp_path / "stack" / "kafka" / "kafka.pid").exists()
