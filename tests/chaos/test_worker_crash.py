"""kill -9 and a crash between the Redis write and the Kafka write: nothing lost or doubled."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import generate
from streams.settings import Settings
from tests.harness import (
    WorkerProcess,
    consumer_caught_up,
    eventually,
    produce,
    read_topic,
    wait_for_handoffs,
)
from tests.oracle import comparable, expected_outcome, reference_disagreements

pytestmark = pytest.mark.chaos


async def assert_matches_oracle(settings: Settings, records: list, min_handoffs: int = 1) -> None:
    rules = load_rules(settings.rules)
    expected = expected_outcome(records, rules, settings)

    await wait_for_handoffs(settings, set(expected.handoffs))
    store = open_store(settings)
    try:
        stored = await store.read_all_leads()
        pending = await store.pending_outbox(range(settings.topic_partitions))
    finally:
        await store.close()
    # No lost and no double-counted score.
    assert set(stored) == set(expected.leads)
    assert [
        lead for lead, s in expected.leads.items() if comparable(stored[lead]) != comparable(s)
    ] == []
    # No missing handoff; a re-delivered one carries the same id and the same content.
    on_topic = [
        MqlHandoff.model_validate_json(r.value)
        for r in await read_topic(settings, settings.handoff)
    ]
    assert len(expected.handoffs) >= min_handoffs
    assert set(Counter(h.handoff_id for h in on_topic)) == set(expected.handoffs)
    assert all(h == expected.handoffs[h.handoff_id] for h in on_topic)
    assert reference_disagreements(stored, on_topic, expected, rules) == []
    assert pending == []


async def test_kill_9_mid_stream_then_restart(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    records = generate(leads=1000, events=10_000, seed=23, invalid_every=500, duplicate_every=200)
    await produce(settings, [(r.key, r.value) for r in records])

    # Small batches so that the kill lands in the middle of the stream.
    first = WorkerProcess(settings, tmp_path / "first.log", {"LEADFLOW_BATCH_MAX": "25"}).start()
    workers.append(first)
    await first.wait_ready()

    async def part_done() -> bool:
        return first.scored() >= 2_000

    await eventually(part_done, 120, "the first worker to score 2,000 events")
    first.kill()
    assert not await consumer_caught_up(settings), "the kill did not land mid-stream"

    second = WorkerProcess(settings, tmp_path / "second.log").start()
    workers.append(second)
    await second.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 240, "the restarted worker to catch up")
    await assert_matches_oracle(settings, records, min_handoffs=100)


async def test_crash_after_redis_write_before_kafka_still_hands_off(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    records = generate(leads=40, events=800, seed=5, hot_share=1.0)
    await produce(settings, [(r.key, r.value) for r in records])

    # The worker exits hard right after writing its first batch to Redis: the handoffs that
    # batch produced are in the outbox but never reached Kafka.
    crashing = WorkerProcess(
        settings,
        tmp_path / "crashing.log",
        {"LEADFLOW_FAULT_CRASH_AFTER_BATCHES": "1", "LEADFLOW_BATCH_MAX": "800"},
    ).start()
    workers.append(crashing)
    assert crashing.proc is not None
    crashing.proc.wait(timeout=120)
    assert crashing.proc.returncode == 137, crashing.tail()

    store = open_store(settings)
    try:
        pending = await store.pending_outbox(range(settings.topic_partitions))
    finally:
        await store.close()
    stranded = sum(1 for e in pending if e.topic == settings.handoff)
    assert stranded > 0, "the crash should leave handoffs in the outbox"
    assert await read_topic(settings, settings.handoff) == []

    restarted = WorkerProcess(settings, tmp_path / "restarted.log").start()
    workers.append(restarted)
    await restarted.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 120, "the restarted worker to catch up")

    stranded_ids = {e.output_id for e in pending if e.topic == settings.handoff}

    async def outbox_drained() -> bool:
        on_topic = await read_topic(settings, settings.handoff)
        return stranded_ids <= {
            MqlHandoff.model_validate_json(r.value).handoff_id for r in on_topic
        }

    await eventually(outbox_drained, 30, "the stranded handoffs to be delivered")
    await assert_matches_oracle(settings, records, min_handoffs=stranded)


async def test_kill_during_the_overlapped_delivery_loses_and_doubles_nothing(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    records = generate(leads=300, events=6_000, seed=29, hot_share=0.5, duplicate_every=50)
    await produce(settings, [(r.key, r.value) for r in records])

    # Small batches so that deliveries overlap the folding of the next batches; the worker dies
    # half-way through sending its 5th delivery, with later batches already written to Redis.
    crashing = WorkerProcess(
        settings,
        tmp_path / "crashing.log",
        {"LEADFLOW_FAULT_CRASH_DURING_DELIVERY": "5", "LEADFLOW_BATCH_MAX": "100"},
    ).start()
    workers.append(crashing)
    assert crashing.proc is not None
    crashing.proc.wait(timeout=120)
    assert crashing.proc.returncode == 137, crashing.tail()
    assert "exiting in the middle of a delivery" in crashing.tail(200)
    assert not await consumer_caught_up(settings), "the crash did not land mid-stream"

    restarted = WorkerProcess(settings, tmp_path / "restarted.log").start()
    workers.append(restarted)
    await restarted.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 240, "the restarted worker to catch up")

    await assert_matches_oracle(settings, records, min_handoffs=50)
