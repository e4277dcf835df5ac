"""Scoring a lead: engagement, caps, decay, fit, qualification and the MQL handoff."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from schemas.engagement import AttributeValue, EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core.lead import LeadState, apply, apply_all, handoff_id_for, replay, score
from streams.core.rules import Rules, parse_rules
from streams.core.sales import recycled_cap_shares, recycled_engagement
from streams.store.codec import lead_from_json, lead_to_json

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
JST = timezone(timedelta(hours=9))

BASE: dict[str, Any] = {
    "mql": {"threshold": 100},
    "engagement": {
        "email_open": 5,
        "email_click": 8,
        "download": 15,
        "pricing_page_view": {"points": 25, "cap_per_day": 50},
        "demo_request": 40,
        "opt_out": -50,
    },
    "fit": [
        {"name": "Target industry", "field": "industry", "in": ["software", "manufacturing"],
         "points": 20},
        {"name": "Decision maker", "field": "seniority", "in": ["vp", "c_level"], "points": 20},
        {"field": "company_size", "between": [100, 5000], "points": 15},
    ],
    "sla": {"mql_first_contact": "24h"},
}  # fmt: skip


def make_rules(**changes: Any) -> Rules:
    """BASE with top-level sections replaced; `mql=` is merged into BASE's mql section."""
    data = {**BASE, **changes}
    if "mql" in changes:
        data["mql"] = {**BASE["mql"], **changes["mql"]}
    return parse_rules(data)


RULES = make_rules()
DECAYING = make_rules(decay={"half_life": "30d"})
HALF_LIFE = timedelta(days=30)

# A profile matching every fit rule in BASE, and the fit it earns.
GOOD_PROFILE: dict[str, AttributeValue] = {
    "industry": "software",
    "seniority": "vp",
    "company_size": 300,
}
GOOD_FIT = sum(rule.points for rule in RULES.fit)

_ids = itertools.count(1)


def event(
    type_: str,
    at: datetime = T0,
    *,
    id: str | None = None,
    lead: str = "lead-1",
    attrs: dict[str, AttributeValue] | None = None,
) -> EngagementEvent:
    return EngagementEvent(
        event_id=id or f"evt-{next(_ids)}",
        lead_id=lead,
        type=type_,
        occurred_at=at,
        attributes=attrs,
    )


def pts(type_: str, rules: Rules = RULES) -> float:
    rule = rules.points_for(type_)
    assert rule is not None, f"{type_} is not scored by these rules"
    return rule.points


def fold(
    events: Iterable[EngagementEvent], rules: Rules = RULES, lead: str = "lead-1"
) -> tuple[LeadState, list[MqlHandoff]]:
    return apply_all(LeadState(lead_id=lead), events, rules)


def engagement_points(state: LeadState) -> float:
    """Engagement before rounding, for exact comparisons."""
    return sum(t.points for t in state.engagement.values())


# --- scoring table --------------------------------------------------------------------------------

SCORING_CASES = [
    pytest.param([event("email_open")], 0, pts("email_open"), id="single-email-open"),
    pytest.param([event("demo_request")], 0, pts("demo_request"), id="single-demo-request"),
    pytest.param(
        [event("email_open"), event("email_open", T0 + HOUR), event("email_click", T0 + 2 * HOUR)],
        0,
        2 * pts("email_open") + pts("email_click"),
        id="points-add-up",
    ),
    pytest.param(
        [event("email_open"), event("download", T0 + HOUR), event("opt_out", T0 + 2 * HOUR)],
        0,
        pts("email_open") + pts("download") + pts("opt_out"),
        id="opt-out-subtracts",
    ),
    pytest.param(
        [event("page_view"), event("profile_updated", T0 + HOUR), event("webinar_attended")],
        0,
        0,
        id="contract-types-not-in-rules-add-nothing",
    ),
    pytest.param([event("form_submit", attrs=GOOD_PROFILE)], GOOD_FIT, 0, id="fit-from-attributes"),
    pytest.param(
        [event("form_submit", attrs={**GOOD_PROFILE, "industry": "retail"})],
        GOOD_FIT - RULES.fit[0].points,
        0,
        id="fit-only-matching-rules",
    ),
    pytest.param(
        [event("form_submit", attrs={"company_size": "1,200", "seniority": "C_Level"})],
        RULES.fit[1].points + RULES.fit[2].points,
        0,
        id="fit-normalises-values",
    ),
    pytest.param(
        [event("download", attrs=GOOD_PROFILE), event("email_open", T0 + HOUR)],
        GOOD_FIT,
        pts("download") + pts("email_open"),
        id="fit-plus-engagement",
    ),
]


