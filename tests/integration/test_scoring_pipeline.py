"""The scoring pipeline end to end: real broker, real Redis, real `leadflow worker` process."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.partitioner import DefaultPartitioner
from prometheus_client.parser import text_string_to_metric_families

from schemas.deadletter import DeadLetterHeaders
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
    qualifying,
    read_topic,
    wait_for,
)
from tests.oracle import comparable, expected_outcome, reference_disagreements

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_redis_scores_and_handoffs_equal_the_core_over_10k_events(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    records = generate(leads=1000, events=10_000, seed=11, invalid_every=250, duplicate_every=100)
    rules = load_rules(settings.rules)
    expected = expected_outcome(records, rules, settings)
    assert len(expected.leads) == 1000 and len(expected.valid) >= 10_000
    assert expected.invalid and expected.handoffs  # the input exercises both paths

    await produce(settings, [(r.key, r.value) for r in records])
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await eventually(
        lambda: consumer_caught_up(settings), 240, "the worker to commit every engagement record"
    )

    # Scores in Redis are what the core computes over the same events.
    store = open_store(settings)
    try:
        stored = await store.read_all_leads()
    finally:
        await store.close()
    assert set(stored) == set(expected.leads)
    mismatched = [
        lead
        for lead, state in expected.leads.items()
        if comparable(stored[lead]) != comparable(state)
    ]
    assert mismatched == []

    # Exactly the handoffs the core predicts, each once, keyed by lead.
    on_topic = await read_topic(settings, settings.handoff)
    handoffs = [MqlHandoff.model_validate_json(r.value) for r in on_topic]
    assert Counter(h.handoff_id for h in handoffs) == Counter(expected.handoffs.keys())
    assert {h.handoff_id: h for h in handoffs} == expected.handoffs
    assert all(r.key == MqlHandoff.model_validate_json(r.value).lead_id.encode() for r in on_topic)
    # And what the docs say, by the independent reference model: scores, stages, handoffs.
    assert reference_disagreements(stored, handoffs, expected, rules) == []

    # Every invalid record is on the dead-letter topic, byte for byte, with its reason.
    dead = await read_topic(settings, settings.deadletter)
    assert sorted(d.value for d in dead) == sorted(r.value for r in expected.invalid)
    headers = [DeadLetterHeaders.from_kafka(d.headers) for d in dead]
    assert Counter(h.error_kind for h in headers) == expected.deadletter_kinds
    assert all(h.source_topic == settings.engagement and h.error_message for h in headers)

    # The operator sees the same figures on the metrics endpoint.
    values = metric_values(worker.metrics())
    assert values[("leadflow_events_total", (("outcome", "scored"),))] == len(
        {e.event_id for e in expected.valid}
    )
    assert values[("leadflow_handoffs_total", ())] == len(expected.handoffs)
    dead_total = sum(v for (name, _), v in values.items() if name == "leadflow_deadletters_total")
    assert dead_total == len(expected.invalid)


async def test_a_valid_event_after_a_bad_one_is_scored(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    lead = "lead-after-bad"
    good = (
        b'{"event_id": "e-1", "lead_id": "lead-after-bad", "type": "pricing_page_view", '
        b'"occurred_at": "2026-11-20T10:00:00+09:00"}'
    )
    await produce(settings, [(lead.encode(), b"{not json"), (lead.encode(), good)])
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 60, "both records to be committed")

    store = open_store(settings)
    try:
        state = await store.read_lead(lead)
    finally:
        await store.close()
    assert state is not None and state.events_counted == 1
    assert state.engagement["pricing_page_view"].points == 25
    dead = await read_topic(settings, settings.deadletter)
    assert [d.value for d in dead] == [b"{not json"]
    assert DeadLetterHeaders.from_kafka(dead[0].headers).error_kind == "not_json"
    assert worker.proc is not None and worker.proc.poll() is None  # still running


async def test_records_on_another_partition_than_their_leads_count_once(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A producer with another partitioner (librdkafka's default CRC32, say) puts a lead's
    records on another partition than Kafka's default would. On one Redis the worker scores
    them where they are; on Redis Cluster it re-sends them, keyed by the lead id, to the lead's
    partition (its keys' hash slot) and scores them there. Either way: one handoff, every
    event counted once."""
    lead = "stray-lead-1"
    home = int(DefaultPartitioner()(lead.encode(), list(range(settings.topic_partitions)), []))
    stray = (home + 1) % settings.topic_partitions
    sent = qualifying(lead, datetime.now(UTC))
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await produce(settings, sent, partition=stray)

    await wait_for(settings, settings.handoff, lambda rs: len(rs) >= 1, within=60)
    await eventually(lambda: consumer_caught_up(settings), 60, "every record to be scored")
    handoffs = [
        MqlHandoff.model_validate_json(r.value)
        for r in await read_topic(settings, settings.handoff)
    ]
    assert [h.lead_id for h in handoffs] == [lead]
    store = open_store(settings)
    try:
        state = await store.read_lead(lead)
    finally:
        await store.close()
    assert state is not None and state.events_counted == len(sent) and state.stage == "mql"

    engagement = await read_topic(settings, settings.engagement)
    resent = [r for r in engagement if r.partition == home]
    if settings.redis_cluster:
        assert sorted(r.value for r in resent) == sorted(v for _, v in sent)
        assert {dict(r.headers)["leadflow.rerouted.from"].split(b":")[0] for r in resent} == {
            str(stray).encode()
        }
        assert worker.metric("leadflow_rerouted_records_total") == len(sent)
    else:
        assert resent == []
