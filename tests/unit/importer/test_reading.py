"""Reading exports the way vendors write them: delimiters, API pages, JSON documents, XLSX."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pytest

from streams.importer.identity import build_identities, normalize_email
from streams.importer.mapping import MappingError
from streams.importer.reading import ExportReader, sniff_delimiter
from tests.unit.importer.samples import events, outcomes, rejects, skips

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("marketoGUID,leadId,activityDate\n", ","),
        ("marketoGUID\tleadId\tactivityDate\n", "\t"),
        ("marketoGUID;leadId;activityDate\n", ";"),
        ("marketoGUID leadId activityDate\n", " "),
        ("Activity ID\tLead ID\tActivity Date\n", "\t"),  # renamed headers with spaces, TSV
        ("leadId\n", ","),
    ],
)
def test_the_delimiter_is_read_from_the_header(header: str, expected: str) -> None:
    assert sniff_delimiter(header) == expected


def test_renamed_headers_are_read_under_the_export_names() -> None:
    fh = io.BytesIO(b"Lead ID;Date\n7;2024-04-01\n")
    reader = ExportReader(fh, "csv", "auto", header_names={"leadId": "Lead ID"})
    assert reader.header == ["leadId", "Date"] and reader.delimiter == ";"
    assert [row for _, row, _, _ in reader.rows()] == [{"leadId": "7", "Date": "2024-04-01"}]


PAGE = (
    '{"results": [{"objectType": "CONTACT", "objectId": "1", "eventType": "e_submitted_form",'
    ' "occurredAt": "2024-03-05T09:00:00Z", "id": "a"}], "paging": {}}'
)
NOT_A_RECORD = '{"results": [5], "paging": {}}'
RECORD = (
    '{"objectType": "CONTACT", "objectId": "2", "eventType": "e_visited_page",'
    ' "occurredAt": "2024-03-05T09:01:00Z", "id": "b"}'
)


def test_ndjson_lines_may_be_api_pages_or_records(tmp_path: Path) -> None:
    export = tmp_path / "events.ndjson"
    export.write_text(f"{PAGE}\n{RECORD}\n{NOT_A_RECORD}\n", encoding="utf-8")
    result = outcomes(export, "hubspot-events")
    assert [(e.event_id, e.lead_id) for e in events(result).values()] == [("a", "1"), ("b", "2")]
    assert rejects(result) == {3: "bad_row"}  # the page's `5` is no record


def test_a_json_document_may_be_a_list_of_pages(tmp_path: Path) -> None:
    export = tmp_path / "pages.json"
    export.write_text(f'[{PAGE}, {NOT_A_RECORD},\n {{"results": [{RECORD}]}}]', encoding="utf-8")
    result = outcomes(export, "hubspot-events")
    assert {n: e.event_id for n, e in events(result).items()} == {1: "a", 3: "b"}
    assert rejects(result) == {2: "bad_row"}  # positions count records across the pages


def test_a_json_file_with_one_object_per_line_is_read_as_ndjson(tmp_path: Path) -> None:
    export = tmp_path / "events.json"
    other = RECORD.replace('"b"', '"c"')
    export.write_text(f"{RECORD}\n{other}\n", encoding="utf-8")
    got = events(outcomes(export, "hubspot-events"))
    assert {n: e.event_id for n, e in got.items()} == {1: "b", 2: "c"}


def test_a_json_object_column_holding_null_is_empty(tmp_path: Path) -> None:
    export = tmp_path / "extract.csv"
    export.write_text(
        "marketoGUID,leadId,activityDate,activityTypeId,attributes\n"
        "1,7,2024-04-01T09:00:00Z,10,null\n",
        encoding="utf-8",
    )
    # without the profile's null marker the JSON literal null is still no bad_json
    got = events(outcomes(export, "marketo", {"null_values": []}))
    assert got[2].type == "email_open" and got[2].properties is not None
    assert "attributes" not in got[2].properties


def test_a_file_that_is_not_xlsx_is_a_mapping_error(tmp_path: Path) -> None:
    export = tmp_path / "contacts.xlsx"
    export.write_text("Record ID,Email\n1,a@b.example\n", encoding="utf-8")
    with pytest.raises(MappingError, match="not an XLSX workbook"):
        outcomes(export, "hubspot-contacts")


def test_keep_skips_rows_of_other_kinds_with_their_value(tmp_path: Path) -> None:
    export = tmp_path / "events.ndjson"
    export.write_text(
        RECORD.replace('"CONTACT"', '"DEAL"')
        + "\n"
        + RECORD.replace('"objectType": "CONTACT", ', "")
        + "\n",
        encoding="utf-8",
    )
    result = outcomes(export, "hubspot-events")
    assert not events(result)
    assert skips(result) == Counter({"objectType DEAL": 1, "objectType (empty)": 1})


def test_identity_map_normalises_and_counts_conflicts() -> None:
    assert normalize_email("  Anna@ACME.example ") == "anna@acme.example"
    pairs = [("a@x.example", "1"), ("b@x.example", "2"), ("a@x.example", "3")]
    identities = build_identities(pairs, "contacts.csv")
    assert identities.lead_for("A@X.example") == "1" and len(identities) == 2
    assert identities.conflicts == 1 and "contacts.csv" in identities.notes[0]
    assert identities.lead_for("c@x.example") is None
