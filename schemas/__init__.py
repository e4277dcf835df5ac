"""Wire models of every leadflow topic (contract v1).

Topics carry bytes; these pydantic models are the only place that turns them into values.
The JSON Schema files in schemas/json/ are generated from them (``leadflow schemas generate``).
"""

from schemas.deadletter import DEADLETTER_HEADERS, DeadLetterHeaders, DeadLetterKind
from schemas.engagement import KNOWN_EVENT_TYPES, EngagementEvent
from schemas.handoff import MqlHandoff, ScoreReason

__all__ = [
    "DEADLETTER_HEADERS",
    "KNOWN_EVENT_TYPES",
    "DeadLetterHeaders",
    "DeadLetterKind",
    "EngagementEvent",
    "MqlHandoff",
    "ScoreReason",
]
