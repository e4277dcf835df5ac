"""Compiling a mapping against one file's header: event types checked, columns resolved once.

Pure: the result (`CompiledMapping`) is what `map_row` applies to every row.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from streams.importer.cells import as_text, lookup
from streams.importer.identity import EmailIdentities
from streams.importer.mapping import FieldChange, ImportMapping, MappingError, Refine, check_zone

# Columns the importer adds to a rejected file: a fixed-up rejected file can be imported again and
# gets the same derived event ids as the original rows would have had.
ERROR_COLUMN = "leadflow_error"
LINE_COLUMN = "leadflow_line"

Columns = tuple[str, ...]
NamedColumns = tuple[tuple[str, Columns], ...]  # (property or attribute name, its columns)


def normalize_type(value: str) -> str:
    """'Email opened', 'EMAIL_OPENED' and 'email-opened' are the same under `match: normalized`."""
    return re.sub(r"[^0-9a-z]+", "_", value.casefold()).strip("_")


@dataclass(frozen=True, slots=True)
class CompiledRefine:
    """A `refine` entry: rows of `sources` (None: any) whose column contains/equals text."""

    sources: frozenset[str] | None
    columns: Columns
    contains: tuple[str, ...]
    equals: frozenset[str]
    type: str

    def matches(self, row: Mapping[str, Any]) -> bool:
        for ref in self.columns:
            value = lookup(row, ref)
            if value is None:
                continue
            text = as_text(value).strip().casefold()
            if self.equals and text in self.equals:
                return True
            if any(part in text for part in self.contains):
                return True
        return False


@dataclass(frozen=True, slots=True)
class CompiledFieldChange:
    """The `field_change` entry: which rows record a profile field change, and where."""

    sources: frozenset[str]
    name: Columns
    value: Columns
    fields: dict[str, str]  # casefolded source field name -> attribute
    snake_case_others: bool


@dataclass(frozen=True)
class CompiledMapping:
    """A mapping resolved against one file's header, ready for `map_row`."""

    name: str
    source: str | None
    lead: Columns
    time: Columns
    time_formats: tuple[str, ...]
    tz: tzinfo
    type_columns: Columns | None
    default_type: str | None
    event_id: Columns
    event_id_prefix: str
    types: dict[str, str]
    normalized: bool
    reject_unmapped: bool
    refine: tuple[CompiledRefine, ...]
    relevant: frozenset[str] | None  # source types worth looking at; None = every row
    json_columns: Columns
    properties: NamedColumns
    attributes: NamedColumns
    field_change: CompiledFieldChange | None
    labels: dict[str, str]
    id_columns: frozenset[str] | None
    id_skip: frozenset[str]
    known_types: frozenset[str]
    max_event_bytes: int
    notes: tuple[str, ...] = ()
    null_values: frozenset[str] = frozenset()
    keep: tuple[tuple[str, frozenset[str]], ...] = ()  # (column, values as casefolded text)
    identities: EmailIdentities | None = None  # the lead column holds e-mail addresses

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


def _time_zone(timezone: str | None, mapping: ImportMapping) -> tzinfo:
    """--timezone, else the mapping's time.timezone, else UTC."""
    try:
        zone_name = check_zone(timezone, "--timezone: ") or mapping.time.timezone or "UTC"
    except ValueError as exc:
        raise MappingError(str(exc)) from None
    return UTC if zone_name == "UTC" else ZoneInfo(zone_name)


def _present(refs: Columns, header: Sequence[str] | None) -> Columns:
    """The candidate names the file has (a dotted name counts if its JSON column is there)."""
    if header is None:
        return refs
    cols = set(header)
    return tuple(r for r in refs if r in cols or any(r.startswith(c + ".") for c in cols))


def required_columns(
    mapping: ImportMapping, key: str, refs: Columns, header: Sequence[str] | None
) -> Columns:
    """The candidates the file has; none is an error naming the key and the file's columns."""
    found = _present(refs, header)
    if not found:
        names = ", ".join(repr(r) for r in refs)
        shown = f" (the file has: {', '.join(header[:20])})" if header else ""
        raise MappingError(
            f"mapping '{mapping.name}': key '{key}': no column {names} in the file{shown}; "
            f"set '{key}' in a --mapping file to the file's column"
        )
    return found


def _event_id_columns(
    mapping: ImportMapping, header: Sequence[str] | None
) -> tuple[Columns, str | None]:
    """The export's own activity id columns, and a note when ids will be derived instead."""
    if mapping.event_id is None:
        return (), "the mapping has no event_id column: event ids are derived from each row"
    event_id = _present(mapping.event_id, header)
    if not event_id:
        return (), (
            f"no event id column ({', '.join(mapping.event_id)}) in the file: event ids are "
            "derived from each row"
        )
    return event_id, None


