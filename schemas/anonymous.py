"""`leads.anonymous`: what website visitors do before they are known, and who they turn out to be.

Keyed by `anonymous_id` (the tracker's first-party cookie). A record without `lead_id` is an
anonymous engagement event; a record with `lead_id` is an identify: from then on, the anonymous
id's events belong to that lead (the identity agent re-emits them onto `leads.engagement`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel

from schemas.engagement import AttributeValue, EventType, Identifier

IDENTIFY = "identify"


class AnonymousEvent(BaseModel):
    """One thing a visitor did before anyone knew who they were."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="AnonymousEvent")

    event_id: Identifier = Field(
        description="Unique per event; the idempotency key, kept when the event is re-emitted "
        "under its lead."
    )
    anonymous_id: Identifier = Field(description="The visitor's id; also the Kafka key (UTF-8).")
    lead_id: None = Field(
        default=None, description="Absent (or null): the visitor is not known yet."
    )
    type: EventType = Field(description="Event type, as on leads.engagement.")
    occurred_at: AwareDatetime = Field(description="RFC 3339 timestamp with offset (event time).")
    source: str | None = Field(default=None, max_length=256, description="Tracker or system.")
    properties: dict[str, Any] | None = Field(
        default=None, description="Free-form details (URL, page title...)."
    )
    attributes: dict[str, AttributeValue] | None = Field(
        default=None, description="Profile fields, as on leads.engagement."
    )


class IdentifyEvent(BaseModel):
    """The anonymous visitor `anonymous_id` is the lead `lead_id`."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="IdentifyEvent")

    event_id: Identifier = Field(description="Unique per event; the idempotency key.")
    anonymous_id: Identifier = Field(description="The visitor's id; also the Kafka key (UTF-8).")
    lead_id: Identifier = Field(description="The lead the visitor turned out to be.")
    type: Literal["identify"] = Field(
        default="identify", description="Always identify (may be left out)."
    )
    occurred_at: AwareDatetime = Field(description="RFC 3339 timestamp with offset (event time).")
    source: str | None = Field(default=None, max_length=256, description="Tracker or system.")


class AnonymousRecord(RootModel[IdentifyEvent | AnonymousEvent]):
    """A record of leads.anonymous: an identify (it has a lead_id) or an anonymous event."""

    model_config = ConfigDict(title="AnonymousRecord")
