"""`leadflow import`: stream a marketing-automation export (CSV or NDJSON) into Kafka.

Two layers:

- pure: a mapping (a built-in profile, a YAML file, or a profile with overrides) is validated
  and compiled once; `map_row` turns one row (a dict) into a `Mapped` engagement record, a
  `Skipped` row (an activity type leadflow does not score) or a `Rejected` row with a reason. The
  final check is the worker's own `parse_engagement`, so nothing is produced that the worker
  would dead-letter.
- I/O: the file is read line by line (never whole), rejected rows are written next to it as
  `<FILE>.rejected.csv`, records are produced keyed by lead_id with acks=all and a bounded
  number of sends in flight, and duplicates within the file are tracked in a temporary SQLite
  table, so memory does not grow with the file.

Event ids come from the export's own activity id where it has one, otherwise they are derived
from the row (`imp-` + sha256), so importing the same activity twice gives the same id and the
worker's per-lead dedupe counts it once. See docs/importer.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import logging
import os
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from importlib.resources import files
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.engagement import EngagementEvent
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement

if TYPE_CHECKING:
    from rich.console import Console

    from streams.settings import Settings

PROFILES = ("marketo", "hubspot", "generic")
PROFILE_FILES = files("streams").joinpath("importer_profiles")
TIME_FORMATS = ("iso", "epoch_s", "epoch_ms")
# Columns the importer adds to a rejected file: a fixed-up rejected file can be imported again and
# gets the same derived event ids as the original rows would have had.
ERROR_COLUMN = "leadflow_error"
LINE_COLUMN = "leadflow_line"
NDJSON_SUFFIXES = (".ndjson", ".jsonl", ".json")
# Epoch timestamps outside 1990..2100 are a unit mistake (seconds read as milliseconds or back).
EPOCH_RANGE = (631_152_000.0, 4_102_444_800.0)
MAX_IN_FLIGHT = 10_000
MAX_SKIP_KEYS = 200  # distinct skipped source types counted by name; the rest are "(other)"
CSV_FIELD_LIMIT = 1 << 20


class MappingError(ValueError):
    """A profile, mapping or option is unusable; the message names the key (exit code 2)."""


class KafkaUnavailable(RuntimeError):
    """Kafka cannot be reached or the topic is missing; the message says what to do (exit 1)."""


# -- the mapping file ------------------------------------------------------------------------


def _as_list(value: Any) -> Any:
    """A single column name may be written without a list; numbers (YAML `1`) become strings."""
    if isinstance(value, str | int | float) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list | tuple):
        return [
            str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for v in value
        ]
    return value


def _str_keys(value: Any) -> Any:
    """YAML reads `1: page_view` with an int key; source type values are matched as text."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    return value


def _column_map(value: Any) -> Any:
    """`properties: [A, B]` is short for `properties: {A: A, B: B}`."""
    if isinstance(value, list | tuple):
        return {str(v): v for v in value}
    return _str_keys(value)


def _time_spec(value: Any) -> Any:
    return {"column": value} if isinstance(value, str | list) else value


Name = Annotated[str, Field(min_length=1)]
# One column, or several candidate names: the first that the file has (and is not empty) is used.
Columns = Annotated[tuple[Name, ...], BeforeValidator(_as_list), Field(min_length=1)]
Values = Annotated[tuple[Name, ...], BeforeValidator(_as_list)]


def _check_zone(value: str | None, where: str = "") -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{where}unknown time zone {value!r}; use an IANA name such as UTC or Europe/Berlin"
        ) from None
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeSpec(_Strict):
    column: Columns
    format: Annotated[tuple[Name, ...], BeforeValidator(_as_list), Field(min_length=1)] = ("iso",)
    timezone: str | None = Field(
        default=None, description="For times without an offset; --timezone overrides it."
    )

    @field_validator("format")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for fmt in value:
            if fmt not in TIME_FORMATS and "%" not in fmt:
                raise ValueError(
                    f"{fmt!r} is not a time format; use iso, epoch_s, epoch_ms or a strptime "
                    "pattern such as '%d.%m.%Y %H:%M'"
                )
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return _check_zone(value)


class Refine(_Strict):
    """Give rows of some source types a more specific type when a column contains/equals text."""

    source_types: Values | None = None
    column: Columns
    contains: Values = ()
    equals: Values = ()
    type: Name

    @model_validator(mode="after")
    def _one_condition(self) -> Refine:
        if bool(self.contains) == bool(self.equals):
            raise ValueError("give exactly one of 'contains' or 'equals'")
        return self


class FieldChange(_Strict):
    """Rows that record one profile field change (name column + new value column)."""

    source_types: Annotated[tuple[Name, ...], BeforeValidator(_as_list), Field(min_length=1)]
    name: Columns
    value: Columns
    fields: Annotated[dict[str, Name], BeforeValidator(_str_keys)] = Field(default_factory=dict)
    others: Literal["snake_case", "ignore"] = "ignore"


