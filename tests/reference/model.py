"""leadflow's rules as the docs state them, computed the slow and obvious way.

Written from docs/rules.md, docs/sales-lifecycle.md and docs/calendar.md, without importing
anything from `streams` (not even the rules parser), so that a rule the core misreads is not
misread here the same way. The style differs on purpose: the core keeps running totals and
decays them step by step; this model keeps every accepted event and recomputes fit, engagement
and caps from that list each time it is asked (quadratic, fine for tests).

Readings taken where the docs are silent (also listed in docs/reliability.md):

- Attributes: the value with the newest occurred_at wins; at equal occurred_at the later
  arrival wins. A `null` value is a value (it matches no fit rule).
- `in` and `equals` compare text case-insensitively with surrounding whitespace ignored; a bool
  reads as "true"/"false" and a whole float as an integer (5.0 as "5"). `contains` is a
  case-insensitive substring of the value's text.
- `between` numbers: an int or float (not a bool), or a string of decimal digits with optional
  sign, fraction, exponent and thousands commas ("1,200", " 250 ", "1,200.5"). Anything else
  ("n/a") matches no `between` rule.
- Daily caps: the cap memory reaches back 35 UTC days from the UTC day of the newest
  occurred_at seen (of any type, this event included): days on or after newest - 35 are
  remembered. An event of an older day is not reduced by other events of its day; it still
  cannot add more than `cap_per_day` (it counts like the first event of its day), and it takes
  nothing from the others.
- Within a remembered day, the cap goes to the day's events of that type in event time
  (earliest first, each up to its points), whatever order they arrived in; events at the same
  instant in arrival order (their decay is the same, so the score does not depend on it).
- The engagement clock is the newest occurred_at of any accepted event (profile updates too).
- Recycling (nurture) multiplies the engagement of the events accepted so far by
  `recycle.engagement_factor`; events accepted later count in full (decayed to the clock).
  Cap usage is not reset by recycling.
- A score crossing hands a lead off from `lead` or `nurture` (and `disqualified` when
  `recycle.disqualified_can_requalify`). The handoff's clock opens when the sales side sees it.
- Any bant_assessed on a stage other than won/lost is judged: passing makes an SQL from any
  other stage (sql stays sql); failing sends any stage but nurture to nurture.
- A first-contact clock that opens after contacts were seen is settled by the earliest contact
  at or after its start (docs/sales-lifecycle.md). A follow-up clock that opens after sales
  actions were seen (the BANT arrived late) is settled by the newest sales action seen so far,
  if at or after its start: only that one is kept (docs/sales-lifecycle.md, as clarified).
- Owners: an activity that names an owner makes it the lead's owner. A `reassigned` activity
  whose owner differs from the current one is a `reassigned` event (stage unchanged, on any
  stage, won and lost included); it is not a contact and moves no deadline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

DIGITS = 6
CAP_MEMORY_DAYS = 35
BANT = ("budget", "authority", "need", "timeframe")
CONTACTS = ("contacted", "bant_assessed", "sales_action")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# ---------------------------------------------------------------------------------------------
# Rules, parsed from the same dict the YAML file gives
# ---------------------------------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")
_UNIT_SECONDS = {"w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1}


def duration(value: Any) -> timedelta:
    """'24h', '90s', '1h30m', '30d' (or a number of seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    text = str(value).strip().lower()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(a + u for a, u in parts) != text.replace(" ", ""):
        raise ValueError(f"not a duration: {value!r}")
    return timedelta(seconds=sum(float(a) * _UNIT_SECONDS[u] for a, u in parts))


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def as_number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip().replace(",", "")
    return float(text) if _NUMBER.fullmatch(text) else None


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().casefold()


@dataclass(frozen=True)
class FitSpec:
    field: str
    points: float
    kind: str  # in | equals | between | contains
    operand: Any

    def matches(self, value: Any) -> bool:
        if value is None:
            return False
        if self.kind == "in":
            return as_text(value) in [as_text(v) for v in self.operand]
        if self.kind == "equals":
            return as_text(value) == as_text(self.operand)
        if self.kind == "contains":
            text = str(value).casefold()
            return any(str(part).casefold() in text for part in self.operand)
        number = as_number(value)
        if number is None:
            return False
        low, high = self.operand
        if low is not None and number < low:
            return False
        return not (high is not None and number > high)


@dataclass(frozen=True)
class RefCalendar:
    """Working time: one [opening, closing) interval per working local day."""

    zone: ZoneInfo
    weekdays: frozenset[int]
    opening: int  # minutes after local midnight
    closing: int  # may be 24 * 60
    holidays: frozenset[date]

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RefCalendar:
        days = data.get("working_days", ["mon", "tue", "wed", "thu", "fri"])
        start, end = data.get("hours", ["09:00", "18:00"])
        holidays = {
            h if isinstance(h, date) else date.fromisoformat(str(h))
            for h in data.get("holidays", [])
        }
        return RefCalendar(
            zone=ZoneInfo(data["timezone"]),
            weekdays=frozenset(WEEKDAYS.index(str(d).lower()) for d in days),
            opening=_minutes(start),
            closing=_minutes(end),
            holidays=frozenset(holidays),
        )

    def bound(self, day: date, minutes: int) -> datetime:
        """The first instant at which the local clock shows `minutes` on `day`, or later."""
        wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
        first = wall.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
        if self.local(first) == wall:
            return first  # exists (fold=0: the first of two occurrences)
        # Skipped by a jump forward: search the instants between both readings of the offset.
        other = wall.replace(tzinfo=self.zone, fold=1).astimezone(UTC)
        low, high = min(first, other), max(first, other)
        while high - low > timedelta(seconds=1):
            middle = low + (high - low) / 2
            if self.local(middle) >= wall:
                high = middle
            else:
                low = middle
        return high if self.local(low) < wall else low

    def local(self, instant: datetime) -> datetime:
        return instant.astimezone(self.zone).replace(tzinfo=None)

    def interval(self, day: date) -> tuple[datetime, datetime] | None:
        if day.weekday() not in self.weekdays or day in self.holidays:
            return None
        return self.bound(day, self.opening), self.bound(day, self.closing)

    def add(self, start: datetime, amount: timedelta) -> datetime:
        """The instant at which `amount` of working time has passed since `start`."""
        start = start.astimezone(UTC)
        day = start.astimezone(self.zone).date() - timedelta(days=1)
        left = amount
        for _ in range(4000):
            bounds = self.interval(day)
            day += timedelta(days=1)
            if bounds is None:
                continue
            begin, end = max(bounds[0], start), bounds[1]
            if begin >= end:
                continue
            if left <= end - begin:
                return begin + left
            left -= end - begin
        raise ValueError("no working time")


def _minutes(hhmm: str) -> int:
    hours, minutes = str(hhmm).split(":")
    return int(hours) * 60 + int(minutes)


@dataclass(frozen=True)
class RefRules:
    threshold: float
    min_fit: float | None
    min_engagement: float | None
    points: Mapping[str, tuple[float, float | None]]  # type -> (points, cap_per_day)
    fit: tuple[FitSpec, ...]
    half_life: timedelta | None
    first_contact: timedelta
    follow_up: timedelta
    calendar: RefCalendar | None
    bant_required: int
    bant_mandatory: frozenset[str]
    recycle_factor: float
    disqualified_requalify: bool

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RefRules:
        mql = data["mql"]
        points: dict[str, tuple[float, float | None]] = {}
        for name, spec in (data.get("engagement") or {}).items():
            if isinstance(spec, Mapping):
                points[str(name).strip()] = (spec["points"], spec.get("cap_per_day"))
            else:
                points[str(name).strip()] = (spec, None)
        fit = []
        for rule in data.get("fit") or []:
            kind = next(k for k in ("in", "equals", "between", "contains") if k in rule)
            fit.append(FitSpec(rule["field"], rule["points"], kind, rule[kind]))
        sla = data.get("sla") or {}
        bant = data.get("bant") or {}
        recycle = data.get("recycle") or {}
        decay = data.get("decay")
        return RefRules(
            threshold=mql["threshold"],
            min_fit=mql.get("min_fit"),
            min_engagement=mql.get("min_engagement"),
            points=points,
            fit=tuple(fit),
            half_life=duration(decay["half_life"]) if decay else None,
            first_contact=duration(sla.get("mql_first_contact", "24h")),
            follow_up=duration(sla.get("sql_follow_up", "48h")),
            calendar=RefCalendar.from_dict(sla["calendar"]) if sla.get("calendar") else None,
            bant_required=bant.get("required", 3),
            bant_mandatory=frozenset(bant.get("mandatory", ())),
            recycle_factor=recycle.get("engagement_factor", 0.0),
            disqualified_requalify=recycle.get("disqualified_can_requalify", False),
        )

    def due(self, start: datetime, window: timedelta) -> datetime:
        if self.calendar is None:
            return start.astimezone(UTC) + window
        return self.calendar.add(start, window)


# ---------------------------------------------------------------------------------------------
# Inputs and outputs, as plain values
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefEvent:
    event_id: str
    lead_id: str
    type: str
    occurred_at: datetime
    attributes: Mapping[str, Any] = field(default_factory=dict)


def event_from(data: Mapping[str, Any] | Any) -> RefEvent:
    """A RefEvent from a mapping (or anything with the same attributes, e.g. a wire model)."""
    get = data.get if isinstance(data, Mapping) else lambda k: getattr(data, k, None)
    occurred_at = get("occurred_at")
    if not isinstance(occurred_at, datetime) or occurred_at.tzinfo is None:
        raise ValueError(f"occurred_at must be an aware datetime, got {occurred_at!r}")
    return RefEvent(
        event_id=str(get("event_id")).strip(),
        lead_id=str(get("lead_id")).strip(),
        type=str(get("type")).strip(),
        occurred_at=occurred_at,
        attributes=dict(get("attributes") or {}),
    )


@dataclass(frozen=True)
class RefActivity:
    activity_id: str
    lead_id: str
    type: str
    occurred_at: datetime
    bant: Mapping[str, bool] | None = None
    owner: str | None = None


@dataclass(frozen=True)
class RefHandoff:
    lead_id: str
    triggering_event_id: str
    qualified_at: datetime
    score: float
    fit_score: float
    engagement_score: float
    first_contact_due_at: datetime


@dataclass(frozen=True)
class RefTransition:
    lead_id: str
    from_stage: str
    to_stage: str
    occurred_at: datetime
    missing_bant: tuple[str, ...] = ()
    kind: str = "stage_change"  # or reassigned: from_stage == to_stage
    from_owner: str | None = None
    to_owner: str | None = None


@dataclass
class RefClock:
    kind: str  # mql_first_contact | sql_follow_up
    started_at: datetime
    due_at: datetime
    status: str = "open"  # open | met | breached | closed


@dataclass
class _Accepted:
    event: RefEvent
    raw_points: float  # the rule's points, before the daily cap and decay
    weight: float = 1.0  # recycling factors applied since it was accepted
    capped: bool = False  # its type has a cap_per_day
    # Accepted when its day was beyond the cap memory: counts min(points, cap), shares nothing.
    forgotten_day: bool = False


@dataclass
class RefLead:
    lead_id: str
    stage: str = "lead"
    accepted: list[_Accepted] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)
    activity_ids: set[str] = field(default_factory=set)
    handoffs: list[RefHandoff] = field(default_factory=list)
    clocks: list[RefClock] = field(default_factory=list)
    contacts: list[datetime] = field(default_factory=list)
    sales_actions: list[datetime] = field(default_factory=list)
    missing_bant: tuple[str, ...] = ()
    owner: str | None = None

    # --- recomputed from the accepted events each time -------------------------------------

    def attributes(self) -> dict[str, Any]:
        latest: dict[str, Any] = {}
        order = sorted(range(len(self.accepted)), key=lambda i: (_utc(self.accepted[i]), i))
        for i in order:
            latest.update(self.accepted[i].event.attributes)
        return latest

    def fit(self, rules: RefRules) -> float:
        attributes = self.attributes()
        total = 0.0
        for rule in rules.fit:
            if rule.matches(attributes.get(rule.field)):
                total += rule.points
        return round(total, DIGITS)

    def capped_points(self, rules: RefRules) -> list[float]:
        """Each accepted event's points after its type's daily cap, recomputed from scratch: per
        type and UTC day, the cap is handed out in event time (ties: arrival order)."""
        out = [a.raw_points for a in self.accepted]
        days: dict[tuple[str, date], list[int]] = {}
        for i, a in enumerate(self.accepted):
            if a.capped and a.forgotten_day:
                out[i] = min(a.raw_points, _cap(rules, a))
            elif a.capped:
                days.setdefault((a.event.type, _utc(a).date()), []).append(i)
        for members in days.values():
            left = _cap(rules, self.accepted[members[0]])
            for i in sorted(members, key=lambda i: (_utc(self.accepted[i]), i)):
                out[i] = max(0.0, min(self.accepted[i].raw_points, left))
                left -= out[i]
        return out

    def engagement(self, rules: RefRules) -> float:
        if not self.accepted:
            return 0.0
        clock = max(_utc(a) for a in self.accepted)
        total = 0.0
        for a, points in zip(self.accepted, self.capped_points(rules), strict=True):
            value = points * a.weight
            if rules.half_life is not None:
                value *= math.pow(0.5, (clock - _utc(a)) / rules.half_life)
            total += value
        return round(total, DIGITS)

    def score(self, rules: RefRules) -> tuple[float, float, float]:
        fit, engagement = self.fit(rules), self.engagement(rules)
        return fit, engagement, round(fit + engagement, DIGITS)


