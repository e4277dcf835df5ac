"""`leads.handoff`: one event per MQL qualification, consumed by SFA/CRM connectors."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field


class ScoreReason(BaseModel):
    """One rule's contribution to a lead's score, in words a salesperson can read."""

    model_config = ConfigDict(frozen=True, title="ScoreReason")

    kind: Literal["fit", "engagement"]
    rule: str = Field(description="The rule, e.g. 'industry in [manufacturing, software]'.")
    points: float = Field(description="Points this rule contributes now (after decay).")
    events: int | None = Field(
        default=None, description="How many events of this type counted (engagement only)."
    )


class MqlHandoff(BaseModel):
    """A lead crossed the MQL threshold: marketing hands it to sales."""

    model_config = ConfigDict(frozen=True, title="MqlHandoff")

    schema_version: Literal[1] = 1
    handoff_id: str = Field(description="Stable: the same qualification always has the same id.")
    lead_id: str
    qualified_at: AwareDatetime = Field(description="occurred_at of the triggering event.")
    score: float
    fit_score: float
    engagement_score: float
    threshold: float
    rules_version: str = Field(description="Content hash of the effective rules.")
    triggering_event_id: str
    reasons: list[ScoreReason] = Field(description="Top contributing rules, largest first.")
    first_contact_due_at: AwareDatetime = Field(
        description="When sales must have made contact: qualified_at + sla.mql_first_contact "
        "(working time when the rules have a business calendar)."
    )
    # Routing (added in schema version 1, optional: readers that ignore them keep working).
    owner: str | None = Field(
        default=None,
        description="The salesperson the routing rules gave the lead to; null when the rules "
        "have no routing section, or when nobody in the queue was available (see queue).",
    )
    queue: str | None = Field(
        default=None,
        description="The routing queue whose `when` matched the lead (null without routing).",
    )
    routing_reason: str | None = Field(
        default=None,
        description="Why this owner: `round_robin` (the queue's weighted rotation), "
        "`no_capacity` (every member away or at capacity: owner is the queue's escalate_to), "
        "or `no_queue` (no queue matched; owner null).",
    )