class ImportMapping(_Strict):
    """How one export's rows become engagement events (a profile, or a generic YAML mapping)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]+$")] = "generic"
    source: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    format: Literal["auto", "csv", "ndjson"] = "auto"
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    lead: Columns
    time: Annotated[TimeSpec, BeforeValidator(_time_spec)]
    type: Columns | None = None
    default_type: Name | None = None
    event_id: Columns | None = None
    event_id_prefix: str = ""
    types: Annotated[dict[str, Name | None], BeforeValidator(_str_keys)] = Field(
        default_factory=dict
    )
    match: Literal["exact", "normalized"] = "exact"
    unmapped: Literal["skip", "reject"] = "skip"
    refine: tuple[Refine, ...] = ()
    json_columns: Values = ()
    properties: Annotated[dict[str, Columns], BeforeValidator(_column_map)] = Field(
        default_factory=dict
    )
    attributes: Annotated[dict[str, Columns], BeforeValidator(_column_map)] = Field(
        default_factory=dict
    )
    field_change: FieldChange | None = None
    labels: Annotated[dict[str, str], BeforeValidator(_str_keys)] = Field(default_factory=dict)
    id_columns: Values | None = None
    id_exclude: Values = ()

    @model_validator(mode="after")
    def _has_a_type(self) -> ImportMapping:
        if self.type is None and self.default_type is None:
            raise ValueError("give 'type' (the column with the activity type) or 'default_type'")
        if self.type is not None and self.default_type is not None:
            raise ValueError("give either 'type' or 'default_type', not both")
        if self.type is not None and not any(self.types.values()) and not self.refine:
            raise ValueError("'types' maps no source value to a leadflow event type")
        return self


def _key_path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _describe_errors(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        key = _key_path(err["loc"])
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "tuple_type":
            msg = "expected a column name or a list of column names"
        else:
            msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"key '{key}': {msg}" if key else msg)
    return f"{where}: " + "; ".join(parts)


def _text_keys(value: Any) -> Any:
    """YAML reads `1:` as an int key; every key is text before merging (`1` and `"1"` meet)."""
    if isinstance(value, dict):
        return {str(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text_keys(v) for v in value]
    return value


def _merge(base: Any, override: Any) -> Any:
    """Overrides win; dicts merge key by key; `key: null` removes a key; lists are replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = _merge(merged[key], value)
            else:
                merged[key] = value
        return merged
    return override


