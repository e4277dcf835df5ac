"""The sales side's shell: handoffs and sales activities in, lifecycle events out, and the
sweeper that turns due SLA reminders into alerts. Decisions are the core's (streams/core/sales)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import partial

from pydantic import BaseModel

from schemas.activity import SalesActivity
from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.core.clocks import Severity, ended_clocks, late_actions, reminders
from streams.core.lead import LeadState
from streams.core.sales import (
    activity_mark,
    apply_activity,
    escalate,
    handoff_mark,
    open_first_contact_clock,
)
from streams.observability import log
from streams.pipeline.batch import (
    BatchChanges,
    BatchResult,
    BatchWriter,
    InRecord,
    by_partition,
    deadletter_entry,
    each_partition,
)
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_record
from streams.store import OutboxEntry, ReminderEntry, StoredLead

SalesInput = MqlHandoff | SalesActivity


class SalesService(BatchWriter):
    """Keeps every open deadline, judges BANT, recycles, closes; alerts when a deadline passes."""

    async def process(self, records: Sequence[InRecord]) -> BatchResult:
        """Apply one batch of handoffs and activities, each input partition in one Redis step
        (a lead's handoffs and activities share its partition number: both topics are keyed by
        lead id and have as many partitions)."""
        return await each_partition(by_partition(records), self._process)

    async def _process(self, partition: int, records: Sequence[InRecord]) -> BatchResult:
        started = time.perf_counter()
        result = BatchResult()
        by_lead: dict[str, list[tuple[SalesInput, int]]] = defaultdict(list)
        for rec in records:
            model: type[BaseModel] = (
                MqlHandoff if rec.topic == self.settings.handoff else SalesActivity
            )
            where = RecordLocation(rec.topic, rec.partition, rec.offset)
            parsed = parse_record(model, rec.key, rec.value, where, self.settings.max_event_bytes)
            if isinstance(parsed, DeadLetter):
                result.deadletters.append(parsed)
            else:
                assert isinstance(parsed, MqlHandoff | SalesActivity)
                if not self.elsewhere(rec, parsed.lead_id, result):
                    by_lead[parsed.lead_id].append((parsed, rec.partition))

        now = self.now()
        wanted = {lead: [_mark(i) for i, _ in items] for lead, items in by_lead.items()}
        deadletters = [deadletter_entry(d, self.settings.deadletter) for d in result.deadletters]
        fold_part = partial(self._fold, by_lead, deadletters + result.rerouted, now)
        fold = await self._write(partition, wanted, fold_part)
        await self.delivery.send(fold.outbox)
        self._observe_clocks(fold)
        result.counted = fold.counted
        result.duplicates = sum(len(items) for items in by_lead.values()) - fold.counted
        result.outputs = fold.outputs
        self._observe_deadletters(result.deadletters)
        self._observe_rerouted(result)
        self._observe_transitions(result)
        self.metrics.sales_inputs.inc(result.counted)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return result

    def _fold(
        self,
        by_lead: dict[str, list[tuple[SalesInput, int]]],
        deadletters: list[OutboxEntry],
        now: datetime,
        stored: dict[str, StoredLead],
    ) -> BatchChanges:
        fold = BatchChanges(outbox=list(deadletters))
        for lead_id, items in by_lead.items():
            before = stored[lead_id]
            state = before.state
            transitions: list[LifecycleTransition] = []
            for item, _ in items:
                moved: list[LifecycleTransition] = []
                if isinstance(item, MqlHandoff):
                    after = open_first_contact_clock(state, item, self.rules, now)
                else:
                    after, moved = apply_activity(state, item, self.rules, now)
                if after is state:
                    continue  # a duplicate
                state = after
                fold.counted += 1
                for t in moved:
                    fold.emit(items[0][1], self.settings.lifecycle, t.transition_id, t, lead_id)
                transitions += moved
            if state is before.state:
                continue
            fold.change(before, state, transitions, self.rules)
            fold.reschedule(items[0][1], before.state, state)
        return fold

    # -- the sweeper --------------------------------------------------------------------------

    async def sweep(self, partitions: Iterable[int]) -> int:
        """Alert for every reminder that is due on these partitions; return how many fired."""
        parts = sorted(set(partitions))
        if not parts:
            return 0
        now = self.now()
        now_ms = int(now.timestamp() * 1000)
        due = await self.retrying(
            "redis",
            partial(self.store.due_wakeups, parts, now_ms, self.settings.sla_sweep_batch),
        )
        if not due:
            return 0
        started = time.perf_counter()
        groups: dict[int, dict[str, list[ReminderEntry]]] = defaultdict(lambda: defaultdict(list))
        for w in due:
            groups[w.partition][w.lead_id].append(w)

        async def fire(partition: int, by_lead: dict[str, list[ReminderEntry]]) -> BatchResult:
            wanted: dict[str, list[str]] = {lead: [] for lead in by_lead}
            fold = await self._write(partition, wanted, partial(self._fire, by_lead, now))
            await self.delivery.send(fold.outbox)
            self._observe_clocks(fold)
            return BatchResult(outputs=fold.outputs)

        fired = await each_partition(groups, fire)
        alerts = fired.of_type(SlaAlert)
        for alert in alerts:
            self.metrics.sla_alerts.labels(alert.kind, alert.severity).inc()
            lateness = (alert.detected_at - alert.due_at).total_seconds()
            self.metrics.alert_delay.observe(max(lateness, 0.0))
            log.warning(
                "sla alert",
                alert_id=alert.alert_id,
                lead_id=alert.lead_id,
                kind=alert.kind,
                severity=alert.severity,
                due_at=alert.due_at.isoformat(),
                owner=alert.owner,
                escalated_to=alert.escalated_to,
            )
        for moved in fired.of_type(LifecycleTransition):
            log.warning(
                "lead reassigned after a breach",
                lead_id=moved.lead_id,
                from_owner=moved.from_owner,
                to_owner=moved.to_owner,
            )
        self.metrics.sweep_seconds.observe(time.perf_counter() - started)
        return len(alerts)

    def _fire(
        self, by_lead: dict[str, list[ReminderEntry]], now: datetime, stored: dict[str, StoredLead]
    ) -> BatchChanges:
        fold = BatchChanges()
        for lead_id, entries in by_lead.items():
            before = stored[lead_id]
            state = before.state
            partition = entries[0].partition
            transitions: list[LifecycleTransition] = []
            for w in entries:
                severity: Severity = "warning" if w.severity == "warning" else "breach"
                step = escalate(state, w.clock_id, severity, now, self.rules)
                state = step.state
                for alert in step.alerts:
                    fold.emit(partition, self.settings.alerts, alert.alert_id, alert, lead_id)
                for t in step.moved:  # a reassignment after a breach
                    fold.emit(partition, self.settings.lifecycle, t.transition_id, t, lead_id)
                transitions += step.moved
            if state is not before.state:
                fold.change(before, state, transitions, self.rules)
                fold.reschedule(partition, before.state, state)
            # A reminder whose clock is no longer open (or gone) is dropped.
            live = {(r.clock_id, r.severity) for r in reminders(state)}
            fold.unschedule += [w for w in entries if (w.clock_id, w.severity) not in live]
        return fold

    async def open_deadlines(self, partitions: Iterable[int]) -> int:
        count: int = await self.retrying(
            "redis", partial(self.store.count_wakeups, list(partitions))
        )
        return count

    def _observe_clocks(self, fold: BatchChanges) -> None:
        """Once per written batch (a fold may run again after a version conflict)."""
        for stored, after in fold.changes:
            self._observe_clock_changes(stored.state, after)

    def _observe_clock_changes(self, before: LeadState, after: LeadState) -> None:
        for clock in ended_clocks(before, after):
            self.metrics.sla_clocks.labels(clock.kind, clock.status).inc()
        for clock in late_actions(before, after):
            self.metrics.late_actions.labels(clock.kind).inc()
            log.info(
                "late action recorded",
                lead_id=after.lead_id,
                kind=clock.kind,
                due_at=clock.due_at.isoformat(),
                acted_at=clock.late_action_at.isoformat() if clock.late_action_at else None,
            )


def _mark(item: SalesInput) -> str:
    return handoff_mark(item) if isinstance(item, MqlHandoff) else activity_mark(item)
