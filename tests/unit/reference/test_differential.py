"""The core against the independent reference model (tests/reference), on random rules and inputs.

Random rules (within what docs/rules.md allows), random engagement streams (duplicate ids, late
events, attribute updates, fixed offsets and zones with daylight saving) and sales activities.
Both sides must agree on scores (6 decimals), stages, handoffs (lead, triggering event, time,
first-contact due time), lifecycle transitions and SLA clocks (due times and verdicts).

`LEADFLOW_FUZZ_EXAMPLES` raises the example count (default: a few seconds' worth).
"""

from __future__ import annotations

import math
import os
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.activity import Bant, SalesActivity
from schemas.engagement import EngagementEvent
from streams.core.calendar import add_time
from streams.core.lead import LeadState, apply, replay, score
from streams.core.rules import parse_rules
from streams.core.sales import apply_activity, open_first_contact_clock
from tests.reference import RefActivity, Reference, RefRules, event_from

pytestmark = pytest.mark.unit

EXAMPLES = int(os.environ.get("LEADFLOW_FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # Berlin, New York and Santiago change clocks soon
LEADS = ["lead-a", "lead-b"]
TYPES = ["email_open", "download", "pricing_page_view", "opt_out", "page_view", "trade_show"]
UNSCORED = ["profile_updated", "email_click"]  # named by the contract, maybe not by the rules
ZONES: list[Any] = [
    UTC,
    timezone(timedelta(hours=9)),
    timezone(timedelta(hours=-5)),
    timezone(timedelta(hours=5, minutes=30)),
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("America/New_York"),
]
CALENDAR_ZONES = [
    "UTC",
    "Asia/Tokyo",
    "Europe/Berlin",
    "America/New_York",
    "America/Santiago",
    "Australia/Lord_Howe",
]
ATTRIBUTES: dict[str, list[Any]] = {
    "industry": ["software", "Software", " SOFTWARE ", "manufacturing", "Retail", None],
    "seniority": ["vp", "VP", "c_level", "Director", "intern", True],
    "company_size": [
        50,
        100,
        100.0,
        "1,200",
        " 250 ",
        "5000",
        4999.5,
        "n/a",
        "12,000",
        5001,
        "1e3",
    ],
    "job_title": ["Head of Marketing", "VP Sales", "chief executive", "Intern", "MARKETING mgr"],
}
IN_VALUES: dict[str, list[Any]] = {
    "industry": ["software", "MANUFACTURING", "retail ", "it_services"],
    "seniority": ["vp", "C_Level", "director", "true"],
    "company_size": [100, 5000, "1,200", 250],
}


def fit_rules() -> st.SearchStrategy[dict[str, Any]]:
    points = st.integers(-10, 30)
    in_rule = st.sampled_from(sorted(IN_VALUES)).flatmap(
        lambda f: st.fixed_dictionaries(
            {
                "field": st.just(f),
                "in": st.lists(st.sampled_from(IN_VALUES[f]), min_size=1, max_size=3),
                "points": points,
            }
        )
    )
    equals_rule = st.sampled_from(sorted(IN_VALUES)).flatmap(
        lambda f: st.fixed_dictionaries(
            {"field": st.just(f), "equals": st.sampled_from(IN_VALUES[f]), "points": points}
        )
    )
    bounds = st.sampled_from([None, 0, 50, 100, 250, 1200, 5000, 5001])

    def valid(t: tuple[int | None, int | None, int]) -> bool:
        low, high, _ = t
        return (low is not None or high is not None) and (
            low is None or high is None or low <= high
        )

    between_rule = st.tuples(bounds, bounds, points).filter(valid)
    contains_rule = st.fixed_dictionaries(
        {
            "field": st.just("job_title"),
            "contains": st.lists(
                st.sampled_from(["market", "VP", "Chief", "head", "sales"]), min_size=1, max_size=2
            ),
            "points": points,
        }
    )
    return st.one_of(
        in_rule,
        equals_rule,
        between_rule.map(
            lambda t: {"field": "company_size", "between": [t[0], t[1]], "points": t[2]}
        ),
        contains_rule,
    )


@st.composite
def calendars(draw: st.DrawFn) -> dict[str, Any]:
    start, end = draw(
        st.tuples(
            st.sampled_from(["00:00", "02:30", "08:30", "09:00", "11:15"]),
            st.sampled_from(["12:00", "18:00", "23:59", "24:00"]),
        )
    )
    days = draw(
        st.lists(
            st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
            min_size=1,
            max_size=7,
            unique=True,
        )
    )
    holidays = draw(
        st.lists(st.dates(date(2026, 3, 1), date(2026, 6, 30)).map(str), max_size=6, unique=True)
    )
    return {
        "timezone": draw(st.sampled_from(CALENDAR_ZONES)),
        "working_days": days,
        "hours": [start, end],
        "holidays": holidays,
    }


@st.composite
def rules_dicts(draw: st.DrawFn) -> dict[str, Any]:
    engagement: dict[str, Any] = {}
    for event_type in draw(st.lists(st.sampled_from(TYPES), min_size=1, unique=True)):
        points = draw(st.integers(-60, 60))
        if points > 0 and draw(st.booleans()):
            engagement[event_type] = {"points": points, "cap_per_day": draw(st.integers(1, 80))}
        else:
            engagement[event_type] = points
    mql: dict[str, Any] = {"threshold": draw(st.integers(1, 150))}
    if draw(st.booleans()):
        mql["min_fit"] = draw(st.integers(0, 40))
    if draw(st.booleans()):
        mql["min_engagement"] = draw(st.integers(-10, 60))
    sla: dict[str, Any] = {
        "mql_first_contact": draw(st.sampled_from(["24h", "90s", "8h", "3d"])),
        "sql_follow_up": draw(st.sampled_from(["48h", "1h", "2d"])),
    }
    if draw(st.booleans()):
        sla["calendar"] = draw(calendars())
    data: dict[str, Any] = {
        "mql": mql,
        "engagement": engagement,
        "fit": draw(st.lists(fit_rules(), max_size=4)),
        "sla": sla,
        "bant": {
            "required": draw(st.integers(1, 4)),
            "mandatory": draw(
                st.lists(
                    st.sampled_from(["budget", "authority", "need", "timeframe"]),
                    max_size=2,
                    unique=True,
                )
            ),
        },
        "recycle": {
            "engagement_factor": draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])),
            "disqualified_can_requalify": draw(st.booleans()),
        },
    }
    if draw(st.booleans()):
        data["decay"] = {"half_life": draw(st.sampled_from(["90m", "12h", "1d", "7d", "30d"]))}
    return data


