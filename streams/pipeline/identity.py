"""The identity agent's shell: a batch of leads.anonymous into visitor states in Redis and
events on leads.engagement (the decisions are streams/core/identity.py's).

A batch is: parse at the edge (bad records become dead letters), read its visitors (one round
trip), fold the core over each visitor's records, write each visitor as a compare-and-set
(a visitor whose version moved is read and folded again), then send the forwarded events and
dead letters and wait for Kafka's acknowledgement. The consumer commits the batch's offsets
only after that. A crash anywhere re-reads the batch: folding it again re-sends the same
events with the same event_ids, which the scoring side counts once per lead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial

from schemas.anonymous import AnonymousEvent, IdentifyEvent
from streams.core.identity import Conflict, Observed, Visitor, observe_all
from streams.core.rules import Rules
from streams.kafka import OutRecord, Producer
from streams.observability import Metrics, log
from streams.pipeline.batch import InRecord
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_anonymous
from streams.pipeline.retry import Retrying
from streams.settings import Settings
from streams.store.identity import VisitorStore


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class IdentityService:
    """Folds batches of leads.anonymous; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        visitors: VisitorStore,
        publisher: Producer,
        metrics: Metrics,
        clock: Callable[[], datetime] = _wall_clock,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.visitors = visitors
        self.publisher = publisher
        self.metrics = metrics
        self.clock = clock
        self.retry = Retrying(metrics, settings.redis_retry_max_seconds)

    async def process(self, records: Sequence[InRecord]) -> None:
        """Apply one fetched batch; returns once its effects are in Redis and Kafka."""
        s = self.settings
        out: list[OutRecord] = []
        grouped: dict[str, list[AnonymousEvent | IdentifyEvent]] = {}
        for r in records:
            where = RecordLocation(r.topic, r.partition, r.offset)
            parsed = parse_anonymous(
                r.key, r.value, where, self.rules.event_types, s.max_event_bytes
            )
            if isinstance(parsed, DeadLetter):
                self.metrics.identity_records.labels("deadletter").inc()
                self.metrics.deadletters.labels(parsed.headers.error_kind.value).inc()
                out.append(
                    OutRecord(s.deadletter, parsed.key, parsed.value, parsed.headers.to_kafka())
                )
                continue
            kind = "identify" if isinstance(parsed, IdentifyEvent) else "anonymous"
            self.metrics.identity_records.labels(kind).inc()
            grouped.setdefault(parsed.anonymous_id, []).append(parsed)
        observed = await self._fold(grouped)
        for event in observed.forward:
            out.append(
                OutRecord(
                    s.engagement,
                    event.lead_id.encode(),
                    event.model_dump_json(exclude_none=True).encode(),
                )
            )
        for conflict in observed.conflicts:
            self._refused(conflict)
        if out:
            await self.retry("kafka", lambda: self.publisher.publish(out))
        self.metrics.identity_forwarded.inc(len(observed.forward))

    async def _fold(self, grouped: dict[str, list[AnonymousEvent | IdentifyEvent]]) -> Observed:
        rule = self.rules.visitors
        now = self.clock()
        done: dict[str, Observed] = {}
        pending = dict(grouped)
        while pending:
            ids = list(pending)
            loaded = await self.retry("redis", partial(self.visitors.load, ids))
            changes: dict[str, tuple[str, Visitor]] = {}
            results: dict[str, Observed] = {}
            for anonymous_id in ids:
                version, visitor = loaded[anonymous_id]
                after, results[anonymous_id] = observe_all(
                    visitor, pending[anonymous_id], rule, now
                )
                changes[anonymous_id] = (version, after)
            moved = await self.retry("redis", partial(self.visitors.save, changes, rule.retention))
            for anonymous_id in ids:
                if anonymous_id not in moved:
                    done[anonymous_id] = results[anonymous_id]
            pending = {i: pending[i] for i in moved}
            if pending:
                await asyncio.sleep(0)
        # Sent in the order the visitors were first read in the batch.
        forward = [e for i in grouped for e in done[i].forward]
        conflicts = [c for i in grouped for c in done[i].conflicts]
        return Observed(forward, conflicts)

    def _refused(self, conflict: Conflict) -> None:
        self.metrics.identity_conflicts.inc()
        log.warning(
            "identify refused: the anonymous id is already another lead's (first claim wins)",
            anonymous_id=conflict.anonymous_id,
            claimed_by_lead=conflict.claimed_by_lead,
            refused_lead=conflict.refused_lead,
            event_id=conflict.event_id,
        )
