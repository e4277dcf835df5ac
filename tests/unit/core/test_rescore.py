"""Rebuilding a lead under new rules keeps what sales did and nothing else."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from schemas.engagement import EngagementEvent
from streams.core.attribution import Deal
from streams.core.history import JourneyStep
from streams.core.lead import LeadState, apply_all
from streams.core.rescore import rescore_lead, take_sales_side
from streams.core.rules import parse_rules

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RULES = parse_rules(
    {
        "mql": {"threshold": 30},
        "engagement": {"pricing_page_view": 20, "download": 10},
        "recycle": {"engagement_factor": 0.5},
    }
)


def ev(n: int, kind: str, hours: float) -> EngagementEvent:
    return EngagementEvent(
        event_id=f"e{n}", lead_id="L", type=kind, occurred_at=T0 + timedelta(hours=hours)
    )


EVENTS = [ev(1, "pricing_page_view", 0), ev(2, "download", 1), ev(3, "pricing_page_view", 2)]


def test_a_lead_sales_never_saw_is_the_plain_fold() -> None:
    rebuilt, handoffs = rescore_lead(None, EVENTS, RULES)
    expected, expected_handoffs = apply_all(LeadState(lead_id="L"), EVENTS, RULES)
    assert rebuilt == expected and handoffs == expected_handoffs
    assert [h.triggering_event_id for h in handoffs] == ["e2"]  # 20 + 10 reaches 30


def test_a_lead_already_handed_off_keeps_its_stage_and_gets_no_new_handoff() -> None:
    live = LeadState(lead_id="L", stage="sql", handoff_id="ho-old", qualified_at=T0, owner="sato")
    rebuilt, handoffs = rescore_lead(live, EVENTS, RULES, frozenset({"activity:a1"}))
    assert handoffs == []
    assert (rebuilt.stage, rebuilt.handoff_id, rebuilt.owner) == ("sql", "ho-old", "sato")
    assert sum(t.points for t in rebuilt.engagement.values()) == 50  # rebuilt from the log
    assert rebuilt.seen_event_ids == {"e1", "e2", "e3", "activity:a1"}


def test_a_recycled_lead_keeps_its_reset_and_can_qualify_again() -> None:
    recycled = JourneyStep(T0 + timedelta(hours=1, minutes=30), "mql", "nurture", "ho-old", None)
    live = LeadState(lead_id="L", stage="nurture", handoff_id="ho-old", journey=(recycled,))
    rebuilt, handoffs = rescore_lead(live, EVENTS, RULES)
    # 30 points before the recycle, halved by the factor, then 20 more: 35 >= 30.
    assert sum(t.points for t in rebuilt.engagement.values()) == 35
    assert [h.triggering_event_id for h in handoffs] == ["e3"]
    assert rebuilt.stage == "mql" and rebuilt.handoff_id == handoffs[0].handoff_id


def test_a_rescore_of_a_plain_lead_does_not_depend_on_the_live_scores() -> None:
    live, _ = apply_all(LeadState(lead_id="L"), EVENTS[:1], RULES)
    stale = replace(live, events_counted=99)
    assert rescore_lead(stale, EVENTS, RULES) == rescore_lead(None, EVENTS, RULES)


def test_taking_the_sales_side_keeps_the_rebuilt_scores_and_the_sales_markers() -> None:
    rebuilt, _ = rescore_lead(None, EVENTS, RULES)
    live = LeadState(lead_id="L", stage="sql", handoff_id="ho-live", owner="suzuki")
    seen = frozenset({"e1", "activity:a9", "handoff:ho-live"})
    merged = take_sales_side(rebuilt, live, seen)
    assert (merged.stage, merged.handoff_id, merged.owner) == ("sql", "ho-live", "suzuki")
    assert merged.engagement == rebuilt.engagement
    assert merged.seen_event_ids == rebuilt.seen_event_ids | {"activity:a9", "handoff:ho-live"}


def test_a_rescore_keeps_the_qualifications_attribution_and_deals() -> None:
    """Handed off at e2 (T0+1h) with touches e1, e2; sales opened a 500 USD opportunity. The
    rebuilt lead keeps that touch set, the deal and the routing queue; the open touches are
    those after the MQL (e3), not every touch of the log."""
    live, _ = apply_all(LeadState(lead_id="L"), EVENTS[:2], RULES)
    deal = Deal(T0 + timedelta(hours=5), 50_000, "USD")
    live = replace(live, stage="sql", opportunity=deal, queue="inside-sales", owner="sato")
    assert [t.at for t in live.attribution] == [T0, T0 + timedelta(hours=1)]
    rebuilt, handoffs = rescore_lead(live, EVENTS, RULES)
    assert handoffs == []
    assert rebuilt.attribution == live.attribution
    assert (rebuilt.opportunity, rebuilt.queue) == (deal, "inside-sales")
    assert [t.at for t in rebuilt.touches] == [T0 + timedelta(hours=2)]
