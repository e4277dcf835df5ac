"""Lead state and scoring: `apply(state, event, rules) -> (state, handoffs)`.

Fit is recomputed from the latest attributes; engagement accumulates per event type, with
optional daily caps and half-life decay on event time. A day's cap goes to its events in event
time, whatever order they arrive in (`cap_shares`). A lead that reaches the threshold becomes
an MQL and yields exactly one handoff; duplicates (same event_id) change nothing.

`apply` is the readable reference. `apply_all` (one lead's events, the worker's batches) and
`replay` (a whole history) give exactly what folding `apply` one event at a time gives, through
a mutable fold (`_Fold`) that builds one LeadState per run instead of several per event.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from itertools import islice
from operator import itemgetter

from pydantic_core import TzInfo

from schemas.engagement import AttributeValue, EngagementEvent
from schemas.handoff import MqlHandoff, ScoreReason
from schemas.lifecycle import Stage
from streams.core.attribution import (
    Deal,
    Touch,
    add_touch,
    insert_touch,
    qualification_touches,
    touch_of,
)
from streams.core.calendar import add_time
from streams.core.clocks import Clock
from streams.core.history import Contribution, JourneyStep, remember
from streams.core.rules import EngagementRule, Rules

# Stages a scoring crossing can qualify from (disqualified too, if the rules say so).
QUALIFIABLE: frozenset[Stage] = frozenset({"lead", "nurture"})

# Daily cap buckets older than this (relative to the newest event of any type) are forgotten,
# so state stays bounded; a later event from such a day counts in full (as the first of its
# type that day would) and does not bring its day back.
CAP_MEMORY_DAYS = 35
# Scores are compared and reported at this precision, so float noise never flips a threshold.
SCORE_DIGITS = 6
# `replay` reads and groups this many events at a time (memory: one reference per event).
REPLAY_CHUNK = 1 << 17

# One capped event's share of its day's cap: (its time as time since _EPOCH, the points the cap
# gave it, the weight recycling has left it: 1.0 until sales sends the lead back to nurture).
CapShare = tuple[timedelta, float, float]


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
    # Per daily_points bucket, in event time: the events the cap gave points to (at most
    # ceil(cap / points) of them), so that a late event of the day takes the cap from later
    # ones. A bucket of daily_points missing here (a state stored before leadflow kept them)
    # has no times known: its late events take what is left of the cap, as they did before.
    cap_shares: Mapping[str, tuple[CapShare, ...]] = field(default_factory=dict)
    seen_event_ids: frozenset[str] = frozenset()
    events_counted: int = 0
    handoff_id: str | None = None
    qualified_at: datetime | None = None
    last_event_at: datetime | None = None
    # Sales side (written by the sales consumer, see streams/core/sales.py)
    qualifications: int = 0
    clocks: tuple[Clock, ...] = ()
    last_contact_at: datetime | None = None
    contact_times: tuple[datetime, ...] = ()  # recent contacts, for clocks that open late
    last_sales_action_at: datetime | None = None
    owner: str | None = None
    queue: str | None = None  # routing queue of the latest handoff (escalations, reassignment)
    missing_bant: tuple[str, ...] = ()
    sql_at: datetime | None = None
    # Attribution (streams/core/attribution.py): touches since the last qualification, the
    # current qualification's touch set, and its opportunity and win (set by sales).
    touches: tuple[Touch, ...] = ()
    attribution: tuple[Touch, ...] = ()
    opportunity: Deal | None = None
    won_deal: Deal | None = None
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
    return _engagement_total(t.points for t in state.engagement.values())


def _engagement_total(points: Iterable[float]) -> float:
    # Summed in the engagement mapping's order: float addition is not associative, and the fold
    # must come out bit for bit like `apply`.
    return round(sum(points), SCORE_DIGITS)


def score(state: LeadState, rules: Rules) -> Score:
    """The lead's score now: fit from current attributes plus accumulated engagement."""
    return _score(state.attributes, state.engagement, rules)


