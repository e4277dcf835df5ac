"""`sales.activity`: what sales did with a lead, as recorded by the SFA/CRM connector."""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, model_validator

from schemas.engagement import Identifier

ActivityType = Literal[
    "contacted", "bant_assessed", "sales_action", "disqualified", "won", "lost", "reassigned"
]


class Bant(BaseModel):
    """A BANT assessment from inside sales' first hearing."""

    model_config = ConfigDict(frozen=True, extra="forbid", title="Bant")

    # JSON booleans only: "no", 0 or "off" are not read as false.
    budget: StrictBool
    authority: StrictBool
    need: StrictBool
    timeframe: StrictBool


class SalesActivity(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", title="SalesActivity")

    activity_id: Identifier = Field(description="Unique per activity; the idempotency key.")
    lead_id: Identifier = Field(description="The lead; also the Kafka key (UTF-8).")
    type: ActivityType
    occurred_at: AwareDatetime = Field(description="RFC 3339 with offset: when sales did it.")
    owner: str | None = Field(
        default=None,
        max_length=256,
        description="Sales rep or queue; for `reassigned` (required) the lead's new owner.",
    )
    bant: Bant | None = Field(default=None, description="Required when type is bant_assessed.")
    reason: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _bant_when_assessed(self) -> SalesActivity:
        if self.type == "bant_assessed" and self.bant is None:
            raise ValueError("bant: required when type is bant_assessed")
        if self.type == "reassigned" and not self.owner:
            raise ValueError("owner: required when type is reassigned (the new owner)")
        return self