@pytest.mark.parametrize(("events", "fit", "engagement"), SCORING_CASES)
def test_scoring(events: list[EngagementEvent], fit: float, engagement: float) -> None:
    state, _ = fold(events)
    current = score(state, RULES)
    assert current.fit == pytest.approx(fit)
    assert current.engagement == pytest.approx(engagement)
    assert current.total == pytest.approx(fit + engagement)
    assert state.events_counted == len(events)
    assert state.last_event_at == max(e.occurred_at for e in events)


def test_contract_type_not_in_rules_counts_as_seen_but_scores_nothing() -> None:
    before, _ = fold([event("email_open")])
    view = event("page_view", T0 + HOUR)
    after, handoffs = apply(before, view, RULES)
    assert score(after, RULES).total == score(before, RULES).total
    assert "page_view" not in after.engagement
    assert view.event_id in after.seen_event_ids
    assert after.events_counted == before.events_counted + 1
    assert handoffs == []


# --- daily caps -----------------------------------------------------------------------------------


def test_cap_per_day_stops_adding_within_a_utc_day() -> None:
    rule = RULES.engagement["pricing_page_view"]
    assert rule.cap_per_day == 2 * rule.points  # the scenario below relies on it
    views = [event("pricing_page_view", T0 + i * HOUR) for i in range(3)]
    totals = []
    state = LeadState(lead_id="lead-1")
    for view in views:
        state, _ = apply(state, view, RULES)
        totals.append(score(state, RULES).engagement)
    assert totals == [rule.points, 2 * rule.points, rule.cap_per_day]
    # The third view still counts as an event of its type, just for no points.
    assert state.engagement["pricing_page_view"].events == 3

    next_day, _ = apply(state, event("pricing_page_view", T0 + DAY), RULES)
    assert score(next_day, RULES).engagement == rule.cap_per_day + rule.points


def test_cap_per_day_partially_fills_the_last_event() -> None:
    rules = make_rules(engagement={"pricing_page_view": {"points": 25, "cap_per_day": 60}})
    state, _ = fold([event("pricing_page_view", T0 + i * HOUR) for i in range(4)], rules)
    assert score(state, rules).engagement == 60


def test_cap_day_is_the_utc_day() -> None:
    rule = RULES.engagement["pricing_page_view"]
    late_evening = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)
    first_two = [event("pricing_page_view", late_evening), event("pricing_page_view")]
    # 07:30 in Tokyo on 3 March is still 2 March (22:30) in UTC: same bucket, capped.
    same_utc_day = event("pricing_page_view", datetime(2026, 3, 3, 7, 30, tzinfo=JST))
    # 09:30 in Tokyo is 00:30 UTC on 3 March: a new day.
    next_utc_day = event("pricing_page_view", datetime(2026, 3, 3, 9, 30, tzinfo=JST))
    capped, _ = fold([*first_two, same_utc_day])
    fresh, _ = fold([*first_two, next_utc_day])
    assert score(capped, RULES).engagement == rule.cap_per_day
    assert score(fresh, RULES).engagement == rule.cap_per_day + rule.points


