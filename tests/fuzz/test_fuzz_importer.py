"""Fuzzing the importer's rows (streams/importer/: reading.py, rows.py) with its profiles: Marketo
(CSV with a JSON column), HubSpot events API (NDJSON, ISO or epoch-ms times) and a generic
mapping (the webinar export of tests/data/imports: `;`-separated, local strptime times,
unmapped types rejected).

An export is built in memory from rows and read as `leadflow import` reads it (prepare, rows,
map_row). Properties:
- reading and mapping never raise, whatever the bytes;
- an export of valid rows maps every row, once, to an event the worker accepts;
- a hostile cell gets a reject with a known reason and a message naming the column (or the
  event field the worker names), never a crash;
- whatever is mapped satisfies the contract (the independent oracle) and is keyed by its lead.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.rules import load_rules
from streams.importer.mapping import load_mapping
from streams.importer.rows import Mapped, Outcome, Rejected, Skipped, map_row
from streams.importer.run import prepare
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from tests.fuzz.payloads import (
    BAD_TIMES,
    BAD_UTF8,
    ENGAGEMENT,
    MAX_BYTES,
    REPO,
    Drawn,
    Pick,
    accepted_by_contract,
    fuzz_settings,
    json_value,
    timestamp,
)

pytestmark = [pytest.mark.unit, pytest.mark.fuzz]

KNOWN = load_rules(REPO / "tests" / "data" / "rules.yaml").event_types
REASONS = {
    "bad_row",
    "bad_encoding",
    "bad_json",
    "missing_type",
    "unknown_type",
    "missing_lead",
    "bad_time",
    "invalid_event",
    "oversized",
}
EVENT_FIELDS = ("event_id", "lead_id", "type", "occurred_at", "source", "properties", "attributes")
Row = dict[str, Any]


@dataclass(frozen=True)
class Profile:
    name: str
    profile: str | None
    mapping: Path | None
    suffix: str  # .csv or .ndjson
    delimiter: str
    header: tuple[str, ...]  # CSV: the header; NDJSON: the keys of a row
    row: Callable[[Pick], Row]  # a valid row
    time_column: str


def _iso(p: Pick) -> str:
    """ISO 8601 as exports write it (Python's fromisoformat: no lowercase t or z)."""
    text = timestamp(p, 1990, 2099)[1].isoformat()
    return p.one([text, text.replace("+00:00", "Z"), text.replace("T", " ")])


def _marketo_row(p: Pick) -> Row:
    kind = p.one(["1", "2", "9", "10", "11"])
    url = p.one(["www.example.com/pricing", "www.example.com/blog", p.text(0, 40)])
    attributes = {"Webpage URL": url, p.text(1, 10): json_value(p)}
    return {
        "marketoGUID": p.one(["", str(p.integer(1, 10**9)), p.text(1, 30, ident=True)]),
        "leadId": str(p.integer(1, 10**6)) if p.integer(0, 1) else p.text(1, 40, ident=True),
        "activityDate": _iso(p),
        "activityTypeId": kind,
        "campaignId": p.one(["", str(p.integer(1, 999))]),
        "primaryAttributeValueId": str(p.integer(0, 99)),
        "primaryAttributeValue": url,
        "attributes": p.one(["", orjson.dumps(attributes).decode()]),
    }


def _hubspot_row(p: Pick) -> Row:
    at = timestamp(p, 1991, 2099)[1]
    when: Any = p.one([_iso(p), int(at.timestamp() * 1000), str(int(at.timestamp() * 1000))])
    return {
        "id": p.one([p.text(1, 30, ident=True), p.integer(1, 10**12)]),
        "objectType": "CONTACT",
        "objectId": p.one([str(p.integer(1, 10**6)), p.integer(1, 10**6)]),
        "eventType": p.one(
            [
                "e_visited_page",
                "e_submitted_form",
                "e_attended_marketing_event",
                "e_registered_marketing_event",
            ]
        ),
        "occurredAt": when,
        "properties": {"hs_url": p.one(["https://x.example/pricing", p.text(0, 30)])},
    }


def _webinar_row(p: Pick) -> Row:
    at = timestamp(p, 1990, 2099)[1].astimezone(UTC)
    return {
        "Email": p.text(1, 40, ident=True) + "@example.com",
        "Action": p.one(["Registered", "Attended", "Watched recording"]),
        "Date": at.strftime("%d.%m.%Y %H:%M"),
        "Company": p.text(0, 30),
        "Industry": p.one(["Software", "", p.text(0, 20)]),
        "Employees": p.one(["1200", "", str(p.integer(-5, 10**7))]),
        "Webinar": p.text(0, 60),
    }


PROFILES = (
    Profile("marketo", "marketo", None, ".csv", ",",
            ("marketoGUID", "leadId", "activityDate", "activityTypeId", "campaignId",
             "primaryAttributeValueId", "primaryAttributeValue", "attributes"),
            _marketo_row, "activityDate"),
    Profile("hubspot-events", "hubspot-events", None, ".ndjson", ",",
            ("id", "objectType", "objectId", "eventType", "occurredAt", "properties"),
            _hubspot_row, "occurredAt"),
    Profile("generic", None, REPO / "tests/data/imports/generic_webinar_mapping.yaml", ".csv",
            ";", ("Email", "Action", "Date", "Company", "Industry", "Employees", "Webinar"),
            _webinar_row, "Date"),
)  # fmt: skip
PROFILE_IDS = [p.name for p in PROFILES]


def export(profile: Profile, rows: list[Row]) -> bytes:
    if profile.suffix == ".ndjson":
        lines = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        return DEEP.sub(lambda m: deep_json(int(m.group(1))).encode(), lines)
    out = io.StringIO()
    writer = csv.writer(out, delimiter=profile.delimiter, lineterminator="\r\n")
    writer.writerow(profile.header)
    for r in rows:
        writer.writerow([r.get(c, "") for c in profile.header])
    return out.getvalue().encode("utf-8")


def read(profile: Profile, data: bytes) -> list[tuple[int, Outcome]]:
    """Every row's outcome, as `leadflow import` decides it (never raises)."""
    mapping = load_mapping(profile.profile, profile.mapping)
    path = Path("export" + profile.suffix)
    reader, compiled = prepare(path, io.BytesIO(data), mapping, KNOWN, note_missing=False)
    return [
        (line, problem if problem is not None else map_row(compiled, row or {}))
        for line, row, _, problem in reader.rows()
    ]


def check(profile: Profile, outcome: Outcome) -> None:
    if isinstance(outcome, Skipped):
        assert outcome.source_type
    elif isinstance(outcome, Rejected):
        assert outcome.reason in REASONS, outcome
        message = outcome.message
        assert message.strip()
        named = [c for c in (*profile.header, *EVENT_FIELDS) if c and c in message]
        keywords = ("UTF-8", "JSON", "values but the header", "CSV", "max_event_bytes")
        assert named or any(k in message for k in keywords), outcome
    else:
        event = parse_engagement(
            outcome.key, outcome.value, RecordLocation("t", 0, 0), KNOWN, MAX_BYTES
        )
        assert not isinstance(event, DeadLetter), event.headers
        assert event == outcome.event
        assert outcome.key == event.lead_id.encode()
        assert accepted_by_contract(ENGAGEMENT, outcome.key, outcome.value, KNOWN) is None


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
@fuzz_settings(30, share=0.05)
@given(data=st.data())
def test_valid_rows_are_each_mapped_once(profile: Profile, data: st.DataObject) -> None:
    p = Drawn(data)
    rows = [profile.row(p) for _ in range(p.integer(1, 5))]
    outcomes = read(profile, export(profile, rows))
    assert len(outcomes) == len(rows)
    for _, outcome in outcomes:
        check(profile, outcome)
        assert isinstance(outcome, Mapped), outcome


def deep_json(depth: int) -> str:
    """JSON nested `depth` levels (built as text: orjson writes at most 254 levels)."""
    return '{"n":' * depth + "1" + "}" * depth


DEEP = re.compile(rb'"@@deep:(\d+)@@"')  # an NDJSON value to replace with deep_json(n)


def hostile_cell(p: Pick, profile: Profile, column: str) -> Any:
    """Something no export should hold in a cell; NDJSON cells may be any JSON value."""
    bad: list[Any] = [
        "",
        "   ",
        "x" * p.one([257, 5000, MAX_BYTES + 1]),
        p.text(0, 80),
        str(p.one(BAD_TIMES)[0]),
        timestamp(p, *p.one([(1, 1899), (3000, 9999)]))[0],
        "01.01.0001 00:30",
        "31.12.9999 23:59",
        '{"Webpage URL": ' + "[" * 300 + "]" * 300 + "}",
        '{"New Value": ' + deep_json(p.integer(250, 1000)) + "}",
        "not json {",
        "[1, 2]",
        "\x00",
    ]
    if profile.suffix == ".ndjson":
        deep = f"@@deep:{p.integer(250, 1000)}@@"
        bad += [None, True, 12.5, 2**63, [], ["a"], {}, {"a": [1]}, deep]
    return p.one(bad)


def _raw_mutation(p: Pick, data: bytes) -> bytes:
    """Bytes-level damage: not UTF-8, an unbalanced quote, a truncated file, a stray line."""
    lines = data.split(b"\n")
    at = p.integer(0, len(lines) - 1)
    damage = p.integer(0, 4)
    if damage == 0:
        lines[at] = lines[at][: p.integer(0, len(lines[at]))] + p.one(BAD_UTF8) + lines[at]
    elif damage == 1:
        lines[at] = b'"' + lines[at]
    elif damage == 2:
        return data[: p.integer(0, len(data))]
    elif damage == 3:
        lines.insert(at, p.one([b"a,b", b"{", b"[1]", b'"only"', b",,,,,,,,,,", b"\x00\x00"]))
    else:
        return p.binary(400)
    return b"\n".join(lines)


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
@fuzz_settings(80, share=0.34)  # x 3 profiles
@given(data=st.data())
def test_hostile_rows_are_rejected_with_a_reason(profile: Profile, data: st.DataObject) -> None:
    p = Drawn(data)
    rows = [profile.row(p) for _ in range(p.integer(1, 4))]
    for _ in range(p.integer(1, 3)):
        row = p.one(rows)
        column = p.one(list(row))
        if p.integer(0, 5) == 0:
            del row[column]
        else:
            row[column] = hostile_cell(p, profile, column)
    exported = export(profile, rows)
    if p.integer(0, 3) == 0:
        exported = _raw_mutation(p, exported)
    try:
        outcomes = read(profile, exported)
    except Exception as exc:  # a broken header is the mapping's error (exit 2), not a row's
        assert type(exc).__name__ == "MappingError", exc
        return
    for _, outcome in outcomes:
        check(profile, outcome)


@pytest.mark.parametrize("profile", PROFILES, ids=PROFILE_IDS)
@fuzz_settings(20, share=0.02)
@given(data=st.data())
def test_a_time_outside_the_contracts_years_is_a_bad_time(
    profile: Profile, data: st.DataObject
) -> None:
    p = Drawn(data)
    row = profile.row(p)
    year = p.one([1, 1000, 1899, 3000, 9999])
    at = datetime(year, p.integer(1, 12), p.integer(1, 28), p.integer(0, 23), p.integer(0, 59))
    shown = at.strftime("%d.%m.%Y %H:%M") if profile.name == "generic" else at.isoformat()
    if profile.name != "generic":
        shown += p.one(["Z", "+01:00", "-01:00"])
    row[profile.time_column] = shown
    ((_, outcome),) = read(profile, export(profile, [row]))
    assert isinstance(outcome, Rejected), outcome
    assert outcome.reason == "bad_time", outcome
    assert profile.time_column in outcome.message
