"""The sample exports in tests/data/imports and how the importer tests map them."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from schemas.engagement import EngagementEvent
from streams.core.rules import load_rules
from streams.importer.compile import compile_mapping
from streams.importer.identity import EmailIdentities
from streams.importer.mapping import load_mapping
from streams.importer.rows import Mapped, Outcome, Rejected, Skipped, map_row
from streams.importer.run import ImportSummary, import_file, prepare
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement

DATA = Path(__file__).resolve().parents[2] / "data" / "imports"
TEST_RULES = Path(__file__).resolve().parents[2] / "data" / "rules.yaml"
KNOWN = load_rules(TEST_RULES).event_types
WEBINAR_MAPPING = DATA / "generic_webinar_mapping.yaml"
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "LEADFLOW_RULES": str(TEST_RULES)}


def outcomes(
    path: Path,
    profile: str | None,
    mapping: Path | dict[str, Any] | None = None,
    timezone: str | None = None,
    known: frozenset[str] = KNOWN,
    max_event_bytes: int = 65_536,
    identities: EmailIdentities | None = None,
) -> dict[int, Outcome]:
    """Every row of a file by the line (or, for a JSON document, the record) it starts on,
    mapped as `leadflow import` maps it."""
    chosen = load_mapping(profile, mapping)
    with path.open("rb") as fh:
        reader, compiled = prepare(
            path,
            fh,
            chosen,
            known,
            timezone=timezone,
            max_event_bytes=max_event_bytes,
            identities=identities,
        )
        return {
            line: problem if problem is not None else map_row(compiled, row or {})
            for line, row, _, problem in reader.rows()
        }


def events(result: dict[int, Outcome]) -> dict[int, EngagementEvent]:
    return {line: o.event for line, o in result.items() if isinstance(o, Mapped)}


def rejects(result: dict[int, Outcome]) -> dict[int, str]:
    return {line: o.reason for line, o in result.items() if isinstance(o, Rejected)}


def skips(result: dict[int, Outcome]) -> Counter[str]:
    return Counter(o.source_type for o in result.values() if isinstance(o, Skipped))


def dry_run(path: Path, profile: str | None, mapping: Path | None = None) -> ImportSummary:
    return asyncio.run(import_file(path, load_mapping(profile, mapping), KNOWN, None))


def worker_accepts(m: Mapped) -> bool:
    where = RecordLocation("t", 0, 0)
    return not isinstance(parse_engagement(m.key, m.value, where, KNOWN, 65_536), DeadLetter)


def _webinar_compiled() -> Any:
    return compile_mapping(load_mapping(None, WEBINAR_MAPPING), KNOWN)


ROW = {
    "Email": "anna@acme.example",
    "Action": "Attended",
    "Date": "05.03.2024 14:02",
    "Company": "Acme GmbH",
    "Industry": "Manufacturing",
    "Employees": "1200",
    "Webinar": "Lead scoring 101",
}


def _id(row: dict[str, str]) -> str:
    out = map_row(_webinar_compiled(), row)
    assert isinstance(out, Mapped), out
    return out.event.event_id
