"""The scoring pipeline of one batch: parse, read state, fold the core, write, publish.

Shell code: it moves bytes between Kafka and Redis and calls the pure core for every decision.
It never raises for a bad record and never gives up on a batch it has taken: Faust acks a
batch as soon as the agent moves on, so giving up would lose records.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial
from typing import Protocol, TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core.lead import LeadState, apply_all
from streams.core.rules import Rules
from streams.intake import DeadLetter, RecordLocation, parse_engagement
from streams.observability import Metrics, log
from streams.settings import Settings
from streams.store import Conflict, LeadStore, OutboxEntry, StoredLead

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
class OutRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send records and return once Kafka acknowledged every one (raise otherwise)."""


@dataclass(slots=True)
class BatchResult:
    scored: int = 0
    duplicates: int = 0
    deadletters: list[DeadLetter] = field(default_factory=list)
    handoffs: list[MqlHandoff] = field(default_factory=list)


@dataclass(slots=True)
class _Fold:
    scored: int = 0
    changes: list[tuple[StoredLead, LeadState]] = field(default_factory=list)
    outbox: list[OutboxEntry] = field(default_factory=list)
    handoffs: list[MqlHandoff] = field(default_factory=list)


class ScoringService:
    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        store: LeadStore,
        publisher: Publisher,
        metrics: Metrics,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.wall_clock = wall_clock
        self.known_types = rules.event_types
        self._publish_lock = asyncio.Lock()
        self._batches = 0

    # -- the hot path -------------------------------------------------------------------------

    async def process(self, records: Sequence[InRecord]) -> BatchResult:
        started = time.perf_counter()
        result = BatchResult()
        by_lead: dict[str, list[tuple[EngagementEvent, int]]] = defaultdict(list)
        for rec in records:
            parsed = parse_engagement(
                rec.key,
                rec.value,
                RecordLocation(rec.topic, rec.partition, rec.offset),
                self.known_types,
                self.settings.max_event_bytes,
            )
            if isinstance(parsed, DeadLetter):
                result.deadletters.append(parsed)
                log.warning(
                    "record dead-lettered",
                    kind=parsed.headers.error_kind.value,
                    reason=parsed.headers.error_message,
                    topic=rec.topic,
                    partition=rec.partition,
                    offset=rec.offset,
                )
            else:
                by_lead[parsed.lead_id].append((parsed, rec.partition))

        # Held from the Redis write until the outbox is cleared, so the outbox sweeper never
        # sends a handoff that this batch is about to send itself.
        async with self._publish_lock:
            outbox = await self._score(by_lead, result) if by_lead else []
            self._batches += 1
            if self.settings.fault_crash_after_batches == self._batches:
                log.error("fault injection: exiting after the Redis write", batch=self._batches)
                os._exit(137)
            await self._deliver(outbox, result)
        self._observe(records, result, by_lead, time.perf_counter() - started)
        return result

    def _fold(
        self,
        stored: dict[str, StoredLead],
        by_lead: dict[str, list[tuple[EngagementEvent, int]]],
    ) -> _Fold:
        fold = _Fold()
        for lead_id, items in by_lead.items():
            before = stored[lead_id]
            after, handoffs = apply_all(before.state, (e for e, _ in items), self.rules)
            if after is before.state:
                continue  # every event was a duplicate: nothing to write
            fold.scored += after.events_counted - before.state.events_counted
            fold.changes.append((before, after))
            # A lead's events all come from one partition (the key is lead_id).
            partition = items[0][1]
            for handoff in handoffs:
                record = handoff.model_dump_json().encode()
                fold.outbox.append(OutboxEntry(partition, handoff.handoff_id, record))
            fold.handoffs.extend(handoffs)
        return fold

    async def _score(
        self, by_lead: dict[str, list[tuple[EngagementEvent, int]]], result: BatchResult
    ) -> list[OutboxEntry]:
        wanted = {lead: [e.event_id for e, _ in items] for lead, items in by_lead.items()}
        while True:
            stored = await self._retrying("redis", partial(self.store.load, wanted))
            fold = self._fold(stored, by_lead)
            if not fold.changes:
                break
            try:
                await self._retrying("redis", partial(self.store.commit, fold.changes, fold.outbox))
                break
            except Conflict as exc:
                # Someone else wrote these leads (a rebalance overlap): read again and refold;
                # the dedupe markers make the second fold count each event once.
                self.metrics.retries.labels("conflict").inc()
                log.warning("lead state changed under the batch; retrying", leads=exc.lead_ids[:5])
        result.scored = fold.scored
        result.duplicates = sum(len(items) for items in by_lead.values()) - fold.scored
        result.handoffs = fold.handoffs
        return fold.outbox

    async def _deliver(self, outbox: list[OutboxEntry], result: BatchResult) -> None:
        """Send the batch's dead letters and handoffs; clear the outbox once Kafka has them."""
        records = [
            OutRecord(self.settings.deadletter, d.key, d.value, d.headers.to_kafka())
            for d in result.deadletters
        ]
        records += [
            OutRecord(self.settings.handoff, h.lead_id.encode(), entry.record)
            for h, entry in zip(result.handoffs, outbox, strict=True)
        ]
        if not records:
            return
        await self._retrying("kafka", partial(self.publisher.publish, records))
        if outbox:
            self.metrics.handoffs_delivered.inc(len(outbox))
            await self._retrying("redis", partial(self.store.clear_outbox, outbox))

    # -- recovery -----------------------------------------------------------------------------

    async def flush_outbox(self, partitions: Iterable[int]) -> int:
        """Deliver handoffs that were written to Redis but not acknowledged by Kafka (crash)."""
        parts = sorted(set(partitions))
        if not parts:
            return 0
        async with self._publish_lock:
            pending = await self._retrying("redis", partial(self.store.pending_outbox, parts))
            self.metrics.outbox_pending.set(len(pending))
            if not pending:
                return 0
            log.info("delivering handoffs left in the outbox", count=len(pending))
            records = [
                OutRecord(
                    self.settings.handoff,
                    MqlHandoff.model_validate_json(e.record).lead_id.encode(),
                    e.record,
                )
                for e in pending
            ]
            await self._retrying("kafka", partial(self.publisher.publish, records))
            await self._retrying("redis", partial(self.store.clear_outbox, pending))
            self.metrics.handoffs_delivered.inc(len(pending))
            self.metrics.outbox_pending.set(0)
            return len(pending)

    # -- plumbing -----------------------------------------------------------------------------

    async def _retrying(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Retry an I/O step until it succeeds: waiting is better than losing a taken batch."""
        delay = 0.1
        while True:
            try:
                return await call()
            except (TimeoutError, RedisError, KafkaError, OSError) as exc:
                self.metrics.retries.labels(operation).inc()
                log.error(
                    f"{operation} unavailable; retrying",
                    error=repr(exc),
                    retry_in_seconds=delay,
                    hint=f"check that {operation} is reachable (LEADFLOW_"
                    f"{'REDIS_URL' if operation == 'redis' else 'KAFKA_BOOTSTRAP'})",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.redis_retry_max_seconds)

    def _observe(
        self,
        records: Sequence[InRecord],
        result: BatchResult,
        by_lead: dict[str, list[tuple[EngagementEvent, int]]],
        seconds: float,
    ) -> None:
        m = self.metrics
        m.batch_seconds.observe(seconds)
        m.batch_size.observe(len(records))
        m.events.labels("scored").inc(result.scored)
        m.events.labels("duplicate").inc(result.duplicates)
        for d in result.deadletters:
            m.deadletters.labels(d.headers.error_kind.value).inc()
        m.handoffs.inc(len(result.handoffs))
        newest = max((e.occurred_at for items in by_lead.values() for e, _ in items), default=None)
        if newest is not None:
            lag = self.wall_clock() - newest.astimezone(UTC).timestamp()
            m.event_lag.set(max(lag, 0.0))
        for handoff in result.handoffs:
            log.info(
                "lead handed off",
                lead_id=handoff.lead_id,
                handoff_id=handoff.handoff_id,
                score=handoff.score,
                qualified_at=handoff.qualified_at.isoformat(),
            )
