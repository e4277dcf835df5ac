"""`GET /leads/{lead_id}/explain` and `leadflow explain`: why a lead has the score it has.

Not a topic record: a read-only view of one lead's stored state under the effective rules.
Reasons use the same words (`ScoreReason`) as the MQL handoff's `reasons`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from schemas.engagement import AttributeValue
from schemas.handoff import ScoreReason
from schemas.lifecycle import BantCriterion, Stage


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class AttributeExplanation(_Frozen):
    """The current value of one profile field and the event time it was set at."""

    value: AttributeValue
    as_of: AwareDatetime


class RecentEvent(_Frozen):
    """One event that changed the engagement score."""

    event_id: str
    type: str
    occurred_at: AwareDatetime
    points: float = Field(
        description="Points as counted when the event arrived: after the daily cap, before decay "
        "(and before any recycle reset)."
    )


class OpenDeadline(_Frozen):
    """An SLA clock still running."""

    kind: str
    handoff_id: str
    started_at: AwareDatetime
    due_at: AwareDatetime
    owner: str | None = None
    overdue: bool = Field(description="due_at has passed at the explanation's `now`.")


class ClockExplanation(_Frozen):
    """One SLA clock of the lead, whatever its status."""

    kind: str
    handoff_id: str
    round: int = 0
    started_at: AwareDatetime
    due_at: AwareDatetime
    warn_at: AwareDatetime | None = None
    status: str = Field(description="open, met, breached, expired or closed.")
    warned: bool = False
    ended_at: AwareDatetime | None = None
    late_action_at: AwareDatetime | None = None
    owner: str | None = None


class StageChange(_Frozen):
    """One step of the lead's stage history."""

    at: AwareDatetime
    from_stage: Stage
    to_stage: Stage
    handoff_id: str | None = None
    reason: str | None = None


class RoutingExplanation(_Frozen):
    """How the routing rules chose the owner at the latest handoff (docs/routing.md)."""

    owner: str | None = Field(description="Who got the lead (escalate_to for no_capacity).")
    queue: str | None = Field(description="The queue whose `when` matched (null: none did).")
    reason: Literal["round_robin", "no_capacity", "no_queue"]
    passed_over: list[str] = Field(
        default_factory=list, description="Members skipped as away or at capacity that day."
    )


class TouchExplanation(_Frozen):
    at: AwareDatetime
    source: str = Field(description="The channel: properties.utm_source, else source.")
    campaign: str = Field(description="properties.campaign, else utm_campaign; (none) if none.")


class DealExplanation(_Frozen):
    at: AwareDatetime
    amount: str | None = Field(description="A decimal in `currency` (null: none given).")
    currency: str | None = None


class AttributionExplanation(_Frozen):
    """Who gets the credit for this lead's conversions (docs/kpis.md, "Attribution")."""

    touches: list[TouchExplanation] = Field(
        description="The current qualification's touch set, the MQL-triggering touch last."
    )
    credit_by_source: dict[str, float] = Field(
        description="Each source's share of every conversion, position-based model."
    )
    next_touches: int = Field(description="Touches collected since, for a later qualification.")
    opportunity: DealExplanation | None = None
    won: DealExplanation | None = None


class LeadExplanation(_Frozen):
    """Why this score: the lead's score, every contribution, and where it stands with sales."""

    model_config = ConfigDict(frozen=True, title="LeadExplanation")

    lead_id: str
    stage: Stage
    score: float = Field(description="fit_score + engagement_score.")
    fit_score: float
    engagement_score: float = Field(description="Engagement as of engagement_as_of.")
    threshold: float
    min_fit: float | None = None
    min_engagement: float | None = None
    points_to_mql: float | None = Field(
        description="Points the score still lacks to reach the threshold; None when a score "
        "crossing cannot (re)qualify the lead from its stage (MQL or beyond)."
    )
    mql_blockers: list[str] = Field(
        default_factory=list,
        description="MQL conditions not met besides the threshold (min_fit, min_engagement).",
    )
    rules_version: str
    engagement_as_of: AwareDatetime | None = Field(
        description="The lead's engagement clock (its newest event time): engagement decays on "
        "event time and is reported as of this moment, not re-decayed to the request time."
    )
    reasons: list[ScoreReason] = Field(
        description="Every contributing rule, largest first (the handoff keeps the top few)."
    )
    attributes: dict[str, AttributeExplanation]
    recent_events: list[RecentEvent] = Field(
        description="The last rules.history_limit contributing events, in the order they were "
        "counted (arrival order; a late event comes after newer ones)."
    )
    open_deadlines: list[OpenDeadline] = Field(description="Open SLA clocks, earliest due first.")
    clocks: list[ClockExplanation] = Field(description="Every SLA clock kept for the lead.")
    journey: list[StageChange] = Field(
        description="Stage changes, oldest first (the newest rules.history_limit)."
    )
    handoff_id: str | None = None
    qualified_at: AwareDatetime | None = None
    qualifications: int = 0
    owner: str | None = None
    routing: RoutingExplanation | None = Field(
        default=None,
        description="The routing decision of the latest handoff (null without routing, or once "
        "the decision is older than the 35 days it is kept).",
    )
    attribution: AttributionExplanation | None = Field(
        default=None, description="Touches and deals of the current qualification (null: none)."
    )
    missing_bant: list[BantCriterion] = Field(default_factory=list)
    events_counted: int = Field(default=0, description="Engagement events folded into the lead.")
    last_event_at: AwareDatetime | None = None
    now: AwareDatetime = Field(description="The time `overdue` was judged at.")
