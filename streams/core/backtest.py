"""Threshold tuning by backtest: replay a history through the scoring core, score it against
known outcomes (opportunities, wins), one row per candidate MQL threshold.

Pure: events and outcomes come in parsed, a report goes out; no I/O, no clock. The history is
folded in event time (stable sort on occurred_at) by `streams.core.lead.apply`, the same
function the worker runs, so the backtest cannot disagree with production about a score.

Two ways to find when each lead would have qualified under each threshold (they must agree;
the unit tests check that they do):

* `qualifications_by_replay`: `replay` the whole history once per threshold (the oracle);
* `qualifications_by_trajectory`: fold the history once under the rules with the threshold
  removed, recording after every event the lead's (fit, engagement) pair. The threshold only
  decides *when* a lead becomes an MQL; everything the state holds before that moment is the
  same whatever the threshold, and after it no further handoff is possible (MQL once). So under
  threshold T a lead qualifies at the first event where `qualifies(fit, engagement)` holds,
  i.e. where min_fit and min_engagement hold and the total reaches T. Keeping only the events
  where that gated total reaches a new high gives an ascending list, searched by bisection.

Definitions (docs/backtest.md):

* a lead *converted* when it has an outcome counted by the target: for `opportunity`, any of
  opportunity, won or lost (each implies an opportunity existed); for `won`, a won row. Its
  conversion time is the earliest such row's occurred_at;
* a *true positive* is an MQL whose qualified_at <= conversion time (and, with a window, no
  more than the window before it). An MQL handed off after the conversion is *late*: it counts
  in the volume but not as a hit;
* precision = true positives / MQLs; recall = true positives / converted leads; F1 their
  harmonic mean; lead time = conversion time - qualified_at over the true positives.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from schemas.engagement import EngagementEvent
from streams.core.attribution import Dimension
from streams.core.durations import format_duration
from streams.core.lead import SCORE_DIGITS, LeadState, apply, engagement_points, replay, score
from streams.core.rules import MqlRule, Rules

OutcomeKind = Literal["opportunity", "won", "lost", "none"]
Target = Literal["opportunity", "won"]
GoalKind = Literal["f1", "recall", "precision"]

OUTCOME_KINDS: tuple[OutcomeKind, ...] = ("opportunity", "won", "lost", "none")
# Which outcome rows make a lead count as converted, per target.
CONVERTING: dict[Target, frozenset[OutcomeKind]] = {
    "opportunity": frozenset({"opportunity", "won", "lost"}),
    "won": frozenset({"won"}),
}
MAX_THRESHOLDS = 2000
# Two-sided 95 % normal quantile, for the lift interval.
Z95 = 1.959964


class BacktestError(ValueError):
    """A bad argument (threshold range, goal); the message says what is accepted."""


# --------------------------------------------------------------------------------------------
# Arguments


@dataclass(frozen=True, slots=True)
class Goal:
    """What the recommendation optimises: best F1, or a recall / precision target."""

    kind: GoalKind
    target: float | None = None

    def __str__(self) -> str:
        return self.kind if self.target is None else f"{self.kind}:{self.target:g}"


def parse_goal(text: str) -> Goal:
    """'f1', 'recall:0.8' or 'precision:0.3' (a target is a share between 0 and 1)."""
    kind, _, target = text.strip().lower().partition(":")
    if kind == "f1" and not target:
        return Goal("f1")
    if kind in ("recall", "precision") and target:
        try:
            value = float(target.rstrip("%")) / (100 if target.endswith("%") else 1)
        except ValueError:
            value = math.nan
        if not 0 < value <= 1:
            raise BacktestError(
                f"goal {text!r}: the {kind} target must be a share in (0, 1], e.g. {kind}:0.8"
            )
        return Goal("recall" if kind == "recall" else "precision", value)
    raise BacktestError(f"unknown goal {text!r}; use f1, recall:0.8 or precision:0.3")


def parse_thresholds(text: str) -> tuple[float, ...]:
    """'40:200:5' (start:stop:step, stop included), '60,80,100' or a single number."""
    spec = text.strip()
    parts = spec.split(":") if ":" in spec else [p for p in spec.split(",") if p.strip()]
    try:
        numbers = [float(p) for p in parts]
    except ValueError:
        numbers = []
    if not numbers or (":" in spec and len(numbers) != 3):
        raise BacktestError(
            f"invalid thresholds {text!r}; use start:stop:step (40:200:5) or a list (60,80,100)"
        )
    values = numbers
    if ":" in spec:
        start, stop, step = numbers
        if not (step > 0 and start <= stop):
            raise BacktestError(
                f"thresholds {text!r}: need start <= stop and a positive step, e.g. 40:200:5"
            )
        count = math.floor((stop - start) / step + 1e-9) + 1
        if count > MAX_THRESHOLDS:
            raise BacktestError(f"thresholds {text!r}: {count} values; at most {MAX_THRESHOLDS}")
        values = [round(start + i * step, SCORE_DIGITS) for i in range(count)]
    bad = [v for v in values if not (math.isfinite(v) and v > 0)]
    if bad:
        raise BacktestError(
            f"thresholds {text!r}: every threshold must be above 0 (got {bad[0]:g})"
        )
    return tuple(sorted(set(values)))


def with_threshold(rules: Rules, threshold: float) -> Rules:
    """The same rules with another MQL threshold (validated: above zero)."""
    mql = MqlRule.model_validate({**rules.mql.model_dump(), "threshold": threshold})
    return rules.model_copy(update={"mql": mql})


# --------------------------------------------------------------------------------------------
# Outcomes


@dataclass(frozen=True, slots=True)
class Outcome:
    """One row of the outcomes file: what happened to a lead, and when."""

    lead_id: str
    kind: OutcomeKind
    occurred_at: datetime | None  # required except for 'none'


def conversion_times(outcomes: Iterable[Outcome], target: Target) -> dict[str, datetime]:
    """Each converted lead's conversion time: its earliest row that counts for the target."""
    counted = CONVERTING[target]
    out: dict[str, datetime] = {}
    for o in outcomes:
        if o.kind in counted and o.occurred_at is not None:
            known = out.get(o.lead_id)
            if known is None or o.occurred_at < known:
                out[o.lead_id] = o.occurred_at
    return out


