"""The batch pipeline's shell logic, with an in-memory store and publisher (unit: no I/O)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import DefaultPartitioner
from redis.exceptions import ConnectionError as RedisConnectionError

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.core.kpi import KpiCount, KpiSample
from streams.core.lead import LeadState, apply_all
from streams.core.rules import parse_rules
from streams.kafka import OutRecord
from streams.observability import Metrics
from streams.pipeline.batch import BatchPositions, InRecord, Resync
from streams.pipeline.scoring import ScoringService
from streams.settings import load_settings
from streams.store import (
    Conflict,
    OffsetAdvance,
    OffsetsMoved,
    OutboxEntry,
    ReminderEntry,
    StoredLead,
)
from streams.store.cache import StateCache
from streams.store.codec import lead_from_json, lead_to_json
from streams.store.redis_store import Keys

pytestmark = pytest.mark.unit

RULES = parse_rules({"mql": {"threshold": 20}, "engagement": {"pricing_page_view": 25}})


class MemoryStore:
    """Same contract as LeadStore: versions, compare-and-set, dedupe markers, outbox."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[int, dict[str, object]]] = {}
        self.seen: dict[str, set[str]] = {}
        self.outbox: dict[tuple[int, str], bytes] = {}
        self.fail_next = 0
        self.outbox_read_delay = 0.0
        self.reminders_of: dict[str, int] = {}
        self.offsets: dict[int, int] = {}
        self.cache = StateCache(0)
        self.kpis: dict[tuple[object, str], int] = {}

    def _maybe_fail(self) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise RedisConnectionError("connection refused")

    async def load(
        self, wanted: Mapping[str, Sequence[str]], seen_apart: bool = False
    ) -> dict[str, StoredLead]:
        self._maybe_fail()
        out = {}
        for lead, ids in wanted.items():
            seen = frozenset(i for i in ids if i in self.seen.get(lead, set()))
            version, state = 0, LeadState(lead_id=lead)
            if lead in self.states:
                version, data = self.states[lead]
                state = lead_from_json(data)
            if seen_apart:
                out[lead] = StoredLead(version, state, known=seen)
            else:
                out[lead] = StoredLead(version, replace(state, seen_event_ids=seen))
        return out

    async def commit(
        self,
        partition: int,
        changes: Sequence[tuple[StoredLead, LeadState]],
        outbox: Iterable[OutboxEntry] = (),
        schedule: Iterable[ReminderEntry] = (),
        unschedule: Iterable[ReminderEntry] = (),
        counts: Iterable[KpiCount] = (),
        samples: Iterable[KpiSample] = (),
        offsets: Iterable[OffsetAdvance] = (),
    ) -> None:
        self._maybe_fail()
        advances = list(offsets)
        moved = {
            o.partition: self.offsets.get(o.partition)
            for o in advances
            if self.offsets.get(o.partition) != o.expected
        }
        if moved:
            raise OffsetsMoved(moved)
        stale = [
            new.lead_id
            for old, new in changes
            if self.states.get(new.lead_id, (0,))[0] != old.version
        ]
        if stale:
            raise Conflict(stale)
        for old, new in changes:
            self.states[new.lead_id] = (
                old.version + 1,
                orjson.loads(orjson.dumps(lead_to_json(new))),
            )
            self.seen.setdefault(new.lead_id, set()).update(new.seen_event_ids)
        for e in outbox:
            self.outbox[(e.partition, e.output_id)] = e.encode()
        for w in schedule:
            self.reminders_of[w.member] = w.at_ms
        for w in unschedule:
            self.reminders_of.pop(w.member, None)
        for c in counts:
            self.kpis[(c.day, c.field)] = self.kpis.get((c.day, c.field), 0) + c.amount
        for o in advances:
            self.offsets[o.partition] = o.next

    async def pending_outbox(self, partitions: Iterable[int]) -> list[OutboxEntry]:
        await asyncio.sleep(self.outbox_read_delay)  # a Redis round trip in flight
        parts = set(partitions)
        return [OutboxEntry.decode(p, i, r) for (p, i), r in self.outbox.items() if p in parts]

    async def clear_outbox(self, entries: Iterable[OutboxEntry]) -> None:
        for e in entries:
            self.outbox.pop((e.partition, e.output_id), None)


