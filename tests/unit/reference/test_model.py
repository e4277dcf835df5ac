"""The reference model against the examples the docs give (it must follow the docs, not the core),
and the integration oracle's reference check on the bundled sample data."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import yaml

from schemas.activity import Bant, SalesActivity
from streams.core.lead import LeadState
from streams.core.rules import load_rules, parse_rules
from streams.core.sales import apply_activity
from streams.jobs.sample import generate
from streams.settings import Settings
from tests.oracle import expected_outcome, reference_disagreements
from tests.reference import RefActivity, Reference, RefEvent, RefRules

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
README_RULES = yaml.safe_load("""
mql: {threshold: 100, min_fit: 20}
engagement:
  email_open: {points: 5, cap_per_day: 15}
  download: 15
  pricing_page_view: {points: 25, cap_per_day: 50}
  opt_out: -50
fit:
  - {name: "Target industry", field: industry, in: [manufacturing, software], points: 20}
  - {name: "Decision maker", field: seniority, in: [c_level, vp, director], points: 20}
  - {field: company_size, between: [100, 5000], points: 15}
decay: {half_life: 30d}
sla: {mql_first_contact: 24h, sql_follow_up: 48h, backfill_grace: 1h}
bant: {required: 3, mandatory: []}
recycle: {engagement_factor: 0.0}
""")


def ev(n: int, type_: str, at: datetime, **attributes: Any) -> RefEvent:
    return RefEvent(f"e{n}", "lead-1", type_, at, attributes)


def test_readme_rules_score_fit_caps_and_decay() -> None:
    ref = Reference(README_RULES)
    ref.engagement(ev(1, "profile_updated", T0, industry=" Software ", company_size="1,200"))
    for i in range(4):  # 4 opens in one UTC day: capped at 15
        ref.engagement(ev(10 + i, "email_open", T0))
    ref.engagement(ev(10, "download", T0))  # a duplicate id changes nothing
    lead = ref.leads["lead-1"]
    assert (lead.fit(ref.rules), lead.engagement(ref.rules)) == (35, 15)
    # 30 days later the opens are worth half; a late download is added decayed to that clock.
    ref.engagement(ev(20, "download", T0 + 30 * DAY))
    ref.engagement(ev(21, "download", T0))
    assert lead.engagement(ref.rules) == pytest.approx(7.5 + 15 + 7.5, abs=1e-6)


def test_threshold_min_fit_and_six_decimals() -> None:
    rules = {
        "mql": {"threshold": 0.3, "min_fit": 10},
        "engagement": {"download": 0.1},
        "fit": [{"field": "seniority", "equals": "VP", "points": 10}],
    }
    ref = Reference(rules)
    for i in range(3):  # 0.1 + 0.1 + 0.1 is 0.30000000000000004: still not 10.3
        assert ref.engagement(ev(i, "download", T0 + i * HOUR)) is None
    handoff = ref.engagement(ev(9, "profile_updated", T0 + 4 * HOUR, seniority="vp"))
    assert handoff is not None and handoff.triggering_event_id == "e9"
    assert handoff.score == 10.3 and handoff.first_contact_due_at == T0 + 4 * HOUR + 24 * HOUR
    # MQL once: more engagement, no second handoff.
    assert ref.engagement(ev(10, "download", T0 + 5 * HOUR)) is None


def test_cap_memory_is_35_days_behind_the_newest_event() -> None:
    ref = Reference(
        {
            "mql": {"threshold": 1000},
            "engagement": {"pricing_page_view": {"points": 25, "cap_per_day": 50}, "download": 15},
        }
    )
    for i in range(3):
        ref.engagement(ev(i, "pricing_page_view", T0 + i * HOUR))
    ref.engagement(ev(5, "download", T0 + 36 * DAY))
    ref.engagement(ev(6, "pricing_page_view", T0 + 4 * HOUR))  # day 0 is forgotten: in full
    ref.engagement(ev(7, "pricing_page_view", T0 + 5 * HOUR))  # and stays forgotten
    assert ref.leads["lead-1"].engagement(ref.rules) == 50 + 15 + 25 + 25


@pytest.mark.parametrize(
    ("start", "window", "due"),
    [  # docs/calendar.md, Asia/Tokyo 09:00-18:00 Mon-Fri (dates: 2026-03-06 is a Friday)
        (datetime(2026, 3, 6, 17), 24, datetime(2026, 3, 11, 14)),
        (datetime(2026, 3, 6, 19), 24, datetime(2026, 3, 11, 15)),
        (datetime(2026, 3, 7, 11), 24, datetime(2026, 3, 11, 15)),
        (datetime(2026, 3, 5, 12), 48, datetime(2026, 3, 12, 15)),
        (datetime(2026, 3, 6, 17), 1, datetime(2026, 3, 6, 18)),  # closing, not next opening
    ],
)
def test_business_calendar_examples(start: datetime, window: int, due: datetime) -> None:
    tokyo = timezone(timedelta(hours=9))
    rules = RefRules.from_dict(
        {"mql": {"threshold": 1}, "sla": {"calendar": {"timezone": "Asia/Tokyo"}}}
    )
    assert rules.due(start.replace(tzinfo=tokyo), window * HOUR) == due.replace(tzinfo=tokyo)


def test_business_calendar_holiday_and_dst_examples() -> None:
    tokyo = timezone(timedelta(hours=9))
    holiday = {"timezone": "Asia/Tokyo", "holidays": ["2026-03-09"]}
    rules = RefRules.from_dict({"mql": {"threshold": 1}, "sla": {"calendar": holiday}})
    friday = datetime(2026, 3, 6, 17, tzinfo=tokyo)
    assert rules.due(friday, 24 * HOUR) == datetime(2026, 3, 12, 14, tzinfo=tokyo)
    # Berlin: Fri 27 Mar 17:00 CET + 2h is Mon 30 Mar 10:00 CEST (08:00 UTC).
    berlin = RefRules.from_dict(
        {"mql": {"threshold": 1}, "sla": {"calendar": {"timezone": "Europe/Berlin"}}}
    )
    assert berlin.due(datetime(2026, 3, 27, 16, tzinfo=UTC), 2 * HOUR) == datetime(
        2026, 3, 30, 8, tzinfo=UTC
    )
    # Opening at 02:30 on the spring-forward day means 03:00 CEST (01:00 UTC).
    assert berlin.calendar is not None
    assert berlin.calendar.bound(datetime(2026, 3, 29).date(), 150) == datetime(
        2026, 3, 29, 1, tzinfo=UTC
    )


def test_bant_three_of_four_then_nurture_and_requalification() -> None:
    ref = Reference({**README_RULES, "fit": [], "mql": {"threshold": 30}, "decay": None})
    assert ref.engagement(ev(1, "download", T0)) is None
    first = ref.engagement(ev(2, "download", T0 + HOUR))
    assert first is not None
    failing = {"budget": True, "authority": False, "need": True, "timeframe": False}
    moved = ref.activity(RefActivity("a1", "lead-1", "bant_assessed", T0 + 2 * HOUR, failing))
    assert [(t.from_stage, t.to_stage, t.missing_bant) for t in moved] == [
        ("mql", "nurture", ("authority", "timeframe"))
    ]
    lead = ref.leads["lead-1"]
    assert lead.engagement(ref.rules) == 0  # engagement_factor 0: start again
    assert [c.status for c in lead.clocks] == ["met"]  # the assessment was the first contact
    assert ref.engagement(ev(3, "download", T0 + 3 * HOUR)) is None
    second = ref.engagement(ev(4, "download", T0 + 4 * HOUR))
    assert second is not None and second.triggering_event_id == "e4"
    passing = {**failing, "authority": True}
    moved = ref.activity(RefActivity("a2", "lead-1", "bant_assessed", T0 + 5 * HOUR, passing))
    assert [(t.from_stage, t.to_stage) for t in moved] == [("mql", "sql")]
    follow_up = lead.clocks[-1]
    assert (follow_up.kind, follow_up.due_at) == ("sql_follow_up", T0 + 5 * HOUR + 48 * HOUR)


def test_late_sql_clock_is_decided_by_the_newest_sales_action_in_both() -> None:
    # docs/sales-lifecycle.md: only the newest sales action is kept for a clock that opens late.
    data: dict[str, Any] = {"mql": {"threshold": 100}, "sla": {"sql_follow_up": "48h"}}
    rules, ref = parse_rules(data), Reference(data)
    bant = Bant(budget=True, authority=True, need=True, timeframe=True)
    state = LeadState(lead_id="lead-1")
    for activity in [
        SalesActivity(
            activity_id="a1", lead_id="lead-1", type="sales_action", occurred_at=T0 + HOUR
        ),
        SalesActivity(
            activity_id="a2", lead_id="lead-1", type="sales_action", occurred_at=T0 + 100 * HOUR
        ),
        SalesActivity(
            activity_id="a3", lead_id="lead-1", type="bant_assessed", occurred_at=T0, bant=bant
        ),
    ]:
        state, _ = apply_activity(state, activity, rules, now=activity.occurred_at)
        ref.activity(
            RefActivity(
                activity.activity_id,
                activity.lead_id,
                activity.type,
                activity.occurred_at,
                activity.bant.model_dump() if activity.bant else None,
            )
        )
    assert [c.status for c in state.clocks] == ["breached"]
    assert [c.status for c in ref.leads["lead-1"].clocks] == ["breached"]


def test_oracle_reference_check_agrees_on_the_sample_and_catches_a_wrong_score() -> None:
    settings = Settings()
    rules = load_rules(settings.rules)
    records = generate(leads=150, events=1500, seed=3, invalid_every=300, duplicate_every=50)
    expected = expected_outcome(records, rules, settings)
    handoffs = list(expected.handoffs.values())
    assert handoffs  # the sample qualifies some leads
    assert reference_disagreements(expected.leads, handoffs, expected, rules) == []

    # What the integration tests would see if the pipeline stored or sent something else.
    lead_id = handoffs[0].lead_id
    wrong = dict(expected.leads)
    state = wrong[lead_id]
    wrong[lead_id] = replace(
        state, engagement={k: replace(t, points=t.points + 1) for k, t in state.engagement.items()}
    )
    problems = reference_disagreements(wrong, handoffs[1:], expected, rules)
    assert any(p.startswith(f"{lead_id}:") for p in problems)
    assert any("missing" in p and lead_id in p for p in problems)