def instants() -> st.SearchStrategy[datetime]:
    """Event times within 80 days, often on the same few days (caps), in several zones."""
    minutes = st.one_of(
        st.integers(0, 80 * 24 * 60),
        st.integers(0, 3).map(lambda d: d * 24 * 60 + 600),  # the same instants again
        st.integers(0, 2 * 24 * 60),
    )
    return st.tuples(minutes, st.sampled_from(ZONES)).map(
        lambda p: (T0 + timedelta(minutes=p[0])).astimezone(p[1])
    )


@st.composite
def engagement_events(draw: st.DrawFn, lead_id: str | None = None) -> EngagementEvent:
    attributes = None
    if draw(st.integers(0, 3)) == 0:
        fields = draw(st.lists(st.sampled_from(sorted(ATTRIBUTES)), min_size=1, unique=True))
        attributes = {f: draw(st.sampled_from(ATTRIBUTES[f])) for f in fields}
    return EngagementEvent(
        event_id=f"e{draw(st.integers(0, 40))}",  # a small pool: duplicates
        lead_id=lead_id or draw(st.sampled_from(LEADS)),
        type=draw(st.sampled_from(TYPES + UNSCORED)),
        occurred_at=draw(instants()),
        attributes=attributes,
    )


@st.composite
def activities(draw: st.DrawFn) -> SalesActivity:
    kind = draw(
        st.sampled_from(
            [
                *["contacted", "bant_assessed", "bant_assessed", "sales_action", "sales_action"],
                *["disqualified", "won", "lost", "reassigned"],
            ]
        )
    )
    bant = None
    if kind == "bant_assessed":
        bant = Bant(
            **{c: draw(st.booleans()) for c in ("budget", "authority", "need", "timeframe")}
        )
    return SalesActivity(
        activity_id=f"a{draw(st.integers(0, 12))}",
        lead_id=draw(st.sampled_from(LEADS)),
        type=kind,
        occurred_at=draw(instants()),
        bant=bant,
        owner=draw(
            st.sampled_from(
                ["rep-a", "rep-b"] if kind == "reassigned" else [None, "rep-a", "rep-b"]
            )
        ),
    )


def ref_activity(activity: SalesActivity) -> RefActivity:
    return RefActivity(
        activity_id=activity.activity_id,
        lead_id=activity.lead_id,
        type=activity.type,
        occurred_at=activity.occurred_at,
        bant=activity.bant.model_dump() if activity.bant else None,
        owner=activity.owner,
    )


def utc(at: datetime) -> datetime:
    return at.astimezone(UTC)


def close(a: float, b: float) -> bool:
    """Equal at 6 decimals (either side may round the last digit the other way)."""
    return math.isclose(a, b, rel_tol=0, abs_tol=1.5e-6)


# ---------------------------------------------------------------------------------------------


