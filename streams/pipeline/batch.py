"""One batch, the shell around the core: read the batch's leads, fold the core, write back.

A batch is split by input partition (every key of a partition shares one Redis Cluster hash
slot: streams/store/redis_store.py `Keys`); the partitions of one fetch run side by side. Each
is one read round trip (states and seen ids), a fold in Python (every decision is the core's),
and one guarded write: states, dedupe markers, outbox, reminders, KPI counts and the input
offset in one Lua step, all or nothing. A batch that loses a race (another writer changed a
lead) is read and folded again; one that finds other input offsets in Redis than it started
from, or a rescore's new generation, is given up and re-read from Kafka (`Resync`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar

from pydantic import BaseModel

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.bootstrap import LiveRules
from streams.core.clocks import reminders
from streams.core.kpi import KpiCount, KpiSample, kpi_changes
from streams.core.lead import LeadState
from streams.core.rules import Rules
from streams.core.sales import mql_transition
from streams.observability import Metrics, log
from streams.pipeline.delivery import Delivery, Publisher
from streams.pipeline.intake import DeadLetter
from streams.pipeline.retry import Retrying
from streams.settings import Settings
from streams.store import (
    Conflict,
    Fenced,
    LeadStore,
    OffsetAdvance,
    OffsetsMoved,
    OutboxEntry,
    ReminderEntry,
    StoredLead,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InRecord:
    """A consumed Kafka record, before parsing."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class BatchPositions:
    """Where a batch sits in its input partitions: the next offset Redis must hold when it
    commits (`starts`, None where Redis holds none yet) and the one it leaves there (`ends`)."""

    starts: Mapping[int, int | None]
    ends: Mapping[int, int]
    epoch: int = 0

    def advances(self) -> list[OffsetAdvance]:
        return [OffsetAdvance(p, self.starts.get(p), end) for p, end in self.ends.items()]

    def only(self, partition: int) -> BatchPositions:
        """The positions of one of the batch's partitions."""
        start = {partition: self.starts[partition]} if partition in self.starts else {}
        end = {partition: self.ends[partition]} if partition in self.ends else {}
        return BatchPositions(start, end, self.epoch)


class Resync(Exception):
    """The batch was not written: Redis holds other input offsets than it started from, or a
    rescore switched generations. The consumer re-reads the offsets and fetches again."""

    def __init__(self, reason: str, stored: Mapping[int, int | None] | None = None) -> None:
        super().__init__(reason)
        self.stored = dict(stored or {})


@dataclass(slots=True)
class BatchChanges:
    """What folding the core over one batch decided: states to write and outputs to send."""

    counted: int = 0
    changes: list[tuple[StoredLead, LeadState]] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    schedule: list[ReminderEntry] = field(default_factory=list)
    unschedule: list[ReminderEntry] = field(default_factory=list)
    outputs: list[BaseModel] = field(default_factory=list)
    counts: list[KpiCount] = field(default_factory=list)
    samples: list[KpiSample] = field(default_factory=list)

    def change(
        self,
        before: StoredLead,
        after: LeadState,
        transitions: list[LifecycleTransition],
        rules: Rules,
    ) -> None:
        """Record a lead's new state and the KPI counts it causes (written in the same step)."""
        self.changes.append((before, after))
        counts, samples = kpi_changes(before.state, after, transitions, rules)
        self.counts += counts
        self.samples += samples

    def hand_off(
        self,
        partition: int,
        before: StoredLead,
        after: LeadState,
        handoffs: list[MqlHandoff],
        rules: Rules,
        topics: Settings,
    ) -> None:
        """A scoring change: each handoff goes out with its `mql` lifecycle event, and the
        state change is recorded with the KPI counts it causes."""
        transitions = []
        for handoff in handoffs:
            # At most one crossing per batch: only sales moves a lead back to nurture.
            moved = mql_transition(before.state.stage, handoff)
            self.emit(partition, topics.handoff, handoff.handoff_id, handoff, after.lead_id)
            self.emit(partition, topics.lifecycle, moved.transition_id, moved, after.lead_id)
            transitions.append(moved)
        self.change(before, after, transitions, rules)

    def emit(self, partition: int, topic: str, output_id: str, model: BaseModel, key: str) -> None:
        value = model.model_dump_json().encode()
        self.outbox.append(OutboxEntry(partition, output_id, topic, key.encode(), value))
        self.outputs.append(model)

    def reschedule(self, partition: int, before: LeadState, after: LeadState) -> None:
        """Keep the sweeper's reminders in step with the lead's open clocks."""
        old = {(r.clock_id, r.severity): r.at for r in reminders(before)}
        new = {(r.clock_id, r.severity): r.at for r in reminders(after)}
        lead = after.lead_id
        for (clock_id, severity), at in new.items():
            if old.get((clock_id, severity)) != at:
                ms = int(at.timestamp() * 1000)
                self.schedule.append(ReminderEntry(partition, lead, clock_id, severity, ms))
        for clock_id, severity in old.keys() - new.keys():
            self.unschedule.append(ReminderEntry(partition, lead, clock_id, severity))


