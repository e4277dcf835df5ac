"""`leadflow import`: each profile on its vendor-shaped sample: rows mapped, skipped or rejected."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.importer.contacts import identities_from_file
from streams.importer.identity import EmailIdentities
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


# -- marketo as the extract writes it ----------------------------------------------------------


def test_marketo_tsv_with_renamed_headers_nulls_and_standard_labels() -> None:
    names = {
        "marketoGUID": "Activity ID",
        "leadId": "Lead ID",
        "activityDate": "Activity Date",
        "activityTypeId": "Activity Type ID",
    }
    result = outcomes(DATA / "marketo_activities_renamed.tsv", "marketo", {"header_names": names})
    got = events(result)
    assert {line: (e.event_id, e.lead_id, e.type) for line, e in got.items()} == {
        2: ("70001", "2001", "profile_updated"),
        3: ("70002", "2001", "pricing_page_view"),
        4: ("70003", "2001", "form_submit"),
        5: ("70004", "2002", "profile_updated"),
    }
    assert got[2].attributes == {"company_size": "1200"}  # "Num Employees", the standard label
    assert got[5].attributes == {"annual_revenue": "5000000"}
    # `null` is empty: no campaign id "null", and an `attributes` of null is not bad JSON
    assert got[3].properties is not None and "campaign_id" not in got[3].properties
    assert "attributes" not in got[3].properties
    assert got[4].properties is not None and got[4].properties["campaign_id"] == "2001"
    assert skips(result) == Counter({"6 (Send Email)": 1})
    assert rejects(result) == {}


def test_marketo_delimiter_is_read_from_the_header(tmp_path: Path) -> None:
    header = "marketoGUID;leadId;activityDate;activityTypeId;campaignId;attributes\n"
    export = tmp_path / "extract.ssv"
    export.write_text(header + "1;7;2024-04-01T09:00:00Z;10;null;null\n", encoding="utf-8")
    got = events(outcomes(export, "marketo"))
    assert [(e.event_id, e.lead_id, e.type) for e in got.values()] == [("1", "7", "email_open")]


# -- hubspot -------------------------------------------------------------------------------------

HUBSPOT_EVENTS = {
    1: ("leviathan-be3335d3-46f1-3985-988e-ff38e6e7b9d8", "208451632", "page_view"),
    2: ("leviathan-0d6c2a41-6d1e-3a4b-9a53-5f1a4c0e2b11", "208451632", "pricing_page_view"),
    3: ("1f3c9f0e-2b7a-4d35-8c3e-6f3b0e9d1a22", "208451632", "form_submit"),
    4: ("5c2d7e4f-3a1b-4c2d-9e8f-7a6b5c4d3e33", "208451633", "webinar_registered"),
    5: ("8e9f0a1b-4c5d-4e6f-8a9b-0c1d2e3f4a44", "208451633", "webinar_attended"),
}


@pytest.mark.parametrize("name", ["hubspot_events_page.json", "hubspot_events_results.ndjson"])
def test_hubspot_events_api_page_or_ndjson(name: str) -> None:
    result = outcomes(DATA / name, "hubspot-events")
    got = events(result)
    assert {n: (e.event_id, e.lead_id, e.type) for n, e in got.items()} == HUBSPOT_EVENTS
    # HubSpot's own example object has epoch milliseconds; the API reference says ISO 8601
    assert got[1].occurred_at == datetime(2019, 9, 1, 22, 38, 21, 421000, tzinfo=UTC)
    assert got[2].occurred_at == datetime(2019, 9, 1, 22, 40, 12, tzinfo=UTC)
    assert got[1].properties and got[1].properties["url"] == "https://some-website.com/"
    assert got[1].properties["properties"]["hs_session_source"] == "DIRECT"
    # a company's event is not a lead's; a custom event is not scored
    assert skips(result) == Counter({"objectType COMPANY": 1, "pe1234567_login_event": 1})
    assert rejects(result) == {}


def test_hubspot_email_events_resolve_the_recipient_through_the_identity_map() -> None:
    identities = identities_from_file(DATA / "hubspot_contacts.csv")
    assert len(identities) == 3
    result = outcomes(
        DATA / "hubspot_email_events.json", "hubspot-email-events", identities=identities
    )
    got = events(result)
    assert {n: (e.event_id, e.lead_id, e.type) for n, e in got.items()} == {
        3: ("4f0b6e1c-0003-4e8a-9c1d-2b3a4c5d6e03", "101", "email_open"),
        5: ("4f0b6e1c-0005-4e8a-9c1d-2b3a4c5d6e05", "101", "email_click"),
        7: ("4f0b6e1c-0007-4e8a-9c1d-2b3a4c5d6e07", "102", "opt_out"),  # BEN@beta = Ben@Beta
    }
    assert got[3].occurred_at == datetime(2024, 3, 5, 10, 5, tzinfo=UTC)  # created, epoch ms
    assert got[5].properties and got[5].properties["url"] == "https://www.example.com/pricing"
    assert skips(result) == Counter(
        {
            "SENT": 1,
            "DELIVERED": 1,
            "BOUNCE": 1,
            "filteredEvent true": 1,
            "STATUSCHANGE (subscription change, not a portal-wide unsubscribe)": 1,
        }
    )
    assert rejects(result) == {9: "unknown_identity"}
    unknown = result[9]
    assert isinstance(unknown, Rejected) and "'dora@delta.example'" in unknown.message


def test_an_address_is_never_given_an_invented_lead() -> None:
    empty = EmailIdentities({}, "empty.csv")
    result = outcomes(DATA / "hubspot_email_events.json", "hubspot-email-events", identities=empty)
    assert not events(result)
    assert Counter(rejects(result).values()) == Counter({"unknown_identity": 4})


CONTACT_ATTRIBUTES = {
    "industry": "Manufacturing",
    "job_title": "VP Engineering",
    "company_size": "1200",
    "annual_revenue": "50000000",
    "country": "Germany",
    "company": "Acme GmbH",
    "lifecycle_stage": "Lead",
}


def test_hubspot_contacts_export_in_english() -> None:
    result = outcomes(DATA / "hubspot_contacts.csv", "hubspot-contacts", timezone="Europe/Berlin")
    got = events(result)
    assert {n: (e.lead_id, e.type) for n, e in got.items()} == {
        2: ("101", "profile_updated"),
        3: ("102", "profile_updated"),
        4: ("103", "profile_updated"),
    }
    assert got[2].attributes == CONTACT_ATTRIBUTES
    assert got[2].occurred_at.isoformat() == "2024-03-05T10:15:00+01:00"  # Last Modified Date
    assert got[4].attributes == {"lifecycle_stage": "Subscriber"}
    assert all(e.event_id.startswith("imp-") for e in got.values())
    assert not skips(result) and not rejects(result)


def test_hubspot_contacts_export_in_japanese() -> None:
    got = events(outcomes(DATA / "hubspot_contacts_ja.csv", "hubspot-contacts"))
    assert {n: (e.lead_id, e.type) for n, e in got.items()} == {
        2: ("201", "profile_updated"),
        3: ("202", "profile_updated"),
    }
    assert got[2].attributes == {
        "industry": "製造業",
        "job_title": "部長",
        "company_size": "300",
        "country": "日本",
        "company": "山田製作所",
        "lifecycle_stage": "リード",
    }
    assert got[2].occurred_at.isoformat() == "2024-03-05T10:15:00+00:00"
    ja = identities_from_file(DATA / "hubspot_contacts_ja.csv")
    assert ja.lead_for(" Hanako@Yamada.example ") == "201"


def test_hubspot_contacts_export_as_xlsx(tmp_path: Path) -> None:
    import csv

    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    with (DATA / "hubspot_contacts.csv").open(encoding="utf-8") as fh:
        for n, row in enumerate(csv.reader(fh)):
            # Excel keeps numbers as numbers and dates as dates
            cells: list[object] = list(row)
            if n:
                cells[0] = int(row[0])
                cells[6] = int(row[6]) if row[6] else None
                cells[12] = datetime.fromisoformat(row[12])
            sheet.append(cells)
    export = tmp_path / "contacts.xlsx"
    book.save(export)
    got = events(outcomes(export, "hubspot-contacts"))
    assert {n: e.lead_id for n, e in got.items()} == {2: "101", 3: "102", 4: "103"}
    assert got[2].attributes == CONTACT_ATTRIBUTES
    assert got[2].occurred_at == datetime(2024, 3, 5, 10, 15, tzinfo=UTC)
    assert identities_from_file(export).lead_for("ben@beta.example") == "102"


def test_a_variant_export_is_handled_with_a_mapping(tmp_path: Path) -> None:
    export = tmp_path / "variant.csv"
    export.write_text(
        "Kontakt-ID,Aktivität,Zeitpunkt,URL\n"
        "77,Seitenaufruf,05.03.2024 09:00,https://www.example.com/pricing\n",
        encoding="utf-8",
    )
    mapping = tmp_path / "variant.yaml"
    mapping.write_text(
        "name: crm-de\n"
        "lead: Kontakt-ID\n"
        "type: Aktivität\n"
        "time: {column: Zeitpunkt, format: '%d.%m.%Y %H:%M', timezone: Europe/Berlin}\n"
        "types: {Seitenaufruf: page_view}\n"
        "refine:\n"
        "  - {source_types: [Seitenaufruf], column: URL, contains: [/pricing],"
        " type: pricing_page_view}\n",
        encoding="utf-8",
    )
    got = events(outcomes(export, None, mapping))
    assert got[2].type == "pricing_page_view" and got[2].lead_id == "77"
    assert got[2].occurred_at.isoformat() == "2024-03-05T09:00:00+01:00"
    assert got[2].source == "crm-de"


# -- account engagement (pardot) and mautic --------------------------------------------------------


def test_pardot_visitor_activities_v5_page() -> None:
    result = outcomes(DATA / "pardot_visitor_activities.json", "pardot")
    got = events(result)
    assert {n: (e.event_id, e.lead_id, e.type) for n, e in got.items()} == {
        1: ("pardot-1001", "5001", "pricing_page_view"),
        2: ("pardot-1002", "5001", "form_submit"),
        4: ("pardot-1004", "5002", "email_open"),
        5: ("pardot-1005", "5002", "email_click"),
        6: ("pardot-1006", "5003", "webinar_registered"),
        7: ("pardot-1007", "5003", "webinar_attended"),
        8: ("pardot-1008", "5002", "opt_out"),
    }
    assert got[1].occurred_at.isoformat() == "2026-11-02T09:00:00-05:00"
    assert got[2].properties and got[2].properties["type_name"] == "Success"
    assert skips(result) == Counter({"6 (Sent)": 1, "20 (Visit)": 1})
    assert rejects(result) == {9: "missing_lead"}  # a visitor who is not a prospect yet


def test_mautic_activity_for_all_contacts() -> None:
    result = outcomes(DATA / "mautic_activity.json", "mautic")
    got = events(result)
    assert {n: (e.event_id, e.lead_id, e.type) for n, e in got.items()} == {
        2: ("mautic-webinar.attended67", "12180", "webinar_attended"),
        3: ("mautic-webinar.registered66", "12180", "webinar_registered"),
        6: ("mautic-email.read769", "13930", "email_open"),
        8: ("mautic-form.submitted503", "16417", "form_submit"),
        9: (got[9].event_id, "16380", "page_view"),  # the example's page.hit has no eventId
    }
    assert got[9].event_id.startswith("imp-")
    assert got[9].properties
    assert got[9].properties["url"] == "http://mautic.dev/uncategorized/translation-test1"
    assert skips(result) == Counter(
        {
            "meeting.attended (Attended meeting)": 1,
            "campaign.event (Campaign action triggered)": 1,
            "email.sent (Email sent)": 1,
            "lead.ipadded (Accessed from IP)": 1,
            "point.gained (Point gained)": 1,
            "lead.imported (Imported)": 1,
        }
    )
    assert rejects(result) == {12: "missing_lead"}  # the example's asset.download has no contact


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


def test_a_contacts_export_in_another_language_with_the_documented_mapping(tmp_path: Path) -> None:
    import yaml

    text = (DATA.parents[2] / "docs" / "importer.md").read_text(encoding="utf-8")
    block = text.split("--profile hubspot-contacts --mapping hubspot-de.yaml\n")[1].split("```")[0]
    mapping = yaml.safe_load(block)
    export = tmp_path / "kontakte.csv"
    export.write_text(
        "Datensatz-ID,Vorname,E-Mail,Branche,Jobtitel,Anzahl der Mitarbeiter,Zuletzt geändert am\n"
        "301,Jonas,jonas@example.de,Maschinenbau,CTO,800,05.03.2024 10:15\n",
        encoding="utf-8",
    )
    got = events(outcomes(export, "hubspot-contacts", mapping))
    assert got[2].lead_id == "301" and got[2].type == "profile_updated"
    assert got[2].attributes == {
        "industry": "Maschinenbau",
        "job_title": "CTO",
        "company_size": "800",
    }
    assert got[2].occurred_at.isoformat() == "2024-03-05T10:15:00+01:00"


def test_marketos_own_documented_example_rows() -> None:
    """The four rows of the example file in Marketo's "Bulk Activity Extract" page (copied as
    published; docs/importer.md, "Sources"): Change Status in Progression (104) of two
    programs. "Attended" is a webinar attendance; "On List" and "Member" are not statuses the
    profile maps, so those rows are skipped, not rejected."""
    result = outcomes(DATA / "marketo_documented_example.csv", "marketo")
    got = events(result)
    assert {line: (e.event_id, e.lead_id, e.type) for line, e in got.items()} == {
        3: ("783958220", "5414094", "webinar_attended"),
        4: ("783958306", "5414094", "webinar_attended"),
    }
    assert got[3].occurred_at == datetime(2022, 2, 13, 14, 8, 50, tzinfo=UTC)
    assert sum(skips(result).values()) == 2
    assert rejects(result) == {}
