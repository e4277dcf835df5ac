"""`leads.lifecycle`: one event per stage change of a lead, and per change of its owner.

`kind` says which: a `stage_change` moves `from_stage` to `to_stage`; a `reassigned` event moves
the lead from `from_owner` to `to_owner` and leaves the stage as it was (`from_stage` and
`to_stage` are both the current stage, so a reader that knows only stage changes sees no move).
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Stage = Literal["lead", "mql", "sql", "nurture", "disqualified", "won", "lost"]
BantCriterion = Literal["budget", "authority", "need", "timeframe"]
TransitionKind = Literal["stage_change", "reassigned"]


class LifecycleTransition(BaseModel):
    model_config = ConfigDict(frozen=True, title="LifecycleTransition")

    schema_version: Literal[1] = 1
    transition_id: str = Field(description="Stable: the same cause always gives the same id.")
    lead_id: str
    from_stage: Stage
    to_stage: Stage
    occurred_at: AwareDatetime = Field(description="Event time of the cause.")
    handoff_id: str | None = Field(description="The MQL handoff this stage belongs to.")
    reason: str | None = Field(
        default=None,
        description="Why, in words; for a reassignment `sla_breach` (the owner missed the "
        "first-contact deadline) or `manual` (moved in the CRM) unless the CRM gave a reason.",
    )
    missing_bant: list[BantCriterion] = Field(
        default_factory=list, description="Criteria not met, when recycled to nurture."
    )
    # Reassignments (added in schema version 1, optional: readers that ignore them keep working).
    kind: TransitionKind = Field(
        default="stage_change",
        description="`stage_change` (from_stage -> to_stage) or `reassigned` (from_owner -> "
        "to_owner; the stage does not change: from_stage equals to_stage).",
    )
    from_owner: str | None = Field(
        default=None, description="reassigned: the previous owner (null if nobody had it)."
    )
    to_owner: str | None = Field(default=None, description="reassigned: the new owner.")