def test_cap_does_not_depend_on_arrival_order_without_decay() -> None:
    days = [T0, T0 + DAY, T0 + 2 * HOUR, T0 + DAY + HOUR, T0 + 3 * HOUR]
    in_order, _ = fold(event("pricing_page_view", at) for at in sorted(days))
    shuffled, _ = fold(event("pricing_page_view", at) for at in days)
    rule = RULES.engagement["pricing_page_view"]
    assert rule.cap_per_day is not None
    expected = min(3 * rule.points, rule.cap_per_day) + min(2 * rule.points, rule.cap_per_day)
    assert score(in_order, RULES).engagement == expected
    assert score(shuffled, RULES).engagement == expected


# Caps with decay: the cap goes to the day's earliest events (event time), whatever the order.
CAP_ONE = make_rules(
    engagement={**BASE["engagement"], "pricing_page_view": {"points": 25, "cap_per_day": 25}},
    decay={"half_life": "4h"},
)


def test_cap_with_decay_goes_to_the_earliest_event_of_the_day_in_any_order() -> None:
    # Cap: one view a day. Views at 09:00 and 10:00, a download at 13:00 moves the clock on.
    # Only the 09:00 view counts: 25 x 0.5^((13:00 - 09:00) / 4h) = 12.5, plus the download.
    views = [event("pricing_page_view", T0), event("pricing_page_view", T0 + HOUR)]
    download = event("download", T0 + 4 * HOUR)
    for order in itertools.permutations([*views, download]):
        for state in (fold(order, CAP_ONE)[0], one_by_one(order, CAP_ONE)):
            tally = state.engagement["pricing_page_view"]
            assert abs(tally.points - 12.5) < 1e-9, order
            assert tally.events == 2
            assert score(state, CAP_ONE).engagement == 27.5
            assert state.daily_points == {"pricing_page_view|2026-03-02": 25}
            (share,) = state.cap_shares["pricing_page_view|2026-03-02"]
            assert share[1:] == (25, 1.0)


def test_cap_with_decay_a_late_event_takes_part_of_the_cap_from_later_ones() -> None:
    # Cap 40 with 25 points: in event time 09:00 gets 25, 10:00 the 15 left, 11:00 nothing.
    # At the clock (11:00): 25 x 0.5^(2h/4h) + 15 x 0.5^(1h/4h).
    rules = make_rules(
        engagement={"pricing_page_view": {"points": 25, "cap_per_day": 40}},
        decay={"half_life": "4h"},
    )
    expected = 25 * 0.5 ** (2 / 4) + 15 * 0.5 ** (1 / 4)
    views = [event("pricing_page_view", T0 + i * HOUR) for i in range(3)]
    for order in itertools.permutations(views):
        for state in (fold(order, rules)[0], one_by_one(order, rules)):
            assert abs(engagement_points(state) - expected) < 1e-9, order
            assert state.daily_points == {"pricing_page_view|2026-03-02": 40}


def test_cap_taken_back_from_a_recycled_event_counts_at_its_weight() -> None:
    # No decay; recycling keeps half. The 10:00 view counted 25, halved to 12.5 by recycling;
    # a late 09:00 view then takes the day's cap: 25 for it, nothing left for 10:00.
    rules = make_rules(
        engagement={"pricing_page_view": {"points": 25, "cap_per_day": 25}},
        recycle={"engagement_factor": 0.5},
    )
    state = one_by_one([event("pricing_page_view", T0 + HOUR)], rules)
    state = replace(
        state,
        stage="nurture",
        engagement=recycled_engagement(state.engagement, rules),
        cap_shares=recycled_cap_shares(state.cap_shares, rules),
    )
    assert engagement_points(state) == 12.5
    late = event("pricing_page_view", T0)
    for after in (apply(state, late, rules)[0], apply_all(state, [late], rules)[0]):
        assert engagement_points(after) == 25


