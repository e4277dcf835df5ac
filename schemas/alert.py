"""`alerts.sla`: a sales SLA deadline passed (or is about to) without the required action."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

ClockKind = Literal["mql_first_contact", "sql_follow_up"]


class SlaAlert(BaseModel):
    model_config = ConfigDict(frozen=True, title="SlaAlert")

    schema_version: Literal[1] = 1
    alert_id: str = Field(
        description="Stable: one id per (handoff, clock, severity); a clock opened by a "
        "reassignment has ids of its own."
    )
    lead_id: str
    handoff_id: str
    kind: ClockKind
    severity: Literal["warning", "breach"]
    due_at: AwareDatetime
    detected_at: AwareDatetime = Field(description="When leadflow noticed (processing time).")
    owner: str | None = Field(
        default=None, description="The lead's owner when the alert fired (who must act)."
    )
    # The escalation ladder (added in schema version 1, optional: readers that ignore them keep
    # working). A warning goes to the owner only; a breach also to the queue's escalate_to.
    escalated_to: str | None = Field(
        default=None,
        description="Who besides the owner must hear of it: on a breach, the routing queue's "
        "`escalate_to` (null for warnings, without routing, or when that is the owner).",
    )
    queue: str | None = Field(
        default=None, description="The lead's routing queue (from its handoff); null without one."
    )
