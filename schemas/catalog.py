"""The wire contract's catalogue: every topic leadflow reads or writes, its default name, the
LEADFLOW_* variable that renames it, and the model that describes its records.

streams.settings takes its topic defaults from here, and the JSON Schema and AsyncAPI
generators read it, so the contract has one list of topics.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pydantic import BaseModel

from schemas.activity import SalesActivity
from schemas.alert import SlaAlert
from schemas.anonymous import AnonymousRecord
from schemas.deadletter import DeadLetterHeaders
from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from schemas.notify import NotifyDeadLetterHeaders

ENGAGEMENT_TOPIC = "leads.engagement"
ANONYMOUS_TOPIC = "leads.anonymous"
HANDOFF_TOPIC = "leads.handoff"
ACTIVITY_TOPIC = "sales.activity"
LIFECYCLE_TOPIC = "leads.lifecycle"
ALERTS_TOPIC = "alerts.sla"
DEADLETTER_TOPIC = "leads.deadletter"
NOTIFY_DEADLETTER_TOPIC = "notify.deadletter"

# default topic name -> the LEADFLOW_* variable that renames it
TOPIC_VARIABLES: dict[str, str] = {
    ENGAGEMENT_TOPIC: "LEADFLOW_ENGAGEMENT_TOPIC",
    ANONYMOUS_TOPIC: "LEADFLOW_ANONYMOUS_TOPIC",
    HANDOFF_TOPIC: "LEADFLOW_HANDOFF_TOPIC",
    ACTIVITY_TOPIC: "LEADFLOW_ACTIVITY_TOPIC",
    LIFECYCLE_TOPIC: "LEADFLOW_LIFECYCLE_TOPIC",
    ALERTS_TOPIC: "LEADFLOW_ALERTS_TOPIC",
    DEADLETTER_TOPIC: "LEADFLOW_DEADLETTER_TOPIC",
    NOTIFY_DEADLETTER_TOPIC: "LEADFLOW_NOTIFY_DEADLETTER_TOPIC",
}

DEFAULT_KAFKA_BOOTSTRAP = "127.0.0.1:9092"

# file name -> (model, topic, what the schema describes)
SCHEMAS: dict[str, tuple[type[BaseModel], str, str]] = {
    "engagement.v1.schema.json": (EngagementEvent, ENGAGEMENT_TOPIC, "record value"),
    "anonymous.v1.schema.json": (AnonymousRecord, ANONYMOUS_TOPIC, "record value"),
    "handoff.v1.schema.json": (MqlHandoff, HANDOFF_TOPIC, "record value"),
    "activity.v1.schema.json": (SalesActivity, ACTIVITY_TOPIC, "record value"),
    "lifecycle.v1.schema.json": (LifecycleTransition, LIFECYCLE_TOPIC, "record value"),
    "alert.v1.schema.json": (SlaAlert, ALERTS_TOPIC, "record value"),
    "deadletter-headers.v1.schema.json": (
        DeadLetterHeaders,
        DEADLETTER_TOPIC,
        "record headers (the value and key are the original bytes)",
    ),
    "notify-deadletter-headers.v1.schema.json": (
        NotifyDeadLetterHeaders,
        NOTIFY_DEADLETTER_TOPIC,
        "record headers (the value and key are the original bytes)",
    ),
}


def package_version() -> str:
    """leadflow's version, as installed (the AsyncAPI document carries it)."""
    try:
        return version("leadflow")
    except PackageNotFoundError:
        return "0+unknown"