# --------------------------------------------------------------------------------------------
# When would each lead have qualified?


def in_event_time(events: Iterable[EngagementEvent]) -> list[EngagementEvent]:
    """The history in event time; events with the same occurred_at keep their file order."""
    return sorted(events, key=lambda e: e.occurred_at)


def qualifications_by_replay(
    events: Sequence[EngagementEvent], rules: Rules, thresholds: Iterable[float]
) -> dict[float, dict[str, datetime]]:
    """threshold -> {lead_id: qualified_at}, by a full `replay` per threshold (the oracle)."""
    ordered = in_event_time(events)
    out: dict[float, dict[str, datetime]] = {}
    for t in thresholds:
        result = replay(ordered, with_threshold(rules, t))
        first: dict[str, datetime] = {}
        for h in result.handoffs:
            first.setdefault(h.lead_id, h.qualified_at)
        out[t] = first
    return out


@dataclass(frozen=True, slots=True)
class Trajectory:
    """A lead's record highs of its gated score: where it would qualify, for any threshold.

    `scores` ascend strictly; `times[i]` is the first event time the lead's score reached
    `scores[i]` with min_fit and min_engagement also met.
    """

    scores: tuple[float, ...] = ()
    times: tuple[datetime, ...] = ()

    def qualified_at(self, threshold: float) -> datetime | None:
        i = bisect.bisect_left(self.scores, threshold)
        return self.times[i] if i < len(self.times) else None


