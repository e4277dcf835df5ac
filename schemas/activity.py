"""`sales.activity`: what sales did with a lead, as recorded by the SFA/CRM connector."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictBool, model_validator

from schemas.engagement import Identifier
from schemas.money import check_amount

ActivityType = Literal[
    "contacted",
    "bant_assessed",
    "sales_action",
    "opportunity_created",
    "disqualified",
    "won",
    "lost",
    "reassigned",
]
# Activities that may carry an amount (the opportunity's, the deal's).
AMOUNT_TYPES = frozenset({"opportunity_created", "won"})


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
    amount: Decimal | None = Field(
        default=None,
        ge=0,
        allow_inf_nan=False,
        description="opportunity_created and won only: the deal's value, a decimal (a JSON "
        "number or string), in `currency`; never more decimals than the currency has.",
    )
    currency: str | None = Field(
        default=None,
        pattern="^[A-Z]{3}$",
        description="ISO 4217 code of `amount` (JPY, USD, EUR); required with an amount.",
    )

    @model_validator(mode="after")
    def _bant_when_assessed(self) -> SalesActivity:
        if self.type == "bant_assessed" and self.bant is None:
            raise ValueError("bant: required when type is bant_assessed")
        if self.type == "reassigned" and not self.owner:
            raise ValueError("owner: required when type is reassigned (the new owner)")
        if self.amount is not None or self.currency is not None:
            if self.type not in AMOUNT_TYPES:
                raise ValueError(
                    f"amount: only opportunity_created and won carry one, not {self.type}"
                )
            if self.amount is None or self.currency is None:
                raise ValueError("amount and currency: give both, or neither")
            problem = check_amount(self.amount, self.currency)
            if problem:
                raise ValueError(problem)
        return self
