"""Funnel KPIs per day, ISO week or month, from the daily counters in streams.core.kpi.

Pure: the caller reads the counters (LeadStore.read_kpis) and says which range to cover; no
clock is read here. Definitions (see docs/kpis.md):

* flow counts (mqls, sqls, nurture, disqualified, won, lost) are stage changes on the day they
  happened;
* conversion rates are cohort rates: mql_to_sql = of the MQLs handed off in the period, how many
  became SQL (so far); sql_to_won likewise for the SQLs of the period;
* SLA figures are counted on the day the clock started. compliance = met / (met + breached);
  expired clocks (backfills, never alerted) and closed ones (the lead left the funnel first) are
  not decisions about the team and are left out. `late` is a subset of `breached`;
* durations are the seconds from a clock's start to the action that stopped it (met clocks and
  late actions; a clock never acted on has no duration). Quantiles interpolate linearly between
  the closest ranks (numpy's default, Excel's PERCENTILE.INC).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

Period = Literal["day", "week", "month"]
ClockKind = Literal["mql_first_contact", "sql_follow_up"]

CLOCKS: tuple[ClockKind, ...] = ("mql_first_contact", "sql_follow_up")
SERIES: dict[ClockKind, str] = {
    "mql_first_contact": "first_contact_seconds",
    "sql_follow_up": "sales_action_seconds",
}
BANT = ("budget", "authority", "need", "timeframe")
STAGES = ("mql", "sql", "nurture", "disqualified", "won", "lost")

Counts = Mapping[date, Mapping[str, int]]
Durations = Mapping[tuple[date, str], Sequence[float]]


@dataclass(frozen=True, slots=True)
class ClockKpis:
    """Verdicts of the SLA clocks of one kind that started in the period."""

    met: int = 0
    breached: int = 0
    expired: int = 0
    closed: int = 0
    late: int = 0  # breached clocks whose action came after all (a subset of breached)

    @property
    def decided(self) -> int:
        return self.met + self.breached

    @property
    def compliance(self) -> float | None:
        """met / (met + breached); None when no clock was decided."""
        return self.met / self.decided if self.decided else None


@dataclass(frozen=True, slots=True)
class DurationKpis:
    """Seconds from a clock's start to the action that stopped it."""

    samples: int = 0
    median: float | None = None
    p90: float | None = None


@dataclass(frozen=True, slots=True)
class OwnerKpis:
    """One salesperson's load and first-contact record ("-": no owner known)."""

    handoffs: int = 0  # MQLs routed to them at handoff (docs/routing.md)
    met: int = 0  # first contacts in time
    breached: int = 0  # first-contact deadlines missed
    contacted: int = 0  # first contacts made (in time or late)
    contact_seconds: int = 0  # their seconds from handoff, summed
    reassigned_away: int = 0  # leads moved from them (a missed first contact, or by hand)

    @property
    def breach_rate(self) -> float | None:
        decided = self.met + self.breached
        return self.breached / decided if decided else None

    @property
    def mean_time_to_first_contact(self) -> float | None:
        return self.contact_seconds / self.contacted if self.contacted else None


@dataclass(frozen=True, slots=True)
class PeriodKpis:
    label: str  # 2026-11-27, 2026-W48 or 2026-11 (or "total")
    start: date  # first day covered (clipped to the requested range)
    end: date  # last day covered, inclusive
    partial: bool  # the period reaches outside the requested range
    mqls: int
    sqls: int
    nurture: int
    disqualified: int
    won: int
    lost: int
    missing_bant: dict[str, int]  # criteria missing in the BANT verdicts sent to nurture
    cohort_sql: int  # of this period's MQLs, how many became SQL (so far)
    cohort_won: int  # of this period's SQLs, how many were won (so far)
    cohort_lost: int  # ... and lost
    sla: dict[str, ClockKpis]  # by clock kind, always both kinds
    time_to_first_contact: DurationKpis
    time_to_sales_action: DurationKpis
    breaches_by_owner: dict[str, int]  # "-" = no owner known when the clock breached
    days_with_data: int
    by_owner: dict[str, OwnerKpis] = field(default_factory=dict)  # most handoffs first
    by_queue: dict[str, int] = field(default_factory=dict)  # handoffs per routing queue
    reassigned_by_queue: dict[str, int] = field(default_factory=dict)  # reassignments per queue

    @property
    def mql_to_sql(self) -> float | None:
        return self.cohort_sql / self.mqls if self.mqls else None

    @property
    def sql_to_won(self) -> float | None:
        return self.cohort_won / self.sqls if self.sqls else None

    @property
    def sql_to_lost(self) -> float | None:
        return self.cohort_lost / self.sqls if self.sqls else None

    @property
    def compliance(self) -> dict[str, float | None]:
        return {kind: clock.compliance for kind, clock in self.sla.items()}


