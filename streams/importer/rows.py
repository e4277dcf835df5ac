"""One row: an export row becomes an engagement record, a skip or a reject with its reason.

Pure (no I/O). The last step is the worker's own `parse_engagement` on the exact bytes that
would be produced, so nothing is produced that the worker would dead-letter.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

import orjson

from schemas.engagement import EngagementEvent
from streams.importer.cells import (
    as_scalar,
    as_text,
    column_names,
    first_of,
    first_text,
    first_value,
    lookup,
)
from streams.importer.compile import CompiledMapping, normalize_type
from streams.pipeline.intake import (
    OCCURRED_AT_YEARS,
    DeadLetter,
    RecordLocation,
    parse_engagement,
)

# Epoch timestamps outside 1990..2100 are a unit mistake (seconds read as milliseconds or back).
EPOCH_RANGE = (631_152_000.0, 4_102_444_800.0)


@dataclass(frozen=True, slots=True)
class Mapped:
    key: bytes
    value: bytes
    event: EngagementEvent


@dataclass(frozen=True, slots=True)
class Skipped:
    source_type: str  # with its label, e.g. "6 (Send Email)"


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: str  # bad_row, bad_encoding, bad_json, missing_type, unknown_type, missing_lead,
    # bad_time, or a dead-letter kind from the worker's own check (invalid_event, oversized)
    message: str


Outcome = Mapped | Skipped | Rejected
_WHERE = RecordLocation(topic="(import)", partition=0, offset=0)


def parse_time(text: str, formats: Sequence[str], tz: tzinfo) -> datetime:
    """An aware datetime; naive times are in `tz`. Raises ValueError naming the formats tried."""
    for fmt in formats:
        try:
            if fmt == "iso":
                at = datetime.fromisoformat(text)
            elif fmt in ("epoch_s", "epoch_ms"):
                seconds = float(text) / (1000.0 if fmt == "epoch_ms" else 1.0)
                if not EPOCH_RANGE[0] <= seconds <= EPOCH_RANGE[1]:
                    continue
                at = datetime.fromtimestamp(seconds, UTC)
            else:
                at = datetime.strptime(text, fmt)
        except (ValueError, OverflowError, OSError):
            continue
        return at if at.tzinfo is not None else at.replace(tzinfo=tz)
    raise ValueError(f"{text!r} is not a time in the expected format ({' or '.join(formats)})")


def derive_event_id(
    c: CompiledMapping, row: Mapping[str, Any], lead: str, event_type: str, at: datetime
) -> str:
    """`imp-` + sha256 of profile, lead, type, UTC time and the row's other non-empty values
    (sorted by column, so column order does not matter; lead and time columns enter normalised)."""
    parts: list[Any] = [c.name, lead, event_type, at.astimezone(UTC).isoformat()]
    for col in sorted(row):
        if col in c.id_skip or (c.id_columns is not None and col not in c.id_columns):
            continue
        value = row[col]
        if isinstance(value, str):
            value = value.strip()
        if value is None or value == "":
            continue
        parts.append(col)
        parts.append(value)
    digest = hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return "imp-" + digest[:32]


def _unmapped(c: CompiledMapping, raw: str) -> Skipped | Rejected:
    if c.reject_unmapped:
        columns = column_names(c.type_columns or ())
        return Rejected(
            "unknown_type",
            f"{columns}: {raw!r} is not mapped to a leadflow event type; add it under 'types' "
            "in the mapping (or set 'unmapped: skip')",
        )
    label = c.labels.get(raw)
    return Skipped(f"{raw} ({label})" if label else raw)


def _source_type(c: CompiledMapping, row: Mapping[str, Any]) -> tuple[str | None, str] | Outcome:
    """The row's activity type as written and as matched; (None, "") with a default_type. A type
    no rule looks at is settled here, before any JSON column is parsed."""
    if c.type_columns is None:
        return None, ""
    raw_type = first_text(row, c.type_columns)
    if raw_type is None:
        return Rejected(
            "missing_type", f"{column_names(c.type_columns)}: empty; every row needs its type"
        )
    source_key = c.source_key(raw_type)
    if c.relevant is not None and source_key not in c.relevant:
        return _unmapped(c, raw_type)
    return raw_type, source_key


def _with_json_parsed(
    columns: tuple[str, ...], row: Mapping[str, Any]
) -> Mapping[str, Any] | Rejected:
    """A copy of the row with its JSON text columns as objects (an empty one as None)."""
    parsed = dict(row)
    for col in columns:
        value = row.get(col)
        if not isinstance(value, str):
            continue
        if not value.strip():
            parsed[col] = None
            continue
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Rejected("bad_json", f"{col}: not valid JSON ({exc})")
        if obj is None:  # JSON `null`: as empty as an empty cell
            parsed[col] = None
            continue
        if not isinstance(obj, dict):
            return Rejected("bad_json", f"{col}: expected a JSON object, got {type(obj).__name__}")
        parsed[col] = obj
    return parsed


def _event_type(
    c: CompiledMapping, row: Mapping[str, Any], raw_type: str | None, source_key: str
) -> str | Skipped | Rejected:
    """A matching refine rule first, then the type table; the default_type without a type column."""
    if raw_type is None:
        assert c.default_type is not None
        return c.default_type
    for rule in c.refine:
        if (rule.sources is None or source_key in rule.sources) and rule.matches(row):
            return rule.type
    event_type = c.types.get(source_key)
    if event_type is None:
        return _unmapped(c, raw_type)
    return event_type


def _occurred_at(c: CompiledMapping, row: Mapping[str, Any]) -> datetime | Rejected:
    time_column, time_value = first_of(row, c.time)
    if time_value is None:
        return Rejected("bad_time", f"{column_names(c.time)}: empty; every row needs its time")
    text = as_text(time_value)
    try:
        at = parse_time(text, c.time_formats, c.tz)
    except ValueError as exc:
        return Rejected("bad_time", f"{time_column}: {exc}")
    first, last = OCCURRED_AT_YEARS  # the worker's range: date arithmetic stays in datetime's
    if not first <= at.year <= last:
        return Rejected("bad_time", f"{time_column}: {text!r} is outside the years {first}-{last}")
    return at


def _event_id(
    c: CompiledMapping, row: Mapping[str, Any], lead: str, event_type: str, at: datetime
) -> str:
    """The export's own activity id where it has one, else one derived from the row."""
    own_id = first_text(row, c.event_id) if c.event_id else None
    if own_id is not None:
        return c.event_id_prefix + own_id
    return derive_event_id(c, row, lead, event_type, at)