def test_a_state_stored_without_cap_times_keeps_the_arrival_order_rule() -> None:
    # States written before the cap shares were kept know the points used per day, not when:
    # a late event of such a day takes what is left of the cap (nothing here), as it used to.
    state = one_by_one([event("pricing_page_view", T0 + HOUR)], CAP_ONE)
    data = lead_to_json(state)
    del data["cap_shares"]
    old = lead_from_json(orjson.loads(orjson.dumps(data)), sorted(state.seen_event_ids))
    assert old.cap_shares == {} and old.daily_points == state.daily_points
    late = event("pricing_page_view", T0)
    for after in (apply(old, late, CAP_ONE)[0], apply_all(old, [late], CAP_ONE)[0]):
        assert engagement_points(after) == 25  # the 10:00 view keeps the cap
        assert after.cap_shares == {}
    # A day first seen after the upgrade is shared out in event time.
    next_day = [event("pricing_page_view", T0 + DAY + HOUR), event("pricing_page_view", T0 + DAY)]
    after, _ = apply_all(old, next_day, CAP_ONE)
    assert "pricing_page_view|2026-03-02" not in after.cap_shares
    assert [s[0] for s in after.cap_shares["pricing_page_view|2026-03-03"]] == [
        T0 + DAY - datetime(1970, 1, 1, tzinfo=UTC)
    ]


def one_by_one(events: Iterable[EngagementEvent], rules: Rules = RULES) -> LeadState:
    state = LeadState(lead_id="lead-1")
    for e in events:
        state, _ = apply(state, e, rules)
    return state


def test_regression_events_beyond_the_cap_memory_each_count_in_full() -> None:
    # Found by the reference model (tests/unit/reference): the cap memory reaches 35 days behind
    # the newest event; older events count in full. The core used to remember the old day again
    # after the first such event, so a second one from that day was capped.
    rule = RULES.engagement["pricing_page_view"]
    assert rule.cap_per_day == 2 * rule.points
    newest = event("download", T0 + 40 * DAY)  # not a capped type: the newest event still counts
    old_views = [event("pricing_page_view", T0 + i * HOUR) for i in range(3)]
    expected = pts("download") + 3 * rule.points  # uncapped: that day is forgotten
    for state in (fold([newest, *old_views])[0], one_by_one([newest, *old_views])):
        assert score(state, RULES).engagement == expected
        assert state.daily_points == {}  # nothing remembered beyond the 35 days


def test_regression_cap_memory_counts_from_the_newest_event_of_any_type() -> None:
    # Three views fill day 0's cap; a download 36 days later moves the newest event on, so a
    # late view from day 0 is beyond the memory and counts in full (it was capped to 0).
    rule = RULES.engagement["pricing_page_view"]
    views = [event("pricing_page_view", T0 + i * HOUR) for i in range(2)]
    events = [*views, event("download", T0 + 36 * DAY), event("pricing_page_view", T0 + 3 * HOUR)]
    expected = pts("download") + 3 * rule.points
    assert score(fold(events)[0], RULES).engagement == expected
    assert score(one_by_one(events), RULES).engagement == expected
    # Exactly 35 days behind is still remembered: capped.
    events[2] = event("download", T0 + 35 * DAY)
    assert score(fold(events)[0], RULES).engagement == pts("download") + rule.cap_per_day


# --- decay ----------------------------------------------------------------------------------------


def test_regression_decay_counts_elapsed_time_across_a_dst_change() -> None:
    # Found by the reference model: two event times in one ZoneInfo were subtracted as wall
    # times, so an event across Berlin's spring-forward decayed one hour too little.
    berlin = ZoneInfo("Europe/Berlin")
    first = datetime(2026, 3, 2, 10, 0, tzinfo=berlin)  # 09:00 UTC
    later = datetime(2026, 4, 1, 11, 0, tzinfo=berlin)  # 09:00 UTC, 30 days later (CEST)
    assert later.astimezone(UTC) - first.astimezone(UTC) == HALF_LIFE
    p = pts("email_click", DECAYING)
    for order in ([first, later], [later, first]):
        state, _ = fold([event("email_click", at) for at in order], DECAYING)
        assert abs(engagement_points(state) - (p / 2 + p)) < 1e-9


