"""Funnel KPIs as counters derived from state changes: what moved, on which day.

The shell writes these increments in the same atomic step as the state change that caused
them, so the figures never drift from the lead states under restarts or redelivery (a
redelivered input changes no state, so it counts nothing).

Days are calendar days in `rules.reporting.timezone`. Flow counts (how many became SQL on a
day) are kept on the day of the change; cohort counts (of the MQLs handed off on a day, how many
became SQL) on the day the cohort started, so conversion rates compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from schemas.lifecycle import LifecycleTransition
from streams.core.attribution import credit
from streams.core.clocks import ended_clocks, late_actions
from streams.core.lead import LeadState
from streams.core.rules import Rules

STAGES = ("mql", "sql", "nurture", "disqualified", "won", "lost")


@dataclass(frozen=True, slots=True)
class KpiCount:
    day: date
    field: str
    amount: int = 1


@dataclass(frozen=True, slots=True)
class KpiSample:
    """One measured duration (seconds), kept per day and series; the member makes it idempotent."""

    day: date
    series: str  # "first_contact_seconds" or "sales_action_seconds"
    member: str
    seconds: float


def day_of(at: datetime, rules: Rules) -> date:
    return at.astimezone(ZoneInfo(rules.reporting.timezone)).date()


def kpi_changes(
    before: LeadState,
    after: LeadState,
    transitions: list[LifecycleTransition],
    rules: Rules,
) -> tuple[list[KpiCount], list[KpiSample]]:
    """Counts and samples caused by one lead's change from `before` to `after`."""
    counts = _stage_counts(before, after, transitions, rules)
    counts += _attribution_counts(before, after, transitions, rules)
    samples: list[KpiSample] = []
    for clock in ended_clocks(before, after):
        started = day_of(clock.started_at, rules)
        counts.append(KpiCount(started, f"clock:{clock.kind}:{clock.status}"))
        owner = clock.owner or after.owner or "-"
        if clock.status == "breached":
            counts.append(KpiCount(started, f"breach_owner:{owner}"))
        if clock.kind == "mql_first_contact" and clock.status in ("met", "breached"):
            counts.append(KpiCount(started, f"owner_first_contact:{owner}:{clock.status}"))
        if clock.status in ("met", "breached") and clock.ended_at is not None:
            acted = clock.late_action_at or clock.ended_at
            if clock.status == "met" or clock.late_action_at is not None:
                sample = _sample(started, clock.kind, clock.clock_id, acted, clock.started_at)
                samples.append(sample)
                counts += _owner_contact(clock.kind, owner, sample)
    for clock in late_actions(before, after):
        started = day_of(clock.started_at, rules)
        counts.append(KpiCount(started, f"clock:{clock.kind}:late"))
        if clock.status == "breached" and clock.ended_at is not None and clock.late_action_at:
            # The alert ended the clock earlier; the action time is only known now.
            was_ended = any(
                c.clock_id == clock.clock_id and c.status != "open" for c in before.clocks
            )
            if was_ended:
                sample = _sample(
                    started, clock.kind, clock.clock_id, clock.late_action_at, clock.started_at
                )
                samples.append(sample)
                counts += _owner_contact(clock.kind, clock.owner or after.owner or "-", sample)
    return counts, samples


def _stage_counts(
    before: LeadState, after: LeadState, transitions: list[LifecycleTransition], rules: Rules
) -> list[KpiCount]:
    """The funnel's flow and cohort counts of the stage changes (a reassignment moves none)."""
    counts: list[KpiCount] = []
    for t in transitions:
        if t.kind == "reassigned":
            # Not a stage change; counted per owner it left, and per queue.
            day = day_of(t.occurred_at, rules)
            counts.append(KpiCount(day, f"owner_reassigned_away:{t.from_owner or '-'}"))
            if after.queue:
                counts.append(KpiCount(day, f"queue_reassigned:{after.queue}"))
            continue
        counts.append(KpiCount(day_of(t.occurred_at, rules), t.to_stage))
        counts += [
            KpiCount(day_of(t.occurred_at, rules), f"nurture_missing:{c}") for c in t.missing_bant
        ]
        # Cohort days come from `after`: the MQL or SQL may have happened in the same batch.
        if (
            t.to_stage == "sql"
            and after.qualified_at is not None
            and not _was_sql_before(before, t.handoff_id)
        ):
            counts.append(KpiCount(day_of(after.qualified_at, rules), "cohort_sql"))
        if t.to_stage in ("won", "lost") and after.sql_at is not None:
            counts.append(KpiCount(day_of(after.sql_at, rules), f"cohort_{t.to_stage}"))
    return counts


def _attribution_counts(
    before: LeadState, after: LeadState, transitions: list[LifecycleTransition], rules: Rules
) -> list[KpiCount]:
    """Each conversion of the current qualification credited over its touches, on the day it
    happened (streams/core/attribution.py): the MQL, its first SQL, its first opportunity, the
    win, and the amounts of the opportunity and the win."""
    touches = after.attribution
    credited: list[tuple[datetime, dict[str, int]]] = []
    for t in transitions:
        if t.kind != "stage_change":
            continue
        if t.to_stage == "mql":
            credited.append((t.occurred_at, credit(touches, "mql")))
        elif t.to_stage == "sql" and not _was_sql_before(before, t.handoff_id):
            credited.append((t.occurred_at, credit(touches, "sql")))
        elif t.to_stage == "won":
            credited.append((t.occurred_at, credit(touches, "won", after.won_deal)))
    deal = after.opportunity
    if deal is not None and deal != before.opportunity:
        credited.append((deal.at, credit(touches, "opportunity", deal)))
    return [
        KpiCount(day_of(at, rules), name, units)
        for at, fields in credited
        for name, units in fields.items()
    ]


def routed_counts(day: date, owner: str | None, queue: str | None) -> list[KpiCount]:
    """A handoff routed at qualification (docs/routing.md): one more lead for its owner and its
    queue, on the day it qualified."""
    counts = [KpiCount(day, f"owner_handoffs:{owner}")] if owner else []
    return counts + ([KpiCount(day, f"queue_handoffs:{queue}")] if queue else [])


def _owner_contact(kind: str, owner: str, sample: KpiSample) -> list[KpiCount]:
    """Per owner, the first contacts made and their seconds summed (a mean per owner; the
    median and p90 stay for the whole team, from the samples)."""
    if kind != "mql_first_contact":
        return []
    return [
        KpiCount(sample.day, f"owner_contacted:{owner}"),
        KpiCount(sample.day, f"owner_contact_seconds:{owner}", round(sample.seconds)),
    ]


def _was_sql_before(state: LeadState, handoff_id: str | None) -> bool:
    """An MQL counts once in its cohort, even if it goes SQL -> nurture -> SQL again."""
    return any(j.to_stage == "sql" and j.handoff_id == handoff_id for j in state.journey)


def _sample(day: date, kind: str, member: str, acted: datetime, started: datetime) -> KpiSample:
    series = "first_contact_seconds" if kind == "mql_first_contact" else "sales_action_seconds"
    return KpiSample(day, series, member, max((acted - started).total_seconds(), 0.0))
