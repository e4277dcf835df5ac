"""`leads.engagement`: raw engagement events from website trackers and MA exports."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

# The event types named by the contract. A rules file may add its own types on top of these;
# anything else is dead-lettered as `unknown_type`, so a typo in a tracker never scores silently.
KNOWN_EVENT_TYPES: frozenset[str] = frozenset(
    {
        "email_open",
        "email_click",
        "download",
        "pricing_page_view",
        "case_study_view",
        "webinar_registered",
        "webinar_attended",
        "form_submit",
        "page_view",
        "demo_request",
        "opt_out",
        "profile_updated",
    }
)

Identifier = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=256)]
EventType = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
AttributeValue = str | int | float | bool | None


class EngagementEvent(BaseModel):
    """One thing a lead did (or one change to a lead's profile), as produced by a tracker."""

    model_config = ConfigDict(frozen=True, extra="ignore", title="EngagementEvent")

    event_id: Identifier = Field(description="Unique per event; the idempotency key.")
    lead_id: Identifier = Field(description="The lead; also the Kafka key (UTF-8).")
    type: EventType = Field(
        description="Event type, e.g. email_open, download, pricing_page_view, opt_out."
    )
    occurred_at: AwareDatetime = Field(description="RFC 3339 timestamp with offset (event time).")
    source: str | None = Field(default=None, max_length=256, description="Tracker or MA system.")
    properties: dict[str, Any] | None = Field(
        default=None, description="Free-form details (URL, asset name, campaign...)."
    )
    attributes: dict[str, AttributeValue] | None = Field(
        default=None,
        description=(
            "Profile fields (industry, job_title, seniority, company_size, country...). "
            "The latest value of each field replaces earlier ones; fit is recomputed from them."
        ),
    )
    anonymous_id: Identifier | None = Field(
        default=None,
        description=(
            "The website visitor this lead was before (the tracker's cookie). Sent to the "
            "collector, the event also identifies the visitor (leads.anonymous)."
        ),
    )