def _properties(c: CompiledMapping, row: Mapping[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, refs in c.properties:
        value = first_value(row, refs)
        if value is not None:
            properties[name] = value
    return properties


def _changed_field(
    c: CompiledMapping, row: Mapping[str, Any], source_key: str
) -> tuple[str, Any] | None:
    """(attribute, new value) when the row records a profile field change leadflow knows."""
    fc = c.field_change
    if fc is None or source_key not in fc.sources:
        return None
    changed = first_text(row, fc.name)
    if changed is None:
        return None
    attr = fc.fields.get(changed.casefold()) or (
        normalize_type(changed) if fc.snake_case_others else None
    )
    if not attr:
        return None
    return attr, as_scalar(first_value(row, fc.value))


def _attributes(c: CompiledMapping, row: Mapping[str, Any], source_key: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for name, refs in c.attributes:
        value = first_value(row, refs)
        if value is not None:
            attributes[name] = as_scalar(value)
    changed = _changed_field(c, row, source_key)
    if changed is not None:
        attr, value = changed
        attributes[attr] = value
    return attributes


def _event_body(
    c: CompiledMapping,
    row: Mapping[str, Any],
    lead: str,
    event_type: str,
    at: datetime,
    source_key: str,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": _event_id(c, row, lead, event_type, at),
        "lead_id": lead,
        "type": event_type,
        "occurred_at": at.isoformat(),
        "source": c.source,
    }
    properties = _properties(c, row)
    attributes = _attributes(c, row, source_key)
    if properties:
        body["properties"] = properties
    if attributes:
        body["attributes"] = attributes
    return body


def _as_the_worker_reads_it(c: CompiledMapping, lead: str, body: dict[str, Any]) -> Outcome:
    key = lead.encode()
    value = orjson.dumps(body)
    checked = parse_engagement(key, value, _WHERE, c.known_types, c.max_event_bytes)
    if isinstance(checked, DeadLetter):
        return Rejected(checked.headers.error_kind.value, checked.headers.error_message)
    return Mapped(key, value, checked)


def map_row(c: CompiledMapping, row: Mapping[str, Any]) -> Outcome:
    """One export row -> an engagement record, a skip (type not scored) or a reject with reason.

    Pure: no I/O, and `row` is not modified.
    """
    try:
        return _map_row(c, row)
    except orjson.JSONEncodeError as exc:
        # orjson reads JSON nested up to 1024 levels (NDJSON lines, JSON columns) but writes at
        # most 254: such a value cannot become an event, an event id or a rejected-file cell.
        return Rejected("bad_json", f"a value is nested too deeply to be written as JSON ({exc})")


def _without_nulls(c: CompiledMapping, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A copy of the row with the export's "empty" markers (Marketo's `null`) as empty."""
    return {
        k: None if isinstance(v, str) and v.strip() in c.null_values else v for k, v in row.items()
    }


def _not_kept(c: CompiledMapping, row: Mapping[str, Any]) -> Skipped | None:
    """A row of a kind the mapping does not import (e.g. a company's event), as a skip."""
    for column, values in c.keep:
        value = lookup(row, column)
        text = "" if value is None else as_text(value).strip()
        if text.casefold() not in values:
            return Skipped(f"{column} {text or '(empty)'}")
    return None


def _lead(c: CompiledMapping, row: Mapping[str, Any]) -> str | Rejected:
    """The row's lead id, or the lead its e-mail address belongs to (identity map)."""
    lead = first_text(row, c.lead)
    if lead is None:
        return Rejected("missing_lead", f"{column_names(c.lead)}: empty; every row needs a lead id")
    if c.identities is None:
        return lead
    resolved = c.identities.lead_for(lead)
    if resolved is None:
        return Rejected(
            "unknown_identity",
            f"{column_names(c.lead)}: {lead!r} is not in the identity map "
            f"({c.identities.source}); import the contact first (e.g. --profile hubspot-contacts "
            "--save-identity) or give a contact export that lists it",
        )
    return resolved


def _map_row(c: CompiledMapping, row: Mapping[str, Any]) -> Outcome:
    if c.null_values:
        row = _without_nulls(c, row)
    if c.keep:
        not_kept = _not_kept(c, row)
        if not_kept is not None:
            return not_kept
    source = _source_type(c, row)
    if not isinstance(source, tuple):
        return source
    raw_type, source_key = source
    if c.json_columns:
        parsed = _with_json_parsed(c.json_columns, row)
        if isinstance(parsed, Rejected):
            return parsed
        row = parsed
    event_type = _event_type(c, row, raw_type, source_key)
    if not isinstance(event_type, str):
        return event_type
    lead = _lead(c, row)
    if isinstance(lead, Rejected):
        return lead
    at = _occurred_at(c, row)
    if isinstance(at, Rejected):
        return at
    body = _event_body(c, row, lead, event_type, at, source_key)
    return _as_the_worker_reads_it(c, lead, body)
