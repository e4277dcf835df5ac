"""How `leadflow tail` and `leadflow handoffs` show a record of each topic: TSV columns (a
pipe), the same with a bold header (a terminal), or one JSON object per line (`--json`).

Rows read the record's JSON as it is on the topic (no model validation), so a record that a
newer or older writer produced still shows; a value that is not JSON shows as text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from rich.markup import escape

from schemas.deadletter import DEADLETTER_HEADERS
from streams.cli.output import out, tsv_row

# Longest value text a dead-letter row shows (`--json` shows all of it).
VALUE_PREVIEW = 500


@dataclass(frozen=True)
class Record:
    """One consumed record, as `tail` shows it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def body(self) -> dict[str, Any] | None:
        try:
            parsed = orjson.loads(self.value or b"")
        except orjson.JSONDecodeError:
            return None
        return parsed if isinstance(parsed, dict) else None

    def text(self, limit: int | None = None) -> str:
        value = (self.value or b"").decode("utf-8", errors="replace")
        return value if limit is None or len(value) <= limit else value[:limit] + "…"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return str(value)


def _reasons(body: dict[str, Any]) -> str:
    reasons = body.get("reasons") or []
    return "; ".join(
        f"{r.get('rule')} {float(r.get('points') or 0):+g}" for r in reasons if isinstance(r, dict)
    )


def _bant(body: dict[str, Any]) -> str:
    bant = body.get("bant")
    if not isinstance(bant, dict):
        return ""
    return ",".join(f"{k}={'yes' if v else 'no'}" for k, v in bant.items())


def _fields(*names: str) -> Callable[[dict[str, Any]], list[str]]:
    def row(body: dict[str, Any]) -> list[str]:
        return [_cell(body.get(n)) for n in names]

    return row


@dataclass(frozen=True)
class View:
    """The columns of one topic's records."""

    columns: tuple[str, ...]
    row: Callable[[Record], list[str]]


def _json_view(columns: tuple[str, ...], extra: dict[str, Callable[[dict[str, Any]], str]]) -> View:
    """Columns taken from the record's JSON fields (`extra`: computed ones)."""

    def row(record: Record) -> list[str]:
        body = record.body()
        if body is None:
            return [""] * (len(columns) - 1) + [f"(not JSON) {record.text(VALUE_PREVIEW)}"]
        return [extra[c](body) if c in extra else _cell(body.get(c)) for c in columns]

    return View(columns, row)


def _deadletter_row(record: Record) -> list[str]:
    headers = dict(record.headers)
    reason = [
        headers.get(DEADLETTER_HEADERS[n], b"").decode("utf-8", errors="replace")
        for n in DEADLETTER_HEADERS
    ]
    key = (record.key or b"").decode("utf-8", errors="replace")
    return [str(record.partition), str(record.offset), *reason, key, record.text(VALUE_PREVIEW)]


VIEWS: dict[str, View] = {
    "handoff": _json_view(
        (
            "qualified_at",
            "lead_id",
            "score",
            "fit_score",
            "engagement_score",
            "first_contact_due_at",
            "owner",
            "queue",
            "handoff_id",
            "reasons",
        ),
        {"reasons": _reasons},
    ),
    "lifecycle": _json_view(
        (
            "occurred_at",
            "lead_id",
            "from_stage",
            "to_stage",
            "reason",
            "missing_bant",
            "handoff_id",
            "transition_id",
        ),
        {"missing_bant": lambda b: ",".join(b.get("missing_bant") or [])},
    ),
    "alerts": _json_view(
        (
            "detected_at",
            "lead_id",
            "kind",
            "severity",
            "due_at",
            "owner",
            "handoff_id",
            "alert_id",
        ),
        {},
    ),
    "deadletter": View(
        (
            "partition",
            "offset",
            *(header.removeprefix("leadflow.") for header in DEADLETTER_HEADERS.values()),
            "key",
            "value",
        ),
        _deadletter_row,
    ),
    "activity": _json_view(
        ("occurred_at", "lead_id", "type", "owner", "bant", "reason", "activity_id"),
        {"bant": _bant},
    ),
    "engagement": _json_view(
        ("occurred_at", "lead_id", "type", "event_id", "source"),
        {},
    ),
}


def as_json(record: Record, kind: str) -> bytes:
    """One JSON line: the record's own JSON; for a dead letter (or a value that is not a JSON
    object), where it is, its key, its headers decoded and its value as text."""
    body = record.body()
    if kind != "deadletter" and body is not None:
        return orjson.dumps(body)
    headers = dict(record.headers)
    envelope: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
        "key": None if record.key is None else record.key.decode("utf-8", errors="replace"),
    }
    if kind == "deadletter":
        envelope["headers"] = {
            name: headers[name].decode("utf-8", errors="replace")
            for name in DEADLETTER_HEADERS.values()
            if name in headers
        }
    envelope["value"] = body if body is not None else record.text()
    return orjson.dumps(envelope)


@dataclass
class Printer:
    """Prints records of one topic kind: JSON lines, or a header row then one row each (plain
    TSV when stdout is not a terminal). Flushes every line, so `--follow` output streams."""

    kind: str
    json: bool = False
    printed: int = 0
    _header: bool = field(default=False, repr=False)

    def print(self, records: Iterable[Record]) -> None:
        view = VIEWS[self.kind]
        for record in records:
            if self.json:
                out.file.write(as_json(record, self.kind).decode() + "\n")
            else:
                if not self._header:
                    self.header(view)
                self.row(view.row(record))
            self.printed += 1
        out.file.flush()

    def header(self, view: View) -> None:
        self._header = True
        if out.is_terminal:
            out.print(f"[bold]{escape(chr(9).join(view.columns))}[/]")
        else:
            out.file.write(tsv_row(view.columns) + "\n")

    def row(self, cells: list[str]) -> None:
        if out.is_terminal:
            out.print(escape("\t".join(cells)), highlight=False)
        else:
            out.file.write(tsv_row(cells) + "\n")
