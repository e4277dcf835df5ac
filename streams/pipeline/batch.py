"""The shell around the core: one batch is parse, read state, fold the core, write, publish.

It moves bytes between Kafka and Redis and calls the pure core for every decision. It never
raises for a bad record and never gives up on a batch it has taken: Faust acks a batch as soon
as the agent moves on, so giving up would lose records.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol, TypeVar

from aiokafka.errors import KafkaError
from pydantic import BaseModel
from redis.exceptions import RedisError

from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.core.clocks import reminders
from streams.core.kpi import KpiCount, KpiSample, kpi_changes
from streams.core.lead import LeadState
from streams.core.rules import Rules, parse_rules
from streams.core.sales import mql_transition
from streams.kafka import KafkaUnavailable, OutRecord
from streams.observability import Metrics, log
from streams.pipeline.intake import DeadLetter
from streams.settings import Settings
from streams.store import Conflict, Fenced, LeadStore, OutboxEntry, ReminderEntry, StoredLead

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class InRecord:
    """A consumed Kafka record, before parsing."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send records and return once Kafka acknowledged every one (raise otherwise)."""


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

    def of_type(self, kind: type[T]) -> list[T]:
        return [o for o in self.outputs if isinstance(o, kind)]


def wall_clock_now() -> datetime:
    return datetime.now(UTC)


class BatchWriter:
    """Shared machinery: the read-fold-write loop, delivery, the outbox, retries."""

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
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.now = now
        # Held from a batch's Redis write until its outbox entries are cleared, so the outbox
        # sweep never sends what a batch is about to send itself.
        self._delivery = asyncio.Lock()
        self._batches = 0

    async def _write(
        self,
        wanted: Mapping[str, Sequence[str]],
        fold: Callable[[dict[str, StoredLead]], BatchChanges],
    ) -> BatchChanges:
        """Read the leads, fold, write guarded by versions; on a conflict read again."""
        while True:
            stored = await self._retrying("redis", partial(self.store.load, wanted))
            decided = fold(stored)
            if not decided.changes and not decided.unschedule:
                return decided
            try:
                await self._retrying(
                    "redis",
                    partial(
                        self.store.commit,
                        decided.changes,
                        outbox=decided.outbox,
                        schedule=decided.schedule,
                        unschedule=decided.unschedule,
                        counts=decided.counts,
                        samples=decided.samples,
                    ),
                )
                return decided
            except Fenced:
                await self.follow_generation()
            except Conflict as exc:
                # Someone else wrote these leads (a rebalance overlap or the other agent):
                # read again and refold; the dedupe markers make each input count once.
                self.metrics.retries.labels("conflict").inc()
                log.info("lead state changed under the batch; retrying", leads=exc.lead_ids[:5])

    async def check_generation(self) -> None:
        """Follow a finished rescore promptly, not only when the next write is fenced."""
        generation = await self._retrying("redis", self.store.active_generation)
        if generation.number != self.store.keys.generation and generation.state == "active":
            async with self._delivery:
                await self.follow_generation()

    async def follow_generation(self) -> None:
        """A rescore switched the live key space: wait for it to finish, then use it (and the
        rules it was built with). The batch in hand is folded again there; dedupe keeps the
        events the rescore already applied from counting twice."""
        while True:
            generation = await self._retrying("redis", self.store.active_generation)
            if generation.state == "active":
                break
            log.info("waiting for a rescore to finish switching", generation=generation.number)
            await asyncio.sleep(0.2)
        self.store = self.store.at_generation(generation.number)
        if generation.rules is not None and generation.rules_version != self.rules.version:
            self.rules = parse_rules(generation.rules, origin="active generation")
        log.warning(
            "now writing to the rescored key space",
            generation=generation.number,
            rules_version=self.rules.version,
        )

    async def _deliver(self, outbox: list[OutboxEntry], deadletters: list[DeadLetter]) -> None:
        """Send dead letters and outputs; clear the outbox once Kafka has them."""
        records = [
            OutRecord(self.settings.deadletter, d.key, d.value, d.headers.to_kafka())
            for d in deadletters
        ]
        records += [OutRecord(e.topic, e.key, e.value) for e in outbox]
        if not records:
            return
        await self._retrying("kafka", partial(self.publisher.publish, records))
        for r in records:
            self.metrics.delivered.labels(r.topic).inc()
        if outbox:
            await self._retrying("redis", partial(self.store.clear_outbox, outbox))

    def _maybe_crash(self, fold: BatchChanges) -> None:
        """Fault injection for the chaos tests: die between the Redis write and Kafka."""
        if not fold.outbox:
            return
        self._batches += 1
        if self.settings.fault_crash_after_batches == self._batches:
            log.error("fault injection: exiting after the Redis write", batch=self._batches)
            os._exit(137)

    async def flush_outbox(self, partitions: Iterable[int]) -> int:
        """Deliver outputs that were written to Redis but not acknowledged by Kafka (crash)."""
        parts = sorted(set(partitions))
        if not parts:
            return 0
        async with self._delivery:
            pending = await self._retrying("redis", partial(self.store.pending_outbox, parts))
            self.metrics.outbox_pending.set(len(pending))
            if not pending:
                return 0
            log.info("delivering outputs left in the outbox", count=len(pending))
            await self._deliver(pending, [])
            self.metrics.outbox_pending.set(0)
            return len(pending)

    async def _retrying(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry an I/O step until it succeeds: waiting is better than losing a taken batch."""
        delay = 0.1
        while True:
            try:
                return await call()
            except (TimeoutError, RedisError, KafkaError, KafkaUnavailable, OSError) as exc:
                self.metrics.retries.labels(operation).inc()
                variable = "REDIS_URL" if operation == "redis" else "KAFKA_BOOTSTRAP"
                log.error(
                    f"{operation} unavailable; retrying",
                    error=repr(exc),
                    retry_in_seconds=delay,
                    hint=f"check that {operation} is reachable (LEADFLOW_{variable})",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.redis_retry_max_seconds)

    def _observe_transitions(self, result: BatchResult) -> None:
        for t in result.of_type(LifecycleTransition):
            self.metrics.transitions.labels(t.from_stage, t.to_stage).inc()
            log.info(
                "lead moved",
                lead_id=t.lead_id,
                from_stage=t.from_stage,
                to_stage=t.to_stage,
                reason=t.reason,
                missing_bant=t.missing_bant or None,
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