class SlowPublisher:
    def __init__(self, delay: float = 0.0) -> None:
        self.sent: list[OutRecord] = []
        self.delay = delay
        self.fail = False

    async def publish(self, records: Sequence[OutRecord]) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise KafkaConnectionError("broker down")
        self.sent.extend(records)

    async def stop(self) -> None:
        pass


def parse(record: InRecord) -> EngagementEvent:
    assert record.value is not None
    return EngagementEvent.model_validate_json(record.value)


def event(lead: str, event_id: str, offset: int, kind: str = "pricing_page_view") -> InRecord:
    body = {
        "event_id": event_id,
        "lead_id": lead,
        "type": kind,
        "occurred_at": "2026-11-20T10:00:00Z",
    }
    return InRecord(lead.encode(), orjson.dumps(body), "leads.engagement", 0, offset)


@pytest.fixture
def service(tmp_path: Path) -> tuple[ScoringService, MemoryStore, SlowPublisher]:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("mql: {threshold: 20}\n", encoding="utf-8")
    settings = load_settings(rules=rules_file, redis_retry_max_seconds=0.01)
    store, publisher = MemoryStore(), SlowPublisher()
    return ScoringService(settings, RULES, store, publisher, Metrics()), store, publisher  # type: ignore[arg-type]


async def test_outbox_sweep_during_a_batch_does_not_send_its_handoff_twice(service) -> None:
    svc, store, publisher = service
    store.outbox_read_delay = 0.05
    # The periodic sweep starts reading the outbox; meanwhile a batch writes a new handoff.
    sweep = asyncio.create_task(svc.flush_outbox([0]))
    await asyncio.sleep(0.01)
    await svc.process([event("a", "e1", 0)])
    await sweep
    handoffs = [r for r in publisher.sent if r.topic == svc.settings.handoff]
    assert len(handoffs) == 1
    assert store.outbox == {}


async def test_stranded_outbox_entries_are_delivered_by_the_sweep(service) -> None:
    svc, store, publisher = service
    # A crash after the Redis write: the handoff is in the outbox, nothing was sent.
    _, (handoff,) = apply_all(LeadState(lead_id="a"), [parse(event("a", "e1", 0))], RULES)
    value = handoff.model_dump_json().encode()
    entry = OutboxEntry(3, handoff.handoff_id, svc.settings.handoff, b"a", value)
    store.outbox[(3, handoff.handoff_id)] = entry.encode()
    assert await svc.flush_outbox([1, 2]) == 0  # not this worker's partitions
    assert await svc.flush_outbox([3]) == 1
    assert [(r.topic, r.key) for r in publisher.sent] == [(svc.settings.handoff, b"a")]
    assert MqlHandoff.model_validate_json(publisher.sent[0].value) == handoff
    assert store.outbox == {}


async def test_a_redis_outage_is_waited_out_and_the_batch_still_counts(service) -> None:
    svc, store, publisher = service
    store.fail_next = 3
    result = await svc.process([event("a", "e1", 0), event("a", "e2", 1, "email_open")])
    assert result.counted == 2 and len(result.of_type(MqlHandoff)) == 1
    assert svc.metrics.retries.labels("redis")._value.get() == 3
    sent = [
        MqlHandoff.model_validate_json(r.value)
        for r in publisher.sent
        if r.topic == svc.settings.handoff
    ]
    assert [h.lead_id for h in sent] == ["a"]
    moves = [r for r in publisher.sent if r.topic == svc.settings.lifecycle]
    assert [LifecycleTransition.model_validate_json(r.value).to_stage for r in moves] == ["mql"]


async def test_a_redelivered_batch_changes_nothing_and_sends_nothing(service) -> None:
    svc, store, publisher = service
    batch = [event("a", "e1", 0), event("b", "e2", 1, "email_open")]
    await svc.process(batch)
    before = (dict(store.states), len(publisher.sent))
    again = await svc.process(batch)
    assert again.counted == 0 and again.duplicates == 2
    assert (dict(store.states), len(publisher.sent)) == before


async def test_bad_and_good_records_in_one_batch(service) -> None:
    svc, _, publisher = service
    result = await svc.process(
        [InRecord(b"a", b"not json", "leads.engagement", 0, 0), event("a", "e1", 1)]
    )
    assert result.counted == 1
    dead = [r for r in publisher.sent if r.topic == svc.settings.deadletter]
    assert [r.value for r in dead] == [b"not json"]
    assert ("leadflow.source.offset", b"0") in dead[0].headers


