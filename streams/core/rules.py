"""The rules file: MQL threshold, engagement points, fit rules, decay and SLA windows.

Parsed once at start-up; a bad file fails with a message naming the field that is wrong.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, ClassVar, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.engagement import KNOWN_EVENT_TYPES, AttributeValue
from schemas.lifecycle import BantCriterion
from streams.core.calendar import BusinessCalendar
from streams.core.durations import format_duration, parse_duration
from streams.core.yamlfile import read_yaml_mapping


def _duration(value: Any) -> timedelta:
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return parse_duration(f"{value}s")
    if isinstance(value, str):
        return parse_duration(value)
    raise ValueError("expected a duration such as '24h', '90s' or '30d'")


Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqlRule(_Frozen):
    threshold: float = Field(gt=0, description="Score at which a lead becomes an MQL.")
    min_fit: float | None = Field(default=None, description="Fit score also required.")
    min_engagement: float | None = Field(default=None, description="Engagement also required.")


class EngagementRule(_Frozen):
    points: float = Field(description="Points each event of this type adds (negative: removes).")
    cap_per_day: float | None = Field(
        default=None,
        gt=0,
        description="Most points this type can add per UTC day of occurred_at (positive points).",
    )

    @model_validator(mode="after")
    def _cap_needs_positive_points(self) -> EngagementRule:
        if self.cap_per_day is not None and self.points <= 0:
            raise ValueError("cap_per_day only applies to positive points")
        return self


def _engagement_rule(value: Any) -> Any:
    # `email_open: 5` is shorthand for `email_open: {points: 5}`.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"points": value}
    return value


class Matcher(_Frozen):
    """A test of one profile attribute: exactly one of in, equals, between, contains. Fit
    rules add points to it; routing queues match leads with it."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    field: str = Field(min_length=1, description="Profile attribute to match, e.g. industry.")
    in_: tuple[AttributeValue, ...] | None = Field(
        default=None, alias="in", description="Matches one of these values (case-insensitive)."
    )
    equals: AttributeValue = Field(default=None, description="Matches exactly this value.")
    between: tuple[float | None, float | None] | None = Field(
        default=None,
        description="Matches a number in [low, high], inclusive; null for an open end; numeric "
        'strings like "1,200" count.',
    )
    contains: tuple[str, ...] | None = Field(
        default=None,
        description="Matches text containing one of these parts (case-insensitive; job titles).",
    )

    # Normalised `in` values and `contains` parts, computed once: matching is on the hot path.
    # cached_property (kept in the instance __dict__, which pydantic ignores for fields) rather
    # than PrivateAttr: reading a pydantic private attribute goes through __getattr__ after a
    # failed normal lookup, ~2 us a read, which made fit matching the slowest part of a fold.
    @cached_property
    def _in_norm(self) -> frozenset[str]:
        return frozenset(_norm(v) for v in self.in_ or ())

    @cached_property
    def _contains_norm(self) -> tuple[str, ...]:
        return tuple(part.casefold() for part in self.contains or ())

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with changes: the normalised values are worked out again."""
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("_in_norm", "_contains_norm"):
            copy.__dict__.pop(cached, None)
        return copy

    @model_validator(mode="after")
    def _exactly_one_condition(self) -> Self:
        given = [
            name
            for name, value in (
                ("in", self.in_),
                ("equals", self.equals),
                ("between", self.between),
                ("contains", self.contains),
            )
            if value is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"{self.kind} needs exactly one of 'in', 'equals', 'between', 'contains'"
                f" (got {', '.join(given) or 'none'})"
            )
        if self.between is not None:
            lo, hi = self.between
            if lo is None and hi is None:
                raise ValueError("between needs at least one bound")
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"between: lower bound {lo} is above upper bound {hi}")
        return self

    kind: ClassVar[str] = "a matcher"

    def describe(self) -> str:
        if self.in_ is not None:
            return f"{self.field} in [{', '.join(str(v) for v in self.in_)}]"
        if self.contains is not None:
            return f"{self.field} contains [{', '.join(self.contains)}]"
        if self.between is not None:
            lo, hi = self.between
            if hi is None:
                return f"{self.field} >= {lo:g}"
            if lo is None:
                return f"{self.field} <= {hi:g}"
            return f"{self.field} between {lo:g} and {hi:g}"
        return f"{self.field} = {self.equals}"

    def matches(self, value: AttributeValue) -> bool:
        if value is None:
            return False
        if self.in_ is not None:
            return _norm(value) in self._in_norm
        if self.equals is not None:
            return _norm(value) == _norm(self.equals)
        if self.contains is not None:
            text = str(value).casefold()
            return any(part in text for part in self._contains_norm)
        number = _as_number(value)
        if number is None or self.between is None:
            return False
        lo, hi = self.between
        return (lo is None or number >= lo) and (hi is None or number <= hi)


class FitRule(Matcher):
    """Points for a profile attribute, e.g. {field: industry, in: [software], points: 15}."""

    points: float = Field(description="Fit points when the attribute matches.")
    name: str | None = Field(default=None, description="Label shown in reasons and explain.")

    kind: ClassVar[str] = "a fit rule"

    def describe(self) -> str:
        return self.name or super().describe()


def _norm(value: AttributeValue) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip().casefold()


def _as_number(value: AttributeValue) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(str(value).replace(",", "").strip())
    except ValueError:
        return None


class DecayRule(_Frozen):
    half_life: Duration = Field(description="Engagement points halve every half_life (event time).")


class SlaRule(_Frozen):
    mql_first_contact: Duration = Field(
        default=timedelta(hours=24),
        description="Sales contacts an MQL within this of its handoff (`first_contact_due_at` "
        'on the handoff). Durations read "24h", "90s", "30d".',
    )
    sql_follow_up: Duration = Field(
        default=timedelta(hours=48), description="Sales acts on an SQL within this."
    )
    early_warning: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Also warn at this share of the window (e.g. 0.75); off by default.",
    )
    backfill_grace: Duration = Field(
        default=timedelta(hours=1),
        description="A deadline already past by more than this when first seen is recorded "
        "as expired, without an alert (backfills must not page anyone).",
    )
    calendar: BusinessCalendar | None = Field(
        default=None, description="Count only working time (time zone, days, hours, holidays)."
    )


class BantRule(_Frozen):
    required: int = Field(default=3, ge=1, le=4, description="Criteria that must hold (of 4).")
    mandatory: tuple[BantCriterion, ...] = Field(
        default=(), description="Criteria that must hold whatever the count."
    )


class RecycleRule(_Frozen):
    engagement_factor: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Engagement kept when sales sends a lead back to nurture (0 = reset).",
    )
    disqualified_can_requalify: bool = Field(
        default=False, description="A disqualified lead may become an MQL again."
    )


class ReportingRule(_Frozen):
    timezone: str = Field(
        default="UTC", description="KPIs are counted per calendar day in this time zone."
    )

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as Asia/Tokyo"
            ) from None
        return value


class RoutingMember(_Frozen):
    owner: str = Field(min_length=1, max_length=256, description="The salesperson (CRM user).")
    weight: int = Field(
        default=1, ge=1, le=1000, description="Share of the queue's leads: 2 gets twice as many."
    )
    capacity_per_day: int | None = Field(
        default=None,
        ge=1,
        description="Most leads a day (reporting.timezone, by qualified_at); unset: no limit.",
    )


class RoutingQueue(_Frozen):
    name: str = Field(min_length=1, max_length=128, description="Shown on handoffs and KPIs.")
    when: tuple[Matcher, ...] = Field(
        default=(),
        description="Every matcher must match (fit rules' in, equals, between, contains); "
        "empty: every lead (a catch-all queue, last).",
    )
    members: tuple[RoutingMember, ...] = Field(
        min_length=1, description="Who gets the leads, by weighted round robin."
    )
    escalate_to: str | None = Field(
        default=None,
        min_length=1,
        description="Gets the lead when every member is away or at capacity, and SLA breaches.",
    )

    @model_validator(mode="after")
    def _members_once(self) -> RoutingQueue:
        owners = [m.owner for m in self.members]
        twice = sorted({o for o in owners if owners.count(o) > 1})
        if twice:
            raise ValueError(f"queue {self.name!r} lists {', '.join(twice)} more than once")
        return self

    def matches(self, attributes: Mapping[str, AttributeValue]) -> bool:
        return all(m.matches(attributes.get(m.field)) for m in self.when)


class AwayWindow(_Frozen):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    owner: str = Field(min_length=1, description="A member of any queue.")
    from_: AwareDatetime = Field(alias="from", description="Away from (with a UTC offset).")
    until: AwareDatetime = Field(description="Back at (exclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> AwayWindow:
        if self.until <= self.from_:
            raise ValueError(f"away window of {self.owner}: until must be after from")
        return self

    def covers(self, at: datetime) -> bool:
        return self.from_ <= at < self.until


class RoutingRule(_Frozen):
    queues: tuple[RoutingQueue, ...] = Field(
        min_length=1, description="The first queue whose `when` matches takes the lead."
    )
    away: tuple[AwayWindow, ...] = Field(
        default=(), description="Members skipped while away (holidays, leave)."
    )
    reassign_after_breach: bool = Field(
        default=False,
        description="A missed first contact moves the lead to the next member, with a new clock.",
    )

    @property
    def owners(self) -> frozenset[str]:
        """Every member of a queue and every escalate_to: the team the rules know."""
        members = {m.owner for q in self.queues for m in q.members}
        return frozenset(members | {q.escalate_to for q in self.queues if q.escalate_to})

    @model_validator(mode="after")
    def _names_once(self) -> RoutingRule:
        names = [q.name for q in self.queues]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"queue names must be unique: {', '.join(twice)} used twice")
        members = {m.owner for q in self.queues for m in q.members}
        strangers = sorted({w.owner for w in self.away} - members)
        if strangers:
            raise ValueError(f"away: {', '.join(strangers)} is not a member of any queue (a typo?)")
        return self


class AttributionRule(_Frozen):
    max_touches: int = Field(
        default=50,
        ge=2,
        le=500,
        description="Touches kept per qualification: the first, and the newest up to this many.",
    )


class IdentityRule(_Frozen):
    retention: Duration = Field(
        default=timedelta(days=30),
        description="How long an anonymous visitor's events are kept for a later identify "
        "(docs/tracker.md); an idle visitor is forgotten after it.",
    )
    max_events: int = Field(
        default=500,
        ge=1,
        le=10_000,
        description="Most events kept per anonymous visitor (the newest by occurred_at).",
    )

    @field_validator("retention")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0")
        return value


class TrackerPage(_Frozen):
    match: str = Field(
        min_length=1,
        description="A path prefix (`/pricing` matches /pricing and /pricing/teams) or, "
        "starting with `~`, a regular expression searched in the path.",
    )
    type: str = Field(min_length=1, description="The event type a view of such a page sends.")

    @field_validator("match")
    @classmethod
    def _a_path_or_a_pattern(cls, value: str) -> str:
        if value.startswith("~"):
            try:
                re.compile(value[1:])
            except re.error as exc:
                raise ValueError(f"not a regular expression after '~': {exc}") from None
        elif not value.startswith("/"):
            raise ValueError("a path prefix starts with '/' (or '~' for a regular expression)")
        return value


class TrackerRule(_Frozen):
    pages: tuple[TrackerPage, ...] = Field(
        default=(),
        description="Page-type rules of tracker.js: the first match decides; other pages send "
        "page_view.",
    )
    events: tuple[str, ...] = Field(
        default=(),
        description="Event types `leadflow.track(type)` may send with a tracker token (besides "
        "page_view, opt_out and the pages' types).",
    )


class Rules(_Frozen):
    """The effective rules. `version` is a content hash, stamped on every output."""

    mql: MqlRule = Field(description="When a lead becomes an MQL.")
    engagement: dict[
        Annotated[str, Field(min_length=1)],
        Annotated[EngagementRule, BeforeValidator(_engagement_rule)],
    ] = Field(
        default_factory=dict,
        description="Points per event type: a number (`email_open: 5`) or `{points, "
        "cap_per_day}`; negative points are allowed (opt_out).",
    )
    fit: tuple[FitRule, ...] = Field(
        default=(),
        description="Fit points per profile attribute: each rule has exactly one of in, equals, "
        "between, contains; every matching rule adds its points.",
    )
    decay: DecayRule | None = Field(default=None, description="Engagement decay; off if unset.")
    sla: SlaRule = Field(default_factory=SlaRule, description="Sales deadlines (SLA clocks).")
    bant: BantRule = Field(default_factory=BantRule, description="When a BANT makes an SQL.")
    recycle: RecycleRule = Field(
        default_factory=RecycleRule, description="What nurture and disqualification keep."
    )
    reasons_limit: int = Field(default=6, ge=1, le=50, description="Reasons kept on a handoff.")
    history_limit: int = Field(
        default=20,
        ge=1,
        le=500,
        description="Recent contributing events and stage changes kept per lead (explain).",
    )
    reporting: ReportingRule = Field(
        default_factory=lambda: ReportingRule(), description="How KPIs are counted."
    )
    routing: RoutingRule | None = Field(
        default=None,
        description="Who gets each MQL at handoff (docs/routing.md); unset: nobody until sales "
        "records an activity with an owner.",
    )
    identity: IdentityRule | None = Field(
        default=None,
        description="Anonymous visitors' history until identified (docs/tracker.md); unset: "
        "retention 30d, max_events 500.",
    )
    tracker: TrackerRule | None = Field(
        default=None, description="What tracker.js sends (docs/tracker.md)."
    )

    @model_validator(mode="after")
    def _tracker_types(self) -> Rules:
        if self.tracker is None:
            return self
        known = KNOWN_EVENT_TYPES | frozenset(self.engagement)
        named = [(f"pages[{i}].type", p.type) for i, p in enumerate(self.tracker.pages)]
        named += [(f"events[{i}]", t) for i, t in enumerate(self.tracker.events)]
        for where, event_type in named:
            if event_type not in known:
                raise ValueError(
                    f"tracker.{where}: {event_type!r} is neither a contract event type nor one "
                    "the rules score (engagement)"
                )
        return self

    @property
    def visitors(self) -> IdentityRule:
        """The identity rule in force (the defaults when the file has none)."""
        return self.identity or IdentityRule()

    @cached_property
    def tracker_types(self) -> frozenset[str]:
        """What a tracker-scoped token may send: page views, opt-outs, the pages' types and
        `tracker.events`."""
        own = {"page_view", "opt_out"}
        if self.tracker is not None:
            own |= {p.type for p in self.tracker.pages} | set(self.tracker.events)
        return frozenset(own)

    attribution: AttributionRule = Field(
        default_factory=AttributionRule,
        description='Source and campaign attribution (docs/kpis.md, "Attribution").',
    )

    @field_validator("engagement")
    @classmethod
    def _strip_type_names(cls, value: dict[str, EngagementRule]) -> dict[str, EngagementRule]:
        return {name.strip(): rule for name, rule in value.items()}

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Rules:
        """A copy with changes: the cached version and event types are worked out again."""
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("version", "event_types", "tracker_types"):
            copy.__dict__.pop(cached, None)
        return copy

    # Cached: the version is stamped on every handoff and the types are checked per batch.
    @cached_property
    def version(self) -> str:
        dumped = self.model_dump(mode="json", by_alias=True)
        for added in ("routing", "identity", "tracker"):
            if dumped.get(added) is None:
                dumped.pop(added, None)  # rules without it keep their earlier version
        if dumped.get("attribution") == AttributionRule().model_dump(mode="json"):
            dumped.pop("attribution", None)  # likewise rules with the default attribution
        canonical = orjson.dumps(dumped, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:12]

    @cached_property
    def event_types(self) -> frozenset[str]:
        """Types accepted on the engagement topic: the contract's plus those the rules score."""
        return KNOWN_EVENT_TYPES | frozenset(self.engagement)

    def points_for(self, event_type: str) -> EngagementRule | None:
        return self.engagement.get(event_type)


class RulesError(ValueError):
    """The rules file is unusable; the message names the file and every bad field."""


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_rules(data: Any, origin: str = "rules") -> Rules:
    try:
        return Rules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_location(tuple(err['loc']))}: {err['msg']}" for err in exc.errors()
        )
        raise RulesError(f"{origin}: {problems}") from None


def load_rules(path: Path | str) -> Rules:
    """Read and validate a YAML rules file."""
    path = Path(path)
    expected = "a mapping with at least 'mql.threshold'"
    data = read_yaml_mapping(path, "rules file", RulesError, expected)
    return parse_rules(data, origin=str(path))