def _optional(
    section: str, spec: dict[str, Columns], header: Sequence[str] | None
) -> tuple[NamedColumns, list[str]]:
    """Properties or attributes the file has columns for, and a note for each it has not."""
    found_columns = []
    missing = []
    for name, refs in spec.items():
        found = _present(refs, header)
        if found:
            found_columns.append((name, found))
        else:
            missing.append(f"{section}.{name}: no column {', '.join(refs)} in the file")
    return tuple(found_columns), missing


def _type_table(mapping: ImportMapping, key: Callable[[str], str]) -> dict[str, str]:
    """Source type (as matched) -> leadflow event type; entries mapped to null are left out."""
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
    return types


def _refinement(
    r: Refine, key: Callable[[str], str], header: Sequence[str] | None
) -> CompiledRefine:
    return CompiledRefine(
        frozenset(key(s) for s in r.source_types) if r.source_types is not None else None,
        _present(r.column, header),
        tuple(c.casefold() for c in r.contains),
        frozenset(e.casefold() for e in r.equals),
        r.type,
    )


def _relevant(types: dict[str, str], refine: tuple[CompiledRefine, ...]) -> frozenset[str] | None:
    """Source types a row must have to be worth mapping; None when a refine rule takes any."""
    relevant: frozenset[str] | None = frozenset(types)
    for r in refine:
        relevant = None if r.sources is None or relevant is None else relevant | r.sources
    return relevant


def _field_change(
    fc: FieldChange | None, key: Callable[[str], str], header: Sequence[str] | None
) -> CompiledFieldChange | None:
    if fc is None:
        return None
    return CompiledFieldChange(
        frozenset(key(s) for s in fc.source_types),
        _present(fc.name, header),
        _present(fc.value, header),
        {k.casefold(): v for k, v in fc.fields.items()},
        fc.others == "snake_case",
    )


def _id_skip(mapping: ImportMapping) -> frozenset[str]:
    """Columns that never enter a derived id: lead and time enter normalised, and the rejected
    file's own columns must not change the id of a fixed-up row."""
    skip = {ERROR_COLUMN, LINE_COLUMN, *mapping.id_exclude}
    skip.update(mapping.lead)
    skip.update(mapping.time.column)
    return frozenset(skip)


def _repeated_columns(header: Sequence[str] | None) -> list[str]:
    if header is None:
        return []
    dupes = sorted(c for c, n in Counter(header).items() if n > 1)
    if not dupes:
        return []
    return [f"the header repeats column(s) {', '.join(dupes)}: the last one is used"]


def compile_mapping(
    mapping: ImportMapping,
    known_types: frozenset[str],
    *,
    header: Sequence[str] | None = None,
    timezone: str | None = None,
    max_event_bytes: int = 65_536,
    note_missing: bool = True,
    identities: EmailIdentities | None = None,
) -> CompiledMapping:
    """Check event types and required columns and resolve column candidates (header=None: every
    candidate is tried per row, as for NDJSON). `note_missing`: add a note for each property or
    attribute none of whose columns is in the file (off for the built-in profiles, which list
    many candidate columns). `identities`: the e-mail identity map, required by a mapping whose
    lead column holds e-mail addresses (`lead_from: email`)."""
    _check_types(mapping, known_types)
    if mapping.lead_from == "email" and identities is None:
        raise MappingError(
            f"--identity: the {mapping.name} mapping names leads by e-mail address "
            f"({', '.join(mapping.lead)}); give --identity CONTACTS (a contact export with "
            "e-mail and lead id, e.g. HubSpot's contacts export) or --identity redis (the map "
            "an earlier import saved with --save-identity)"
        )
    tz = _time_zone(timezone, mapping)
    lead = required_columns(mapping, "lead", mapping.lead, header)
    at = required_columns(mapping, "time.column", mapping.time.column, header)
    type_columns = (
        required_columns(mapping, "type", mapping.type, header)
        if mapping.type is not None
        else None
    )
    event_id, id_note = _event_id_columns(mapping, header)
    key = normalize_type if mapping.match == "normalized" else str
    types = _type_table(mapping, key)
    refine = tuple(_refinement(r, key, header) for r in mapping.refine)
    properties, no_properties = _optional("properties", mapping.properties, header)
    attributes, no_attributes = _optional("attributes", mapping.attributes, header)
    notes = [id_note] if id_note else []
    notes += _repeated_columns(header)
    if mapping.lead_from == "email" and identities is not None:
        notes += identities.notes
    if note_missing:
        notes += no_properties + no_attributes
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
        relevant=_relevant(types, refine),
        json_columns=tuple(c for c in mapping.json_columns if header is None or c in header),
        properties=properties,
        attributes=attributes,
        field_change=_field_change(mapping.field_change, key, header),
        labels=mapping.labels,
        id_columns=frozenset(mapping.id_columns) if mapping.id_columns is not None else None,
        id_skip=_id_skip(mapping),
        known_types=known_types,
        max_event_bytes=max_event_bytes,
        notes=tuple(notes),
        null_values=frozenset(mapping.null_values),
        keep=tuple(
            (col, frozenset(v.casefold() for v in values)) for col, values in mapping.keep.items()
        ),
        identities=identities if mapping.lead_from == "email" else None,
    )
