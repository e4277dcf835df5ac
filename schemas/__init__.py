"""Wire models of every leadflow topic (contract v1).

Topics carry bytes; these pydantic models are the only place that turns them into values.
The JSON Schema files in schemas/json/ are generated from them (``leadflow schemas generate``).
"""

from schemas.activity import Bant, SalesActivity
from schemas.alert import SlaAlert
from schemas.deadletter import DEADLETTER_HEADERS, DeadLetterHeaders, DeadLetterKind
from schemas.engagement import KNOWN_EVENT_TYPES, EngagementEvent
from schemas.handoff import MqlHandoff, ScoreReason
from schemas.lifecycle import LifecycleTransition

__all__ = [
    "DEADLETTER_HEADERS",
    "KNOWN_EVENT_TYPES",
    "Bant",
    "DeadLetterHeaders",
    "DeadLetterKind",
    "EngagementEvent",
    "LifecycleTransition",
    "MqlHandoff",
    "SalesActivity",
    "ScoreReason",
    "SlaAlert",
]