def _score(
    attributes: Mapping[str, Attribute], engagement: Mapping[str, Tally], rules: Rules
) -> Score:
    # Takes the parts rather than a LeadState so that the fold can score its working values.
    fits = fit_reasons(attributes, rules)
    reasons = [
        ScoreReason(
            kind="engagement",
            rule=event_type,
            points=round(tally.points, SCORE_DIGITS),
            events=tally.events,
        )
        for event_type, tally in engagement.items()
        if tally.points != 0
    ]
    ordered = sorted(fits + reasons, key=lambda r: (-abs(r.points), r.kind, r.rule))
    total = _engagement_total(t.points for t in engagement.values())
    return Score(fit_points(attributes, rules), total, tuple(ordered))


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
        if known is None or _utc(event.occurred_at) >= _utc(known.as_of):
            merged[name] = Attribute(value, event.occurred_at)
    return merged


def _utc(at: datetime) -> datetime:
    """Event times are compared and subtracted in UTC: two datetimes that share one ZoneInfo
    compare and subtract as wall times, which across a DST change is not elapsed time."""
    return at.astimezone(UTC)


def _capped_points(
    state: LeadState, event: EngagementEvent, rules: Rules
) -> tuple[float, Mapping[str, float], Mapping[str, tuple[CapShare, ...]], list[_Change]]:
    """The event's points after its type's daily cap, the cap memory after it, and the changes
    to the shares of earlier-counted events of its day that a late event takes from."""
    rule = rules.points_for(event.type)
    if rule is None:
        return 0.0, state.daily_points, state.cap_shares, []
    if rule.cap_per_day is None:
        return rule.points, state.daily_points, state.cap_shares, []
    day = event.occurred_at.astimezone(UTC).date()
    newest = (
        day if state.engagement_as_of is None else max(day, _utc(state.engagement_as_of).date())
    )
    if day < newest - timedelta(CAP_MEMORY_DAYS):
        # Beyond the cap memory (35 days behind the newest event of any type): the event
        # counts in full, as the first of its day would, and its day is not remembered again.
        return min(rule.points, rule.cap_per_day), state.daily_points, state.cap_shares, []
    bucket = f"{event.type}|{day.isoformat()}"
    used = state.daily_points.get(bucket, 0.0)
    daily = {b: p for b, p in state.daily_points.items() if _recent(b, newest)}
    shares = {b: s for b, s in state.cap_shares.items() if _recent(b, newest)}
    since = _utc(event.occurred_at) - _EPOCH
    known = shares.get(bucket)
    changes: list[_Change] = []
    if known and since < known[-1][0]:
        # Late within its day: the day's cap is shared out again in event time.
        allowed, used, shares[bucket], changes = _share_again(
            known, since, rule.points, rule.cap_per_day
        )
        daily[bucket] = used
        return allowed, daily, shares, changes
    allowed = max(0.0, min(rule.points, rule.cap_per_day - used))
    daily[bucket] = used + allowed
    if known is not None or bucket not in state.daily_points:
        shares[bucket] = _share_after(known, since, allowed)
    return allowed, daily, shares, changes


# A change to an earlier-counted event's share: (its time since _EPOCH, its points' change
# times its weight).
_Change = tuple[timedelta, float]


def _share_after(
    known: tuple[CapShare, ...] | None, since: timedelta, allowed: float
) -> tuple[CapShare, ...]:
    """The shares of a bucket after an event no older than any of them, given `allowed`."""
    if allowed == 0:
        return () if known is None else known
    return ((since, allowed, 1.0),) if known is None else (*known, (since, allowed, 1.0))


