"""`leadflow import`: what the worker would dead-letter, and what cannot be read, is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.importer.mapping import MappingError
from streams.importer.rows import Rejected
from tests.unit.importer.samples import DATA, events, outcomes, rejects

pytestmark = pytest.mark.unit


# -- what the worker would dead-letter is rejected here ------------------------------------------


def test_worker_validation_is_reused(tmp_path: Path) -> None:
    export = tmp_path / "odd.csv"
    long_lead = "L" * 300
    export.write_text(
        "lead,at,kind,note\n"
        f"{long_lead},2024-03-05T10:00:00Z,download,x\n"
        f"L2,2024-03-05T10:00:00Z,download,{'y' * 400}\n",
        encoding="utf-8",
    )
    mapping = {
        "lead": "lead",
        "time": "at",
        "type": "kind",
        "types": {"download": "download"},
        "properties": ["note"],
    }
    first = outcomes(export, None, mapping)[2]
    assert isinstance(first, Rejected) and first.reason == "invalid_event"
    assert "lead_id" in first.message
    second = outcomes(export, None, mapping, max_event_bytes=256)[3]
    assert isinstance(second, Rejected) and second.reason == "oversized"


def test_a_line_that_is_not_utf8_is_rejected_alone(tmp_path: Path) -> None:
    export = tmp_path / "latin1.csv"
    export.write_bytes(
        b"\xef\xbb\xbflead,at,kind\n"  # with Excel's byte order mark
        b"L1,2024-03-05T10:00:00Z,download\n"
        b"M\xfcller,2024-03-05T10:00:00Z,download\n"
        b"L3,2024-03-05T10:00:00Z,download\n"
    )
    mapping = {"lead": "lead", "time": "at", "type": "kind", "types": {"download": "download"}}
    result = outcomes(export, None, mapping)
    assert rejects(result) == {3: "bad_encoding"}
    assert sorted(e.lead_id for e in events(result).values()) == ["L1", "L3"]


def test_a_quoted_field_over_several_lines_is_one_row(tmp_path: Path) -> None:
    export = tmp_path / "multi.csv"
    export.write_text(
        'lead,at,kind,note\nL1,2024-03-05T10:00:00Z,download,"two\nlines"\nL2,bad,download,x\n',
        encoding="utf-8",
    )
    mapping = {
        "lead": "lead",
        "time": "at",
        "type": "kind",
        "types": {"download": "download"},
        "properties": ["note"],
    }
    result = outcomes(export, None, mapping)
    assert events(result)[2].properties == {"note": "two\nlines"}
    assert rejects(result) == {4: "bad_time"}


# -- found by fuzzing (tests/fuzz) ----------------------------------------------------------------

WEBINAR_HEADER = "Email;Action;Date;Company;Industry;Employees;Webinar\n"


@pytest.mark.parametrize("date", ["01.01.0001 00:30", "31.12.9999 23:59", "31.12.1899 12:00"])
def test_a_time_outside_the_workers_years_is_a_bad_time(tmp_path: Path, date: str) -> None:
    # 01.01.0001 00:30 in Europe/Berlin raised OverflowError deriving the event id (UTC is
    # before year 1); 31.12.9999 was produced, and the worker's fold then failed on it.
    export = tmp_path / "attendees.csv"
    export.write_text(WEBINAR_HEADER + f"a@x.example;Attended;{date};;;;\n", encoding="utf-8")
    (outcome,) = outcomes(export, None, DATA / "generic_webinar_mapping.yaml").values()
    assert isinstance(outcome, Rejected) and outcome.reason == "bad_time"
    assert outcome.message.startswith("Date: ") and "1900-2999" in outcome.message


def test_a_value_too_deep_to_write_as_json_is_a_bad_json_reject(tmp_path: Path) -> None:
    # orjson reads 1024 levels but writes 254: deriving the id or the event raised TypeError.
    deep = '{"n":' * 300 + "1" + "}" * 300
    export = tmp_path / "events.ndjson"
    export.write_text(
        '{"objectId": "601", "eventType": "e_submitted_form", '
        f'"occurredAt": "2024-03-05T09:03:00Z", "properties": {deep}}}\n'
        '{"objectId": "602", "eventType": "e_submitted_form", '
        '"occurredAt": "2024-03-05T09:04:00Z"}\n',
        encoding="utf-8",
    )
    result = outcomes(export, "hubspot-events", {"keep": None})
    assert rejects(result) == {1: "bad_json"}
    assert "nested too deeply" in result[1].message  # type: ignore[union-attr]
    assert [e.lead_id for e in events(result).values()] == ["602"]


def test_a_header_that_is_not_csv_is_a_mapping_error(tmp_path: Path) -> None:
    # A lone CR (old Mac line ends) made csv raise from the header: a traceback, not exit 2.
    export = tmp_path / "mac.csv"
    export.write_bytes(b"lead,at,kind\rL1,2024-03-05T10:00:00Z,download\r")
    mapping = {"lead": "lead", "time": "at", "type": "kind", "types": {"download": "download"}}
    with pytest.raises(MappingError, match="the header line is not CSV"):
        outcomes(export, None, mapping)
