"""Reading values out of one row: candidate columns, dotted paths into JSON, values as text.

Shared by the compiled mapping (refine conditions), the row mapping and the rejected file.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson


def lookup(row: Mapping[str, Any], ref: str) -> Any:
    """`ref` is a column, or `column.key` into a JSON object column (nested: `a.b.c`)."""
    if ref in row:
        return row[ref]
    dot = ref.find(".")
    while dot != -1:
        head = row.get(ref[:dot])
        if isinstance(head, dict):
            found = lookup(head, ref[dot + 1 :])
            if found is not None:
                return found
        dot = ref.find(".", dot + 1)
    return None


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def as_scalar(value: Any) -> str | int | float | bool | None:
    """Attributes are flat: a nested value is passed on as its JSON text."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return as_text(value)


def first_of(row: Mapping[str, Any], refs: tuple[str, ...]) -> tuple[str, Any]:
    """The first candidate column with a non-empty value (strings stripped) and that value;
    ("", None) when they are all empty or missing."""
    for ref in refs:
        value = row.get(ref)
        if value is None and "." in ref:
            value = lookup(row, ref)
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


def first_value(row: Mapping[str, Any], refs: tuple[str, ...]) -> Any:
    return first_of(row, refs)[1]


def first_text(row: Mapping[str, Any], refs: tuple[str, ...]) -> str | None:
    value = first_of(row, refs)[1]
    return None if value is None else as_text(value)


def column_names(refs: tuple[str, ...]) -> str:
    """Candidate columns as a reject message names them."""
    return " / ".join(refs)