@dataclass(slots=True)
class BatchResult:
    counted: int = 0
    duplicates: int = 0
    deadletters: list[DeadLetter] = field(default_factory=list)
    outputs: list[BaseModel] = field(default_factory=list)
    latest: list[EngagementEvent] = field(default_factory=list)  # each partition's last event
    rerouted: list[OutboxEntry] = field(default_factory=list)  # records sent to their lead's

    def of_type(self, kind: type[T]) -> list[T]:
        return [o for o in self.outputs if isinstance(o, kind)]

    def add(self, other: BatchResult) -> BatchResult:
        self.counted += other.counted
        self.duplicates += other.duplicates
        self.deadletters += other.deadletters
        self.outputs += other.outputs
        self.latest += other.latest
        self.rerouted += other.rerouted
        return self


def by_partition(records: Iterable[InRecord]) -> dict[int, list[InRecord]]:
    groups: dict[int, list[InRecord]] = {}
    for rec in records:
        groups.setdefault(rec.partition, []).append(rec)
    return groups


async def each_partition(
    groups: Mapping[int, T], step: Callable[[int, T], Awaitable[BatchResult]]
) -> BatchResult:
    """Run `step` for every partition's part of a batch, side by side, and add up the results.
    Every part finishes (or fails) before this returns: a part that failed raises afterwards,
    the others' writes stand (each is whole on its own)."""
    if len(groups) == 1:
        ((partition, part),) = groups.items()
        return await step(partition, part)
    outcomes = await asyncio.gather(
        *(step(p, part) for p, part in groups.items()), return_exceptions=True
    )
    total = BatchResult()
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        total.add(outcome)
    return total


def wall_clock_now() -> datetime:
    return datetime.now(UTC)


REROUTED_FROM = "leadflow.rerouted.from"


def reroute_entry(rec: InRecord, lead_id: str) -> OutboxEntry:
    """A record on another partition than its lead's (its producer used another partitioner
    than Kafka's default murmur2, e.g. librdkafka's default CRC32): sent again to its topic,
    keyed by the lead id, by leadflow's producer, whose default partitioner puts it on the
    lead's partition. On Redis Cluster a partition's batch can only touch its own hash slot;
    the lead's own partition scores it (a re-sent record counts once: its id is the dedupe
    key). Written with the batch's offsets through the outbox, like any output."""
    output_id = f"rr:{rec.topic}:{rec.partition}:{rec.offset}"
    origin = f"{rec.partition}:{rec.offset}".encode()
    return OutboxEntry(
        rec.partition, output_id, rec.topic, lead_id.encode(), rec.value, ((REROUTED_FROM, origin),)
    )


def deadletter_entry(d: DeadLetter, topic: str) -> OutboxEntry:
    """A dead letter goes out through the outbox like any output: written with the batch's
    offsets, so it is never lost between the offset moving on and Kafka having it."""
    h = d.headers
    output_id = f"dl:{h.source_topic}:{h.source_partition}:{h.source_offset}"
    return OutboxEntry(h.source_partition, output_id, topic, d.key, d.value, tuple(h.to_kafka()))


