"""`alerts.sla`: a sales SLA deadline passed (or is about to) without the required action."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

ClockKind = Literal["mql_first_contact", "sql_follow_up"]


class SlaAlert(BaseModel):
    model_config = ConfigDict(frozen=True, title="SlaAlert")

    schema_version: Literal[1] = 1
    alert_id: str = Field(description="Stable: one id per (handoff, clock, severity).")
    lead_id: str
    handoff_id: str
    kind: ClockKind
    severity: Literal["warning", "breach"]
    due_at: AwareDatetime
    detected_at: AwareDatetime = Field(description="When leadflow noticed (processing time).")
    owner: str | None = None
