"""Why this score: `explain(state, rules, now)` over a lead folded from known events."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from schemas.activity import Bant, SalesActivity
from schemas.engagement import AttributeValue, EngagementEvent
from schemas.explain import LeadExplanation
from schemas.handoff import MqlHandoff
from streams.core.explain import MAX_LEAD_ID, explain, lead_id_problem
from streams.core.lead import SCORE_DIGITS, LeadState, apply, score
from streams.core.rules import Rules, parse_rules
from streams.core.sales import alert_if_due, apply_activity, open_first_contact_clock
from streams.store.codec import lead_from_json, lead_to_json

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
JST = timezone(timedelta(hours=9))
LEAD = "lead-x"

# The integration test rules (tests/data/rules.yaml), with explicit history and reasons limits.
BASE: dict[str, Any] = {
    "mql": {"threshold": 100, "min_fit": 20},
    "engagement": {
        "email_open": {"points": 5, "cap_per_day": 15},
        "email_click": 8,
        "download": 15,
        "pricing_page_view": {"points": 25, "cap_per_day": 50},
        "demo_request": 40,
        "form_submit": 5,
        "opt_out": -50,
    },
    "fit": [
        {"name": "Target industry", "field": "industry", "in": ["software"], "points": 20},
        {"name": "Decision maker", "field": "seniority", "in": ["vp", "c_level"], "points": 20},
        {"field": "company_size", "between": [100, 5000], "points": 15},
    ],
    "decay": {"half_life": "30d"},
    "sla": {"mql_first_contact": "24h", "sql_follow_up": "48h", "backfill_grace": "1h"},
    "reasons_limit": 3,
    "history_limit": 5,
}  # fmt: skip


def make_rules(**changes: Any) -> Rules:
    return parse_rules({**BASE, **changes})


RULES = make_rules()
PROFILE: dict[str, AttributeValue] = {
    "industry": "software",
    "seniority": "vp",
    "company_size": 500,
}
FIT = 55.0
_ids = itertools.count(1)


def event(
    type_: str,
    at: datetime,
    *,
    id: str | None = None,
    attributes: dict[str, AttributeValue] | None = None,
) -> EngagementEvent:
    return EngagementEvent(
        event_id=id or f"evt-{next(_ids)}",
        lead_id=LEAD,
        type=type_,
        occurred_at=at,
        attributes=attributes,
    )


def fold(
    events: Iterable[EngagementEvent], rules: Rules = RULES, state: LeadState | None = None
) -> tuple[LeadState, list[MqlHandoff]]:
    state = state or LeadState(lead_id=LEAD)
    handoffs: list[MqlHandoff] = []
    for e in events:
        state, out = apply(state, e, rules)
        handoffs.extend(out)
    return state, handoffs


def activity(type_: str, at: datetime, **extra: Any) -> SalesActivity:
    return SalesActivity.model_validate(
        {
            "activity_id": f"act-{next(_ids)}",
            "lead_id": LEAD,
            "type": type_,
            "occurred_at": at,
            **extra,
        }
    )


PASSING = Bant(budget=True, authority=True, need=True, timeframe=True)
FAILING = Bant(budget=True, authority=False, need=False, timeframe=True)


# A known history: profile (fit 55) with a form (5), 4 email opens (capped at 15 a day), a
# click (8): 83, not yet an MQL.
def warm_up(at: datetime = T0) -> list[EngagementEvent]:
    return [
        event("form_submit", at, id="e-form", attributes=PROFILE),
        *(event("email_open", at + i * MINUTE, id=f"e-open-{i}") for i in range(4)),
        event("email_click", at + 5 * MINUTE, id="e-click"),
    ]


def qualified() -> tuple[LeadState, MqlHandoff, datetime]:
    """Warm up, then a pricing view (25) a day later: about 107 after a day of decay, an MQL."""
    at = T0 + DAY
    state, handoffs = fold([*warm_up(), event("pricing_page_view", at, id="e-pricing")])
    assert handoffs and handoffs[0].triggering_event_id == "e-pricing"
    return state, handoffs[0], at


def reason_sum(e: LeadExplanation) -> float:
    return sum(r.points for r in e.reasons)


def adds_up(e: LeadExplanation) -> bool:
    """The reasons sum to the score, up to the rounding of each reason to SCORE_DIGITS."""
    return abs(reason_sum(e) - e.score) <= len(e.reasons) * 10.0**-SCORE_DIGITS


# -- score and reasons -------------------------------------------------------------------------


def test_a_warm_lead_explains_its_score_rule_by_rule() -> None:
    state, handoffs = fold(warm_up())
    assert handoffs == []
    e = explain(state, RULES, T0 + HOUR)

    assert (e.lead_id, e.stage) == (LEAD, "lead")
    assert e.fit_score == FIT
    assert e.engagement_score == pytest.approx(5 + 15 + 8, abs=0.01)  # minutes of decay only
    assert e.score == pytest.approx(FIT + 28, abs=0.01)
    assert adds_up(e)
    assert e.points_to_mql == pytest.approx(100 - e.score, abs=1e-9)
    assert e.mql_blockers == []
    by_rule = {r.rule: r for r in e.reasons}
    assert set(by_rule) == {
        "Target industry",
        "Decision maker",
        "company_size between 100 and 5000",
        "email_open",
        "email_click",
        "form_submit",
    }
    assert by_rule["Target industry"].kind == "fit"
    assert by_rule["Target industry"].events is None
    assert (by_rule["email_open"].kind, by_rule["email_open"].events) == ("engagement", 4)
    assert by_rule["email_open"].points == pytest.approx(15, abs=0.01)  # capped at 15 a day
    # Largest first, like the handoff.
    assert [abs(r.points) for r in e.reasons] == sorted(
        (abs(r.points) for r in e.reasons), reverse=True
    )
    assert (e.threshold, e.min_fit, e.min_engagement) == (100, 20, None)
    assert e.rules_version == RULES.version
    assert e.attributes["industry"].value == "software"
    assert e.attributes["company_size"].as_of == T0


def test_the_reasons_are_the_handoffs_words_and_every_one_of_them() -> None:
    state, handoff, _ = qualified()
    e = explain(state, RULES, handoff.qualified_at)

    assert e.score == handoff.score
    assert (e.fit_score, e.engagement_score) == (handoff.fit_score, handoff.engagement_score)
    assert e.threshold == handoff.threshold
    assert e.rules_version == handoff.rules_version
    assert e.handoff_id == handoff.handoff_id
    assert e.qualified_at == handoff.qualified_at
    # The handoff keeps the top `reasons_limit`; the explanation keeps all, in the same order.
    assert len(handoff.reasons) == RULES.reasons_limit < len(e.reasons)
    assert e.reasons[: RULES.reasons_limit] == handoff.reasons
    assert list(score(state, RULES).reasons) == e.reasons
    assert adds_up(e)


def test_points_to_mql_is_the_gap_to_the_threshold_until_the_lead_qualifies() -> None:
    state, _ = fold([event("form_submit", T0, attributes=PROFILE)])
    e = explain(state, RULES, T0)
    assert e.score == FIT + 5
    assert e.points_to_mql == 100 - (FIT + 5)

    state, _, at = qualified()
    e = explain(state, RULES, at)
    assert e.stage == "mql"
    assert e.points_to_mql is None
    assert e.qualifications == 1


def test_points_to_mql_is_zero_but_blocked_when_only_min_fit_is_missing() -> None:
    events = [
        event("demo_request", T0),
        event("demo_request", T0),
        event("pricing_page_view", T0),
    ]
    state, handoffs = fold(events)
    assert handoffs == []  # 105 points of engagement, but no fit
    e = explain(state, RULES, T0)
    assert e.score == 105
    assert e.points_to_mql == 0
    assert e.mql_blockers == ["fit 0 below min_fit 20"]


def test_a_negative_rule_is_a_reason_and_the_sum_still_adds_up() -> None:
    state, _ = fold([*warm_up(), event("opt_out", T0 + 10 * MINUTE, id="e-opt-out")])
    e = explain(state, RULES, T0 + HOUR)
    opt_out = next(r for r in e.reasons if r.rule == "opt_out")
    assert opt_out.points == pytest.approx(-50, abs=1e-3)
    assert e.reasons[0] == opt_out  # |-50| is the largest contribution
    assert adds_up(e)
    assert e.recent_events[-1].points == -50


def test_engagement_is_reported_as_of_the_engagement_clock_not_decayed_to_now() -> None:
    state, _ = fold(warm_up())
    soon = explain(state, RULES, T0 + HOUR)
    months_later = explain(state, RULES, T0 + 90 * DAY)
    assert soon.engagement_as_of == months_later.engagement_as_of == T0 + 5 * MINUTE
    assert months_later.engagement_score == soon.engagement_score
    assert months_later.score == soon.score
    assert months_later.now == T0 + 90 * DAY


def test_decay_to_the_newest_event_shows_in_the_points() -> None:
    # A half-life (30 days) after the warm-up: the warm-up counts about half.
    last = T0 + 5 * MINUTE + 30 * DAY
    state, _ = fold([*warm_up(), event("download", last)])
    e = explain(state, RULES, T0 + 31 * DAY)
    by_rule = {r.rule: r.points for r in e.reasons}
    opens = sum(5 * 0.5 ** ((last - (T0 + i * MINUTE)) / (30 * DAY)) for i in range(3))
    assert by_rule["email_open"] == pytest.approx(opens, abs=1e-6)
    assert by_rule["email_click"] == pytest.approx(4, abs=1e-6)  # 8, exactly one half-life
    assert by_rule["download"] == 15
    assert adds_up(e)
    # Recent events keep the points as counted on arrival (before decay).
    assert [ev.points for ev in e.recent_events if ev.type == "email_open"] == [5, 5, 5]


# -- bounded history ---------------------------------------------------------------------------


def test_recent_events_are_the_last_history_limit_contributions_in_order() -> None:
    events = [event("email_click", T0 + i * MINUTE, id=f"click-{i}") for i in range(12)]
    # A type the rules do not score and a fully capped open contribute nothing: not listed.
    events.insert(3, event("page_view", T0 + 3 * MINUTE, id="view"))
    state, _ = fold(events)
    e = explain(state, RULES, T0 + HOUR)
    assert len(e.recent_events) == RULES.history_limit == 5
    assert [ev.event_id for ev in e.recent_events] == [f"click-{i}" for i in range(7, 12)]
    assert [ev.occurred_at for ev in e.recent_events] == [T0 + i * MINUTE for i in range(7, 12)]
    assert all((ev.type, ev.points) == ("email_click", 8) for ev in e.recent_events)
    # The reasons still count every event, not only the remembered ones.
    click = next(r for r in e.reasons if r.rule == "email_click")
    assert click.events == 12


def test_a_capped_event_that_adds_nothing_is_not_a_recent_event() -> None:
    state, _ = fold(warm_up())
    e = explain(state, RULES, T0 + HOUR)
    ids = [ev.event_id for ev in e.recent_events]
    # Three opens fill the 15-point cap; the fourth adds 0 and is not remembered. Limit 5 keeps
    # the newest five of form, open-0..2, click.
    assert ids == ["e-form", "e-open-0", "e-open-1", "e-open-2", "e-click"]
    assert [ev.points for ev in e.recent_events] == [5, 5, 5, 5, 8]


def test_a_late_event_is_listed_in_arrival_order() -> None:
    state, _ = fold(
        [
            event("download", T0 + HOUR, id="newer"),
            event("email_click", T0, id="late"),
        ]
    )
    e = explain(state, RULES, T0 + 2 * HOUR)
    assert [ev.event_id for ev in e.recent_events] == ["newer", "late"]
    assert e.engagement_as_of == T0 + HOUR


def test_journey_is_bounded_by_history_limit() -> None:
    rules = make_rules(history_limit=2)
    state, handoffs = fold(
        [event("form_submit", T0, attributes=PROFILE), event("demo_request", T0, id="d1")],
        rules,
    )
    assert handoffs
    for i in range(3):  # mql -> nurture (engagement reset) -> mql, three times
        state, moved = apply_activity(
            state,
            activity("bant_assessed", T0 + (2 * i + 1) * HOUR, bant=FAILING),
            rules,
            T0 + (2 * i + 1) * HOUR,
        )
        assert [t.to_stage for t in moved] == ["nurture"]
        back_at = T0 + (2 * i + 2) * HOUR
        state, again = fold(
            [event("demo_request", back_at), event("demo_request", back_at)], rules, state
        )
        assert again  # 55 + 80 after the reset
    e = explain(state, rules, T0 + DAY)
    assert len(e.journey) == 2
    assert [(j.from_stage, j.to_stage) for j in e.journey] == [
        ("mql", "nurture"),
        ("nurture", "mql"),
    ]
    assert e.qualifications == 4


# -- the sales side: journey, deadlines, clocks -----------------------------------------------


def test_stage_history_and_an_sql_follow_up_deadline() -> None:
    state, handoff, at = qualified()
    state = open_first_contact_clock(state, handoff, RULES, at)
    contact_at = at + 2 * HOUR
    state, _ = apply_activity(
        state, activity("contacted", contact_at, owner="rep-7"), RULES, contact_at
    )
    sql_at = at + 3 * HOUR
    state, moved = apply_activity(
        state, activity("bant_assessed", sql_at, bant=PASSING, reason="good fit"), RULES, sql_at
    )
    assert [t.to_stage for t in moved] == ["sql"]

    e = explain(state, RULES, sql_at + HOUR)
    assert e.stage == "sql"
    assert e.points_to_mql is None
    assert e.owner == "rep-7"
    assert [(j.at, j.from_stage, j.to_stage, j.handoff_id) for j in e.journey] == [
        (at, "lead", "mql", handoff.handoff_id),
        (sql_at, "mql", "sql", handoff.handoff_id),
    ]
    assert e.journey[0].reason == f"score {handoff.score:g} reached 100"
    assert e.journey[1].reason == "good fit"
    # First contact was met; the follow-up clock is the one open deadline.
    first = next(c for c in e.clocks if c.kind == "mql_first_contact")
    assert (first.status, first.ended_at) == ("met", contact_at)
    assert [(d.kind, d.due_at, d.overdue, d.owner) for d in e.open_deadlines] == [
        ("sql_follow_up", sql_at + RULES.sla.sql_follow_up, False, "rep-7")
    ]


def test_an_open_deadline_is_overdue_from_its_due_time_at_now() -> None:
    state, handoff, at = qualified()
    state = open_first_contact_clock(state, handoff, RULES, at)
    due = at + RULES.sla.mql_first_contact
    assert handoff.first_contact_due_at == due

    before = explain(state, RULES, due - timedelta(seconds=1))
    assert [(d.kind, d.handoff_id, d.due_at, d.overdue) for d in before.open_deadlines] == [
        ("mql_first_contact", handoff.handoff_id, due, False)
    ]
    assert explain(state, RULES, due).open_deadlines[0].overdue
    assert explain(state, RULES, (due + HOUR).astimezone(JST)).open_deadlines[0].overdue

    # Once the sweeper has fired, the clock is breached: no longer an open deadline.
    breached, alerts = alert_if_due(state, state.clocks[0].clock_id, "breach", due + MINUTE)
    assert alerts
    e = explain(breached, RULES, due + HOUR)
    assert e.open_deadlines == []
    assert [(c.status, c.ended_at) for c in e.clocks] == [("breached", due + MINUTE)]

    # A late contact is recorded on the breached clock.
    late = due + 2 * HOUR
    contacted, _ = apply_activity(breached, activity("contacted", late), RULES, late)
    assert explain(contacted, RULES, late).clocks[0].late_action_at == late


def test_recycled_to_nurture_the_lead_can_qualify_again() -> None:
    state, handoff, at = qualified()
    state = open_first_contact_clock(state, handoff, RULES, at)
    state, moved = apply_activity(
        state, activity("bant_assessed", at + HOUR, bant=FAILING), RULES, at + HOUR
    )
    assert [t.to_stage for t in moved] == ["nurture"]
    e = explain(state, RULES, at + HOUR)
    assert e.stage == "nurture"
    assert e.missing_bant == ["authority", "need"]
    # engagement_factor 0: engagement reset, only fit is left; the reasons say so.
    assert e.engagement_score == 0
    assert {r.kind for r in e.reasons} == {"fit"}
    assert e.points_to_mql == 100 - FIT
    assert e.open_deadlines == []
    assert e.clocks[0].status == "met"  # the BANT call was the first contact


def test_disqualified_cannot_requalify_unless_the_rules_say_so() -> None:
    state, _, at = qualified()
    state, _ = apply_activity(state, activity("disqualified", at + HOUR), RULES, at + HOUR)
    assert explain(state, RULES, at + HOUR).points_to_mql is None
    recycling = make_rules(recycle={"disqualified_can_requalify": True})
    assert explain(state, recycling, at + HOUR).points_to_mql == 0


# -- the shape ---------------------------------------------------------------------------------


def test_the_explanation_survives_json_and_the_stored_state() -> None:
    state, handoff, at = qualified()
    state = open_first_contact_clock(state, handoff, RULES, at)
    e = explain(state, RULES, at + HOUR)

    assert LeadExplanation.model_validate_json(e.model_dump_json()) == e
    # As the worker and the CLI see it: the state read back from its Redis form.
    stored = lead_from_json(orjson.loads(orjson.dumps(lead_to_json(state))))
    assert explain(stored, RULES, at + HOUR) == e
    body = orjson.loads(e.model_dump_json())
    assert body["reasons"][0] == {"kind": "engagement", "rule": "pricing_page_view", "points": 25.0,
                                  "events": 1}  # fmt: skip
    assert body["open_deadlines"][0]["overdue"] is False
    assert body["engagement_as_of"] == at.isoformat().replace("+00:00", "Z")


def test_the_explanation_is_frozen() -> None:
    state, _ = fold(warm_up())
    e = explain(state, RULES, T0)
    with pytest.raises(ValidationError):
        e.score = 1  # type: ignore[misc]


def test_an_unknown_empty_lead_explains_as_nothing() -> None:
    e = explain(LeadState(lead_id=LEAD), RULES, T0)
    assert (e.score, e.reasons, e.recent_events, e.journey, e.clocks) == (0, [], [], [], [])
    assert e.engagement_as_of is None
    assert e.points_to_mql == 100
    assert e.mql_blockers == ["fit 0 below min_fit 20"]


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        explain(LeadState(lead_id=LEAD), RULES, datetime(2026, 3, 2, 9, 0))


def test_lead_id_problem_follows_the_contracts_identifier() -> None:
    assert lead_id_problem("lead-1") is None
    assert lead_id_problem("  lead-1 ") is None
    assert lead_id_problem("x" * MAX_LEAD_ID) is None
    assert lead_id_problem("") == "lead id is empty"
    assert lead_id_problem("   ") == "lead id is empty"
    too_long = lead_id_problem("x" * (MAX_LEAD_ID + 1))
    assert too_long is not None and str(MAX_LEAD_ID) in too_long
    # The same limits as the events' lead_id.
    EngagementEvent(event_id="e", lead_id="x" * MAX_LEAD_ID, type="email_open", occurred_at=T0)
    with pytest.raises(ValidationError):
        EngagementEvent(
            event_id="e", lead_id="x" * (MAX_LEAD_ID + 1), type="email_open", occurred_at=T0
        )


def test_replace_keeps_history_out_of_the_score() -> None:
    # recent_events and journey are for reading only: clearing them changes no number.
    state, _, at = qualified()
    e = explain(state, RULES, at)
    bare = explain(replace(state, recent_events=(), journey=()), RULES, at)
    assert (bare.score, bare.reasons) == (e.score, e.reasons)


# -- the command's rich view (no Redis: the rendering and the argument check only) -------------


def test_the_command_view_marks_overdue_deadlines_and_shows_every_part(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rich.console import Console

    from streams.cli import render_explain as cli

    monkeypatch.setattr(cli, "out", Console(width=200, no_color=True))
    state, handoff, at = qualified()
    state = open_first_contact_clock(state, handoff, RULES, at)
    due = at + RULES.sla.mql_first_contact
    e = explain(state, RULES, due + 90 * MINUTE)
    with cli.out.capture() as captured:
        cli._print_explanation(e)
    text = " ".join(captured.get().replace("│", " ").split())
    assert f"{LEAD} stage mql score {e.score:g} vs threshold 100" in text
    assert "OVERDUE by 1h30m" in text
    for words in ("pricing_page_view +25 1", "Target industry +20", "e-pricing +25", "lead mql"):
        assert words in text

    # Still a lead, 45 points short: the header says how far it is.
    early, _ = fold([event("form_submit", T0, attributes=PROFILE)])
    with cli.out.capture() as captured:
        cli._print_explanation(explain(early, RULES, T0))
    text = " ".join(captured.get().split())
    assert "stage lead score 60 vs threshold 100, 40 points to MQL" in text
    assert "deadlines at 2026-03-02 09:00:00Z (open first): none" in text
    assert "stage history: no stage changes yet" in text


@pytest.mark.parametrize("lead_id", ["", "   ", "x" * (MAX_LEAD_ID + 1)])
def test_the_command_refuses_a_bad_id_before_reading_redis(lead_id: str) -> None:
    from typer.testing import CliRunner

    from streams.cli import app

    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(app, ["explain", lead_id])
    assert result.exit_code == 2, result.output
    assert "lead id is" in result.output
