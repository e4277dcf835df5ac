"""The mapping file: how an export's columns become engagement events, validated when loaded.

A mapping is a built-in profile (profiles/*.yaml), a generic YAML file, or a profile with a
file's overrides on top; every mistake is a MappingError naming the key.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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

from streams.core.yamlfile import key_path

PROFILES = (
    "marketo",
    "hubspot-events",
    "hubspot-email-events",
    "hubspot-contacts",
    "pardot",
    "mautic",
    "generic",
)
PROFILE_FILES = files("streams.importer").joinpath("profiles")
TIME_FORMATS = ("iso", "epoch_s", "epoch_ms")


class MappingError(ValueError):
    """A profile, mapping or option is unusable; the message names the key (exit code 2)."""


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


def _texts(value: Any) -> Any:
    """`keep` values are compared as text: YAML `false` is "false", `1` is "1"."""
    items = value if isinstance(value, list | tuple) else [value]
    return [
        ("true" if v else "false") if isinstance(v, bool) else "" if v is None else str(v)
        for v in items
    ]


def _time_spec(value: Any) -> Any:
    return {"column": value} if isinstance(value, str | list) else value


Name = Annotated[str, Field(min_length=1)]
# One column, or several candidate names: the first that the file has (and is not empty) is used.
Columns = Annotated[tuple[Name, ...], BeforeValidator(_as_list), Field(min_length=1)]
Values = Annotated[tuple[Name, ...], BeforeValidator(_as_list)]


def check_zone(value: str | None, where: str = "") -> str | None:
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
        return check_zone(value)


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
    format: Literal["auto", "csv", "ndjson", "json", "xlsx"] = "auto"
    # One character, or "auto": the first line decides between comma, tab and semicolon.
    delimiter: Annotated[str, Field(min_length=1, max_length=4, pattern=r"^(.|auto)$")] = ","
    # Export column name -> header the file has instead (Marketo's columnHeaderNames).
    header_names: Annotated[dict[str, Name], BeforeValidator(_str_keys)] = Field(
        default_factory=dict
    )
    # Key(s) of an API page that hold the records (`results`, `events`, `values`): a JSON
    # document or an NDJSON line with one of them is read as its records.
    records: Values = ()
    # Cell texts that mean "empty" (Marketo writes `null` for an empty field).
    null_values: Values = ()
    # Only rows whose column (as text, case-insensitive; "" = empty or missing) is one of the
    # values are imported; the others are skipped, counted as "column value".
    keep: Annotated[
        dict[str, Annotated[tuple[str, ...], BeforeValidator(_texts)]],
        BeforeValidator(_str_keys),
    ] = Field(default_factory=dict)
    lead: Columns
    # "email": the lead column holds an e-mail address, resolved through --identity.
    lead_from: Literal["id", "email"] = "id"
    # The column with the lead's e-mail address: what --identity and --save-identity read.
    email: Columns | None = None
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


def _describe_errors(exc: ValidationError, where: str) -> str:
    parts = []
    for err in exc.errors()[:5]:
        key = key_path(err["loc"])
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


def _chosen_profile(profile: str | None, mapping: Path | dict[str, Any] | None) -> str:
    """The profile to start from: a mapping without --profile is a generic export."""
    if profile is None:
        if mapping is None:
            raise MappingError(
                f"--profile: give --profile {'|'.join(PROFILES[:-1])}, or --mapping FILE for a "
                "generic export"
            )
        profile = "generic"
    if profile not in PROFILES:
        raise MappingError(f"--profile: unknown profile {profile!r}; use {', '.join(PROFILES)}")
    if profile == "generic" and mapping is None:
        raise MappingError("--mapping: the generic profile needs a mapping file (--mapping FILE)")
    return profile


def _overrides(mapping: Path | dict[str, Any] | None) -> tuple[dict[str, Any], str | None]:
    """The mapping's keys and how an error names where they came from (None: no mapping)."""
    if isinstance(mapping, Path):
        return read_mapping_file(mapping), f"mapping {mapping}"
    if mapping is not None:
        return mapping, "mapping"
    return {}, None


def load_mapping(
    profile: str | None, mapping: Path | dict[str, Any] | None = None
) -> ImportMapping:
    """A built-in profile, a generic mapping, or a profile with a mapping's overrides on top."""
    profile = _chosen_profile(profile, mapping)
    base = {} if profile == "generic" else _builtin(profile)
    override, named = _overrides(mapping)
    where = named or f"profile {profile}"
    try:
        return ImportMapping.model_validate(_merge(_text_keys(base), _text_keys(override)))
    except ValidationError as exc:
        raise MappingError(_describe_errors(exc, where)) from None


def _describe_refine(rule: dict[str, Any]) -> str:
    columns = rule.get("column")
    test = next((k for k in ("contains", "equals", "matches") if k in rule), None)
    condition = f" {test} {rule[test]}" if test else ""
    return f"source types {rule.get('source_types')}: {columns}{condition} -> {rule.get('type')}"


def _columns(rule: dict[str, Any]) -> list[str]:
    column = rule.get("column")
    return [str(c) for c in column] if isinstance(column, list) else [str(column)]


def override_warnings(profile: str | None, mapping: Path | dict[str, Any] | None) -> list[str]:
    """What a mapping on top of a built-in profile silently drops: lists are replaced, not
    merged, so a `refine` list in the mapping ends every profile rule it does not repeat (a
    rule for the same source types and leadflow type counts as the profile's, changed), and
    a changed rule that no longer reads one of the profile rule's columns loses that fallback."""
    if profile in (None, "generic") or mapping is None:
        return []
    override, _ = _overrides(mapping)
    if "refine" not in override:
        return []
    ours = _text_keys(override.get("refine") or [])
    source = f"streams/importer/profiles/{profile}.yaml"
    warnings = []
    for rule in _text_keys(_builtin(profile).get("refine") or []):
        same = [
            r
            for r in ours
            if isinstance(r, dict)
            and r.get("source_types") == rule.get("source_types")
            and r.get("type") == rule.get("type")
        ]
        if not same:
            warnings.append(
                f"--mapping replaces the {profile} profile's refine list: its rule "
                f"({_describe_refine(rule)}) no longer applies; copy it from {source} into "
                "your refine list to keep it"
            )
            continue
        read = {c for r in same for c in _columns(r)}
        lost = [c for c in _columns(rule) if c not in read]
        if lost:
            warnings.append(
                f"--mapping changes the {profile} profile's refine rule for source types "
                f"{rule.get('source_types')} -> {rule.get('type')}: it no longer reads "
                f"{', '.join(lost)} (the profile's rule reads {', '.join(_columns(rule))}); "
                "list the column too to keep that fallback"
            )
    return warnings