def test_one_half_life_later_earlier_points_are_halved() -> None:
    p = pts("email_click", DECAYING)
    first, _ = fold([event("email_click", T0)], DECAYING)
    assert engagement_points(first) == p
    later, _ = apply(first, event("email_click", T0 + HALF_LIFE), DECAYING)
    assert abs(engagement_points(later) - (p / 2 + p)) < 1e-9
    assert later.engagement_as_of == T0 + HALF_LIFE


def test_decay_follows_event_time_of_any_event() -> None:
    # An unscored event still moves the lead's engagement clock forward.
    p = pts("download", DECAYING)
    state, _ = fold([event("download", T0), event("page_view", T0 + 2 * HALF_LIFE)], DECAYING)
    assert abs(engagement_points(state) - p / 4) < 1e-9


def test_late_event_counts_decayed_to_the_engagement_clock() -> None:
    p = pts("email_click", DECAYING)
    newer = event("email_click", T0 + HALF_LIFE)
    older = event("email_click", T0)
    in_order, _ = fold([older, newer], DECAYING)
    late, _ = fold([newer, older], DECAYING)
    expected = p + p / 2
    assert abs(engagement_points(in_order) - expected) < 1e-9
    assert abs(engagement_points(late) - expected) < 1e-9
    # The late event does not move the clock back.
    assert late.engagement_as_of == newer.occurred_at
    assert late.last_event_at == newer.occurred_at


def test_decay_reason_shows_current_points() -> None:
    p = pts("download", DECAYING)
    state, _ = fold([event("download", T0), event("download", T0 + HALF_LIFE)], DECAYING)
    (reason,) = score(state, DECAYING).reasons
    assert reason.rule == "download"
    assert reason.events == 2
    assert reason.points == pytest.approx(p * 1.5, abs=1e-6)


# --- attributes and fit ---------------------------------------------------------------------------


def test_latest_attribute_by_event_time_wins() -> None:
    state, _ = fold(
        [
            event("form_submit", T0, attrs={"industry": "retail"}),
            event("profile_updated", T0 + DAY, attrs={"industry": "software"}),
        ]
    )
    assert state.attributes["industry"].value == "software"
    assert state.attributes["industry"].as_of == T0 + DAY
    assert score(state, RULES).fit == RULES.fit[0].points


def test_older_late_update_does_not_overwrite() -> None:
    state, _ = fold(
        [
            event("profile_updated", T0 + DAY, attrs={"industry": "software", "seniority": "vp"}),
            event("form_submit", T0, attrs={"industry": "retail", "country": "JP"}),
        ]
    )
    assert state.attributes["industry"].value == "software"
    assert state.attributes["seniority"].value == "vp"
    # A field only the late event knows is still taken.
    assert state.attributes["country"].value == "JP"
    assert score(state, RULES).fit == RULES.fit[0].points + RULES.fit[1].points


def test_fit_is_recomputed_when_attributes_change() -> None:
    start, _ = fold([event("form_submit", T0, attrs=GOOD_PROFILE)])
    assert score(start, RULES).fit == GOOD_FIT
    moved, _ = apply(start, event("profile_updated", T0 + DAY, attrs={"industry": "retail"}), RULES)
    current = score(moved, RULES)
    assert current.fit == GOOD_FIT - RULES.fit[0].points
    assert RULES.fit[0].describe() not in {r.rule for r in current.reasons}
    cleared, _ = apply(
        moved, event("profile_updated", T0 + 2 * DAY, attrs={"company_size": None}), RULES
    )
    assert score(cleared, RULES).fit == RULES.fit[1].points


# --- qualification and the handoff ---------------------------------------------------------------