class BatchWriter:
    """The read-fold-write loop shared by the scoring and sales sides, over one generation of
    lead states, with retries, delivery through the outbox, and rescore switches."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        store: LeadStore,
        publisher: Publisher,
        metrics: Metrics,
        now: Callable[[], datetime] = wall_clock_now,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.live_rules = LiveRules(rules)
        self.store = store
        self.metrics = metrics
        self.now = now
        self.retrying = Retrying(metrics, settings.redis_retry_max_seconds)
        self.delivery = Delivery(
            store, publisher, metrics, self.retrying, settings.fault_crash_during_delivery
        )
        self._written = 0

    # Whether the fold takes the batch's known ids apart from the states (`StoredLead.known`).
    seen_apart = False

    async def complete(self, decided: BatchChanges) -> None:
        """What a fold leaves to be decided with I/O before the write (the scoring side routes
        its handoffs). Called again whenever the batch is folded again."""

    async def _write(
        self,
        partition: int,
        wanted: Mapping[str, Sequence[str]],
        fold: Callable[[dict[str, StoredLead]], BatchChanges],
        positions: BatchPositions | None = None,
    ) -> BatchChanges:
        """Read one partition's leads, fold, write guarded by versions (and the input offset);
        on a version conflict read again. Outputs are reserved for this worker's delivery
        before the write."""
        while True:
            load = partial(self.store.load, wanted, self.seen_apart)
            stored = await self.retrying("redis", load) if wanted else {}
            decided = fold(stored)
            await self.retrying("redis", partial(self.complete, decided))
            advances = positions.advances() if positions else []
            if not (decided.changes or decided.unschedule or decided.outbox or advances):
                return decided
            self.delivery.reserve(decided.outbox)
            try:
                await self.retrying("redis", partial(self._commit, partition, decided, advances))
                self._maybe_crash(decided)
                return decided
            except Fenced:
                self.delivery.release(decided.outbox)
                await self.follow_generation()
                if positions is not None:
                    raise Resync("a rescore switched generations") from None
            except OffsetsMoved as exc:
                self.delivery.release(decided.outbox)
                self.store.cache.clear()  # Redis may have been restored: trust nothing held
                raise Resync("input offsets in Redis moved", exc.stored) from None
            except Conflict as exc:
                # Someone else wrote these leads (a rebalance overlap or the other agent):
                # read again and refold; the dedupe markers make each input count once.
                self.delivery.release(decided.outbox)
                self.metrics.retries.labels("conflict").inc()
                log.info("lead state changed under the batch; retrying", leads=exc.lead_ids[:5])
            except BaseException:
                self.delivery.release(decided.outbox)
                raise

    async def _commit(
        self, partition: int, decided: BatchChanges, advances: list[OffsetAdvance]
    ) -> None:
        await self.store.commit(
            partition,
            decided.changes,
            outbox=decided.outbox,
            schedule=decided.schedule,
            unschedule=decided.unschedule,
            counts=decided.counts,
            samples=decided.samples,
            offsets=advances,
        )

    def _maybe_crash(self, decided: BatchChanges) -> None:
        """Fault injection for the chaos tests: die between the Redis write and Kafka."""
        if not decided.outbox or not self.settings.fault_crash_after_batches:
            return
        self._written += 1
        if self.settings.fault_crash_after_batches == self._written:
            log.error("fault injection: exiting after the Redis write", batch=self._written)
            os._exit(137)

    async def check_generation(self) -> None:
        """Follow a finished rescore promptly, not only when the next write is fenced."""
        generation = await self.retrying("redis", self.store.active_generation)
        if generation.number != self.store.keys.generation and generation.state == "active":
            await self.follow_generation()

    async def follow_generation(self) -> None:
        """A rescore switched the live generation: wait for it to finish, then use it (and the
        rules it was built with)."""
        while True:
            generation = await self.retrying("redis", self.store.active_generation)
            if generation.state == "active":
                break
            log.info("waiting for a rescore to finish switching", generation=generation.number)
            await asyncio.sleep(0.2)
        if generation.number == self.store.keys.generation:
            return
        self.store = self.store.at_generation(generation.number)
        self.rules = self.live_rules.of(generation)
        log.warning(
            "now writing to the rescored generation",
            generation=generation.number,
            rules_version=self.rules.version,
        )

    async def flush_outbox(self, partitions: Iterable[int]) -> int:
        """Deliver outputs that were written to Redis but not acknowledged by Kafka (crash)."""
        return await self.delivery.flush_outbox(partitions)

    def _observe_transitions(self, result: BatchResult) -> None:
        for t in result.of_type(LifecycleTransition):
            if t.kind == "reassigned":
                log.info(
                    "lead reassigned",
                    lead_id=t.lead_id,
                    from_owner=t.from_owner,
                    to_owner=t.to_owner,
                    reason=t.reason,
                )
                continue
            self.metrics.transitions.labels(t.from_stage, t.to_stage).inc()
            log.info(
                "lead moved",
                lead_id=t.lead_id,
                from_stage=t.from_stage,
                to_stage=t.to_stage,
                reason=t.reason,
                missing_bant=t.missing_bant or None,
            )

    def elsewhere(self, rec: InRecord, lead_id: str, result: BatchResult) -> bool:
        """On Redis Cluster, a record whose lead belongs to another partition is re-routed there
        (`reroute_entry`) instead of being scored here; on one Redis any partition may write
        any lead (the version check keeps two writers apart)."""
        if not self.settings.redis_cluster or self.store.keys.partition(lead_id) == rec.partition:
            return False
        result.rerouted.append(reroute_entry(rec, lead_id))
        return True

    def _observe_rerouted(self, result: BatchResult) -> None:
        if not result.rerouted:
            return
        self.metrics.rerouted.inc(len(result.rerouted))
        first = result.rerouted[0]
        log.warning(
            "records found on another partition than their lead's re-sent there; produce "
            "with Kafka's default partitioner (murmur2 of the lead id; librdkafka: "
            "partitioner=murmur2_random) to avoid the detour",
            records=len(result.rerouted),
            topic=first.topic,
            partition=first.partition,
        )

    def _observe_deadletters(self, deadletters: list[DeadLetter]) -> None:
        for d in deadletters:
            self.metrics.deadletters.labels(d.headers.error_kind.value).inc()
            log.warning(
                "record dead-lettered",
                kind=d.headers.error_kind.value,
                reason=d.headers.error_message,
                topic=d.headers.source_topic,
                partition=d.headers.source_partition,
                offset=d.headers.source_offset,
            )