async def test_the_batch_moves_its_input_offsets_with_the_states(service) -> None:
    svc, store, _ = service
    first = BatchPositions(starts={0: None}, ends={0: 2})
    await svc.process([event("a", "e1", 0), event("b", "e2", 1, "email_open")], first)
    assert store.offsets == {0: 2}
    second = BatchPositions(starts={0: 2}, ends={0: 3})
    result = await svc.process([event("c", "e3", 2)], second)
    assert result.counted == 1 and store.offsets == {0: 3}


async def test_a_batch_that_does_not_start_where_redis_is_writes_nothing(service) -> None:
    svc, store, publisher = service
    store.offsets = {0: 7}  # Redis is elsewhere: restored from an older copy, say
    stale = BatchPositions(starts={0: 9}, ends={0: 10})
    with pytest.raises(Resync) as raised:
        await svc.process([event("a", "e1", 9)], stale)
    assert raised.value.stored == {0: 7}
    assert store.states == {} and store.outbox == {} and publisher.sent == []
    assert store.offsets == {0: 7}


async def test_a_batch_of_bad_records_still_moves_the_offsets(service) -> None:
    svc, store, publisher = service
    store.offsets = {0: 4}
    bad = [InRecord(b"a", b"not json", "leads.engagement", 0, 4)]
    await svc.process(bad, BatchPositions(starts={0: 4}, ends={0: 5}))
    assert store.offsets == {0: 5}
    dead = [r for r in publisher.sent if r.topic == svc.settings.deadletter]
    assert [r.value for r in dead] == [b"not json"]


async def test_a_dead_letter_waits_in_the_outbox_until_kafka_has_it(service) -> None:
    svc, store, publisher = service
    publisher.fail = True
    task = asyncio.create_task(svc.process([InRecord(b"a", b"{", "leads.engagement", 3, 8)]))
    await asyncio.sleep(0.05)
    # Written with the batch, not yet sent: a crash now loses nothing.
    (entry,) = [OutboxEntry.decode(p, i, r) for (p, i), r in store.outbox.items()]
    assert entry.topic == svc.settings.deadletter and entry.value == b"{"
    assert ("leadflow.source.offset", b"8") in entry.headers
    publisher.fail = False
    await task
    assert store.outbox == {}


async def test_overlapped_delivery_keeps_the_order_batches_were_written_in(service) -> None:
    svc, store, publisher = service
    publisher.delay = 0.02
    await svc.process([event("a", "e1", 0)], wait_for_delivery=False)
    await svc.process([event("b", "e2", 1)], wait_for_delivery=False)
    assert publisher.sent == []  # both batches written, neither delivered yet
    await svc.delivery.settle()
    handoffs = [
        MqlHandoff.model_validate_json(r.value)
        for r in publisher.sent
        if r.topic == svc.settings.handoff
    ]
    assert [h.lead_id for h in handoffs] == ["a", "b"]
    assert store.outbox == {}


async def test_a_kafka_slower_than_scoring_slows_scoring_down_instead_of_queueing(service) -> None:
    """At most two deliveries are on their way: the third batch waits for the first to be
    acknowledged (outputs never pile up in memory behind a slow broker)."""
    svc, _, publisher = service
    publisher.delay = 0.2
    await svc.process([event("a", "e1", 0)], wait_for_delivery=False)
    await svc.process([event("b", "e2", 1)], wait_for_delivery=False)
    assert publisher.sent == []
    third = asyncio.ensure_future(svc.process([event("c", "e3", 2)], wait_for_delivery=False))
    await asyncio.sleep(0.05)
    assert not third.done()  # written to Redis, but waiting for a delivery slot
    await third
    assert publisher.sent != []  # it went on once the first delivery was acknowledged
    await svc.delivery.settle()
    handoffs = [
        MqlHandoff.model_validate_json(r.value).lead_id
        for r in publisher.sent
        if r.topic == svc.settings.handoff
    ]
    assert handoffs == ["a", "b", "c"]


