"""Lead state and scoring: `apply(state, event, rules) -> (state, handoffs)`.

Fit is recomputed from the latest attributes; engagement accumulates per event type, with
optional daily caps and half-life decay on event time. A lead that reaches the threshold becomes
an MQL and yields exactly one handoff; duplicates (same event_id) change nothing.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from schemas.engagement import AttributeValue, EngagementEvent
from schemas.handoff import MqlHandoff, ScoreReason
from schemas.lifecycle import Stage
from streams.core.calendar import add_time
from streams.core.clocks import Clock
from streams.core.history import Contribution, JourneyStep, remember
from streams.core.rules import Rules

# Stages a scoring crossing can qualify from (disqualified too, if the rules say so).
QUALIFIABLE: frozenset[Stage] = frozenset({"lead", "nurture"})

# Daily cap buckets older than this (relative to the newest event) are forgotten, so state
# stays bounded; a later event from such a day counts as the first of its type that day.
CAP_MEMORY_DAYS = 35
# Scores are compared and reported at this precision, so float noise never flips a threshold.
SCORE_DIGITS = 6


@dataclass(frozen=True, slots=True)
class Tally:
    """Engagement from one event type: points (decayed to the lead's engagement clock) and count."""

    points: float = 0.0
    events: int = 0


@dataclass(frozen=True, slots=True)
class Attribute:
    value: AttributeValue
    as_of: datetime


@dataclass(frozen=True, slots=True)
class LeadState:
    lead_id: str
    stage: Stage = "lead"
    attributes: Mapping[str, Attribute] = field(default_factory=dict)
    engagement: Mapping[str, Tally] = field(default_factory=dict)
    engagement_as_of: datetime | None = None
    daily_points: Mapping[str, float] = field(default_factory=dict)
    seen_event_ids: frozenset[str] = frozenset()
    events_counted: int = 0
    handoff_id: str | None = None
    qualified_at: datetime | None = None
    last_event_at: datetime | None = None
    # Sales side (written by the sales agent, see streams/core/sales.py)
    qualifications: int = 0
    clocks: tuple[Clock, ...] = ()
    last_contact_at: datetime | None = None
    contact_times: tuple[datetime, ...] = ()  # recent contacts, for clocks that open late
    last_sales_action_at: datetime | None = None
    owner: str | None = None
    missing_bant: tuple[str, ...] = ()
    sql_at: datetime | None = None
    # Bounded history for "why this score" (rules.history_limit entries each)
    recent_events: tuple[Contribution, ...] = ()
    journey: tuple[JourneyStep, ...] = ()
    # Fit under a given Rules object, kept while the attributes do not change: fit matching
    # would otherwise dominate scoring. Never stored, never compared.
    fit_cache: tuple[Rules, float] | None = field(default=None, compare=False, repr=False)

    def fit(self, rules: Rules) -> float:
        if self.fit_cache is not None and self.fit_cache[0] is rules:
            return self.fit_cache[1]
        return fit_points(self.attributes, rules)


@dataclass(frozen=True, slots=True)
class Score:
    fit: float
    engagement: float
    reasons: tuple[ScoreReason, ...]

    @property
    def total(self) -> float:
        return round(self.fit + self.engagement, SCORE_DIGITS)


def fit_reasons(attributes: Mapping[str, Attribute], rules: Rules) -> list[ScoreReason]:
    return [
        ScoreReason(kind="fit", rule=rule.describe(), points=rule.points)
        for rule in rules.fit
        if rule.field in attributes and rule.matches(attributes[rule.field].value)
    ]


def fit_points(attributes: Mapping[str, Attribute], rules: Rules) -> float:
    return round(
        sum(
            rule.points
            for rule in rules.fit
            if rule.field in attributes and rule.matches(attributes[rule.field].value)
        ),
        SCORE_DIGITS,
    )


def engagement_points(state: LeadState) -> float:
    return round(sum(t.points for t in state.engagement.values()), SCORE_DIGITS)


def score(state: LeadState, rules: Rules) -> Score:
    """The lead's score now: fit from current attributes plus accumulated engagement."""
    fits = fit_reasons(state.attributes, rules)
    engagement = [
        ScoreReason(
            kind="engagement",
            rule=event_type,
            points=round(tally.points, SCORE_DIGITS),
            events=tally.events,
        )
        for event_type, tally in state.engagement.items()
        if tally.points != 0
    ]
    reasons = sorted(fits + engagement, key=lambda r: (-abs(r.points), r.kind, r.rule))
    return Score(fit_points(state.attributes, rules), engagement_points(state), tuple(reasons))


def qualifies(fit: float, engagement: float, rules: Rules) -> bool:
    mql = rules.mql
    return (
        round(fit + engagement, SCORE_DIGITS) >= mql.threshold
        and (mql.min_fit is None or fit >= mql.min_fit)
        and (mql.min_engagement is None or engagement >= mql.min_engagement)
    )


def can_qualify(stage: Stage, rules: Rules) -> bool:
    """Whether a score crossing hands the lead (again) to sales from this stage."""
    return stage in QUALIFIABLE or (
        stage == "disqualified" and rules.recycle.disqualified_can_requalify
    )


def handoff_id_for(lead_id: str, triggering_event_id: str) -> str:
    """Stable id of one qualification: the same lead qualified by the same event."""
    digest = hashlib.sha256(f"{lead_id}\x1f{triggering_event_id}".encode()).hexdigest()
    return f"ho-{digest[:24]}"


def _merge_attributes(
    current: Mapping[str, Attribute], event: EngagementEvent
) -> Mapping[str, Attribute]:
    if not event.attributes:
        return current
    merged = dict(current)
    for name, value in event.attributes.items():
        known = merged.get(name)
        # Event time decides which value is latest, so a late-arriving old profile
        # update never overwrites a newer one.
        if known is None or event.occurred_at >= known.as_of:
            merged[name] = Attribute(value, event.occurred_at)
    return merged


def _capped_points(
    state: LeadState, event: EngagementEvent, rules: Rules
) -> tuple[float, Mapping[str, float]]:
    rule = rules.points_for(event.type)
    if rule is None:
        return 0.0, state.daily_points
    if rule.cap_per_day is None:
        return rule.points, state.daily_points
    day = event.occurred_at.astimezone(UTC).date()
    bucket = f"{event.type}|{day.isoformat()}"
    used = state.daily_points.get(bucket, 0.0)
    allowed = max(0.0, min(rule.points, rule.cap_per_day - used))
    daily = {b: p for b, p in state.daily_points.items() if _recent(b, day)}
    daily[bucket] = used + allowed
    return allowed, daily


def _recent(bucket: str, newest: date) -> bool:
    return date.fromisoformat(bucket.rsplit("|", 1)[1]) >= newest - timedelta(CAP_MEMORY_DAYS)


def _decay_factor(elapsed: timedelta, rules: Rules) -> float:
    if rules.decay is None or elapsed <= timedelta(0):
        return 1.0
    return math.pow(0.5, elapsed / rules.decay.half_life)


def _add_engagement(
    state: LeadState, event: EngagementEvent, points: float, rules: Rules
) -> tuple[Mapping[str, Tally], datetime]:
    as_of = state.engagement_as_of or event.occurred_at
    tallies = dict(state.engagement)
    if event.occurred_at > as_of:
        # Move the engagement clock forward: everything so far decays to the new event's time.
        factor = _decay_factor(event.occurred_at - as_of, rules)
        if factor != 1.0:
            tallies = {k: Tally(t.points * factor, t.events) for k, t in tallies.items()}
        as_of = event.occurred_at
        added = points
    else:
        # A late event counts as it would have decayed by now (order does not matter).
        added = points * _decay_factor(as_of - event.occurred_at, rules)
    if points != 0 or event.type in rules.engagement:
        old = tallies.get(event.type, Tally())
        tallies[event.type] = Tally(old.points + added, old.events + 1)
    return tallies, as_of


def apply(
    state: LeadState, event: EngagementEvent, rules: Rules
) -> tuple[LeadState, list[MqlHandoff]]:
    """Fold one engagement event into a lead's state; return the new state and any handoff."""
    if event.event_id in state.seen_event_ids:
        return state, []
    points, daily = _capped_points(state, event, rules)
    engagement, as_of = _add_engagement(state, event, points, rules)
    last = (
        event.occurred_at
        if state.last_event_at is None
        else max(state.last_event_at, event.occurred_at)
    )
    attributes = _merge_attributes(state.attributes, event)
    fit = state.fit(rules) if attributes is state.attributes else fit_points(attributes, rules)
    new = replace(
        state,
        attributes=attributes,
        fit_cache=(rules, fit),
        engagement=engagement,
        engagement_as_of=as_of,
        daily_points=daily,
        seen_event_ids=state.seen_event_ids | {event.event_id},
        events_counted=state.events_counted + 1,
        last_event_at=last,
    )
    if points != 0:
        contribution = Contribution(event.event_id, event.type, event.occurred_at, points)
        new = replace(new, recent_events=remember(new.recent_events, contribution, rules))
    if not can_qualify(new.stage, rules):
        return new, []
    # Totals first (cheap); the reasons are only worked out for a lead that qualifies.
    if not qualifies(fit, engagement_points(new), rules):
        return new, []
    current = score(new, rules)
    handoff = MqlHandoff(
        handoff_id=handoff_id_for(new.lead_id, event.event_id),
        lead_id=new.lead_id,
        qualified_at=event.occurred_at,
        score=current.total,
        fit_score=current.fit,
        engagement_score=current.engagement,
        threshold=rules.mql.threshold,
        rules_version=rules.version,
        triggering_event_id=event.event_id,
        reasons=list(current.reasons[: rules.reasons_limit]),
        first_contact_due_at=add_time(
            rules.sla.calendar, event.occurred_at, rules.sla.mql_first_contact
        ),
    )
    step = JourneyStep(
        event.occurred_at,
        new.stage,
        "mql",
        handoff.handoff_id,
        f"score {handoff.score:g} reached {handoff.threshold:g}",
    )
    qualified = replace(
        new,
        stage="mql",
        handoff_id=handoff.handoff_id,
        qualified_at=event.occurred_at,
        qualifications=new.qualifications + 1,
        missing_bant=(),
        journey=remember(new.journey, step, rules),
    )
    return qualified, [handoff]


def apply_all(
    state: LeadState, events: Iterable[EngagementEvent], rules: Rules
) -> tuple[LeadState, list[MqlHandoff]]:
    """Fold a lead's events in order."""
    handoffs: list[MqlHandoff] = []
    for event in events:
        state, out = apply(state, event, rules)
        handoffs.extend(out)
    return state, handoffs


@dataclass(frozen=True, slots=True)
class Replay:
    leads: dict[str, LeadState]
    handoffs: list[MqlHandoff]


def replay(events: Iterable[EngagementEvent], rules: Rules) -> Replay:
    """Fold a whole history, lead by lead in the given order: the oracle and the replay engine."""
    leads: dict[str, LeadState] = {}
    handoffs: list[MqlHandoff] = []
    for event in events:
        state = leads.get(event.lead_id) or LeadState(lead_id=event.lead_id)
        leads[event.lead_id], out = apply(state, event, rules)
        handoffs.extend(out)
    return Replay(leads, handoffs)
