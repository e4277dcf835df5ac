"""`notify.deadletter`: an alert, handoff or lifecycle event `leadflow notify` could not deliver
to a webhook target, kept byte-for-byte with the target and the reason.

The value and key are the original record's bytes, unchanged. The target, why, how many
attempts were made and where the record came from travel in headers, so an operator can fix the
target and replay the record (`X-Leadflow-Delivery` stays the same id, so receivers dedupe).
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class NotifyDeadLetterReason(StrEnum):
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"  # retryable failures until max_attempts
    NOT_RETRYABLE = "not_retryable"  # a 4xx other than 408/429: retrying would not help


# Header names on every notify dead-letter record (values are UTF-8 strings).
NOTIFY_DEADLETTER_HEADERS: dict[str, str] = {
    "target": "leadflow.notify.target",
    "reason": "leadflow.notify.reason",
    "last_error": "leadflow.notify.last_error",
    "attempts": "leadflow.notify.attempts",
    "delivery_id": "leadflow.notify.delivery_id",
    "source_topic": "leadflow.source.topic",
    "source_partition": "leadflow.source.partition",
    "source_offset": "leadflow.source.offset",
}


class NotifyDeadLetterHeaders(BaseModel):
    """The headers of a notify dead-letter record, decoded."""

    model_config = ConfigDict(frozen=True, title="NotifyDeadLetterHeaders")

    target: str = Field(description="The webhook target's name in LEADFLOW_NOTIFY_CONFIG.")
    reason: NotifyDeadLetterReason
    last_error: str = Field(
        description="The last attempt's failure: http_<status>, timeout or connection_error."
    )
    attempts: int = Field(description="POST attempts made.")
    delivery_id: str = Field(
        description="The X-Leadflow-Delivery id (alert, handoff or transition id)."
    )
    source_topic: str
    source_partition: int
    source_offset: int

    def to_kafka(self) -> list[tuple[str, bytes]]:
        return [
            (NOTIFY_DEADLETTER_HEADERS[name], str(getattr(self, name)).encode())
            for name in NOTIFY_DEADLETTER_HEADERS
        ]

    @classmethod
    def from_kafka(cls, headers: Iterable[tuple[str, bytes]]) -> NotifyDeadLetterHeaders:
        by_header = {k: v.decode() for k, v in headers}
        return cls.model_validate(
            {name: by_header.get(header) for name, header in NOTIFY_DEADLETTER_HEADERS.items()}
        )
