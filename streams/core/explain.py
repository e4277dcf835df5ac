"""Why this score: a lead's stored state, explained under the effective rules.

Pure: `explain(state, rules, now)`. `now` (the caller's wall clock) only decides which open
deadlines are overdue. Engagement decays on event time, so the score is reported as of the
lead's engagement clock (`engagement_as_of`, its newest event time), exactly as scoring and the
MQL handoff see it; it is not decayed further to `now`.
"""

from __future__ import annotations

from datetime import datetime

from schemas.explain import (
    AttributeExplanation,
    AttributionExplanation,
    ClockExplanation,
    DealExplanation,
    LeadExplanation,
    OpenDeadline,
    RecentEvent,
    RoutingExplanation,
    StageChange,
    TouchExplanation,
)
from schemas.money import from_minor_units
from streams.core.attribution import Deal, shares
from streams.core.lead import SCORE_DIGITS, LeadState, can_qualify, score
from streams.core.routing import Routing
from streams.core.rules import Rules

MAX_LEAD_ID = 256  # schemas.engagement.Identifier


def mql_blockers(fit: float, engagement: float, rules: Rules) -> list[str]:
    """The MQL conditions besides the threshold that the lead does not meet (see `qualifies`)."""
    mql = rules.mql
    out = []
    if mql.min_fit is not None and fit < mql.min_fit:
        out.append(f"fit {fit:g} below min_fit {mql.min_fit:g}")
    if mql.min_engagement is not None and engagement < mql.min_engagement:
        out.append(f"engagement {engagement:g} below min_engagement {mql.min_engagement:g}")
    return out


def explain(
    state: LeadState, rules: Rules, now: datetime, routing: Routing | None = None
) -> LeadExplanation:
    """Explain one lead: score and every contribution, history, deadlines (overdue at `now`),
    and `routing`, the recorded routing decision of its latest handoff (if the shell has it)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    current = score(state, rules)
    total = current.total
    open_to_score = can_qualify(state.stage, rules)
    points_to_mql = (
        round(max(0.0, rules.mql.threshold - total), SCORE_DIGITS) if open_to_score else None
    )
    open_clocks = sorted((c for c in state.clocks if c.status == "open"), key=lambda c: c.due_at)
    return LeadExplanation(
        lead_id=state.lead_id,
        stage=state.stage,
        score=total,
        fit_score=current.fit,
        engagement_score=current.engagement,
        threshold=rules.mql.threshold,
        min_fit=rules.mql.min_fit,
        min_engagement=rules.mql.min_engagement,
        points_to_mql=points_to_mql,
        mql_blockers=(
            mql_blockers(current.fit, current.engagement, rules) if open_to_score else []
        ),
        rules_version=rules.version,
        engagement_as_of=state.engagement_as_of,
        reasons=list(current.reasons),
        attributes={
            name: AttributeExplanation(value=a.value, as_of=a.as_of)
            for name, a in sorted(state.attributes.items())
        },
        recent_events=[
            RecentEvent(
                event_id=c.event_id, type=c.type, occurred_at=c.occurred_at, points=c.points
            )
            for c in state.recent_events
        ],
        open_deadlines=[
            OpenDeadline(
                kind=c.kind,
                handoff_id=c.handoff_id,
                started_at=c.started_at,
                due_at=c.due_at,
                owner=c.owner or state.owner,
                overdue=now >= c.due_at,
            )
            for c in open_clocks
        ],
        clocks=[
            ClockExplanation(
                kind=c.kind,
                handoff_id=c.handoff_id,
                round=c.round,
                started_at=c.started_at,
                due_at=c.due_at,
                warn_at=c.warn_at,
                status=c.status,
                warned=c.warned,
                ended_at=c.ended_at,
                late_action_at=c.late_action_at,
                owner=c.owner,
            )
            for c in state.clocks
        ],
        journey=[
            StageChange(
                at=j.at,
                from_stage=j.from_stage,
                to_stage=j.to_stage,
                handoff_id=j.handoff_id,
                reason=j.reason,
            )
            for j in state.journey
        ],
        handoff_id=state.handoff_id,
        qualified_at=state.qualified_at,
        qualifications=state.qualifications,
        owner=state.owner,
        routing=(
            RoutingExplanation(
                owner=routing.owner,
                queue=routing.queue,
                reason=routing.reason,
                passed_over=list(routing.passed_over),
            )
            if routing is not None
            else None
        ),
        attribution=_attribution(state),
        missing_bant=list(state.missing_bant),
        events_counted=state.events_counted,
        last_event_at=state.last_event_at,
        now=now,
    )


def _attribution(state: LeadState) -> AttributionExplanation | None:
    if state.handoff_id is None and not state.touches:
        return None

    def deal(d: Deal | None) -> DealExplanation | None:
        if d is None:
            return None
        amount = None
        if d.amount is not None and d.currency:
            amount = str(from_minor_units(d.amount, d.currency))
        return DealExplanation(at=d.at, amount=amount, currency=d.currency)

    parts = shares(state.attribution, "position_based", "source") if state.handoff_id else {}
    return AttributionExplanation(
        touches=[
            TouchExplanation(at=t.at, source=t.source, campaign=t.campaign)
            for t in state.attribution
        ],
        credit_by_source={value: round(float(p), 6) for value, p in parts.items()},
        next_touches=len(state.touches),
        opportunity=deal(state.opportunity),
        won=deal(state.won_deal),
    )


def lead_id_problem(lead_id: str) -> str | None:
    """Why `lead_id` cannot name a lead, or None when it can.

    Lead ids follow the contract's Identifier: surrounding whitespace is stripped (as it was
    when the events were read), then 1 to MAX_LEAD_ID characters.
    """
    stripped = lead_id.strip()
    if not stripped:
        return "lead id is empty"
    if len(stripped) > MAX_LEAD_ID:
        return f"lead id is {len(stripped)} characters long (at most {MAX_LEAD_ID})"
    return None