def quantile(values: Iterable[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy 'linear'); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    if not 0 <= q <= 1:
        raise ValueError(f"quantile {q} is not between 0 and 1")
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def _durations(samples: Sequence[float]) -> DurationKpis:
    return DurationKpis(len(samples), quantile(samples, 0.5), quantile(samples, 0.9))


def period_of(day: date, period: Period) -> tuple[str, date, date]:
    """The label and the first and last day of the period containing `day`."""
    if period == "day":
        return day.isoformat(), day, day
    if period == "week":
        iso = day.isocalendar()
        first = day - timedelta(days=day.weekday())
        return f"{iso.year}-W{iso.week:02d}", first, first + timedelta(days=6)
    first = day.replace(day=1)
    following = (first + timedelta(days=32)).replace(day=1)
    return f"{day:%Y-%m}", first, following - timedelta(days=1)


def days_between(start: date, end: date) -> list[date]:
    """Every day from start to end, both included."""
    if end < start:
        raise ValueError(f"the range ends ({end}) before it starts ({start})")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def aggregate(
    label: str,
    days: Sequence[date],
    counts_by_day: Counts,
    durations: Durations,
    partial: bool = False,
) -> PeriodKpis:
    """The KPIs of a set of consecutive days (one period, or the whole range)."""
    if not days:
        raise ValueError("a period needs at least one day")
    total: Counter[str] = Counter()
    seen = 0
    for day in days:
        fields = counts_by_day.get(day) or {}
        total.update(fields)
        if any(fields.values()) or any(durations.get((day, s)) for s in SERIES.values()):
            seen += 1

    def samples(series: str) -> list[float]:
        return [s for day in days for s in durations.get((day, series), ())]

    return PeriodKpis(
        label=label,
        start=days[0],
        end=days[-1],
        partial=partial,
        mqls=total["mql"],
        sqls=total["sql"],
        nurture=total["nurture"],
        disqualified=total["disqualified"],
        won=total["won"],
        lost=total["lost"],
        missing_bant={c: total[f"nurture_missing:{c}"] for c in BANT},
        cohort_sql=total["cohort_sql"],
        cohort_won=total["cohort_won"],
        cohort_lost=total["cohort_lost"],
        sla={
            kind: ClockKpis(
                met=total[f"clock:{kind}:met"],
                breached=total[f"clock:{kind}:breached"],
                expired=total[f"clock:{kind}:expired"],
                closed=total[f"clock:{kind}:closed"],
                late=total[f"clock:{kind}:late"],
            )
            for kind in CLOCKS
        },
        time_to_first_contact=_durations(samples(SERIES["mql_first_contact"])),
        time_to_sales_action=_durations(samples(SERIES["sql_follow_up"])),
        breaches_by_owner=dict(
            sorted(
                (
                    (field.removeprefix("breach_owner:"), n)
                    for field, n in total.items()
                    if field.startswith("breach_owner:") and n
                ),
                key=lambda item: (-item[1], item[0]),
            )
        ),
        days_with_data=seen,
        by_owner=_by_owner(total),
        by_queue=_suffixes(total, "queue_handoffs:"),
        reassigned_by_queue=_suffixes(total, "queue_reassigned:"),
    )


def _suffixes(total: Counter[str], prefix: str) -> dict[str, int]:
    """The counters named prefix + X, as {X: n}, largest first (then by name)."""
    found = ((name.removeprefix(prefix), n) for name, n in total.items() if name.startswith(prefix))
    return dict(sorted(((k, n) for k, n in found if n), key=lambda item: (-item[1], item[0])))


def _by_owner(total: Counter[str]) -> dict[str, OwnerKpis]:
    first_contact = _suffixes(total, "owner_first_contact:")
    parts = {
        "handoffs": _suffixes(total, "owner_handoffs:"),
        "met": {k.removesuffix(":met"): n for k, n in first_contact.items() if k.endswith(":met")},
        "breached": {
            k.removesuffix(":breached"): n
            for k, n in first_contact.items()
            if k.endswith(":breached")
        },
        "contacted": _suffixes(total, "owner_contacted:"),
        "contact_seconds": _suffixes(total, "owner_contact_seconds:"),
        "reassigned_away": _suffixes(total, "owner_reassigned_away:"),
    }
    owners = {o for values in parts.values() for o in values}
    table = {
        o: OwnerKpis(**{name: values.get(o, 0) for name, values in parts.items()}) for o in owners
    }
    return dict(sorted(table.items(), key=lambda item: (-item[1].handoffs, item[0])))


def summarize(
    counts_by_day: Counts,
    durations: Durations,
    start: date,
    end: date,
    period: Period,
) -> list[PeriodKpis]:
    """One PeriodKpis per day, ISO week (Mon-Sun) or month from start to end (both included).

    Every period of the range is there, empty ones too; the first and last may be partial
    (their start and end are clipped to the range, and `partial` is set).
    """
    buckets: dict[str, list[date]] = {}
    bounds: dict[str, tuple[date, date]] = {}
    for day in days_between(start, end):
        label, first, last = period_of(day, period)
        buckets.setdefault(label, []).append(day)
        bounds[label] = (first, last)
    return [
        aggregate(
            label,
            days,
            counts_by_day,
            durations,
            partial=bounds[label] != (days[0], days[-1]),
        )
        for label, days in buckets.items()
    ]


def total(counts_by_day: Counts, durations: Durations, start: date, end: date) -> PeriodKpis:
    """The whole range as one period (quantiles over all its samples, not of the periods)."""
    return aggregate("total", days_between(start, end), counts_by_day, durations)
