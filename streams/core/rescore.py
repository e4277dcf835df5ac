"""Rebuilding a lead under new rules from the retained engagement log, keeping what sales did.

Scoring fields come from folding the log with the new rules, as a fresh worker would; the sales
side (stage, handoff, clocks, contacts, stage history) is kept from the live state, so a rules
change never re-hands-off a lead that sales already has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core.attribution import Touch, micros
from streams.core.lead import LeadState, apply_all
from streams.core.rules import Rules
from streams.core.sales import recycled_cap_shares, recycled_engagement, sales_marks

# Kept from the live state; everything else is rebuilt from the log.
SALES_SIDE = (
    "stage",
    "handoff_id",
    "qualified_at",
    "qualifications",
    "clocks",
    "last_contact_at",
    "contact_times",
    "last_sales_action_at",
    "owner",
    "queue",
    "missing_bant",
    "sql_at",
    "journey",
    # attribution of the current qualification (docs/kpis.md): its touch set, opportunity, win
    "attribution",
    "opportunity",
    "won_deal",
)


def take_sales_side(rebuilt: LeadState, live: LeadState, live_seen: frozenset[str]) -> LeadState:
    """The rebuilt lead with what sales did to the live one since (stage, clocks, history)."""
    kept = {name: getattr(live, name) for name in SALES_SIDE}
    return replace(rebuilt, **kept, seen_event_ids=rebuilt.seen_event_ids | sales_marks(live_seen))


def last_recycled_at(state: LeadState) -> datetime | None:
    steps = [j.at for j in state.journey if j.to_stage == "nurture"]
    return max(steps) if steps else None


def rescore_lead(
    live: LeadState | None,
    events: Sequence[EngagementEvent],
    rules: Rules,
    sales_marks: frozenset[str] = frozenset(),
) -> tuple[LeadState, list[MqlHandoff]]:
    """The lead rebuilt from its events under `rules` (a streams.core.rules.Rules).

    - Never seen by sales (no live state, or still a plain lead): exactly the fold of its
      events, handoff included if it now qualifies.
    - Already handed off: scoring rebuilt, sales side kept, no new handoff; a lead that sales
      recycled to nurture has the engagement it had before recycling multiplied by the rules'
      engagement_factor, as at the time, and may qualify again on later events.
    """
    state, handoffs = _rebuild(live, events, rules)
    # Dedupe markers of sales inputs (activities, handoffs) carry over: a redelivered activity
    # must still count once after the switch.
    return replace(state, seen_event_ids=state.seen_event_ids | sales_marks), handoffs


def _rebuild(
    live: LeadState | None, events: Sequence[EngagementEvent], rules: Rules
) -> tuple[LeadState, list[MqlHandoff]]:
    lead_id = live.lead_id if live else events[0].lead_id
    if live is None or live.stage == "lead":
        return apply_all(LeadState(lead_id=lead_id), events, rules)

    kept = {name: getattr(live, name) for name in SALES_SIDE}
    recycled_at = last_recycled_at(live) if live.stage == "nurture" else None
    if recycled_at is None:
        # Held by sales: fold without the chance to qualify again.
        state, _ = apply_all(LeadState(lead_id=lead_id, stage=live.stage), events, rules)
        return replace(state, **kept, touches=_since(state, live.qualified_at)), []

    before = [e for e in events if e.occurred_at <= recycled_at]
    after = [e for e in events if e.occurred_at > recycled_at]
    state, _ = apply_all(LeadState(lead_id=lead_id, stage="mql"), before, rules)
    state = replace(
        state,
        **kept,
        engagement=recycled_engagement(state.engagement, rules),
        touches=_since(state, live.qualified_at),
        cap_shares=recycled_cap_shares(state.cap_shares, rules),
    )
    return apply_all(state, after, rules)


def _since(state: LeadState, qualified_at: datetime | None) -> tuple[Touch, ...]:
    """The touches of the next qualification: those after the live one's MQL (a fold that
    could not qualify collected every touch)."""
    if qualified_at is None:
        return state.touches
    after = micros(qualified_at)
    return tuple(t for t in state.touches if t.us > after)