@dataclass(frozen=True, slots=True)
class Fold:
    """One pass over the history: every lead's trajectory and its state as of its outcome."""

    trajectories: dict[str, Trajectory]
    # The lead's state after its last event at or before its conversion time (all events for
    # a lead that did not convert); None when its first event came after the conversion.
    as_of_outcome: dict[str, LeadState | None]


def _unreachable(rules: Rules) -> Rules:
    """The rules with a threshold no score reaches: nobody qualifies, every state is pre-MQL."""
    return rules.model_copy(update={"mql": rules.mql.model_copy(update={"threshold": math.inf})})


def _gates(fit: float, engagement: float, mql: MqlRule) -> bool:
    """`streams.core.lead.qualifies` without the threshold."""
    return (mql.min_fit is None or fit >= mql.min_fit) and (
        mql.min_engagement is None or engagement >= mql.min_engagement
    )


def fold_history(
    events: Sequence[EngagementEvent], rules: Rules, conversions: Mapping[str, datetime]
) -> Fold:
    """Fold the history once in event time through `apply`, with the threshold out of reach."""
    open_rules = _unreachable(rules)
    states: dict[str, LeadState] = {}
    highs: dict[str, tuple[list[float], list[datetime]]] = {}
    as_of: dict[str, LeadState | None] = {}
    for event in in_event_time(events):
        lead = event.lead_id
        state = states.get(lead) or LeadState(lead_id=lead)
        converted_at = conversions.get(lead)
        if converted_at is not None and event.occurred_at > converted_at:
            as_of.setdefault(lead, states.get(lead))
        new, handoffs = apply(state, event, open_rules)
        assert not handoffs, "nothing qualifies under an unreachable threshold"
        states[lead] = new
        if new is state:
            continue  # a duplicate event_id: nothing changed
        fit, engagement = new.fit(open_rules), engagement_points(new)
        if not _gates(fit, engagement, rules.mql):
            continue
        total = round(fit + engagement, SCORE_DIGITS)
        scores, times = highs.setdefault(lead, ([], []))
        if not scores or total > scores[-1]:
            scores.append(total)
            times.append(event.occurred_at)
    for lead, state in states.items():
        as_of.setdefault(lead, state)
    trajectories = {
        lead: Trajectory(tuple(highs[lead][0]), tuple(highs[lead][1]))
        if lead in highs
        else Trajectory()
        for lead in states
    }
    return Fold(trajectories, as_of)


def qualifications_by_trajectory(
    trajectories: Mapping[str, Trajectory], thresholds: Iterable[float]
) -> dict[float, dict[str, datetime]]:
    """threshold -> {lead_id: qualified_at}, read off the trajectories."""
    out: dict[float, dict[str, datetime]] = {}
    for t in thresholds:
        first: dict[str, datetime] = {}
        for lead, trajectory in trajectories.items():
            at = trajectory.qualified_at(t)
            if at is not None:
                first[lead] = at
        out[t] = first
    return out


# --------------------------------------------------------------------------------------------
# Metrics


@dataclass(frozen=True, slots=True)
class ThresholdResult:
    threshold: float
    mqls: int  # leads handed off
    hits: int  # true positives: MQL at or before the conversion (within the window)
    late: int  # MQLs handed off after the lead had already converted
    converted: int  # converted leads in the history (recall's denominator)
    median_lead_time: timedelta | None  # conversion - qualified_at over the hits

    @property
    def precision(self) -> float | None:
        return self.hits / self.mqls if self.mqls else None

    @property
    def recall(self) -> float | None:
        return self.hits / self.converted if self.converted else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None:
            return None
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_json(self) -> dict[str, Any]:
        lead_time = self.median_lead_time
        return {
            "threshold": self.threshold,
            "mqls": self.mqls,
            "true_positives": self.hits,
            "late": self.late,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "median_lead_time_seconds": lead_time.total_seconds() if lead_time else None,
            "median_lead_time": format_duration(_whole_seconds(lead_time)) if lead_time else None,
        }


