"""`leadflow import`: profiles on sample exports, rejects, skips, stable ids, mapping errors."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from schemas.engagement import KNOWN_EVENT_TYPES, EngagementEvent
from streams.cli import app
from streams.core.rules import load_rules
from streams.importer import (
    ERROR_COLUMN,
    LINE_COLUMN,
    ImportMapping,
    ImportSummary,
    KafkaSink,
    Mapped,
    MappingError,
    Outcome,
    Rejected,
    RejectWriter,
    Skipped,
    compile_mapping,
    derive_event_id,
    import_file,
    load_mapping,
    map_row,
    parse_time,
    prepare,
    rejected_path,
    run_rows,
)
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import load_settings

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[1] / "data" / "imports"
TEST_RULES = Path(__file__).resolve().parents[1] / "data" / "rules.yaml"
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
) -> dict[int, Outcome]:
    """Every row of a file by the line it starts on, mapped as `leadflow import` maps it."""
    chosen = load_mapping(profile, mapping)
    with path.open("rb") as fh:
        reader, compiled = prepare(
            path, fh, chosen, known, timezone=timezone, max_event_bytes=max_event_bytes
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


# -- marketo -------------------------------------------------------------------------------------


def test_marketo_sample_rows_are_mapped_skipped_or_rejected_with_reasons() -> None:
    result = outcomes(DATA / "marketo_activities.csv", "marketo")
    got = events(result)
    assert {line: (e.event_id, e.lead_id, e.type) for line, e in got.items()} == {
        2: ("60001", "1001", "page_view"),
        3: ("60002", "1001", "pricing_page_view"),
        4: ("60003", "1001", "form_submit"),
        5: ("60004", "1001", "profile_updated"),
        6: ("60005", "1001", "profile_updated"),
        9: ("60008", "1002", "email_open"),
        10: ("60009", "1002", "email_click"),
        11: ("60010", "1003", "webinar_registered"),
        12: ("60011", "1003", "webinar_attended"),
        14: ("60013", "1003", "opt_out"),
        20: ("60002", "1001", "pricing_page_view"),  # the same activity again: same id
    }
    assert skips(result) == Counter(
        {"6 (Send Email)": 1, "7 (Email Delivered)": 1, "34 (Add to Opportunity)": 1, "100001": 1}
    )
    assert rejects(result) == {
        16: "bad_time",
        17: "missing_lead",
        18: "bad_json",
        19: "missing_type",
        21: "bad_row",
    }
    messages = {line: o.message for line, o in result.items() if isinstance(o, Rejected)}
    assert "activityDate" in messages[16] and "2024-31-03" in messages[16]
    assert "leadId" in messages[17]
    assert "attributes" in messages[18] and "JSON" in messages[18]
    assert "activityTypeId" in messages[19]
    assert "3 values" in messages[21] and "8 columns" in messages[21]
    assert all(worker_accepts(o) for o in result.values() if isinstance(o, Mapped))


def test_marketo_event_carries_time_properties_and_changed_fields() -> None:
    got = events(outcomes(DATA / "marketo_activities.csv", "marketo"))
    pricing = got[3]
    assert pricing.occurred_at == datetime(2024, 3, 4, 9, 5, tzinfo=UTC)
    assert pricing.source == "marketo"
    assert pricing.properties == {
        "primary_attribute_value": "www.example.com/pricing",
        "primary_attribute_value_id": "12",
        "activity_type_id": "1",
        "attributes": {"Webpage URL": "/pricing", "Query Parameters": "plan=pro"},
    }
    assert got[2].properties and got[2].properties["attributes"]["Client IP Address"]
    assert got[5].attributes == {"job_title": "VP Engineering"}
    assert got[6].attributes == {"industry": "Software"}
    assert got[9].properties and got[9].properties["campaign_id"] == "3001"
    assert got[14].properties and "attributes" not in got[14].properties  # `{}` adds nothing


def test_marketo_pricing_detection_and_type_table_are_configurable() -> None:
    override = {
        "types": {"6": "email_open", "11": None},  # map Send Email, drop Click Email
        "refine": [
            {
                "source_types": [1],
                "column": "primaryAttributeValue",
                "contains": ["/blog"],
                "type": "case_study_view",
            }
        ],
    }
    result = outcomes(DATA / "marketo_activities.csv", "marketo", override)
    got = events(result)
    assert got[2].type == "case_study_view"
    assert got[3].type == "page_view"  # the default pricing rule was replaced
    assert got[7].type == "email_open"
    assert 10 not in got and "11 (Click Email)" in skips(result)
    assert got[9].type == "email_open"  # the rest of the table is still there


# -- hubspot -------------------------------------------------------------------------------------


def test_hubspot_csv_with_candidate_columns_and_local_times() -> None:
    result = outcomes(DATA / "hubspot_events.csv", "hubspot", timezone="Europe/Berlin")
    got = events(result)
    assert {line: (e.lead_id, e.type) for line, e in got.items()} == {
        2: ("501", "page_view"),
        3: ("501", "pricing_page_view"),
        4: ("501", "form_submit"),
        5: ("502", "email_open"),
        6: ("502", "email_click"),
        7: ("502", "opt_out"),
    }
    assert got[2].event_id == "hs-ev-1" and got[7].event_id == "hs-ev-6"
    assert got[5].event_id.startswith("imp-") and got[6].event_id.startswith("imp-")
    # No offset: in --timezone; an offset or an epoch is kept as it is.
    assert got[2].occurred_at.isoformat() == "2024-03-05T09:00:00+01:00"
    assert got[5].occurred_at.isoformat() == "2024-03-05T10:00:00+00:00"
    assert got[6].occurred_at == datetime(2024, 3, 5, 10, 5, tzinfo=UTC)  # epoch ms
    assert got[3].properties and got[3].properties["url"] == "https://www.example.com/pricing"
    assert got[2].attributes == {
        "industry": "Software",
        "job_title": "Director of IT",
        "company_size": "250",
    }
    assert skips(result) == Counter({"Call": 1})
    assert rejects(result) == {9: "bad_time", 10: "missing_lead", 11: "missing_type"}


def test_hubspot_times_default_to_utc() -> None:
    got = events(outcomes(DATA / "hubspot_events.csv", "hubspot"))
    assert got[2].occurred_at.isoformat() == "2024-03-05T09:00:00+00:00"


def test_hubspot_events_api_ndjson() -> None:
    result = outcomes(DATA / "hubspot_events.ndjson", "hubspot")
    got = events(result)
    assert {line: (e.event_id, e.lead_id, e.type) for line, e in got.items()} == {
        1: ("b1f0c6a2-0001", "601", "pricing_page_view"),
        2: ("b1f0c6a2-0002", "601", "form_submit"),  # objectId as a JSON number
    }
    assert got[1].properties and got[1].properties["properties"]["hs_title"] == "Pricing"
    assert skips(result) == Counter({"pe123_custom_thing": 1})
    assert rejects(result) == {4: "bad_json", 5: "bad_time"}
    bad_time = result[5]
    assert isinstance(bad_time, Rejected) and bad_time.message.startswith("occurredAt:")


def test_a_variant_hubspot_export_is_handled_with_a_mapping(tmp_path: Path) -> None:
    export = tmp_path / "variant.csv"
    export.write_text(
        "Kontakt-ID,Aktivität,Zeitpunkt,URL\n"
        "77,Seitenaufruf,05.03.2024 09:00,https://www.example.com/pricing\n",
        encoding="utf-8",
    )
    mapping = tmp_path / "variant.yaml"
    mapping.write_text(
        "lead: Kontakt-ID\n"
        "type: Aktivität\n"
        "time: {column: Zeitpunkt, format: '%d.%m.%Y %H:%M', timezone: Europe/Berlin}\n"
        "types: {Seitenaufruf: page_view}\n"
        "refine:\n"
        "  - {source_types: [Seitenaufruf], column: URL, contains: [/pricing],"
        " type: pricing_page_view}\n",
        encoding="utf-8",
    )
    got = events(outcomes(export, "hubspot", mapping))
    assert got[2].type == "pricing_page_view" and got[2].lead_id == "77"
    assert got[2].occurred_at.isoformat() == "2024-03-05T09:00:00+01:00"
    assert got[2].source == "hubspot"


# -- generic -------------------------------------------------------------------------------------


def test_generic_mapping_sample() -> None:
    result = outcomes(DATA / "generic_webinar.csv", None, WEBINAR_MAPPING)
    got = events(result)
    assert {line: (e.lead_id, e.type) for line, e in got.items()} == {
        2: ("anna@acme.example", "webinar_registered"),
        3: ("anna@acme.example", "webinar_attended"),
        4: ("ben@beta.example", "webinar_registered"),
        8: ("cara@gamma.example", "webinar_attended"),
        9: ("anna@acme.example", "webinar_attended"),
    }
    assert got[3].occurred_at.isoformat() == "2024-03-05T14:02:00+01:00"
    assert got[3].attributes == {"industry": "Manufacturing", "company_size": "1200"}
    assert got[3].properties == {"webinar": "Lead scoring 101", "company": "Acme GmbH"}
    assert got[3].source == "webinar-platform"
    assert rejects(result) == {5: "unknown_type", 6: "missing_lead", 7: "bad_time"}
    unknown = result[5]
    assert isinstance(unknown, Rejected) and "'No show'" in unknown.message
    assert not skips(result)


def test_unmapped_types_can_be_skipped_instead(tmp_path: Path) -> None:
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        WEBINAR_MAPPING.read_text().replace("unmapped: reject", "unmapped: skip"), "utf-8"
    )
    result = outcomes(DATA / "generic_webinar.csv", "generic", mapping)
    assert skips(result) == Counter({"No show": 1})
    assert 5 not in rejects(result)


def test_timezone_option_overrides_the_mapping() -> None:
    got = events(outcomes(DATA / "generic_webinar.csv", None, WEBINAR_MAPPING, "Asia/Tokyo"))
    assert got[3].occurred_at.isoformat() == "2024-03-05T14:02:00+09:00"


def test_default_type_for_an_export_of_one_kind(tmp_path: Path) -> None:
    export = tmp_path / "downloads.csv"
    export.write_text("lead,at\nL1,2024-03-05T10:00:00+02:00\n", encoding="utf-8")
    mapping = {"lead": "lead", "time": "at", "default_type": "download"}
    got = events(outcomes(export, "generic", mapping))
    assert got[2].type == "download" and got[2].event_id.startswith("imp-")


# -- event ids -------------------------------------------------------------------------------------


def test_derived_ids_are_stable_across_reimports_and_overlapping_exports() -> None:
    first = events(outcomes(DATA / "generic_webinar.csv", None, WEBINAR_MAPPING))
    again = events(outcomes(DATA / "generic_webinar.csv", None, WEBINAR_MAPPING))
    later = events(outcomes(DATA / "generic_webinar_later.csv", None, WEBINAR_MAPPING))
    assert {k: e.event_id for k, e in first.items()} == {k: e.event_id for k, e in again.items()}
    # The later export has its columns in another order; the overlapping rows get the same ids.
    assert later[2].event_id == first[3].event_id  # anna attended 5 March
    assert later[3].event_id == first[8].event_id  # cara watched the recording
    assert first[9].event_id == first[3].event_id  # a repeated row within the file
    ids = [e.event_id for e in first.values()] + [e.event_id for e in later.values()]
    assert len(set(ids)) == 6  # 4 distinct + 2 new in the later export


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


def test_same_row_same_id_and_any_other_value_changes_it() -> None:
    base = _id(ROW)
    assert base == _id(dict(ROW)) == _id(dict(reversed(list(ROW.items()))))
    assert base == _id({**ROW, "Company": " Acme GmbH "})  # surrounding blanks do not count
    for column, other in [
        ("Email", "ben@beta.example"),
        ("Action", "Registered"),
        ("Date", "05.03.2024 14:03"),
        ("Company", "Acme AG"),
        ("Webinar", "Pipeline reviews"),
    ]:
        assert _id({**ROW, column: other}) != base, column


def test_derived_id_uses_the_instant_not_how_it_was_written() -> None:
    c = _webinar_compiled()
    rest = {k: v for k, v in ROW.items() if k not in ("Email", "Date")}
    berlin = parse_time("05.03.2024 14:02", ["%d.%m.%Y %H:%M"], c.tz)
    utc = parse_time("2024-03-05T13:02:00Z", ["iso"], UTC)
    lead, kind = "anna@acme.example", "webinar_attended"
    assert derive_event_id(c, rest, lead, kind, berlin) == derive_event_id(c, rest, lead, kind, utc)
    other = dataclasses.replace(c, name="another-platform")
    assert derive_event_id(other, rest, lead, kind, utc) != derive_event_id(
        c, rest, lead, kind, utc
    )


def test_marketo_ids_are_the_marketo_guid_and_prefix_is_optional() -> None:
    got = events(outcomes(DATA / "marketo_activities.csv", "marketo", {"event_id_prefix": "mkto-"}))
    assert got[2].event_id == "mkto-60001"


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


# -- the import loop (dry run) and the rejected file ----------------------------------------------


def test_dry_run_summary_and_rejected_file(tmp_path: Path) -> None:
    path = tmp_path / "marketo.csv"
    shutil.copy(DATA / "marketo_activities.csv", path)
    summary = dry_run(path, "marketo")
    assert (summary.rows, summary.mapped, summary.duplicates, summary.produced) == (20, 10, 1, 0)
    assert sum(summary.skipped.values()) == 4
    assert summary.rejected == Counter(
        bad_time=1, missing_lead=1, bad_json=1, missing_type=1, bad_row=1
    )
    assert summary.rows == (
        summary.mapped
        + summary.duplicates
        + sum(summary.skipped.values())
        + sum(summary.rejected.values())
    )
    assert summary.rejected_file == rejected_path(path) == tmp_path / "marketo.csv.rejected.csv"
    with summary.rejected_file.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    header = (DATA / "marketo_activities.csv").read_text().splitlines()[0].split(",")
    assert list(rows[0]) == [*header, ERROR_COLUMN, LINE_COLUMN]
    assert [(r[LINE_COLUMN], r[ERROR_COLUMN].split(":")[0]) for r in rows] == [
        ("16", "bad_time"),
        ("17", "missing_lead"),
        ("18", "bad_json"),
        ("19", "missing_type"),
        ("21", "bad_row"),
    ]
    assert (
        rows[0]["marketoGUID"] == "60015" and rows[2]["attributes"] == '{"Webpage URL": /pricing}'
    )


def test_a_clean_run_removes_a_stale_rejected_file(tmp_path: Path) -> None:
    path = tmp_path / "later.csv"
    shutil.copy(DATA / "marketo_activities_later.csv", path)
    rejected_path(path).write_text("stale\n")
    summary = dry_run(path, "marketo")
    assert summary.rejected_file is None and not rejected_path(path).exists()
    assert (summary.rows, summary.mapped, sum(summary.skipped.values())) == (6, 5, 1)


def test_fixed_rejected_rows_can_be_imported_again_with_the_same_ids(tmp_path: Path) -> None:
    path = tmp_path / "webinar.csv"
    shutil.copy(DATA / "generic_webinar.csv", path)
    dry_run(path, None, WEBINAR_MAPPING)
    rejected = rejected_path(path)
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(rejected.read_text().replace("2024-03-05;", "05.03.2024 14:02;"), "utf-8")
    again = events(outcomes(fixed, None, WEBINAR_MAPPING))
    assert len(again) == 1  # the other two rejects are still wrong
    (fixed_event,) = again.values()
    # The leadflow_error and leadflow_line columns do not enter the derived id.
    as_exported = dict(
        ROW, Email="cara@gamma.example", Company="Gamma SE", Industry="Software", Employees="3000"
    )
    assert fixed_event.event_id == _id(as_exported)


# -- mapping errors name the key -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"lead": "a", "time": {"column": "t", "fromat": "iso"}, "default_type": "download"},
         "time.fromat"),
        ({"lead": "a", "time": {"column": "t", "format": "dd.mm"}, "default_type": "download"},
         "time.format"),
        ({"lead": "a", "time": {"column": "t", "timezone": "Mars/Base"},
          "default_type": "download"}, "time.timezone"),
        ({"time": "t", "default_type": "download"}, "lead"),
        ({"lead": "a", "time": "t", "type": "k", "types": {"x": "download"}, "unmapped": "drop"},
         "unmapped"),
        ({"lead": "a", "time": "t", "type": "k", "types": {"x": "download"},
          "refine": [{"column": "c", "contains": ["a"], "equals": ["b"], "type": "download"}]},
         "refine[0]"),
        ({"lead": "a", "time": "t", "type": "k", "types": {"x": "download"}, "colour": 1},
         "colour"),
    ],
)  # fmt: skip
def test_mapping_errors_name_the_key(mapping: dict[str, Any], key: str) -> None:
    with pytest.raises(MappingError) as err:
        load_mapping("generic", mapping)
    assert f"'{key}'" in str(err.value) or key in str(err.value)


def test_an_event_type_that_leadflow_does_not_know_names_the_key() -> None:
    mapping = load_mapping(
        "generic", {"lead": "a", "time": "t", "type": "k", "types": {"Registered": "webinar_reg"}}
    )
    with pytest.raises(MappingError, match=r"'types\.Registered'.*'webinar_reg'"):
        compile_mapping(mapping, KNOWN)
    with pytest.raises(MappingError, match="'default_type'"):
        compile_mapping(load_mapping("generic", {"lead": "a", "time": "t",
                                                 "default_type": "nope"}), KNOWN)  # fmt: skip


def test_a_required_column_missing_from_the_file_names_the_key() -> None:
    mapping = load_mapping("marketo", {"lead": "Lead ID"})
    with pytest.raises(MappingError, match=r"'lead'.*'Lead ID'.*leadId"):
        outcomes(DATA / "marketo_activities.csv", "marketo", {"lead": "Lead ID"})
    assert mapping.lead == ("Lead ID",)


def test_profile_and_option_errors() -> None:
    with pytest.raises(MappingError, match=r"--profile.*'salesforce'"):
        load_mapping("salesforce")
    with pytest.raises(MappingError, match="--mapping"):
        load_mapping("generic")
    with pytest.raises(MappingError, match="--profile"):
        load_mapping(None)
    with pytest.raises(MappingError, match=r"--timezone.*'Mars/Base'"):
        compile_mapping(load_mapping("marketo"), KNOWN, timezone="Mars/Base")


def test_builtin_profiles_are_valid_for_the_contract_types() -> None:
    for profile in ("marketo", "hubspot"):
        mapping = load_mapping(profile)
        assert isinstance(mapping, ImportMapping)
        compile_mapping(mapping, KNOWN_EVENT_TYPES)


# -- the command -----------------------------------------------------------------------------------


def test_import_command_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "hubspot.csv"
    shutil.copy(DATA / "hubspot_events.csv", path)
    result = CliRunner(env=ENV).invoke(
        app, ["import", str(path), "--profile", "hubspot", "--dry-run", "--timezone", "UTC"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dry run" in text and "would be produced │ 6" in text
    assert "rejected │ 3" in text and "skipped (type not imported) │ 1" in text
    assert str(rejected_path(path)) in text


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--profile", "salesforce"], "'salesforce'"),
        (["--profile", "generic"], "--mapping"),
        (["--profile", "marketo", "--timezone", "Berlin"], "--timezone"),
    ],
)
def test_import_command_bad_options_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    path = tmp_path / "m.csv"
    shutil.copy(DATA / "marketo_activities.csv", path)
    result = CliRunner(env=ENV).invoke(app, ["import", str(path), "--dry-run", *args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and expected in result.output
    assert "Traceback" not in result.output


def test_import_command_bad_mapping_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "w.csv"
    shutil.copy(DATA / "generic_webinar.csv", path)
    mapping = tmp_path / "bad.yaml"
    mapping.write_text(WEBINAR_MAPPING.read_text().replace("Attended:", "Atended: x\n  Foo:"))
    result = CliRunner(env=ENV).invoke(app, ["import", str(path), "--mapping", str(mapping)])
    assert result.exit_code == 2, result.output
    assert "types." in result.output
    assert not rejected_path(path).exists()  # nothing was read


# -- producing: bounded in-flight sends, a refused record stops the import ------------------------


class FakeProducer:
    """Stands in for AIOKafkaProducer: each send is acknowledged (or refused) a loop turn later."""

    def __init__(self, sink: KafkaSink, refuse_from: int | None = None) -> None:
        self.sink = sink
        self.refuse_from = refuse_from
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.peak = 0

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self.sent.append((key, value))
        self.peak = max(self.peak, self.sink.in_flight)
        if self.refuse_from is not None and len(self.sent) >= self.refuse_from:
            loop.call_soon(future.set_exception, RuntimeError("broker said no"))
        else:
            loop.call_soon(future.set_result, None)
        return future

    async def flush(self) -> None:
        await asyncio.sleep(0)


def produce_with(
    tmp_path: Path, max_in_flight: int, refuse_from: int | None = None
) -> tuple[ImportSummary, FakeProducer]:
    path = tmp_path / "m.csv"
    shutil.copy(DATA / "marketo_activities.csv", path)
    settings = load_settings(namespace="unit", rules=TEST_RULES)

    async def run() -> tuple[ImportSummary, FakeProducer]:
        sink = KafkaSink(settings, max_in_flight=max_in_flight)
        fake = FakeProducer(sink, refuse_from)
        sink.producer = fake
        with path.open("rb") as fh:
            reader, compiled = prepare(path, fh, load_mapping("marketo"), KNOWN)
            summary = ImportSummary(path, "marketo", sink.topic)
            rejects = RejectWriter(rejected_path(path), reader.header, ",")
            return await run_rows(reader, compiled, summary, rejects, sink), fake

    return asyncio.run(run())


def test_sends_in_flight_are_bounded_and_every_record_is_acknowledged(tmp_path: Path) -> None:
    summary, fake = produce_with(tmp_path, max_in_flight=2)
    assert fake.peak <= 2
    assert summary.produced == summary.mapped == len(fake.sent) == 10
    assert all(key == orjson.loads(value)["lead_id"].encode() for key, value in fake.sent)
    assert summary.failure is None


def test_a_refused_record_stops_the_import_with_a_failure(tmp_path: Path) -> None:
    summary, fake = produce_with(tmp_path, max_in_flight=1, refuse_from=3)
    assert summary.failure is not None and "broker said no" in summary.failure
    assert "run the same import again" in summary.failure
    assert summary.produced == 2 and len(fake.sent) == 3
    assert summary.rows < 20  # it stopped reading
