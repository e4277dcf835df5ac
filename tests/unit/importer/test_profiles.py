"""`leadflow import`: each profile on its sample export: rows mapped, skipped or rejected."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.importer.rows import Mapped, Rejected
from tests.unit.importer.samples import (
    DATA,
    WEBINAR_MAPPING,
    events,
    outcomes,
    rejects,
    skips,
    worker_accepts,
)

pytestmark = pytest.mark.unit


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