def test_threshold_crossing_emits_one_handoff_with_everything_right() -> None:
    profile = event("form_submit", T0, attrs=GOOD_PROFILE)
    demo = event("demo_request", T0 + HOUR)
    download = event("download", T0 + 2 * HOUR)
    threshold = RULES.mql.threshold
    fit, engagement = GOOD_FIT, pts("demo_request") + pts("download")
    assert GOOD_FIT + pts("demo_request") < threshold <= fit + engagement  # crosses at `download`

    state = LeadState(lead_id="lead-1")
    for e in (profile, demo):
        state, handoffs = apply(state, e, RULES)
        assert handoffs == []
        assert state.stage == "lead"
    state, handoffs = apply(state, download, RULES)

    assert len(handoffs) == 1
    (h,) = handoffs
    assert h.handoff_id == handoff_id_for("lead-1", download.event_id)
    assert h.lead_id == "lead-1"
    assert h.score == fit + engagement
    assert h.fit_score == fit
    assert h.engagement_score == engagement
    assert h.threshold == threshold
    assert h.rules_version == RULES.version
    assert h.triggering_event_id == download.event_id
    assert h.qualified_at == download.occurred_at
    assert h.first_contact_due_at == download.occurred_at + RULES.sla.mql_first_contact
    assert h.first_contact_due_at - h.qualified_at == timedelta(hours=24)

    reasons = {(r.kind, r.rule, r.points, r.events) for r in h.reasons}
    expected_fit = {("fit", rule.describe(), rule.points, None) for rule in RULES.fit}
    assert {"Target industry", "Decision maker"} <= {rule for _, rule, _, _ in expected_fit}
    expected_engagement = {
        ("engagement", "demo_request", pts("demo_request"), 1),
        ("engagement", "download", pts("download"), 1),
    }
    assert reasons == expected_fit | expected_engagement
    magnitudes = [abs(r.points) for r in h.reasons]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert sum(r.points for r in h.reasons) == h.score

    assert state.stage == "mql"
    assert state.handoff_id == h.handoff_id
    assert state.qualified_at == download.occurred_at
    # The handoff is a valid wire record.
    assert MqlHandoff.model_validate_json(h.model_dump_json()) == h


def test_reasons_are_ordered_by_size_and_negative_points_count() -> None:
    state, _ = fold(
        [
            event("form_submit", T0, attrs={"industry": "software"}),
            event("download", T0 + HOUR),
            event("opt_out", T0 + 2 * HOUR),
            event("email_open", T0 + 3 * HOUR),
        ]
    )
    reasons = score(state, RULES).reasons
    assert [r.rule for r in reasons] == ["opt_out", "Target industry", "download", "email_open"]
    assert reasons[0].points == pts("opt_out")


def test_reasons_limit_keeps_the_largest() -> None:
    rules = make_rules(reasons_limit=2)
    _, handoffs = fold(
        [
            event("form_submit", T0, attrs=GOOD_PROFILE),
            event("email_open", T0 + HOUR),
            event("demo_request", T0 + 2 * HOUR),
        ],
        rules,
    )
    (h,) = handoffs
    assert len(h.reasons) == 2
    assert (h.reasons[0].rule, h.reasons[0].points) == ("demo_request", pts("demo_request"))
    assert h.reasons[1].kind == "fit"
    assert h.reasons[1].points == max(rule.points for rule in rules.fit)
    # Trimming the reasons does not change the score.
    assert h.score == GOOD_FIT + pts("email_open") + pts("demo_request")


def test_min_fit_blocks_qualification_until_fit_is_reached() -> None:
    rules = make_rules(mql={"min_fit": RULES.fit[0].points + 1})
    engaged = [
        event("form_submit", T0, attrs={"industry": "software"}),
        event("demo_request", T0 + HOUR),
        event("download", T0 + 2 * HOUR),
        event("pricing_page_view", T0 + 3 * HOUR),
        event("pricing_page_view", T0 + 4 * HOUR),
    ]
    state, handoffs = fold(engaged, rules)
    current = score(state, rules)
    assert current.total >= rules.mql.threshold
    assert current.fit < (rules.mql.min_fit or 0)
    assert handoffs == []
    assert state.stage == "lead"

    promoted = event("profile_updated", T0 + DAY, attrs={"seniority": "c_level"})
    state, handoffs = apply(state, promoted, rules)
    assert [h.triggering_event_id for h in handoffs] == [promoted.event_id]
    assert handoffs[0].fit_score == RULES.fit[0].points + RULES.fit[1].points
    assert state.stage == "mql"