def _share_again(
    known: tuple[CapShare, ...], since: timedelta, points: float, cap: float
) -> tuple[float, float, tuple[CapShare, ...], list[_Change]]:
    """A late event's share of its day's cap, given in event time (after the shares at the same
    instant: those arrived first): its points, the day's total used, the shares after it, and
    the changes to the shares of the later events it takes from (those left with nothing are
    dropped: a later event can never get points back)."""
    at = bisect_right([s[0] for s in known], since)
    used = 0.0
    shares: list[CapShare] = []
    changes: list[_Change] = []
    allowed = 0.0
    for i, (t, before, weight) in enumerate((*known[:at], (since, -1.0, 1.0), *known[at:])):
        give = max(0.0, min(points, cap - used))
        used += give
        if i == at:
            allowed = give
        elif give != before:
            changes.append((t, (give - before) * weight))
        if give > 0:
            shares.append((t, give, weight))
    return allowed, used, tuple(shares), changes


def _late_total(
    points: float,
    elapsed: timedelta,
    changes: Sequence[_Change],
    as_of: timedelta,
    half_life: timedelta | None,
) -> float:
    """What a late event adds to its type's tally: its points decayed by `elapsed` (the clock
    minus its time), plus the changes to the earlier shares, each decayed from its own time to
    the clock (`as_of`, time since _EPOCH)."""
    added = _decayed(points, elapsed, half_life)
    for t, change in changes:
        added += _decayed(change, as_of - t, half_life)
    return added


def _decayed(points: float, elapsed: timedelta, half_life: timedelta | None) -> float:
    # `_decay_factor`, as the fold computes it.
    if half_life is None or elapsed <= _NO_TIME:
        return points
    return points * math.pow(0.5, elapsed / half_life)


def _recent(bucket: str, newest: date) -> bool:
    return date.fromisoformat(bucket.rsplit("|", 1)[1]) >= newest - timedelta(CAP_MEMORY_DAYS)


def _decay_factor(elapsed: timedelta, rules: Rules) -> float:
    if rules.decay is None or elapsed <= timedelta(0):
        return 1.0
    return math.pow(0.5, elapsed / rules.decay.half_life)


def _add_engagement(
    state: LeadState,
    event: EngagementEvent,
    points: float,
    rules: Rules,
    changes: Sequence[_Change] = (),
) -> tuple[Mapping[str, Tally], datetime]:
    as_of = state.engagement_as_of or event.occurred_at
    tallies = dict(state.engagement)
    elapsed = _utc(event.occurred_at) - _utc(as_of)
    if elapsed > timedelta(0):
        # Move the engagement clock forward: everything so far decays to the new event's time.
        factor = _decay_factor(elapsed, rules)
        if factor != 1.0:
            tallies = {k: Tally(t.points * factor, t.events) for k, t in tallies.items()}
        as_of = event.occurred_at
        added = points
    elif changes:
        # A late event that took (part of) the daily cap from later events of its day.
        half_life = None if rules.decay is None else rules.decay.half_life
        added = _late_total(points, -elapsed, changes, _utc(as_of) - _EPOCH, half_life)
    else:
        # A late event counts as it would have decayed by now (order does not matter).
        added = points * _decay_factor(-elapsed, rules)
    if points != 0 or event.type in rules.engagement:
        old = tallies.get(event.type, Tally())
        tallies[event.type] = Tally(old.points + added, old.events + 1)
    return tallies, as_of