def _builtin(profile: str) -> dict[str, Any]:
    text = PROFILE_FILES.joinpath(f"{profile}.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    assert isinstance(data, dict)
    return data


def read_mapping_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(f"--mapping: cannot read {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise MappingError(f"mapping {path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MappingError(f"mapping {path}: expected a YAML mapping of keys (lead, time, type...)")
    return data


def load_mapping(
    profile: str | None, mapping: Path | dict[str, Any] | None = None
) -> ImportMapping:
    """A built-in profile, a generic mapping, or a profile with a mapping's overrides on top."""
    if profile is None:
        if mapping is None:
            raise MappingError(
                "--profile: give --profile marketo|hubspot, or --mapping FILE for a generic export"
            )
        profile = "generic"
    if profile not in PROFILES:
        raise MappingError(f"--profile: unknown profile {profile!r}; use {', '.join(PROFILES)}")
    if profile == "generic" and mapping is None:
        raise MappingError("--mapping: the generic profile needs a mapping file (--mapping FILE)")
    base = {} if profile == "generic" else _builtin(profile)
    where = f"profile {profile}"
    override: dict[str, Any] = {}
    if isinstance(mapping, Path):
        override = read_mapping_file(mapping)
        where = f"mapping {mapping}"
    elif mapping is not None:
        override = mapping
        where = "mapping"
    try:
        return ImportMapping.model_validate(_merge(_text_keys(base), _text_keys(override)))
    except ValidationError as exc:
        raise MappingError(_describe_errors(exc, where)) from None


# -- compiling a mapping against a file ------------------------------------------------------


def normalize_type(value: str) -> str:
    """'Email opened', 'EMAIL_OPENED' and 'email-opened' are the same under `match: normalized`."""
    return re.sub(r"[^0-9a-z]+", "_", value.casefold()).strip("_")


def _snake(value: str) -> str:
    return normalize_type(value)


@dataclass(frozen=True, slots=True)
class _Refine:
    sources: frozenset[str] | None
    columns: tuple[str, ...]
    contains: tuple[str, ...]
    equals: frozenset[str]
    type: str

    def matches(self, row: Mapping[str, Any]) -> bool:
        for ref in self.columns:
            value = _lookup(row, ref)
            if value is None:
                continue
            text = _text(value).strip().casefold()
            if self.equals and text in self.equals:
                return True
            if any(part in text for part in self.contains):
                return True
        return False


@dataclass(frozen=True, slots=True)
class _FieldChange:
    sources: frozenset[str]
    name: tuple[str, ...]
    value: tuple[str, ...]
    fields: dict[str, str]  # casefolded source field name -> attribute
    snake_case_others: bool


@dataclass(frozen=True)
class CompiledMapping:
    """A mapping resolved against one file's header, ready for `map_row`."""

    name: str
    source: str | None
    lead: tuple[str, ...]
    time: tuple[str, ...]
    time_formats: tuple[str, ...]
    tz: tzinfo
    type_columns: tuple[str, ...] | None
    default_type: str | None
    event_id: tuple[str, ...]
    event_id_prefix: str
    types: dict[str, str]
    normalized: bool
    reject_unmapped: bool
    refine: tuple[_Refine, ...]
    relevant: frozenset[str] | None  # source types worth looking at; None = every row
    json_columns: tuple[str, ...]
    properties: tuple[tuple[str, tuple[str, ...]], ...]
    attributes: tuple[tuple[str, tuple[str, ...]], ...]
    field_change: _FieldChange | None
    labels: dict[str, str]
    id_columns: frozenset[str] | None
    id_skip: frozenset[str]
    known_types: frozenset[str]
    max_event_bytes: int
    notes: tuple[str, ...] = ()

    def source_key(self, raw: str) -> str:
        return normalize_type(raw) if self.normalized else raw


def _check_types(mapping: ImportMapping, known: frozenset[str]) -> None:
    hint = "use one of the contract's types or one the rules file scores: " + ", ".join(
        sorted(known)
    )
    checks: list[tuple[str, str | None]] = [
        (f"types.{src}", target) for src, target in mapping.types.items()
    ]
    checks += [(f"refine[{i}].type", r.type) for i, r in enumerate(mapping.refine)]
    checks.append(("default_type", mapping.default_type))
    for key, target in checks:
        if target is not None and target not in known:
            raise MappingError(
                f"mapping '{mapping.name}': key '{key}': {target!r} is not a leadflow event type; "
                + hint
            )


def _present(refs: tuple[str, ...], header: Sequence[str] | None) -> tuple[str, ...]:
    """The candidate names the file has (a dotted name counts if its JSON column is there)."""
    if header is None:
        return refs
    cols = set(header)
    return tuple(r for r in refs if r in cols or any(r.startswith(c + ".") for c in cols))


def compile_mapping(
    mapping: ImportMapping,
    known_types: frozenset[str],
    *,
    header: Sequence[str] | None = None,
    timezone: str | None = None,
    max_event_bytes: int = 65_536,
    note_missing: bool = True,
) -> CompiledMapping:
    """Check event types and required columns and resolve column candidates (header=None: every
    candidate is tried per row, as for NDJSON). `note_missing`: add a note for each property or
    attribute none of whose columns is in the file (off for the built-in profiles, which list
    many candidate columns)."""
    _check_types(mapping, known_types)
    try:
        zone_name = _check_zone(timezone, "--timezone: ") or mapping.time.timezone or "UTC"
    except ValueError as exc:
        raise MappingError(str(exc)) from None
    tz: tzinfo = UTC if zone_name == "UTC" else ZoneInfo(zone_name)
    notes: list[str] = []
    shown = f" (the file has: {', '.join(header[:20])})" if header else ""

    def required(key: str, refs: tuple[str, ...]) -> tuple[str, ...]:
        found = _present(refs, header)
        if not found:
            names = ", ".join(repr(r) for r in refs)
            raise MappingError(
                f"mapping '{mapping.name}': key '{key}': no column {names} in the file{shown}; "
                f"set '{key}' in a --mapping file to the file's column"
            )
        return found

    lead = required("lead", mapping.lead)
    at = required("time.column", mapping.time.column)
    type_columns = required("type", mapping.type) if mapping.type is not None else None
    event_id: tuple[str, ...] = ()
    if mapping.event_id is not None:
        event_id = _present(mapping.event_id, header)
        if not event_id:
            notes.append(
                f"no event id column ({', '.join(mapping.event_id)}) in the file: event ids are "
                "derived from each row"
            )
    else:
        notes.append("the mapping has no event_id column: event ids are derived from each row")

    def optional(
        section: str, spec: dict[str, tuple[str, ...]]
    ) -> tuple[tuple[str, tuple[str, ...]], ...]:
        out = []
        for name, refs in spec.items():
            found = _present(refs, header)
            if found:
                out.append((name, found))
            elif note_missing:
                notes.append(f"{section}.{name}: no column {', '.join(refs)} in the file")
        return tuple(out)

    key = normalize_type if mapping.match == "normalized" else str
    types: dict[str, str] = {}
    for src, target in mapping.types.items():
        k = key(src)
        if target is not None:
            if k in types and types[k] != target:
                raise MappingError(
                    f"mapping '{mapping.name}': key 'types.{src}': matches the same source value "
                    f"as another entry (mapped to {types[k]!r}) under match: normalized"
                )
            types[k] = target
    refine = tuple(
        _Refine(
            frozenset(key(s) for s in r.source_types) if r.source_types is not None else None,
            _present(r.column, header),
            tuple(c.casefold() for c in r.contains),
            frozenset(e.casefold() for e in r.equals),
            r.type,
        )
        for r in mapping.refine
    )
    relevant: frozenset[str] | None = frozenset(types)
    for r in refine:
        relevant = None if r.sources is None or relevant is None else relevant | r.sources
    fc = mapping.field_change
    field_change = (
        _FieldChange(
            frozenset(key(s) for s in fc.source_types),
            _present(fc.name, header),
            _present(fc.value, header),
            {k.casefold(): v for k, v in fc.fields.items()},
            fc.others == "snake_case",
        )
        if fc is not None
        else None
    )
    skip = {ERROR_COLUMN, LINE_COLUMN, *mapping.id_exclude}
    skip.update(mapping.lead)
    skip.update(mapping.time.column)
    if header is not None:
        dupes = sorted(c for c, n in Counter(header).items() if n > 1)
        if dupes:
            notes.append(f"the header repeats column(s) {', '.join(dupes)}: the last one is used")
    return CompiledMapping(
        name=mapping.name,
        source=mapping.source or mapping.name,
        lead=lead,
        time=at,
        time_formats=mapping.time.format,
        tz=tz,
        type_columns=type_columns,
        default_type=mapping.default_type,
        event_id=event_id,
        event_id_prefix=mapping.event_id_prefix,
        types=types,
        normalized=mapping.match == "normalized",
        reject_unmapped=mapping.unmapped == "reject",
        refine=refine,
        relevant=relevant,
        json_columns=tuple(c for c in mapping.json_columns if header is None or c in header),
        properties=optional("properties", mapping.properties),
        attributes=optional("attributes", mapping.attributes),
        field_change=field_change,
        labels=mapping.labels,
        id_columns=frozenset(mapping.id_columns) if mapping.id_columns is not None else None,
        id_skip=frozenset(skip),
        known_types=known_types,
        max_event_bytes=max_event_bytes,
        notes=tuple(notes),
    )


# -- one row -----------------------------------------------------------------------------------


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


def _lookup(row: Mapping[str, Any], ref: str) -> Any:
    """`ref` is a column, or `column.key` into a JSON object column (nested: `a.b.c`)."""
    if ref in row:
        return row[ref]
    dot = ref.find(".")
    while dot != -1:
        head = row.get(ref[:dot])
        if isinstance(head, dict):
            found = _lookup(head, ref[dot + 1 :])
            if found is not None:
                return found
        dot = ref.find(".", dot + 1)
    return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _first_of(row: Mapping[str, Any], refs: tuple[str, ...]) -> tuple[str, Any]:
    """The first candidate column with a non-empty value (strings stripped) and that value;
    ("", None) when they are all empty or missing."""
    for ref in refs:
        value = row.get(ref)
        if value is None and "." in ref:
            value = _lookup(row, ref)
        if value is None:
            continue
        if isinstance(value, str):
            value = value.strip()
            if not value:
                continue
        elif isinstance(value, dict | list) and not value:
            continue
        return ref, value
    return "", None


def _first(row: Mapping[str, Any], refs: tuple[str, ...]) -> Any:
    return _first_of(row, refs)[1]


def _first_text(row: Mapping[str, Any], refs: tuple[str, ...]) -> str | None:
    value = _first_of(row, refs)[1]
    return None if value is None else _text(value)


def _names(refs: tuple[str, ...]) -> str:
    return " / ".join(refs)


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
        columns = _names(c.type_columns or ())
        return Rejected(
            "unknown_type",
            f"{columns}: {raw!r} is not mapped to a leadflow event type; add it under 'types' "
            "in the mapping (or set 'unmapped: skip')",
        )
    label = c.labels.get(raw)
    return Skipped(f"{raw} ({label})" if label else raw)


def _scalar(value: Any) -> str | int | float | bool | None:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return _text(value)


def map_row(c: CompiledMapping, row: Mapping[str, Any]) -> Outcome:
    """One export row -> an engagement record, a skip (type not scored) or a reject with reason.

    Pure: no I/O, and `row` is not modified.
    """
    raw_type: str | None = None
    source_key = ""
    if c.type_columns is not None:
        raw_type = _first_text(row, c.type_columns)
        if raw_type is None:
            return Rejected(
                "missing_type", f"{_names(c.type_columns)}: empty; every row needs its type"
            )
        source_key = c.source_key(raw_type)
        if c.relevant is not None and source_key not in c.relevant:
            return _unmapped(c, raw_type)

    if c.json_columns:
        parsed = dict(row)
        for col in c.json_columns:
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
            if not isinstance(obj, dict):
                return Rejected(
                    "bad_json", f"{col}: expected a JSON object, got {type(obj).__name__}"
                )
            parsed[col] = obj
        row = parsed

    event_type: str | None = c.default_type
    if raw_type is not None:
        event_type = None
        for rule in c.refine:
            if (rule.sources is None or source_key in rule.sources) and rule.matches(row):
                event_type = rule.type
                break
        if event_type is None:
            event_type = c.types.get(source_key)
            if event_type is None:
                return _unmapped(c, raw_type)
    assert event_type is not None

    lead = _first_text(row, c.lead)
    if lead is None:
        return Rejected("missing_lead", f"{_names(c.lead)}: empty; every row needs a lead id")
    time_column, time_value = _first_of(row, c.time)
    if time_value is None:
        return Rejected("bad_time", f"{_names(c.time)}: empty; every row needs its time")
    try:
        at = parse_time(_text(time_value), c.time_formats, c.tz)
    except ValueError as exc:
        return Rejected("bad_time", f"{time_column}: {exc}")

    own_id = _first_text(row, c.event_id) if c.event_id else None
    event_id = (
        c.event_id_prefix + own_id
        if own_id is not None
        else derive_event_id(c, row, lead, event_type, at)
    )

    body: dict[str, Any] = {
        "event_id": event_id,
        "lead_id": lead,
        "type": event_type,
        "occurred_at": at.isoformat(),
        "source": c.source,
    }
    properties: dict[str, Any] = {}
    for name, refs in c.properties:
        value = _first(row, refs)
        if value is not None:
            properties[name] = value
    attributes: dict[str, Any] = {}
    for name, refs in c.attributes:
        value = _first(row, refs)
        if value is not None:
            attributes[name] = _scalar(value)
    fc = c.field_change
    if fc is not None and source_key in fc.sources:
        changed = _first_text(row, fc.name)
        if changed is not None:
            attr = fc.fields.get(changed.casefold()) or (
                _snake(changed) if fc.snake_case_others else None
            )
            if attr:
                attributes[attr] = _scalar(_first(row, fc.value))
    if properties:
        body["properties"] = properties
    if attributes:
        body["attributes"] = attributes

    key = lead.encode()
    value = orjson.dumps(body)
    checked = parse_engagement(key, value, _WHERE, c.known_types, c.max_event_bytes)
    if isinstance(checked, DeadLetter):
        return Rejected(checked.headers.error_kind.value, checked.headers.error_message)
    return Mapped(key, value, checked)


# -- reading the file ----------------------------------------------------------------------------


class _Lines:
    """A binary file's lines, decoded as UTF-8, counting bytes and lines; a line that is not
    UTF-8 is decoded with replacement characters and remembered, so its row is rejected."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.bytes_read = 0
        self.number = 0
        self.last_bad = 0

    def __iter__(self) -> Iterator[str]:
        first = True
        for raw in self.fh:
            self.bytes_read += len(raw)
            self.number += 1
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.last_bad = self.number
                text = raw.decode("utf-8", "replace")
            if first:
                text = text.removeprefix("\ufeff")  # Excel's byte order mark
                first = False
            yield text


_EXTRA = "\x00extra"
RowItem = tuple[int, Mapping[str, Any] | None, str, Rejected | None]


class ExportReader:
    """Rows of a CSV (csv.DictReader over the open file) or NDJSON export, one at a time."""

    def __init__(self, fh: IO[bytes], kind: Literal["csv", "ndjson"], delimiter: str = ",") -> None:
        self.kind = kind
        self.lines = _Lines(fh)
        self.header: list[str] | None = None
        self._csv: csv.DictReader[str] | None = None
        if kind == "csv":
            csv.field_size_limit(CSV_FIELD_LIMIT)
            self._csv = csv.DictReader(
                iter(self.lines), delimiter=delimiter, restkey=_EXTRA, restval=None
            )
            self.header = list(self._csv.fieldnames or [])

    @property
    def bytes_read(self) -> int:
        return self.lines.bytes_read

    def rows(self) -> Iterator[RowItem]:
        """(line the row starts on, row or None, original text for NDJSON, problem or None)."""
        if self._csv is None:
            yield from self._ndjson()
            return
        reader = self._csv
        width = len(self.header or [])
        previous = reader.line_num
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                start, previous = previous + 1, reader.line_num
                yield start, None, "", Rejected("bad_row", f"not a CSV row: {exc}")
                continue
            start, previous = previous + 1, reader.line_num
            if self.lines.last_bad >= start:
                yield start, row, "", Rejected("bad_encoding", "the line is not valid UTF-8")
            elif _EXTRA in row:
                extra = row.pop(_EXTRA)
                yield (
                    start,
                    row,
                    "",
                    Rejected(
                        "bad_row",
                        f"{width + len(extra)} values but the header has {width} columns "
                        f"(extra: {', '.join(map(repr, extra[:3]))})",
                    ),
                )
            elif None in row.values():
                have = sum(v is not None for v in row.values())
                yield (
                    start,
                    row,
                    "",
                    Rejected("bad_row", f"{have} values but the header has {width} columns"),
                )
            else:
                yield start, row, "", None

    def _ndjson(self) -> Iterator[RowItem]:
        for text in self.lines:
            number = self.lines.number
            stripped = text.strip()
            if not stripped:
                continue
            if self.lines.last_bad == number:
                yield number, None, stripped, Rejected("bad_encoding", "the line is not UTF-8")
                continue
            try:
                obj = orjson.loads(stripped)
            except orjson.JSONDecodeError as exc:
                yield number, None, stripped, Rejected("bad_json", f"not valid JSON ({exc})")
                continue
            if not isinstance(obj, dict):
                problem = Rejected("bad_row", f"expected a JSON object, got {type(obj).__name__}")
                yield number, None, stripped, problem
                continue
            yield number, obj, stripped, None


def file_kind(path: Path, mapping: ImportMapping) -> Literal["csv", "ndjson"]:
    if mapping.format != "auto":
        return mapping.format
    return "ndjson" if path.suffix.lower() in NDJSON_SUFFIXES else "csv"


def rejected_path(path: Path) -> Path:
    return path.with_name(path.name + ".rejected.csv")


class RejectWriter:
    """`<FILE>.rejected.csv`: the original columns + leadflow_error + leadflow_line, opened at the
    first reject (a stale file from an earlier run is removed at the start)."""

    def __init__(self, path: Path, header: list[str] | None, delimiter: str) -> None:
        self.path = path
        self.header = header
        self.delimiter = delimiter
        self.count = 0
        self._fh: IO[str] | None = None
        self._writer: Any = None
        path.unlink(missing_ok=True)

    def write(self, line: int, row: Mapping[str, Any] | None, text: str, problem: Rejected) -> None:
        if self._writer is None:
            self._fh = self.path.open("w", encoding="utf-8", newline="")
            self._writer = csv.writer(self._fh, delimiter=self.delimiter)
            columns = self.header if self.header is not None else ["record"]
            self._writer.writerow([*columns, ERROR_COLUMN, LINE_COLUMN])
        error = f"{problem.reason}: {problem.message}"
        if self.header is None:
            values = [text]
        else:
            values = [
                (_text(row.get(c)) if row and row.get(c) is not None else "") for c in self.header
            ]
        self._writer.writerow([*values, error, line])
        self.count += 1

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


class SeenIds:
    """Which (lead, event_id) pairs this import has already produced, in a temporary SQLite table
    (8-byte fingerprints; the page cache is bounded, so memory does not grow with the file)."""

    def __init__(self) -> None:
        self.db = sqlite3.connect("")  # a private temporary on-disk database, gone on close
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA cache_size=-4096")  # 4 MiB of pages at most
        self.db.execute("CREATE TABLE seen (fp INTEGER PRIMARY KEY)")
        self.cur = self.db.cursor()

    def add(self, lead_id: str, event_id: str) -> bool:
        """True the first time a pair is seen."""
        digest = hashlib.blake2b(f"{lead_id}\x00{event_id}".encode(), digest_size=8).digest()
        self.cur.execute(
            "INSERT OR IGNORE INTO seen VALUES (?)", (int.from_bytes(digest, "big", signed=True),)
        )
        return self.cur.rowcount == 1

    def close(self) -> None:
        self.db.close()


# -- producing ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


class KafkaSink:
    """Produce to the engagement topic, acks=all, with at most `max_in_flight` unacknowledged."""

    def __init__(self, settings: Settings, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.settings = settings
        self.topic = settings.engagement
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.delivered = 0
        self.failure: BaseException | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.producer: Any = None

    def _unreachable(self, exc: BaseException) -> KafkaUnavailable:
        return KafkaUnavailable(
            f"cannot reach Kafka at {self.settings.kafka_bootstrap} ({exc!r}); start it with "
            "`ops/stack up` or point LEADFLOW_KAFKA_BOOTSTRAP at your cluster (or check the file "
            "without Kafka: --dry-run)"
        )

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.admin import AIOKafkaAdminClient
        from aiokafka.errors import KafkaError

        from streams.kafka import client_options

        options = client_options(self.settings)
        admin = AIOKafkaAdminClient(**options, request_timeout_ms=10_000)
        try:
            with _quiet("aiokafka"):  # one clear line below, not aiokafka's connection log
                await admin.start()
                topics = await admin.list_topics()
        except (KafkaError, OSError) as exc:
            raise self._unreachable(exc) from None
        finally:
            with contextlib.suppress(KafkaError, OSError):
                await admin.close()
        if self.topic not in topics:
            raise KafkaUnavailable(
                f"topic {self.topic} does not exist; create it with `leadflow topics create` "
                "(same LEADFLOW_NAMESPACE) and run the import again"
            )
        self.producer = AIOKafkaProducer(
            **options,
            acks="all",
            enable_idempotence=True,
            linger_ms=20,
            max_batch_size=256 * 1024,
        )
        try:
            await self.producer.start()
        except (KafkaError, OSError) as exc:
            raise self._unreachable(exc) from None

    async def send(self, key: bytes, value: bytes) -> None:
        while self.in_flight >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        if self.failure is not None:
            return  # the import stops; nothing more is sent
        self.in_flight += 1
        self._idle.clear()
        try:
            future = await self.producer.send(self.topic, value, key=key)
        except Exception as exc:
            self._settle(exc)
            return
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._settle(asyncio.CancelledError())
        else:
            self._settle(future.exception())

    def _settle(self, exc: BaseException | None) -> None:
        self.in_flight -= 1
        if exc is None:
            self.delivered += 1
        elif self.failure is None:
            self.failure = exc
        self._room.set()
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self) -> None:
        await self.producer.flush()
        await self._idle.wait()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()


# -- the import --------------------------------------------------------------------------------


@dataclass
class ImportSummary:
    path: Path
    profile: str
    topic: str | None  # None: dry run
    rows: int = 0
    mapped: int = 0  # rows that became a new event (a dry run stops here)
    produced: int = 0  # acknowledged by Kafka
    duplicates: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    rejected_file: Path | None = None
    bytes_read: int = 0
    seconds: float = 0.0
    failure: str | None = None
    notes: tuple[str, ...] = ()

    @property
    def dry_run(self) -> bool:
        return self.topic is None


Progress = Callable[[int, int], None]  # (bytes read, rows read)


def prepare(
    path: Path,
    fh: IO[bytes],
    mapping: ImportMapping,
    known_types: frozenset[str],
    *,
    timezone: str | None = None,
    max_event_bytes: int = 65_536,
    note_missing: bool = True,
) -> tuple[ExportReader, CompiledMapping]:
    """Open the rows and compile the mapping against the header (MappingError on a mismatch)."""
    kind = file_kind(path, mapping)
    reader = ExportReader(fh, kind, mapping.delimiter)
    if kind == "csv" and not reader.header:
        raise MappingError(f"{path}: the file is empty (no header line)")
    compiled = compile_mapping(
        mapping,
        known_types,
        header=reader.header,
        timezone=timezone,
        max_event_bytes=max_event_bytes,
        note_missing=note_missing,
    )
    return reader, compiled


async def run_rows(
    reader: ExportReader,
    compiled: CompiledMapping,
    summary: ImportSummary,
    rejects: RejectWriter,
    sink: KafkaSink | None,
    progress: Progress | None = None,
    every: int = 2000,
) -> ImportSummary:
    """The loop: every row mapped, deduplicated within the file, produced or written as a reject."""
    seen = SeenIds()
    started = time.monotonic()
    skipped = summary.skipped
    try:
        for line, row, text, problem in reader.rows():
            if sink is not None and sink.failure is not None:
                break  # Kafka refused a record: stop reading, report what was done
            summary.rows += 1
            if progress is not None and summary.rows % every == 0:
                progress(reader.bytes_read, summary.rows)
            outcome: Outcome
            if problem is not None:
                outcome = problem
            elif row is not None:
                outcome = map_row(compiled, row)
            else:  # pragma: no cover - the reader gives a problem whenever it has no row
                continue
            if isinstance(outcome, Mapped):
                if not seen.add(outcome.event.lead_id, outcome.event.event_id):
                    summary.duplicates += 1
                    continue
                summary.mapped += 1
                if sink is not None:
                    await sink.send(outcome.key, outcome.value)
            elif isinstance(outcome, Skipped):
                name = outcome.source_type
                if name not in skipped and len(skipped) >= MAX_SKIP_KEYS:
                    name = "(other)"
                skipped[name] += 1
            else:
                summary.rejected[outcome.reason] += 1
                rejects.write(line, row, text, outcome)
        if sink is not None:
            await sink.drain()
    finally:
        seen.close()
        rejects.close()
        if sink is not None:
            summary.produced = sink.delivered
            if sink.failure is not None:
                summary.failure = (
                    f"Kafka did not accept every record ({sink.failure!r}); the import stopped "
                    f"after {summary.rows} rows. Fix the cause and run the same import again: "
                    "event ids are stable, so the worker counts each activity once"
                )
        summary.bytes_read = reader.bytes_read
        summary.seconds = time.monotonic() - started
        summary.rejected_file = rejects.path if rejects.count else None
        if progress is not None:
            progress(reader.bytes_read, summary.rows)
    return summary


async def import_file(
    path: Path,
    mapping: ImportMapping,
    known_types: frozenset[str],
    settings: Settings | None,
    *,
    timezone: str | None = None,
    max_event_bytes: int = 65_536,
    note_missing: bool = True,
    progress: Progress | None = None,
    on_ready: Callable[[CompiledMapping], None] | None = None,
) -> ImportSummary:
    """Import one file; `settings=None` is a dry run (no Kafka). Raises MappingError before
    reading any row when the mapping does not fit the file, KafkaUnavailable when Kafka is not
    there."""
    with path.open("rb") as fh:
        reader, compiled = prepare(
            path,
            fh,
            mapping,
            known_types,
            timezone=timezone,
            max_event_bytes=max_event_bytes,
            note_missing=note_missing,
        )
        if not os.access(path.parent, os.W_OK):
            raise MappingError(
                f"{path.parent} is not writable; rejected rows are written next to the file "
                f"({rejected_path(path).name}): copy the file to a writable directory"
            )
        sink = KafkaSink(settings) if settings is not None else None
        if sink is not None:
            await sink.start()
        if on_ready is not None:
            on_ready(compiled)
        summary = ImportSummary(
            path, mapping.name, sink.topic if sink else None, notes=compiled.notes
        )
        rejects = RejectWriter(rejected_path(path), reader.header, mapping.delimiter)
        try:
            return await run_rows(reader, compiled, summary, rejects, sink, progress)
        finally:
            if sink is not None:
                await sink.stop()


# -- the command ---------------------------------------------------------------------------------


def render_summary(summary: ImportSummary, out: Console) -> None:
    from rich.markup import escape
    from rich.table import Table

    where = "dry run, nothing produced" if summary.dry_run else f"to {summary.topic}"
    out.print(f"[bold]{escape(summary.path.name)}[/]: profile {summary.profile}, {escape(where)}")
    table = Table()
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", f"{summary.rows:,}")
    if summary.dry_run:
        table.add_row("would be produced", f"{summary.mapped:,}")
    else:
        table.add_row("produced", f"{summary.produced:,}")
    table.add_row("duplicates within the file", f"{summary.duplicates:,}")
    table.add_row("skipped (type not imported)", f"{sum(summary.skipped.values()):,}")
    for name, n in summary.skipped.most_common(10):
        table.add_row(escape(f"  {name}"), f"{n:,}", style="dim")
    if len(summary.skipped) > 10:
        rest = sum(n for _, n in summary.skipped.most_common()[10:])
        table.add_row(f"  {len(summary.skipped) - 10} more types", f"{rest:,}", style="dim")
    table.add_row("rejected", f"{sum(summary.rejected.values()):,}")
    for reason, n in summary.rejected.most_common():
        table.add_row(escape(f"  {reason}"), f"{n:,}", style="dim")
    out.print(table)
    rate = summary.rows / summary.seconds if summary.seconds > 0 else 0.0
    out.print(
        f"{summary.bytes_read / 1e6:,.1f} MB in {summary.seconds:,.1f} s ({rate:,.0f} rows/s)"
    )
    if summary.rejected_file is not None:
        out.print(f"rejected rows with their reason and line: {escape(str(summary.rejected_file))}")


def run_command(
    path: Path,
    *,
    profile: str | None,
    mapping: Path | None,
    dry_run: bool,
    timezone: str | None,
    settings: Settings,
    known_types: frozenset[str],
    console: Console,
    out: Console,
) -> int:
    """`leadflow import`: 0 when it ran (even with rejects), 2 for a bad profile/mapping/option,
    1 when Kafka is unreachable or did not accept every record."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    try:
        chosen = load_mapping(profile, mapping)
    except MappingError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    size = path.stat().st_size
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeRemainingColumn(),
        console=console,
    )
    task = bar.add_task(f"importing {path.name}", total=size, rows=0)

    def progress(done: int, rows: int) -> None:
        bar.update(task, completed=done, rows=rows)

    def ready(compiled: CompiledMapping) -> None:
        for note in compiled.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
        bar.start()
        started.append(True)

    started: list[bool] = []

    try:
        summary = asyncio.run(
            import_file(
                path,
                chosen,
                known_types,
                None if dry_run else settings,
                timezone=timezone,
                max_event_bytes=settings.max_event_bytes,
                note_missing=profile in (None, "generic"),
                progress=progress,
                on_ready=ready,
            )
        )
    except MappingError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 2
    except KafkaUnavailable as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        return 1
    finally:
        if started:
            bar.stop()
    render_summary(summary, out)
    if summary.failure:
        console.print(f"[bold red]error:[/] {escape(summary.failure)}")
        return 1
    return 0
