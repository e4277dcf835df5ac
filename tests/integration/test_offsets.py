"""Offsets live with the state: Redis that comes back older than Kafka, or empty.

Real broker, real Redis, real `leadflow worker` processes. The oracle is the pure core's fold
over the same events (tests/oracle.py).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord, generate
from streams.settings import Settings
from tests.harness import (
    WorkerProcess,
    consumer_caught_up,
    eventually,
    namespace_keys,
    produce,
    purge_redis,
    read_topic,
    redis_client,
    wait_for_handoffs,
)
from tests.oracle import comparable, expected_outcome, reference_disagreements, stored_leads_equal

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


async def dump_namespace(settings: Settings) -> dict[bytes, tuple[int, bytes]]:
    """DUMP every key of the namespace, as a backup or an async replica would hold it."""
    client = redis_client(settings)
    try:
        out = {}
        for key in await namespace_keys(client, settings):
            raw = await client.dump(key)
            if raw is not None:
                out[key] = (max(await client.pttl(key), 0), raw)
        return out
    finally:
        await client.aclose()


async def restore_namespace(settings: Settings, dump: dict[bytes, tuple[int, bytes]]) -> None:
    """Put the namespace back exactly as dumped: newer keys go, older values come back."""
    await purge_redis(settings)
    client = redis_client(settings)
    try:
        for key, (ttl, raw) in dump.items():
            await client.restore(key, ttl, raw, replace=True)
    finally:
        await client.aclose()


async def play(settings: Settings, records: list[SampleRecord]) -> None:
    await produce(settings, [(r.key, r.value) for r in records])
    await eventually(lambda: consumer_caught_up(settings), 180, "the worker to catch up")


async def assert_equals_the_oracle(settings: Settings, records: list[SampleRecord]) -> None:
    rules = load_rules(settings.rules)
    expected = expected_outcome(records, rules, settings)

    await wait_for_handoffs(settings, set(expected.handoffs))
    store = open_store(settings)
    try:
        stored = await store.read_all_leads()
    finally:
        await store.close()
    assert set(stored) == set(expected.leads)
    wrong = [
        lead
        for lead, state in expected.leads.items()
        if comparable(stored[lead]) != comparable(state)
    ]
    assert wrong == []
    # Every qualifying lead has exactly one handoff id on the topic, none missing, none extra
    # (a handoff re-sent during the replay carries its old id).
    on_topic = [
        MqlHandoff.model_validate_json(r.value)
        for r in await read_topic(settings, settings.handoff)
    ]
    ids_per_lead = Counter(lead for lead, _ in {(h.lead_id, h.handoff_id) for h in on_topic})
    assert {h.handoff_id for h in on_topic} == set(expected.handoffs)
    assert set(ids_per_lead.values()) <= {1}
    assert all(h == expected.handoffs[h.handoff_id] for h in on_topic)
    assert reference_disagreements(stored, on_topic, expected, rules) == []


def thirds(records: list[SampleRecord]) -> tuple[list[SampleRecord], ...]:
    n = len(records) // 3
    return records[:n], records[n : 2 * n], records[2 * n :]


async def test_redis_restored_older_than_kafka_is_replayed_exactly(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    records = generate(leads=600, events=6_000, seed=41, duplicate_every=20, invalid_every=400)
    first, second, third = thirds(records)
    expected = expected_outcome(records, load_rules(settings.rules), settings)
    assert len(expected.handoffs) >= 50  # enough leads qualify in each part to matter

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await play(settings, first)
    backup = await dump_namespace(settings)
    await play(settings, second)

    # Redis comes back older than Kafka (a failover to a lagging replica, or a restore).
    worker.stop()
    await restore_namespace(settings, backup)
    restarted = WorkerProcess(settings, tmp_path / "restarted.log").start()
    workers.append(restarted)
    await restarted.wait_ready()
    await play(settings, third)

    await assert_equals_the_oracle(settings, records)


async def test_redis_emptied_stops_the_partitions_instead_of_scoring_from_a_late_offset(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    records = generate(leads=200, events=2_000, seed=43)
    first, second = records[:1000], records[1000:]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await play(settings, first)
    worker.stop()

    await purge_redis(settings)  # Redis emptied; Kafka's committed offsets stay
    blind = WorkerProcess(settings, tmp_path / "blind.log").start()
    workers.append(blind)
    await blind.wait_ready()
    await produce(settings, [(r.key, r.value) for r in second])

    async def stopped() -> bool:
        body = blind.health() or {}
        return len(body.get("stopped_partitions", {})) == settings.topic_partitions

    await eventually(stopped, 60, "every partition to be stopped")
    body = blind.health()
    assert body is not None and body["status"] == "degraded"
    reason = body["stopped_partitions"]["0"]
    assert "leadflow rescore" in reason and "LEADFLOW_OFFSETS_MISSING=earliest" in reason
    for p in range(settings.topic_partitions):
        assert blind.metric("leadflow_partitions_stopped", partition=str(p)) == 1.0
    assert "partition stopped: no offsets in Redis" in blind.tail(200)

    # Nothing was scored from a late offset: no lead state, no handoff from the second part,
    # while the worker is up and the new records wait on the topic.
    for _ in range(10):
        store = open_store(settings)
        try:
            assert await store.read_all_leads() == {}
        finally:
            await store.close()
        await asyncio.sleep(0.2)
    assert not await consumer_caught_up(settings)

    # The way back the error names: replay from the earliest retained offset.
    blind.stop()
    replaying = WorkerProcess(
        settings, tmp_path / "replay.log", {"LEADFLOW_OFFSETS_MISSING": "earliest"}
    ).start()
    workers.append(replaying)
    await replaying.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 180, "the replay to catch up")
    await assert_equals_the_oracle(settings, records)


async def test_redis_restored_older_under_an_idle_worker_is_replayed_without_new_records(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Regression (fault matrix, Redis restored older): a running worker with nothing left to
    read never wrote again, so it never noticed that Redis went back; the leads stayed old and
    Kafka's committed offsets said all was read. Now the worker compares the offsets in Redis
    with its own every LEADFLOW_OFFSETS_COMMIT_INTERVAL and replays the gap by itself."""
    records = generate(leads=200, events=2_000, seed=43, duplicate_every=20, invalid_every=400)
    first, second = records[: len(records) // 2], records[len(records) // 2 :]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await play(settings, first)
    backup = await dump_namespace(settings)
    await play(settings, second)

    await restore_namespace(settings, backup)  # under the running, idle worker

    async def noticed() -> bool:
        return (worker.metric("leadflow_offset_resyncs_total") or 0) >= 1

    await eventually(noticed, 30, "the idle worker to notice the older offsets")
    # Kafka's committed offsets go back only at the next commit: wait for the states instead.
    expected = expected_outcome(records, load_rules(settings.rules), settings)

    async def replayed() -> bool:
        return await stored_leads_equal(settings, expected)

    await eventually(replayed, 120, "the gap to be replayed", every=0.5)
    await eventually(lambda: consumer_caught_up(settings), 60, "the worker to catch up")
    await assert_equals_the_oracle(settings, records)
    assert worker.proc is not None and worker.proc.poll() is None