def apply(
    state: LeadState, event: EngagementEvent, rules: Rules
) -> tuple[LeadState, list[MqlHandoff]]:
    """Fold one engagement event into a lead's state; return the new state and any handoff.

    The reference implementation: `apply_all` and `replay` fold faster but must give exactly
    what folding this one event at a time gives (tests/unit/core/test_fold_speedup.py).
    """
    if event.event_id in state.seen_event_ids:
        return state, []
    points, daily, shares, changes = _capped_points(state, event, rules)
    engagement, as_of = _add_engagement(state, event, points, rules, changes)
    rule = rules.points_for(event.type)
    touch = None
    touches = state.touches
    if rule is not None and rule.points > 0:
        touch = touch_of(event.occurred_at, event.source, event.properties)
        touches = add_touch(touches, touch, rules.attribution.max_touches)
    last = (
        event.occurred_at
        if state.last_event_at is None
        else max(state.last_event_at, event.occurred_at, key=_utc)
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
        cap_shares=shares,
        seen_event_ids=state.seen_event_ids | {event.event_id},
        events_counted=state.events_counted + 1,
        last_event_at=last,
        touches=touches,
    )
    if points != 0:
        contribution = Contribution(event.event_id, event.type, event.occurred_at, points)
        new = replace(new, recent_events=remember(new.recent_events, contribution, rules))
    if not can_qualify(new.stage, rules):
        return new, []
    # Totals first (cheap); the reasons are only worked out for a lead that qualifies.
    if not qualifies(fit, engagement_points(new), rules):
        return new, []
    handoff = _mql_handoff(new.lead_id, new.attributes, new.engagement, event, rules)
    qualified = replace(
        new,
        stage="mql",
        handoff_id=handoff.handoff_id,
        qualified_at=event.occurred_at,
        qualifications=new.qualifications + 1,
        missing_bant=(),
        journey=remember(new.journey, _mql_step(event.occurred_at, new.stage, handoff), rules),
        touches=(),
        attribution=qualification_touches(
            touches, touch or _touch(event), rules.attribution.max_touches
        ),
        opportunity=None,
    )
    return qualified, [handoff]


def _touch(event: EngagementEvent) -> Touch:
    return touch_of(event.occurred_at, event.source, event.properties)