def test_min_engagement_blocks_a_profile_only_lead() -> None:
    rules = make_rules(mql={"threshold": 50, "min_engagement": 30})
    assert GOOD_FIT >= 50
    state, handoffs = fold([event("form_submit", T0, attrs=GOOD_PROFILE)], rules)
    assert handoffs == []
    state, handoffs = apply(state, event("email_open", T0 + HOUR), rules)
    assert handoffs == []
    demo = event("demo_request", T0 + 2 * HOUR)
    state, handoffs = apply(state, demo, rules)
    assert [h.triggering_event_id for h in handoffs] == [demo.event_id]
    assert handoffs[0].engagement_score == pts("email_open") + pts("demo_request")


def test_fit_alone_can_qualify() -> None:
    rules = make_rules(mql={"threshold": GOOD_FIT})
    profile = event("form_submit", T0, attrs=GOOD_PROFILE)
    _, handoffs = fold([profile], rules)
    assert [(h.triggering_event_id, h.fit_score, h.engagement_score) for h in handoffs] == [
        (profile.event_id, GOOD_FIT, 0)
    ]


def test_an_mql_keeps_scoring_but_is_handed_off_once() -> None:
    qualified, first = fold(
        [event("form_submit", T0, attrs=GOOD_PROFILE), event("demo_request", T0 + HOUR),
         event("download", T0 + 2 * HOUR)]
    )  # fmt: skip
    assert len(first) == 1
    before = score(qualified, RULES).total
    more = [event("demo_request", T0 + DAY), event("download", T0 + 2 * DAY)]
    later, handoffs = apply_all(qualified, more, RULES)
    assert handoffs == []
    assert later.stage == "mql"
    assert later.handoff_id == first[0].handoff_id
    assert later.qualified_at == first[0].qualified_at
    assert score(later, RULES).total == before + pts("demo_request") + pts("download")
    # Dropping below the threshold and climbing back does not hand off again either.
    dropped, handoffs = apply_all(
        later,
        [event("opt_out", T0 + 3 * DAY + i * HOUR) for i in range(4)]
        + [event("demo_request", T0 + 4 * DAY + i * HOUR) for i in range(6)],
        RULES,
    )
    assert handoffs == []
    assert dropped.stage == "mql"


def test_handoff_id_is_stable_across_replays_and_differs_per_lead() -> None:
    def history(lead: str) -> list[EngagementEvent]:
        return [
            event("form_submit", T0, id=f"{lead}-1", lead=lead, attrs=GOOD_PROFILE),
            event("demo_request", T0 + HOUR, id=f"{lead}-2", lead=lead),
            event("download", T0 + 2 * HOUR, id=f"{lead}-3", lead=lead),
        ]

    events = history("lead-a") + history("lead-b")
    first = replay(events, RULES)
    second = replay(list(events), RULES)
    assert [h.handoff_id for h in first.handoffs] == [h.handoff_id for h in second.handoffs]
    assert first.handoffs == second.handoffs
    ids = {h.lead_id: h.handoff_id for h in first.handoffs}
    assert set(ids) == {"lead-a", "lead-b"}
    assert ids["lead-a"] != ids["lead-b"]
    assert ids["lead-a"] == first.leads["lead-a"].handoff_id
    # The lead is part of the id even when two leads share a triggering event id.
    assert handoff_id_for("lead-a", "evt-1") != handoff_id_for("lead-b", "evt-1")
    assert handoff_id_for("lead-a", "evt-1") != handoff_id_for("lead-a", "evt-2")
    assert handoff_id_for("lead-a", "evt-1") == handoff_id_for("lead-a", "evt-1")