def _whole_seconds(value: timedelta) -> timedelta:
    return timedelta(seconds=round(value.total_seconds()))


def median(values: Sequence[timedelta]) -> timedelta | None:
    """The middle value (the mean of the two middle ones for an even count)."""
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def evaluate(
    threshold: float,
    qualified: Mapping[str, datetime],
    conversions: Mapping[str, datetime],
    leads: Iterable[str],
    window: timedelta | None = None,
) -> ThresholdResult:
    """The metrics of one threshold, from when each lead qualified and when it converted.

    Only leads in the history count (`leads`): an outcome for a lead the scoring never saw can
    neither be hit nor missed by a threshold.
    """
    known = set(leads)
    converted = sum(1 for lead in conversions if lead in known)
    hits: list[timedelta] = []
    late = 0
    for lead, at in qualified.items():
        converted_at = conversions.get(lead)
        if converted_at is None:
            continue
        lead_time = converted_at - at
        if lead_time < timedelta(0):
            late += 1
        elif window is None or lead_time <= window:
            hits.append(lead_time)
    return ThresholdResult(
        threshold=threshold,
        mqls=len(qualified),
        hits=len(hits),
        late=late,
        converted=converted,
        median_lead_time=median(hits),
    )


# --------------------------------------------------------------------------------------------
# Recommendation


def recommend(rows: Sequence[ThresholdResult], goal: Goal) -> tuple[ThresholdResult | None, str]:
    """The row the goal picks, and a sentence saying why (or why none qualifies).

    * f1: the highest F1; a tie goes to the smaller MQL volume, then the higher threshold.
    * recall:R: the smallest MQL volume whose recall reaches R (a tie: the higher threshold).
    * precision:P: the largest MQL volume whose precision reaches P (a tie: the lower threshold),
      i.e. as many handoffs as sales can take at that hit rate.
    """
    if goal.kind == "f1":
        scored = [r for r in rows if r.f1 is not None]
        if not scored:
            return None, "no threshold has an F1 (no MQLs or no converted leads)"
        best = max(scored, key=lambda r: (r.f1 or 0.0, -r.mqls, r.threshold))
        return best, f"best F1, {best.f1:.3f}"
    target = goal.target or 0.0
    if goal.kind == "recall":
        ok = [r for r in rows if r.recall is not None and r.recall >= target - 1e-12]
        if not ok:
            top = max((r.recall or 0.0 for r in rows), default=0.0)
            return None, f"no threshold reaches recall {target:.0%} (the best is {top:.1%})"
        best = min(ok, key=lambda r: (r.mqls, -r.threshold))
        return best, f"fewest MQLs reaching recall {target:.0%}"
    ok = [r for r in rows if r.precision is not None and r.precision >= target - 1e-12]
    if not ok:
        top = max((r.precision or 0.0 for r in rows), default=0.0)
        return None, f"no threshold reaches precision {target:.0%} (the best is {top:.1%})"
    best = max(ok, key=lambda r: (r.mqls, -r.threshold))
    return best, f"most MQLs keeping precision at {target:.0%} or more"


# --------------------------------------------------------------------------------------------
# Lift


