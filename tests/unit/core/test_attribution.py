"""Source and campaign attribution, checked against figures worked out by hand.

The lead below has four touches before it becomes an MQL (the fourth triggers it):

    #  time   source (utm_source wins)   campaign
    1  09:00  google                     brand
    2  10:00  newsletter                 spring-webinar
    3  11:00  google                     spring-webinar
    4  12:00  linkedin                   (none)          <- the MQL-triggering touch

Weights per touch: first_touch 1,0,0,0; last_touch 0,0,0,1; linear 1/4 each;
position_based 40 %, 10 %, 10 %, 40 % (20 % split over the two in between).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.activity import Bant, SalesActivity
from schemas.engagement import EngagementEvent
from streams.cli.render_explain import attribution_line
from streams.core.attribution import (
    CREDIT_UNITS,
    MODELS,
    Deal,
    Touch,
    add_touch,
    apportion,
    credit,
    figures,
    qualification_touches,
    shares,
    weights,
)
from streams.core.explain import explain
from streams.core.kpi import kpi_changes
from streams.core.lead import LeadState, apply_all
from streams.core.rules import parse_rules
from streams.core.sales import apply_activity, mql_transition

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
RULES = parse_rules(
    {
        "mql": {"threshold": 100},
        "engagement": {
            "email_open": 10,
            "download": 20,
            "pricing_page_view": 30,
            "demo_request": 40,
        },
        "reporting": {"timezone": "UTC"},
    }
)


def event(n: int, kind: str, source: str | None, **properties: Any) -> EngagementEvent:
    return EngagementEvent(
        event_id=f"e-{n}",
        lead_id="lead-1",
        type=kind,
        occurred_at=T0 + n * HOUR,
        source=source,
        properties=properties or None,
    )


HISTORY = [
    event(0, "email_open", "website", utm_source="google", utm_campaign="brand"),
    event(1, "download", "newsletter", campaign="spring-webinar", utm_campaign="ignored"),
    event(2, "pricing_page_view", "google", utm_campaign="spring-webinar"),
    event(3, "demo_request", "linkedin"),  # 10 + 20 + 30 + 40 = 100: the MQL
]


def activity(n: int, kind: str, **fields: Any) -> SalesActivity:
    return SalesActivity.model_validate(
        {
            "activity_id": f"a-{n}",
            "lead_id": "lead-1",
            "type": kind,
            "occurred_at": (T0 + (10 + n) * HOUR).isoformat(),
            **fields,
        }
    )


YES = Bant(budget=True, authority=True, need=True, timeframe=False)


def run_funnel(*activities: SalesActivity) -> Counter[str]:
    """The MQL, then each activity, as the worker applies them: the KPI counts summed."""
    counts: Counter[str] = Counter()
    state, handoffs = apply_all(LeadState(lead_id="lead-1"), HISTORY, RULES)
    assert len(handoffs) == 1

    found, _ = kpi_changes(
        LeadState(lead_id="lead-1"), state, [mql_transition("lead", handoffs[0])], RULES
    )
    for c in found:
        counts[c.field] += c.amount
    for a in activities:
        after, moved = apply_activity(state, a, RULES, now=a.occurred_at)
        found, _ = kpi_changes(state, after, moved, RULES)
        for c in found:
            counts[c.field] += c.amount
        state = after
    return counts


def credited(counts: Counter[str], model: str, dimension: str, measure: str) -> dict[str, int]:
    head = f"attr:{model}:{dimension}:{measure}:"
    return {k.removeprefix(head): n for k, n in counts.items() if k.startswith(head) and n}


U = CREDIT_UNITS
FULL_FUNNEL = (
    activity(1, "bant_assessed", bant=YES),
    activity(2, "opportunity_created", amount="1200.00", currency="USD"),
    activity(3, "won", amount="1000000", currency="JPY"),
)

# What each model credits per source, by hand (per conversion, in credit units).
BY_SOURCE = {
    "first_touch": {"google": U},
    "last_touch": {"linkedin": U},
    "linear": {"google": U // 2, "newsletter": U // 4, "linkedin": U // 4},
    "position_based": {"google": U // 2, "newsletter": U // 10, "linkedin": 2 * U // 5},
}
BY_CAMPAIGN = {
    "first_touch": {"brand": U},
    "last_touch": {"(none)": U},
    "linear": {"brand": U // 4, "spring-webinar": U // 2, "(none)": U // 4},
    "position_based": {"brand": 2 * U // 5, "spring-webinar": U // 5, "(none)": 2 * U // 5},
}


@pytest.mark.parametrize("model", MODELS)
def test_each_conversion_is_credited_per_source_and_campaign_as_worked_out_by_hand(
    model: str,
) -> None:
    counts = run_funnel(*FULL_FUNNEL)
    for measure in ("mql", "sql", "opportunity", "won"):
        assert credited(counts, model, "source", measure) == BY_SOURCE[model], measure
        assert credited(counts, model, "campaign", measure) == BY_CAMPAIGN[model], measure
    # Amounts: 1,200.00 USD of pipeline (120,000 cents) and 1,000,000 JPY won, in the same
    # shares as the conversions (JPY has no minor unit; USD has cents).
    pipeline = {k: v * 120_000 // U for k, v in BY_SOURCE[model].items()}
    revenue = {k: v * 1_000_000 // U for k, v in BY_SOURCE[model].items()}
    assert credited(counts, model, "source", "pipeline.USD") == pipeline
    assert credited(counts, model, "source", "revenue.JPY") == revenue
    camp_revenue = {k: v * 1_000_000 // U for k, v in BY_CAMPAIGN[model].items()}
    assert credited(counts, model, "campaign", "revenue.JPY") == camp_revenue


def test_the_report_figures_read_the_counters_back_per_value() -> None:
    counts = run_funnel(*FULL_FUNNEL)
    day = T0.date()
    table = figures({day: counts}, [day], "linear", "source")
    assert [f.value for f in table] == ["google", "linkedin", "newsletter"]  # most revenue first
    google = table[0]
    assert (google.mqls, google.sqls, google.opportunities, google.won) == (
        Fraction(1, 2),
        Fraction(1, 2),
        Fraction(1, 2),
        Fraction(1, 2),
    )
    assert google.pipeline == {"USD": 60_000} and google.revenue == {"JPY": 500_000}
    assert google.mql_to_sql == 1 and google.sql_to_won == 1


def test_a_win_without_an_amount_is_worth_its_opportunity() -> None:
    counts = run_funnel(
        activity(1, "bant_assessed", bant=YES),
        activity(2, "opportunity_created", amount="300", currency="EUR"),
        activity(3, "won"),
    )
    assert credited(counts, "last_touch", "source", "revenue.EUR") == {"linkedin": 30_000}
    assert credited(counts, "last_touch", "source", "pipeline.EUR") == {"linkedin": 30_000}


def test_a_second_opportunity_and_a_repeated_sql_credit_nothing_more() -> None:
    counts = run_funnel(
        activity(1, "bant_assessed", bant=YES),
        activity(2, "opportunity_created", amount="100", currency="USD"),
        activity(3, "opportunity_created", amount="900", currency="USD"),
        activity(
            4, "bant_assessed", bant=Bant(budget=False, authority=False, need=True, timeframe=False)
        ),
        activity(5, "bant_assessed", bant=YES),
    )
    assert credited(counts, "first_touch", "source", "sql") == {"google": U}
    assert credited(counts, "first_touch", "source", "opportunity") == {"google": U}
    assert credited(counts, "first_touch", "source", "pipeline.USD") == {"google": 10_000}


def test_re_mql_after_nurture_credits_only_the_new_touches() -> None:
    state, _ = apply_all(LeadState(lead_id="lead-1"), HISTORY, RULES)
    nurture = activity(
        1, "bant_assessed", bant=Bant(budget=False, authority=False, need=True, timeframe=False)
    )
    state, _ = apply_activity(state, nurture, RULES, now=nurture.occurred_at)
    assert state.stage == "nurture"
    later = [event(20 + i, "demo_request", "events", campaign="expo-2026") for i in range(3)]
    again, handoffs = apply_all(state, later, RULES)
    assert len(handoffs) == 1 and again.stage == "mql"
    assert {t.source for t in again.attribution} == {"events"}
    assert {t.campaign for t in again.attribution} == {"expo-2026"}
    assert again.touches == ()


def test_weights_by_hand() -> None:
    assert weights(1, "position_based") == [1]
    assert weights(2, "position_based") == [Fraction(1, 2)] * 2
    assert weights(5, "position_based") == [
        Fraction(2, 5), Fraction(1, 15), Fraction(1, 15), Fraction(1, 15), Fraction(2, 5)
    ]  # fmt: skip
    assert weights(3, "linear") == [Fraction(1, 3)] * 3
    assert weights(3, "first_touch") == [1, 0, 0]
    assert weights(3, "last_touch") == [0, 0, 1]


def test_apportion_gives_the_leftover_units_to_the_largest_remainders() -> None:
    thirds = {"a": Fraction(1, 3), "b": Fraction(1, 3), "c": Fraction(1, 3)}
    assert apportion(100, thirds) == {"a": 34, "b": 33, "c": 33}
    assert apportion(2, {"a": Fraction(1, 6), "b": Fraction(1, 2), "c": Fraction(1, 3)}) == {
        "b": 1,
        "c": 1,
    }


def test_touches_stay_bounded_and_keep_the_first_and_the_trigger() -> None:
    touches: tuple[Touch, ...] = ()
    for i in range(10):
        touches = add_touch(touches, Touch.at_time(T0 + i * HOUR, f"s{i}", "c"), limit=4)
    assert [t.source for t in touches] == ["s0", "s7", "s8", "s9"]
    late = Touch.at_time(T0 + 8 * HOUR + HOUR / 2, "late", "c")  # in between, by event time
    assert [t.source for t in add_touch(touches, late, 5)] == ["s0", "s7", "s8", "late", "s9"]
    trigger = Touch.at_time(T0, "trigger", "c")
    frozen = qualification_touches(touches, trigger, limit=4)
    assert [t.source for t in frozen] == ["s0", "s8", "s9", "trigger"]


def test_a_bad_amount_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="more decimals than JPY"):
        activity(1, "won", amount="10.5", currency="JPY")
    with pytest.raises(ValueError, match="ISO 4217"):
        activity(1, "won", amount="10", currency="ABC")
    with pytest.raises(ValueError, match="only opportunity_created and won"):
        activity(1, "contacted", amount="10", currency="USD")
    assert activity(1, "won", amount="12.345", currency="KWD").amount == Decimal("12.345")


TOUCHES = st.lists(
    st.builds(
        Touch.at_time,
        st.just(T0),
        st.sampled_from(["google", "newsletter", "linkedin", "(none)", "a:b"]),
        st.sampled_from(["brand", "spring", "(none)"]),
    ),
    max_size=60,
)


@given(TOUCHES, st.sampled_from(MODELS), st.integers(0, 10**12))
def test_the_counters_written_are_the_exact_shares_split_by_largest_remainder(
    touches: list[Touch], model: Any, amount: int
) -> None:
    """What the worker writes (credit, integers only) is what the exact Fractions give."""
    deal = Deal(T0, amount, "JPY")
    fields = credit(touches, "won", deal)
    for dimension in ("source", "campaign"):
        parts = shares(touches, model, dimension)
        head = f"attr:{model}:{dimension}:"
        written = {
            k.removeprefix(head + "won:"): n
            for k, n in fields.items()
            if k.startswith(head + "won:")
        }
        assert written == apportion(CREDIT_UNITS, parts)
        money = {
            k.removeprefix(head + "revenue.JPY:"): n
            for k, n in fields.items()
            if k.startswith(head + "revenue.JPY:")
        }
        assert money == apportion(amount, parts)


@given(TOUCHES, st.sampled_from(MODELS), st.integers(0, 10**15))
def test_credits_of_every_conversion_sum_to_one_and_amounts_are_conserved(
    touches: list[Touch], model: Any, amount: int
) -> None:
    for dimension in ("source", "campaign"):
        parts = shares(touches, model, dimension)
        assert sum(parts.values()) == 1
        assert all(p >= 0 for p in parts.values())
        units = apportion(CREDIT_UNITS, parts)
        assert sum(units.values()) == CREDIT_UNITS
        minor = apportion(amount, parts)
        assert sum(minor.values()) == amount
        # nobody is off their exact share by a whole unit or more
        assert all(abs(minor.get(v, 0) - p * amount) < 1 for v, p in parts.items())
    assert sum(weights(len(touches), model)) == (1 if touches else 0)


def test_explain_shows_the_touch_set_its_credit_and_the_deals() -> None:
    state, _ = apply_all(LeadState(lead_id="lead-1"), HISTORY, RULES)
    for a in FULL_FUNNEL[:2]:
        state, _ = apply_activity(state, a, RULES, now=a.occurred_at)
    e = explain(state, RULES, now=T0 + 20 * HOUR)
    assert e.attribution is not None
    assert [(t.source, t.campaign) for t in e.attribution.touches] == [
        ("google", "brand"),
        ("newsletter", "spring-webinar"),
        ("google", "spring-webinar"),
        ("linkedin", "(none)"),
    ]
    # position-based by hand: google 40 % + 10 %, newsletter 10 %, linkedin 40 %
    assert e.attribution.credit_by_source == {"google": 0.5, "newsletter": 0.1, "linkedin": 0.4}
    assert e.attribution.opportunity is not None
    assert (e.attribution.opportunity.amount, e.attribution.opportunity.currency) == (
        "1200.00",
        "USD",
    )
    assert e.attribution.won is None and e.attribution.next_touches == 0
    line = attribution_line(e)
    assert "google 50%, newsletter 10%, linkedin 40%" in line and "opportunity 1200.00 USD" in line
