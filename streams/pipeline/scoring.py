"""The scoring side's shell: engagement batches in; lead scores, MQL handoffs and `mql`
lifecycle events out. Every decision is the core's (streams.core.lead)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property, partial

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core.lead import fold_batch
from streams.observability import log
from streams.pipeline.batch import (
    BatchChanges,
    BatchPositions,
    BatchResult,
    BatchWriter,
    InRecord,
    by_partition,
    deadletter_entry,
    each_partition,
)
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.pipeline.routing import route_handoffs
from streams.store import OutboxEntry, StoredLead
from streams.store.routing_ledger import RoutingLedger


class ScoringService(BatchWriter):
    """Engagement events in; lead scores, MQL handoffs and `mql` lifecycle events out."""

    seen_apart = True

    @cached_property
    def routing_ledger(self) -> RoutingLedger:
        return RoutingLedger(self.store.redis, self.store.keys.prefix)

    async def complete(self, decided: BatchChanges) -> None:
        if self.rules.routing is not None:
            await route_handoffs(decided, self.rules, self.routing_ledger)

    async def process(
        self,
        records: Sequence[InRecord],
        positions: BatchPositions | None = None,
        wait_for_delivery: bool = True,
    ) -> BatchResult:
        """Score one batch, each of its partitions in one Redis step. With `positions`, the
        input offsets move in the same step as the states (raises Resync when Redis holds other
        offsets). Without waiting for delivery, the outputs go to Kafka in the background while
        the next batch is folded."""

        async def step(partition: int, part: list[InRecord]) -> BatchResult:
            where = positions.only(partition) if positions is not None else None
            return await self._process(partition, part, where, wait_for_delivery)

        return await each_partition(by_partition(records), step)

    async def _process(
        self,
        partition: int,
        records: Sequence[InRecord],
        positions: BatchPositions | None,
        wait_for_delivery: bool,
    ) -> BatchResult:
        started = time.perf_counter()
        result = BatchResult()
        by_lead = self._parse(records, result)
        wanted = {lead: [e.event_id for e, _ in items] for lead, items in by_lead.items()}
        deadletters = [deadletter_entry(d, self.settings.deadletter) for d in result.deadletters]
        fold_part = partial(self._fold, by_lead, deadletters + result.rerouted)
        fold = await self._write(partition, wanted, fold_part, positions)
        if wait_for_delivery:
            await self.delivery.send(fold.outbox)
        else:
            await self.delivery.send_later(fold.outbox)
        result.counted = fold.counted
        result.duplicates = sum(len(items) for items in by_lead.values()) - fold.counted
        result.outputs = fold.outputs
        self._observe(records, result, by_lead, time.perf_counter() - started)
        return result

    def _parse(
        self, records: Sequence[InRecord], result: BatchResult
    ) -> dict[str, list[tuple[EngagementEvent, int]]]:
        by_lead: dict[str, list[tuple[EngagementEvent, int]]] = defaultdict(list)
        known_types = self.rules.event_types
        max_bytes = self.settings.max_event_bytes
        latest: dict[int, EngagementEvent] = {}
        for rec in records:
            where = RecordLocation(rec.topic, rec.partition, rec.offset)
            parsed = parse_engagement(rec.key, rec.value, where, known_types, max_bytes)
            if isinstance(parsed, DeadLetter):
                result.deadletters.append(parsed)
            elif not self.elsewhere(rec, parsed.lead_id, result):
                by_lead[parsed.lead_id].append((parsed, rec.partition))
                latest[rec.partition] = parsed
        # The event lag gauge reads the newest of each partition's last events: comparing every
        # event's time would cost more than a microsecond an event (one tzinfo per timestamp).
        result.latest = list(latest.values())
        return by_lead

    def _fold(
        self,
        by_lead: dict[str, list[tuple[EngagementEvent, int]]],
        deadletters: list[OutboxEntry],
        stored: dict[str, StoredLead],
    ) -> BatchChanges:
        fold = BatchChanges(outbox=list(deadletters))
        for lead_id, items in by_lead.items():
            before = stored[lead_id]
            events = [e for e, _ in items]
            after, handoffs = fold_batch(before.state, events, self.rules, before.known)
            if after is before.state:
                continue  # every event was a duplicate: nothing to write
            fold.counted += after.events_counted - before.state.events_counted
            # A lead's events all come from one partition (the key is lead_id).
            fold.hand_off(items[0][1], before, after, handoffs, self.rules, self.settings)
        return fold

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
        m.events.labels("scored").inc(result.counted)
        m.events.labels("duplicate").inc(result.duplicates)
        self._observe_deadletters(result.deadletters)
        self._observe_rerouted(result)
        handoffs = result.of_type(MqlHandoff)
        m.handoffs.inc(len(handoffs))
        self._observe_transitions(result)
        newest = max((e.occurred_at for e in result.latest), default=None)
        if newest is not None:
            lag = self.now().timestamp() - newest.timestamp()
            m.event_lag.set(max(lag, 0.0))
        for handoff in handoffs:
            log.info(
                "lead handed off",
                lead_id=handoff.lead_id,
                handoff_id=handoff.handoff_id,
                score=handoff.score,
                qualified_at=handoff.qualified_at.isoformat(),
            )
