"""`leads.lifecycle`: one event per stage change of a lead."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Stage = Literal["lead", "mql", "sql", "nurture", "disqualified", "won", "lost"]
BantCriterion = Literal["budget", "authority", "need", "timeframe"]


class LifecycleTransition(BaseModel):
    model_config = ConfigDict(frozen=True, title="LifecycleTransition")

    schema_version: Literal[1] = 1
    transition_id: str = Field(description="Stable: the same cause always gives the same id.")
    lead_id: str
    from_stage: Stage
    to_stage: Stage
    occurred_at: AwareDatetime = Field(description="Event time of the cause.")
    handoff_id: str | None = Field(description="The MQL handoff this stage belongs to.")
    reason: str | None = None
    missing_bant: list[BantCriterion] = Field(
        default_factory=list, description="Criteria not met, when recycled to nurture."
    )