@FUZZ
@given(rules_dicts(), st.lists(engagement_events(), max_size=40))
def test_replay_scores_and_handoffs_equal_the_reference(
    data: dict[str, Any], events: list[EngagementEvent]
) -> None:
    rules = parse_rules(data)
    core = replay(events, rules)
    ref = Reference(RefRules.from_dict(data)).run(event_from(e) for e in events)

    assert [(h.lead_id, h.triggering_event_id) for h in core.handoffs] == [
        (h.lead_id, h.triggering_event_id) for h in ref.handoffs
    ]
    for mine, theirs in zip(core.handoffs, ref.handoffs, strict=True):
        assert utc(mine.qualified_at) == utc(theirs.qualified_at)
        assert utc(mine.first_contact_due_at) == utc(theirs.first_contact_due_at)
        assert close(mine.score, theirs.score), (mine.score, theirs.score)
        assert close(mine.fit_score, theirs.fit_score)
        assert close(mine.engagement_score, theirs.engagement_score)
    assert set(core.leads) == set(ref.leads)
    for lead_id, state in core.leads.items():
        expected = ref.leads[lead_id]
        now = score(state, rules)
        assert close(now.fit, expected.fit(ref.rules)), lead_id
        assert close(now.engagement, expected.engagement(ref.rules)), lead_id
        assert state.stage == expected.stage


@FUZZ
@given(
    rules_dicts(),
    st.lists(
        st.one_of(engagement_events(), engagement_events(), engagement_events(), activities()),
        max_size=40,
    ),
)
def test_lifecycle_stages_transitions_and_clocks_equal_the_reference(
    data: dict[str, Any], steps: list[EngagementEvent | SalesActivity]
) -> None:
    rules = parse_rules(data)
    ref = Reference(RefRules.from_dict(data))
    states: dict[str, LeadState] = {}
    transitions: list[tuple[Any, ...]] = []
    expected_transitions = []
    for step in steps:
        state = states.get(step.lead_id) or LeadState(lead_id=step.lead_id)
        if isinstance(step, EngagementEvent):
            before = state.stage
            state, handoffs = apply(state, step, rules)
            mine = ref.engagement(event_from(step))
            assert [h.triggering_event_id for h in handoffs] == (
                [mine.triggering_event_id] if mine else []
            )
            for h in handoffs:
                assert mine is not None
                assert utc(h.first_contact_due_at) == utc(mine.first_contact_due_at)
                assert close(h.score, mine.score)
                transitions.append(
                    (h.lead_id, before, "mql", utc(h.qualified_at), (), "stage_change", None, None)
                )
                # The sales agent sees the handoff at once (no backfill).
                state = open_first_contact_clock(state, h, rules, now=h.qualified_at)
        else:
            state, moved = apply_activity(state, step, rules, now=step.occurred_at)
            ref.activity(ref_activity(step))
            transitions += [
                (
                    t.lead_id,
                    t.from_stage,
                    t.to_stage,
                    utc(t.occurred_at),
                    tuple(t.missing_bant),
                    t.kind,
                    t.from_owner,
                    t.to_owner,
                )
                for t in moved
            ]
        states[step.lead_id] = state

    expected_transitions = [
        (
            t.lead_id,
            t.from_stage,
            t.to_stage,
            utc(t.occurred_at),
            t.missing_bant,
            t.kind,
            t.from_owner,
            t.to_owner,
        )
        for t in ref.transitions
    ]
    assert transitions == expected_transitions
    for lead_id, state in states.items():
        expected = ref.leads[lead_id]
        assert state.stage == expected.stage, lead_id
        assert state.owner == expected.owner, lead_id
        now = score(state, rules)
        assert close(now.fit, expected.fit(ref.rules)), lead_id
        assert close(now.engagement, expected.engagement(ref.rules)), lead_id
        assert [(c.kind, utc(c.started_at), utc(c.due_at), c.status) for c in state.clocks] == [
            (c.kind, utc(c.started_at), utc(c.due_at), c.status) for c in expected.clocks
        ]


@FUZZ
@given(
    calendars(),
    st.datetimes(datetime(2026, 1, 1), datetime(2026, 12, 31), timezones=st.just(UTC)),
    st.integers(0, 60 * 60 * 60).map(lambda s: timedelta(seconds=s)),
)
def test_working_time_due_dates_equal_the_reference(
    calendar: dict[str, Any], start: datetime, window: timedelta
) -> None:
    rules = parse_rules({"mql": {"threshold": 1}, "sla": {"calendar": calendar}})
    ref = RefRules.from_dict({"mql": {"threshold": 1}, "sla": {"calendar": calendar}})
    assert utc(add_time(rules.sla.calendar, start, window)) == ref.due(start, window)