def _cap(rules: RefRules, accepted: _Accepted) -> float:
    cap = rules.points[accepted.event.type][1]
    assert cap is not None
    return cap


def _utc(item: _Accepted | datetime) -> datetime:
    at = item.event.occurred_at if isinstance(item, _Accepted) else item
    return at.astimezone(UTC)


class Reference:
    """Leads as the docs describe them, fed one input at a time in arrival order."""

    def __init__(self, rules: RefRules | Mapping[str, Any]) -> None:
        self.rules = rules if isinstance(rules, RefRules) else RefRules.from_dict(rules)
        self.leads: dict[str, RefLead] = {}
        self.handoffs: list[RefHandoff] = []
        self.transitions: list[RefTransition] = []

    def lead(self, lead_id: str) -> RefLead:
        if lead_id not in self.leads:
            self.leads[lead_id] = RefLead(lead_id)
        return self.leads[lead_id]

    def run(self, events: Iterable[RefEvent]) -> Reference:
        for event in events:
            self.engagement(event)
        return self

    # --- engagement ---------------------------------------------------------------------------

    def engagement(self, event: RefEvent) -> RefHandoff | None:
        lead = self.lead(event.lead_id)
        if event.event_id in lead.event_ids:
            return None  # a duplicate changes nothing
        lead.event_ids.add(event.event_id)
        lead.accepted.append(self._accept(lead, event))
        if not self._may_qualify(lead.stage):
            return None
        fit, engagement, total = lead.score(self.rules)
        rules = self.rules
        if total < rules.threshold:
            return None
        if rules.min_fit is not None and fit < rules.min_fit:
            return None
        if rules.min_engagement is not None and engagement < rules.min_engagement:
            return None
        handoff = RefHandoff(
            lead_id=lead.lead_id,
            triggering_event_id=event.event_id,
            qualified_at=event.occurred_at,
            score=total,
            fit_score=fit,
            engagement_score=engagement,
            first_contact_due_at=rules.due(event.occurred_at, rules.first_contact),
        )
        self._move(lead, "mql", event.occurred_at)
        lead.missing_bant = ()
        lead.handoffs.append(handoff)
        self.handoffs.append(handoff)
        self._open_first_contact(lead, handoff)
        return handoff

    def _may_qualify(self, stage: str) -> bool:
        if stage == "disqualified":
            return self.rules.disqualified_requalify
        return stage in ("lead", "nurture")

    def _accept(self, lead: RefLead, event: RefEvent) -> _Accepted:
        spec = self.rules.points.get(event.type)
        if spec is None:
            return _Accepted(event, 0.0)
        points, cap = spec
        if cap is None:
            return _Accepted(event, points)
        day = _utc(event.occurred_at).date()
        newest = max([_utc(a) for a in lead.accepted] + [_utc(event.occurred_at)]).date()
        forgotten = day < newest - timedelta(days=CAP_MEMORY_DAYS)
        return _Accepted(event, points, capped=True, forgotten_day=forgotten)

    # --- sales ---------------------------------------------------------------------------------

    def activity(self, activity: RefActivity) -> list[RefTransition]:
        lead = self.lead(activity.lead_id)
        if activity.activity_id in lead.activity_ids:
            return []
        lead.activity_ids.add(activity.activity_id)
        at = activity.occurred_at
        if activity.type == "reassigned":
            if activity.owner == lead.owner:
                return []
            moved = RefTransition(
                lead.lead_id,
                lead.stage,
                lead.stage,
                at,
                (),
                "reassigned",
                lead.owner,
                activity.owner,
            )
            lead.owner = activity.owner
            self.transitions.append(moved)
            return [moved]
        if activity.owner:
            lead.owner = activity.owner
        if activity.type in CONTACTS:
            lead.contacts.append(at)
            self._act_on(lead, "mql_first_contact", at)
        if activity.type == "sales_action":
            lead.sales_actions.append(at)
            self._act_on(lead, "sql_follow_up", at)
        if lead.stage in ("won", "lost"):
            return []
        before = len(self.transitions)
        if activity.type == "bant_assessed":
            self._assessed(lead, activity)
        elif activity.type in ("disqualified", "won", "lost") and lead.stage != activity.type:
            self._move(lead, activity.type, at)
            self._close_open(lead, at)
        return self.transitions[before:]

    def _assessed(self, lead: RefLead, activity: RefActivity) -> None:
        bant = activity.bant or {}
        held = [c for c in BANT if bant.get(c)]
        missing = tuple(c for c in BANT if not bant.get(c))
        passes = len(held) >= self.rules.bant_required and all(
            c in held for c in self.rules.bant_mandatory
        )
        at = activity.occurred_at
        if not passes:
            lead.missing_bant = missing
            if lead.stage == "nurture":
                return
            self._move(lead, "nurture", at, missing)
            for a in lead.accepted:
                a.weight *= self.rules.recycle_factor
            self._close_open(lead, at)
            return
        if lead.stage == "sql":
            return
        self._move(lead, "sql", at)
        lead.missing_bant = ()
        clock = RefClock("sql_follow_up", at, self.rules.due(at, self.rules.follow_up))
        self._settle(clock, [max(lead.sales_actions, key=_utc)] if lead.sales_actions else [])
        lead.clocks.append(clock)

    def _open_first_contact(self, lead: RefLead, handoff: RefHandoff) -> None:
        start = handoff.qualified_at
        clock = RefClock("mql_first_contact", start, handoff.first_contact_due_at)
        self._settle(clock, lead.contacts)
        lead.clocks.append(clock)

    @staticmethod
    def _settle(clock: RefClock, actions: list[datetime]) -> None:
        after_start = [t for t in actions if _utc(t) >= _utc(clock.started_at)]
        if after_start:
            first = min(after_start, key=_utc)
            clock.status = "met" if _utc(first) <= _utc(clock.due_at) else "breached"

    @staticmethod
    def _act_on(lead: RefLead, kind: str, at: datetime) -> None:
        for clock in lead.clocks:
            if clock.kind == kind and clock.status == "open" and _utc(clock.started_at) <= _utc(at):
                clock.status = "met" if _utc(at) <= _utc(clock.due_at) else "breached"

    @staticmethod
    def _close_open(lead: RefLead, at: datetime) -> None:
        for clock in lead.clocks:
            if clock.status == "open":
                clock.status = "breached" if _utc(at) > _utc(clock.due_at) else "closed"

    def _move(
        self, lead: RefLead, to_stage: str, at: datetime, missing: tuple[str, ...] = ()
    ) -> None:
        self.transitions.append(RefTransition(lead.lead_id, lead.stage, to_stage, at, missing))
        lead.stage = to_stage
