"""`leads.deadletter`: records leadflow could not accept, kept byte-for-byte with the reason.

The value and key are the original bytes, unchanged. Why and where from travel in headers,
so a consumer can fix and replay a record without leadflow having re-encoded it.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class DeadLetterKind(StrEnum):
    NOT_JSON = "not_json"
    INVALID_EVENT = "invalid_event"
    UNKNOWN_TYPE = "unknown_type"
    OVERSIZED = "oversized"
    KEY_MISMATCH = "key_mismatch"


# Header names on every dead-letter record (values are UTF-8 strings).
DEADLETTER_HEADERS: dict[str, str] = {
    "error_kind": "leadflow.error.kind",
    "error_message": "leadflow.error.message",
    "source_topic": "leadflow.source.topic",
    "source_partition": "leadflow.source.partition",
    "source_offset": "leadflow.source.offset",
}


class DeadLetterHeaders(BaseModel):
    """The headers of a dead-letter record, decoded."""

    model_config = ConfigDict(frozen=True, title="DeadLetterHeaders")

    error_kind: DeadLetterKind
    error_message: str = Field(description="What is wrong, naming the field where there is one.")
    source_topic: str
    source_partition: int
    source_offset: int

    def to_kafka(self) -> list[tuple[str, bytes]]:
        return [
            (DEADLETTER_HEADERS[name], str(getattr(self, name)).encode())
            for name in DEADLETTER_HEADERS
        ]

    @classmethod
    def from_kafka(cls, headers: Iterable[tuple[str, bytes]]) -> DeadLetterHeaders:
        by_header = {k: v.decode() for k, v in headers}
        return cls.model_validate(
            {name: by_header.get(header) for name, header in DEADLETTER_HEADERS.items()}
        )