async def test_an_event_at_the_end_of_time_is_dead_lettered_not_a_crash(service) -> None:
    # Found by fuzzing: occurred_at 9999-12-31T23:59:59-01:00 was accepted, and folding it
    # raised ("year 10000 is out of range") on every retry of the batch.
    svc, _, publisher = service
    late = {
        "event_id": "e-late",
        "lead_id": "a",
        "type": "pricing_page_view",
        "occurred_at": "9999-12-31T23:59:59-01:00",
    }
    records = [InRecord(b"a", orjson.dumps(late), "leads.engagement", 0, 0), event("a", "e2", 1)]
    result = await svc.process(records)
    assert result.counted == 1
    assert [d.headers.error_kind.value for d in result.deadletters] == ["invalid_event"]
    assert "occurred_at" in result.deadletters[0].headers.error_message
    assert [r.value for r in publisher.sent if r.topic == svc.settings.deadletter] == [
        records[0].value
    ]


# -- partitions and Redis Cluster --------------------------------------------------------------


def kafka_partition(lead: str, partitions: int = 8) -> int:
    """Where Kafka's default partitioner (aiokafka's, as the Java client) puts a lead's key."""
    return int(DefaultPartitioner()(lead.encode(), list(range(partitions)), []))


def event_on(lead: str, event_id: str, partition: int, offset: int) -> InRecord:
    return replace(event(lead, event_id, offset), partition=partition)


async def test_a_batch_over_several_partitions_is_written_one_partition_at_a_time(
    service,
) -> None:
    svc, store, _ = service
    written: list[tuple[int, list[str]]] = []
    commit = store.commit

    async def spy(partition: int, changes, **kwargs) -> None:  # type: ignore[no-untyped-def]
        written.append((partition, sorted(new.lead_id for _, new in changes)))
        await commit(partition, changes, **kwargs)

    store.commit = spy  # type: ignore[method-assign]
    leads = ["a", "b", "c", "d", "e", "f"]
    batch = [event_on(x, f"e-{x}", kafka_partition(x), i) for i, x in enumerate(leads)]
    positions = BatchPositions(
        {r.partition: None for r in batch}, {r.partition: r.offset + 1 for r in batch}
    )
    result = await svc.process(batch, positions)
    assert result.counted == 6
    expected: dict[int, list[str]] = {}
    for x in leads:
        expected.setdefault(kafka_partition(x), []).append(x)
    assert sorted(written) == sorted((p, sorted(xs)) for p, xs in expected.items())
    # Each partition's offset moved with its own leads.
    assert store.offsets == {r.partition: r.offset + 1 for r in batch}


async def test_on_redis_cluster_a_record_on_another_partition_is_sent_to_its_lead(
    tmp_path: Path,
) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text("mql: {threshold: 20}\n", encoding="utf-8")
    settings = load_settings(rules=rules_file, redis_cluster=True, redis_retry_max_seconds=0.01)
    store, publisher = MemoryStore(), SlowPublisher()
    store.keys = Keys("t:", settings.topic_partitions)  # type: ignore[attr-defined]
    svc = ScoringService(settings, RULES, store, publisher, Metrics())  # type: ignore[arg-type]
    home = kafka_partition("a")
    stray = (home + 3) % 8
    # Keyed by the lead id, but its producer used another partitioner (librdkafka's default
    # CRC32, say), so it landed on another partition than the lead's.
    wrong = event_on("a", "e1", stray, 41)
    right = event_on("b", "e2", kafka_partition("b"), 7)
    result = await svc.process([wrong, right])

    assert result.counted == 1 and "a" not in store.states and "b" in store.states
    resent = [r for r in publisher.sent if r.topic == settings.engagement]
    assert [(r.key, r.value) for r in resent] == [(b"a", wrong.value)]
    assert dict(resent[0].headers) == {"leadflow.rerouted.from": f"{stray}:41".encode()}
    # Keyed by the lead id, the producer's partitioner puts it on the lead's partition.
    assert kafka_partition(resent[0].key.decode()) == home
    assert svc.metrics.rerouted._value.get() == 1

    # There, it is scored like any record; re-routed again (a re-delivery), it counts once.
    again = replace(wrong, partition=home, offset=3)
    assert (await svc.process([again])).counted == 1
    assert (await svc.process([replace(again, offset=4)])).counted == 0


async def test_on_one_redis_a_record_on_another_partition_is_scored_where_it_is(service) -> None:
    svc, store, publisher = service
    stray = (kafka_partition("a") + 3) % 8
    result = await svc.process([event_on("a", "e1", stray, 0)])
    assert result.counted == 1 and "a" in store.states
    assert [r for r in publisher.sent if r.topic == svc.settings.engagement] == []