@dataclass(frozen=True, slots=True)
class Lift:
    """Conversion of leads where a rule contributed to the score vs. leads where it did not."""

    kind: Literal["fit", "engagement", "source", "campaign"]
    rule: str  # the rule, or the source or campaign (docs/kpis.md, "Attribution")
    points: float  # the rule's points in the rules file (per event for engagement); 0 else
    with_leads: int
    with_converted: int
    without_leads: int
    without_converted: int

    @property
    def rate_with(self) -> float | None:
        return self.with_converted / self.with_leads if self.with_leads else None

    @property
    def rate_without(self) -> float | None:
        return self.without_converted / self.without_leads if self.without_leads else None

    @property
    def lift(self) -> float | None:
        a, b = self.rate_with, self.rate_without
        return a / b if a is not None and b else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """95 % interval of the ratio (Katz log method; 0.5 added to every cell on a zero)."""
        a, n1 = float(self.with_converted), float(self.with_leads)
        c, n2 = float(self.without_converted), float(self.without_leads)
        if not n1 or not n2:
            return None
        if a == 0 or c == 0 or a == n1 or c == n2:
            a, c, n1, n2 = a + 0.5, c + 0.5, n1 + 1, n2 + 1
        ratio = (a / n1) / (c / n2)
        spread = Z95 * math.sqrt(1 / a - 1 / n1 + 1 / c - 1 / n2)
        return ratio * math.exp(-spread), ratio * math.exp(spread)

    def to_json(self) -> dict[str, Any]:
        interval = self.interval
        return {
            "kind": self.kind,
            "rule": self.rule,
            "points": self.points,
            "leads_with": self.with_leads,
            "converted_with": self.with_converted,
            "leads_without": self.without_leads,
            "converted_without": self.without_converted,
            "rate_with": self.rate_with,
            "rate_without": self.rate_without,
            "lift": self.lift,
            "lift_low": interval[0] if interval else None,
            "lift_high": interval[1] if interval else None,
        }


def _lift_rank(item: Lift) -> tuple[float, float]:
    interval = item.interval
    low = interval[0] if interval else -math.inf
    return (-low, -(item.lift if item.lift is not None else -math.inf))


def lift_table(
    as_of_outcome: Mapping[str, LeadState | None], conversions: Mapping[str, datetime], rules: Rules
) -> list[Lift]:
    """Every engagement and fit rule of `rules`, most reliable lift first.

    A rule *contributed* to a lead when it is among the lead's score reasons (`score`) as of
    the outcome: the state folded from the events at or before the conversion time for a lead
    that converted, from all its events otherwise, so engagement that followed the opportunity
    (sales demos, pricing talks) is not credited. Ranked by the lower end of the 95 % interval
    of the ratio, so a rule seen on five leads does not outrank one seen on five hundred.
    """
    keys: list[tuple[Literal["fit", "engagement"], str, float]] = [
        ("engagement", name, rule.points) for name, rule in rules.engagement.items()
    ]
    keys += [("fit", rule.describe(), rule.points) for rule in rules.fit]
    contributed: dict[tuple[str, str], set[str]] = {(k, r): set() for k, r, _ in keys}
    for lead, state in as_of_outcome.items():
        if state is None:
            continue
        for reason in score(state, rules).reasons:
            slot = contributed.get((reason.kind, reason.rule))
            if slot is not None:
                slot.add(lead)
    leads = set(as_of_outcome)
    converted = {lead for lead in leads if lead in conversions}
    out = []
    for kind, rule, points in keys:
        hit = contributed[(kind, rule)]
        out.append(
            Lift(
                kind=kind,
                rule=rule,
                points=points,
                with_leads=len(hit),
                with_converted=len(hit & converted),
                without_leads=len(leads) - len(hit),
                without_converted=len(converted - hit),
            )
        )
    return sorted(out, key=_lift_rank)


def touch_lift_table(
    as_of_outcome: Mapping[str, LeadState | None],
    conversions: Mapping[str, datetime],
    dimension: Dimension,
) -> list[Lift]:
    """Lift by source (or campaign): conversion of leads that had a touch from it as of the
    outcome (the touches of their latest qualification and those since) vs leads that had
    none, most reliable lift first, like `lift_table`."""
    touched: dict[str, set[str]] = {}
    for lead, state in as_of_outcome.items():
        if state is None:
            continue
        for touch in (*state.attribution, *state.touches):
            touched.setdefault(touch.value(dimension), set()).add(lead)
    leads = set(as_of_outcome)
    converted = {lead for lead in leads if lead in conversions}
    out = [
        Lift(
            kind=dimension,
            rule=value,
            points=0.0,
            with_leads=len(hit),
            with_converted=len(hit & converted),
            without_leads=len(leads) - len(hit),
            without_converted=len(converted - hit),
        )
        for value, hit in sorted(touched.items())
    ]
    return sorted(out, key=_lift_rank)