# --- duplicates -----------------------------------------------------------------------------------


def test_duplicate_event_id_changes_nothing() -> None:
    click = event("demo_request", T0, id="evt-dup")
    state, _ = fold([event("form_submit", T0, attrs=GOOD_PROFILE), click])
    again, handoffs = apply(state, click, RULES)
    assert again == state
    assert handoffs == []
    # A re-send with other content but the same id is still the same event.
    other = event("download", T0 + DAY, id="evt-dup", attrs={"industry": "retail"})
    again, handoffs = apply(state, other, RULES)
    assert again == state
    assert handoffs == []


def test_duplicate_of_the_triggering_event_does_not_hand_off_twice() -> None:
    trigger = event("download", T0 + 2 * HOUR)
    events = [
        event("form_submit", T0, attrs=GOOD_PROFILE),
        event("demo_request", T0 + HOUR),
        trigger,
        trigger,
    ]
    result = replay(events, RULES)
    assert [h.triggering_event_id for h in result.handoffs] == [trigger.event_id]
    assert result.leads["lead-1"].events_counted == 3


# --- replay ---------------------------------------------------------------------------------------


def test_replay_keeps_leads_apart() -> None:
    events = [
        event("demo_request", T0, lead="lead-a"),
        event("email_open", T0, lead="lead-b"),
        event("download", T0 + HOUR, lead="lead-a"),
    ]
    result = replay(events, RULES)
    assert set(result.leads) == {"lead-a", "lead-b"}
    assert score(result.leads["lead-a"], RULES).total == pts("demo_request") + pts("download")
    assert score(result.leads["lead-b"], RULES).total == pts("email_open")
    assert result.leads["lead-a"].events_counted == 2


# --- state serialisation -------------------------------------------------------------------------


def rich_state() -> LeadState:
    rules = make_rules(decay={"half_life": "30d"})
    events = [
        event(
            "form_submit",
            datetime(2026, 3, 2, 18, 30, 15, 123456, tzinfo=JST),
            attrs={
                "industry": "Software",
                "company_size": 300,
                "revenue_musd": 12.5,
                "is_customer": False,
                "seniority": "vp",
                "country": None,
            },
        ),
        event("pricing_page_view", T0 + HOUR),
        event("pricing_page_view", T0 + 2 * HOUR),
        event("pricing_page_view", T0 + 3 * HOUR),
        event("email_open", T0 + 10 * DAY),
        event("demo_request", T0 + 3 * DAY),  # late
        event("opt_out", T0 + 11 * DAY),
    ]
    state, handoffs = fold(events, rules)
    assert handoffs  # the state below is an MQL with everything set
    return state


def test_state_json_round_trip() -> None:
    state = rich_state()
    assert state.stage == "mql"
    assert state.daily_points
    stored = orjson.dumps(lead_to_json(state))
    assert b"seen_event_ids" not in stored  # kept apart by the store
    restored = lead_from_json(orjson.loads(stored), state.seen_event_ids)
    assert restored == state
    assert lead_from_json(orjson.loads(stored)).seen_event_ids == frozenset()


def test_fresh_state_json_round_trip() -> None:
    fresh = LeadState(lead_id="lead-1")
    assert lead_from_json(orjson.loads(orjson.dumps(lead_to_json(fresh)))) == fresh


def test_restored_state_scores_like_the_original() -> None:
    rules = make_rules(decay={"half_life": "30d"})
    state = rich_state()
    restored = lead_from_json(orjson.loads(orjson.dumps(lead_to_json(state))), state.seen_event_ids)
    nxt = event("pricing_page_view", T0 + 12 * DAY)
    assert apply(restored, nxt, rules) == apply(state, nxt, rules)
    assert score(restored, rules) == score(state, rules)