def _mql_handoff(
    lead_id: str,
    attributes: Mapping[str, Attribute],
    engagement: Mapping[str, Tally],
    event: EngagementEvent,
    rules: Rules,
) -> MqlHandoff:
    """The handoff of a lead that qualified on `event`, with its score just after the event."""
    current = _score(attributes, engagement, rules)
    return MqlHandoff(
        handoff_id=handoff_id_for(lead_id, event.event_id),
        lead_id=lead_id,
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


def _mql_step(at: datetime, from_stage: Stage, handoff: MqlHandoff) -> JourneyStep:
    """The journey entry of a qualification at `at` (the triggering event's time)."""
    return JourneyStep(
        at,
        from_stage,
        "mql",
        handoff.handoff_id,
        f"score {handoff.score:g} reached {handoff.threshold:g}",
    )


# Event times are handled as time since this instant (a timedelta) inside the fold: comparing
# or subtracting two aware datetimes whose tzinfo objects differ (pydantic gives every parsed
# timestamp its own) calls utcoffset() on both, ten times the cost of timedelta arithmetic.
# The differences are exact (whole microseconds), so decay factors come out identical. That
# holds for fixed-offset zones only: two datetimes sharing one tzinfo object compare and
# subtract as wall times, which for a zone with daylight saving (a ZoneInfo) is not elapsed
# time. A fold hands an event with any other tzinfo to `apply` itself.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIXED_OFFSET = (type(UTC), TzInfo)
_EPOCH_DAY = _EPOCH.date().toordinal()
_NO_TIME = timedelta(0)
_MICROSECOND = timedelta(microseconds=1)


def _fixed_offset(at: datetime | None) -> bool:
    return at is None or type(at.tzinfo) in _FIXED_OFFSET


@lru_cache(maxsize=4096)
def _bucket(event_type: str, day: int) -> str:
    """The daily cap bucket of `_capped_points` for a UTC day counted from _EPOCH."""
    return f"{event_type}|{date.fromordinal(_EPOCH_DAY + day).isoformat()}"


@lru_cache(maxsize=4096)
def _bucket_day(bucket: str) -> int:
    """The UTC day (counted from _EPOCH) of a daily cap bucket, as `_recent` reads it."""
    return date.fromisoformat(bucket.rsplit("|", 1)[1]).toordinal() - _EPOCH_DAY


class _Fold:
    """One lead's state while a run of its events is folded in: mutable, private, short-lived.

    Folding through `apply` costs several frozen LeadState copies per event, fresh dicts for
    every mapping, a bigger frozenset of seen ids and date parsing for every cap bucket. A fold
    keeps the same values in mutable fields, runs the same arithmetic in the same order (so
    every float is bit for bit what `apply` gives), skips work whose result cannot change (fit
    while the attributes stay put, the engagement total while min_fit is not met) and builds
    one LeadState at the end (`state()`). Each step names the `apply` helper it stands for.
    """

    __slots__ = (
        "_as_of",
        "_as_of_since",
        "_attributes",
        "_attribution",
        "_base",
        "_blocked",
        "_can_qualify",
        "_changes",
        "_contributed",
        "_counted_before",
        "_daily",
        "_events",
        "_fit",
        "_fixed",
        "_half_life",
        "_handoffs",
        "_index",
        "_journey",
        "_known",
        "_last",
        "_last_handoff",
        "_last_since",
        "_new_ids",
        "_oldest_day",
        "_only_new",
        "_points",
        "_qualified_at",
        "_recent",
        "_rules",
        "_scoring",
        "_seen",
        "_shares",
        "_stage",
        "_touch_limit",
        "_touches",
    )

    def __init__(
        self,
        state: LeadState,
        rules: Rules,
        known: AbstractSet[str] = frozenset(),
        only_new: bool = False,
    ) -> None:
        self._rules = rules
        self._scoring = rules.engagement
        self._half_life = None if rules.decay is None else rules.decay.half_life
        # `fold_batch`: ids seen besides the state's own, and a result that carries as
        # seen_event_ids only the ids this fold counted.
        self._known = known
        self._only_new = only_new
        self._counted_before: set[str] = set()  # counted before a hand-over to `apply`
        self._start(state)

    def _start(self, state: LeadState) -> None:
        self._base = state
        self._seen = state.seen_event_ids
        self._new_ids: set[str] = set()  # events applied by this fold
        self._stage = state.stage
        self._can_qualify = can_qualify(state.stage, self._rules)
        self._handoffs = 0
        self._last_handoff: MqlHandoff | None = None
        self._qualified_at = state.qualified_at
        # Engagement as parallel lists in the mapping's order (`_index`: type -> position).
        self._index = {event_type: i for i, event_type in enumerate(state.engagement)}
        self._points = [t.points for t in state.engagement.values()]
        self._events = [t.events for t in state.engagement.values()]
        # Event times are also kept as time since _EPOCH (see there).
        self._as_of = state.engagement_as_of
        self._as_of_since = None if self._as_of is None else self._as_of - _EPOCH
        self._last = state.last_event_at
        self._last_since = None if self._last is None else self._last - _EPOCH
        self._fixed = _fixed_offset(self._as_of) and _fixed_offset(self._last)
        self._attributes: Mapping[str, Attribute] = state.attributes  # copied on first change
        self._fit: float | None = None  # None: work it out when needed
        self._blocked = False  # the fit is known to be below min_fit
        self._daily: dict[str, float] | None = None  # copied on the first capped event
        self._shares: dict[str, tuple[CapShare, ...]] = {}  # copied with _daily
        self._changes: list[_Change] | None = None  # set by a late event that took cap shares
        self._oldest_day = 0  # no bucket in _daily is older
        self._recent = deque(state.recent_events, self._rules.history_limit)
        self._contributed = False
        self._journey: deque[JourneyStep] | None = None
        self._touch_limit = self._rules.attribution.max_touches
        self._touches: list[Touch] | None = None  # copied on the first touch
        self._attribution: tuple[Touch, ...] | None = None  # set by a qualification

    def add(self, event: EngagementEvent) -> MqlHandoff | None:
        """`apply` for one event; the handoff if the lead qualified on it."""
        event_id = event.event_id
        if event_id in self._new_ids or event_id in self._seen or event_id in self._known:
            return None
        at = event.occurred_at
        if not (self._fixed and type(at.tzinfo) in _FIXED_OFFSET):
            return self._apply(event)  # wall-time arithmetic: see _EPOCH
        self._new_ids.add(event_id)
        since = at - _EPOCH
        event_type = event.type
        rule = self._scoring.get(event_type)
        touch = None
        if rule is None:
            points = 0.0
        else:
            cap = rule.cap_per_day
            points = rule.points if cap is None else self._capped(event_type, since, rule, cap)
            if rule.points > 0:
                touch = self._touch(event, since)
        # `_add_engagement`: the clock moves forward only, and what was there decays to it.
        as_of = self._as_of_since
        if as_of is None or since > as_of:
            if as_of is not None and self._half_life is not None:
                factor = math.pow(0.5, (since - as_of) / self._half_life)  # `_decay_factor`
                if factor != 1.0:
                    self._points = [p * factor for p in self._points]
            self._as_of, self._as_of_since = at, since
            added = points
        else:
            added = self._late(points, as_of, since)
        if rule is not None:
            self._tally(event_type, added)
        if self._last_since is None or since > self._last_since:
            self._last, self._last_since = at, since
        if event.attributes:
            self._merge(event)
        if points != 0:
            self._recent.append(Contribution(event_id, event_type, at, points))
            self._contributed = True
        return self._qualify(event, touch) if self._can_qualify and not self._blocked else None

    def _tally(self, event_type: str, added: float) -> None:
        i = self._index.get(event_type)
        if i is None:
            i = self._new_tally(event_type)
        self._points[i] += added
        self._events[i] += 1

    def _touch(self, event: EngagementEvent, since: timedelta) -> Touch:
        # `apply`'s touch: an event of a type the rules score with positive points.
        touch = touch_of(since // _MICROSECOND, event.source, event.properties)
        if self._touches is None:
            self._touches = list(self._base.touches)
        insert_touch(self._touches, touch, self._touch_limit)
        return touch

    def _apply(self, event: EngagementEvent) -> MqlHandoff | None:
        # `apply` itself, between the state so far and a fold that goes on from its result.
        current = self.state()
        everything = self._seen | self._new_ids | self._known
        if current.seen_event_ids != everything:
            current = replace(current, seen_event_ids=everything)  # `fold_batch` only
        if self._only_new:
            self._counted_before |= self._new_ids
            if event.event_id not in everything:
                self._counted_before.add(event.event_id)
        state, handoffs = apply(current, event, self._rules)
        self._start(state)
        return handoffs[0] if handoffs else None

    def _capped(self, event_type: str, since: timedelta, rule: EngagementRule, cap: float) -> float:
        # `_capped_points`, with each bucket's day parsed once rather than on every event.
        day = since.days
        newest = day if self._as_of_since is None else max(day, self._as_of_since.days)
        if day < newest - CAP_MEMORY_DAYS:
            return min(rule.points, cap)
        daily = self._daily
        shares = self._shares
        if daily is None:
            daily = self._daily = dict(self._base.daily_points)
            shares = self._shares = dict(self._base.cap_shares)
            self._oldest_day = min(map(_bucket_day, daily), default=day)
        bucket = _bucket(event_type, day)
        cutoff = newest - CAP_MEMORY_DAYS
        if self._oldest_day < cutoff:
            for old in [b for b in daily if _bucket_day(b) < cutoff]:
                del daily[old]
            for old in [b for b in shares if _bucket_day(b) < cutoff]:
                del shares[old]
            self._oldest_day = min(map(_bucket_day, daily), default=day)
        known = shares.get(bucket)
        if known and since < known[-1][0]:
            allowed, daily[bucket], shares[bucket], self._changes = _share_again(
                known, since, rule.points, cap
            )
        else:
            used = daily.get(bucket, 0.0)
            allowed = max(0.0, min(rule.points, cap - used))
            # `_share_after`, inline (the usual case: an event in time order)
            if known is not None:
                if allowed != 0:
                    shares[bucket] = (*known, (since, allowed, 1.0))
            elif bucket not in daily:
                shares[bucket] = () if allowed == 0 else ((since, allowed, 1.0),)
            daily[bucket] = used + allowed
        if day < self._oldest_day:
            self._oldest_day = day
        return allowed

    def _late(self, points: float, as_of: timedelta, since: timedelta) -> float:
        # `_decay_factor` for a late event: its points as they would have decayed by now.
        changes = self._changes
        if changes is not None:
            # `_add_engagement` for a late event that took cap shares from later ones.
            self._changes = None
            return _late_total(points, as_of - since, changes, as_of, self._half_life)
        elapsed = as_of - since
        if self._half_life is None or elapsed <= _NO_TIME:
            return points
        return points * math.pow(0.5, elapsed / self._half_life)

    def _new_tally(self, event_type: str) -> int:
        self._index[event_type] = len(self._points)
        self._points.append(0.0)  # Tally() before its first event
        self._events.append(0)
        return len(self._points) - 1

    def _merge(self, event: EngagementEvent) -> None:
        # `_merge_attributes`. Like `apply`, fit is worked out again after any such event.
        if self._attributes is self._base.attributes:
            self._attributes = dict(self._attributes)
        merged = self._attributes
        assert isinstance(merged, dict) and event.attributes is not None
        for name, value in event.attributes.items():
            known = merged.get(name)
            if known is None or event.occurred_at >= known.as_of:
                merged[name] = Attribute(value, event.occurred_at)
        self._fit = None
        self._blocked = False

    def _current_fit(self) -> float:
        if self._fit is None:
            if self._attributes is self._base.attributes:
                self._fit = self._base.fit(self._rules)  # its cache, as `apply` uses it
            else:
                self._fit = fit_points(self._attributes, self._rules)
            min_fit = self._rules.mql.min_fit
            self._blocked = min_fit is not None and self._fit < min_fit
        return self._fit

    def _qualify(self, event: EngagementEvent, touch: Touch | None) -> MqlHandoff | None:
        rules = self._rules
        fit = self._current_fit() if self._fit is None else self._fit
        if self._blocked:
            return None  # what `qualifies` says (min_fit), without summing the engagement
        if not qualifies(fit, _engagement_total(self._points), rules):
            return None
        handoff = _mql_handoff(self._base.lead_id, self._attributes, self._tallies(), event, rules)
        if self._journey is None:
            self._journey = deque(self._base.journey, rules.history_limit)
        self._journey.append(_mql_step(event.occurred_at, self._stage, handoff))
        open_touches = self._base.touches if self._touches is None else self._touches
        self._attribution = qualification_touches(
            open_touches, touch or _touch(event), self._touch_limit
        )
        self._touches = []
        self._stage = "mql"
        self._handoffs += 1
        self._last_handoff = handoff
        self._qualified_at = event.occurred_at
        self._can_qualify = can_qualify("mql", rules)
        return handoff

    def _tallies(self) -> dict[str, Tally]:
        points, events = self._points, self._events
        return {event_type: Tally(points[i], events[i]) for event_type, i in self._index.items()}

    def state(self) -> LeadState:
        """The LeadState `apply` would have returned after the last event.

        Built field by field rather than with `dataclasses.replace`, which walks the fields and
        costs as much as the rest of a one-event fold (the worker's usual case). The sales
        fields are carried over as they were; test_fold_speedup.py fails if a LeadState field
        is added without a place here.
        """
        base = self._base
        if self._only_new:
            seen = frozenset(self._new_ids | self._counted_before)
            if not self._new_ids:
                # only duplicates (or nothing): unchanged, unless `apply` took over
                return replace(base, seen_event_ids=seen) if self._counted_before else base
        elif not self._new_ids:
            return base  # only duplicates (or nothing): `apply` changes nothing either
        else:
            seen = self._seen | self._new_ids
        handoff = self._last_handoff
        return LeadState(
            lead_id=base.lead_id,
            stage=self._stage,
            attributes=self._attributes,
            engagement=self._tallies(),
            engagement_as_of=self._as_of,
            daily_points=base.daily_points if self._daily is None else self._daily,
            cap_shares=base.cap_shares if self._daily is None else self._shares,
            seen_event_ids=seen,
            events_counted=base.events_counted + len(self._new_ids),
            handoff_id=base.handoff_id if handoff is None else handoff.handoff_id,
            qualified_at=self._qualified_at,
            last_event_at=self._last,
            qualifications=base.qualifications + self._handoffs,
            clocks=base.clocks,
            last_contact_at=base.last_contact_at,
            contact_times=base.contact_times,
            last_sales_action_at=base.last_sales_action_at,
            owner=base.owner,
            queue=base.queue,
            missing_bant=base.missing_bant if handoff is None else (),
            sql_at=base.sql_at,
            touches=base.touches if self._touches is None else tuple(self._touches),
            attribution=base.attribution if self._attribution is None else self._attribution,
            opportunity=base.opportunity if self._attribution is None else None,
            won_deal=base.won_deal,
            recent_events=tuple(self._recent) if self._contributed else base.recent_events,
            journey=base.journey if self._journey is None else tuple(self._journey),
            fit_cache=(self._rules, self._current_fit()),
        )


def apply_all(
    state: LeadState, events: Iterable[EngagementEvent], rules: Rules
) -> tuple[LeadState, list[MqlHandoff]]:
    """Fold a lead's events in order: the same as `apply` one event at a time, faster."""
    fold = _Fold(state, rules)
    handoffs = [h for h in map(fold.add, events) if h is not None]
    return fold.state(), handoffs


def fold_batch(
    state: LeadState,
    events: Iterable[EngagementEvent],
    rules: Rules,
    known: AbstractSet[str] = frozenset(),
) -> tuple[LeadState, list[MqlHandoff]]:
    """The worker's fold, for a lead whose dedupe memory is kept outside its state.

    `apply_all` for a lead that has also seen the ids in `known`, except that the state it
    returns carries as `seen_event_ids` only the ids this fold counted (what the store adds to
    its dedupe memory), and is the given state itself when nothing was counted. Every other field
    is what `apply_all` gives (tests/unit/core/test_fold_speedup.py).
    """
    fold = _Fold(state, rules, known, only_new=True)
    handoffs = [h for h in map(fold.add, events) if h is not None]
    return fold.state(), handoffs


@dataclass(frozen=True, slots=True)
class Replay:
    leads: dict[str, LeadState]
    handoffs: list[MqlHandoff]


def replay(events: Iterable[EngagementEvent], rules: Rules) -> Replay:
    """Fold a whole history, lead by lead in the given order: the oracle and the replay engine.

    The same as `apply` one event at a time. The history is read in chunks; a chunk's events
    are grouped by lead and each lead's run is folded in one go (as the worker folds a batch),
    which keeps one lead's working values hot in the CPU cache and lets them die young instead
    of piling up for the garbage collector. Handoffs are put back in the order of their
    triggering events, and leads in the order they first appear.
    """
    leads: dict[str, LeadState] = {}
    handoffs: list[MqlHandoff] = []
    stream = iter(events)
    while chunk := list(islice(stream, REPLAY_CHUNK)):
        positions: dict[str, list[int]] = {}  # lead -> its events' positions in the chunk
        for i, event in enumerate(chunk):
            own = positions.get(event.lead_id)
            if own is None:
                positions[event.lead_id] = [i]
            else:
                own.append(i)
        found: list[tuple[int, MqlHandoff]] = []
        for lead_id, own in positions.items():
            fold = _Fold(leads.get(lead_id) or LeadState(lead_id=lead_id), rules)
            add = fold.add
            for i in own:
                handoff = add(chunk[i])
                if handoff is not None:
                    found.append((i, handoff))
            leads[lead_id] = fold.state()
        found.sort(key=itemgetter(0))
        handoffs.extend(handoff for _, handoff in found)
    return Replay(leads, handoffs)