# --------------------------------------------------------------------------------------------
# The whole backtest


Method = Literal["trajectory", "replay"]


@dataclass(frozen=True, slots=True)
class Backtest:
    rules: Rules
    goal: Goal
    target: Target
    window: timedelta | None
    method: Method
    rows: tuple[ThresholdResult, ...]
    current: ThresholdResult  # the rules' own threshold
    recommended: ThresholdResult | None
    why: str
    lifts: tuple[Lift, ...]
    lifts_by_source: tuple[Lift, ...]
    lifts_by_campaign: tuple[Lift, ...]
    events: int  # events replayed (duplicates included; apply ignores them)
    leads: int  # leads with at least one event
    converted: int  # of those, converted
    converted_without_events: int  # converted leads the history never mentions (left out)
    notes: tuple[str, ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "rules_version": self.rules.version,
            "goal": str(self.goal),
            "target": self.target,
            "window": format_duration(self.window) if self.window else None,
            "method": self.method,
            "events": self.events,
            "leads": self.leads,
            "converted": self.converted,
            "converted_without_events": self.converted_without_events,
            "current_threshold": self.current.threshold,
            "recommended_threshold": self.recommended.threshold if self.recommended else None,
            "recommendation": self.why,
            "current": self.current.to_json(),
            "recommended": self.recommended.to_json() if self.recommended else None,
            "thresholds": [r.to_json() for r in self.rows],
            "lift": [item.to_json() for item in self.lifts],
            "lift_by_source": [item.to_json() for item in self.lifts_by_source],
            "lift_by_campaign": [item.to_json() for item in self.lifts_by_campaign],
            "notes": list(self.notes),
        }


def backtest(
    events: Sequence[EngagementEvent],
    outcomes: Iterable[Outcome],
    rules: Rules,
    thresholds: Iterable[float],
    goal: Goal,
    *,
    target: Target = "opportunity",
    window: timedelta | None = None,
    method: Method = "trajectory",
) -> Backtest:
    """Replay `events` under `rules` at every threshold (and the rules' own) and score them."""
    conversions_all = conversion_times(outcomes, target)
    fold = fold_history(events, rules, conversions_all)
    leads = set(fold.trajectories)
    conversions = {k: v for k, v in conversions_all.items() if k in leads}
    current = rules.mql.threshold
    candidates = sorted({*thresholds, current})
    if method == "replay":
        qualified = qualifications_by_replay(events, rules, candidates)
    else:
        qualified = qualifications_by_trajectory(fold.trajectories, candidates)
    rows = tuple(evaluate(t, qualified[t], conversions, leads, window) for t in candidates)
    by_threshold = {r.threshold: r for r in rows}
    best, why = recommend(rows, goal)
    notes = []
    if not conversions:
        notes.append("no lead in the history converted: precision, recall and lift are empty")
    before_first = sum(1 for lead, s in fold.as_of_outcome.items() if s is None)
    if before_first:
        notes.append(
            f"{before_first} converted leads converted before their first event; "
            "no threshold can hand them off in time"
        )
    return Backtest(
        rules=rules,
        goal=goal,
        target=target,
        window=window,
        method=method,
        rows=rows,
        current=by_threshold[current],
        recommended=best,
        why=why,
        lifts=tuple(lift_table(fold.as_of_outcome, conversions, rules)),
        lifts_by_source=tuple(touch_lift_table(fold.as_of_outcome, conversions, "source")),
        lifts_by_campaign=tuple(touch_lift_table(fold.as_of_outcome, conversions, "campaign")),
        events=len(events),
        leads=len(leads),
        converted=len(conversions),
        converted_without_events=len(set(conversions_all) - leads),
        notes=tuple(notes),
    )
