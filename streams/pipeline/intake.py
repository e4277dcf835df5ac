"""Parse at the edge: raw Kafka bytes become an EngagementEvent or a dead letter with a reason."""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from schemas.anonymous import IDENTIFY, AnonymousEvent, IdentifyEvent
from schemas.deadletter import DeadLetterHeaders, DeadLetterKind
from schemas.engagement import EngagementEvent


@dataclass(frozen=True, slots=True)
class RecordLocation:
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A rejected record: the original bytes, untouched, and why."""

    key: bytes | None
    value: bytes | None
    headers: DeadLetterHeaders


# occurred_at is an RFC 3339 string: a JSON number (or a string of digits) would otherwise be read
# as a Unix time, in seconds or milliseconds depending on its size. Its years are bounded so that
# every computation on it (UTC, days, SLA deadlines) stays within what datetime can represent.
OCCURRED_AT_YEARS = (1900, 2999)
_RFC3339_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")
# A reason travels in a Kafka header beside the original record: it never grows with the input.
REASON_MAX_CHARS = 1000


def _shown(value: object, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "...'"


def occurred_at_problem(sent: Any, at: datetime) -> str | None:
    """Why an occurred_at pydantic accepted is still not the contract's, or None."""
    if not isinstance(sent, str) or not _RFC3339_DATE_TIME.match(sent):
        return (
            "occurred_at: expected an RFC 3339 date-time string with offset, e.g. "
            f"2025-03-01T10:15:00+01:00; got {type(sent).__name__} {_shown(sent)}"
        )
    first, last = OCCURRED_AT_YEARS
    if not first <= at.year <= last:
        return f"occurred_at: {_shown(sent)} is outside the years {first} to {last}"
    return None


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


M = TypeVar("M", bound=BaseModel)


def parse_record(
    model: type[M],
    key: bytes | None,
    value: bytes | None,
    where: RecordLocation,
    max_bytes: int,
) -> M | DeadLetter:
    """Validate one JSON record against a wire model. Never raises: a problem is a DeadLetter."""

    def reject(kind: DeadLetterKind, message: str) -> DeadLetter:
        return dead_letter(key, value, where, kind, message)

    if value is None:
        return reject(DeadLetterKind.INVALID_EVENT, "empty record (no value)")
    if len(value) > max_bytes:
        return reject(
            DeadLetterKind.OVERSIZED,
            f"record is {len(value)} bytes; the limit is {max_bytes} (max_event_bytes)",
        )
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return reject(DeadLetterKind.NOT_JSON, f"not valid UTF-8 JSON: {exc}")
    if not isinstance(raw, dict):
        return reject(
            DeadLetterKind.INVALID_EVENT, f"expected a JSON object, got {type(raw).__name__}"
        )
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        return reject(DeadLetterKind.INVALID_EVENT, _describe(exc))
    at = getattr(parsed, "occurred_at", None)
    problem = occurred_at_problem(raw.get("occurred_at"), at) if at is not None else None
    if problem is not None:
        return reject(DeadLetterKind.INVALID_EVENT, problem)
    lead_id = getattr(parsed, "lead_id", None)
    if key is not None and lead_id is not None and key.decode("utf-8", "replace") != lead_id:
        return reject(
            DeadLetterKind.KEY_MISMATCH,
            f"Kafka key {_shown(key.decode('utf-8', 'replace'))} differs from lead_id "
            f"{_shown(lead_id)}; produce with key = lead_id so a lead's records stay in order",
        )
    return parsed


def dead_letter(
    key: bytes | None,
    value: bytes | None,
    where: RecordLocation,
    kind: DeadLetterKind,
    message: str,
) -> DeadLetter:
    if len(message) > REASON_MAX_CHARS:
        message = message[: REASON_MAX_CHARS - 3] + "..."
    headers = DeadLetterHeaders(
        error_kind=kind,
        error_message=message,
        source_topic=where.topic,
        source_partition=where.partition,
        source_offset=where.offset,
    )
    return DeadLetter(key=key, value=value, headers=headers)


def parse_engagement(
    key: bytes | None,
    value: bytes | None,
    where: RecordLocation,
    known_types: frozenset[str],
    max_bytes: int,
) -> EngagementEvent | DeadLetter:
    """Validate one engagement record. Never raises: anything wrong becomes a DeadLetter."""
    event = parse_record(EngagementEvent, key, value, where, max_bytes)
    if isinstance(event, EngagementEvent) and event.type not in known_types:
        return dead_letter(
            key,
            value,
            where,
            DeadLetterKind.UNKNOWN_TYPE,
            f"type: unknown event type {event.type!r}; add it to the rules' engagement section "
            "or use one of the contract's types",
        )
    return event


def parse_anonymous(
    key: bytes | None,
    value: bytes | None,
    where: RecordLocation,
    known_types: frozenset[str],
    max_bytes: int,
) -> AnonymousEvent | IdentifyEvent | DeadLetter:
    """Validate one record of leads.anonymous: an identify when it names a lead_id, else an
    anonymous event (whose type must be known, as on leads.engagement). Never raises."""
    model: type[AnonymousEvent] | type[IdentifyEvent] = AnonymousEvent
    with contextlib.suppress(orjson.JSONDecodeError):
        raw = orjson.loads(value) if value is not None and len(value) <= max_bytes else None
        if isinstance(raw, dict) and (
            raw.get("lead_id") is not None or raw.get("type") == IDENTIFY
        ):
            model = IdentifyEvent
    # The key is checked here, against anonymous_id (parse_record compares it with lead_id).
    parsed = parse_record(model, None, value, where, max_bytes)
    if isinstance(parsed, DeadLetter):
        return DeadLetter(key, parsed.value, parsed.headers)
    if key is not None and key.decode("utf-8", "replace") != parsed.anonymous_id:
        return dead_letter(
            key,
            value,
            where,
            DeadLetterKind.KEY_MISMATCH,
            f"Kafka key {_shown(key.decode('utf-8', 'replace'))} differs from anonymous_id "
            f"{_shown(parsed.anonymous_id)}; produce with key = anonymous_id",
        )
    if isinstance(parsed, AnonymousEvent) and parsed.type not in known_types:
        return dead_letter(
            key,
            value,
            where,
            DeadLetterKind.UNKNOWN_TYPE,
            f"type: unknown event type {parsed.type!r}; add it to the rules' engagement section "
            "or use one of the contract's types",
        )
    return parsed
