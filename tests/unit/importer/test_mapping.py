"""`leadflow import`: mapping, profile and option errors name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.engagement import KNOWN_EVENT_TYPES
from streams.importer.compile import compile_mapping
from streams.importer.identity import EmailIdentities
from streams.importer.mapping import (
    PROFILES,
    ImportMapping,
    MappingError,
    load_mapping,
    override_warnings,
)
from tests.unit.importer.samples import DATA, KNOWN, events, outcomes

pytestmark = pytest.mark.unit


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
    for profile in PROFILES[:-1]:
        mapping = load_mapping(profile)
        assert isinstance(mapping, ImportMapping) and mapping.name == profile
        identities = EmailIdentities({}, "test") if mapping.lead_from == "email" else None
        compile_mapping(mapping, KNOWN_EVENT_TYPES, identities=identities)


# -- overrides on top of a profile ------------------------------------------------------------

# The override docs/importer.md showed before it warned: its refine list leaves out the
# profile's two webinar rules and the Webpage URL fallback of the pricing rule.
LOSSY_OVERRIDE: dict[str, Any] = {
    "types": {3: "page_view", 11: None},
    "refine": [
        {
            "source_types": [1],
            "column": "primaryAttributeValue",
            "contains": ["/pricing", "/plans"],
            "type": "pricing_page_view",
        },
        {
            "source_types": [2],
            "column": "primaryAttributeValue",
            "contains": ["demo"],
            "type": "demo_request",
        },
    ],
}


def docs_override() -> dict[str, Any]:
    """The example override of docs/importer.md, as printed there."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "importer.md").read_text()
    block = text.split("Example override (`--profile marketo")[1].split("```yaml\n")[1]
    data = yaml.safe_load(block.split("```")[0])
    assert isinstance(data, dict)
    return data


def test_a_refine_list_that_drops_profile_rules_warns_about_each() -> None:
    warnings = override_warnings("marketo", LOSSY_OVERRIDE)
    assert len(warnings) == 3
    assert sum("source types [104]" in w for w in warnings) == 2
    fallback = [w for w in warnings if "pricing_page_view" in w]
    assert len(fallback) == 1 and "no longer reads attributes.Webpage URL" in fallback[0]
    webinar = [w for w in warnings if "source types [104]" in w]
    assert all("copy it from streams/importer/profiles/marketo.yaml" in w for w in webinar)
    # What the warnings are about: the webinar rows of the sample export are lost with it.
    sample = DATA / "marketo_activities.csv"
    lossy = {e.type for e in events(outcomes(sample, "marketo", LOSSY_OVERRIDE)).values()}
    assert not {"webinar_registered", "webinar_attended"} & lossy


def test_the_documented_override_keeps_the_profile_rules() -> None:
    override = docs_override()
    assert override_warnings("marketo", override) == []
    sample = DATA / "marketo_activities.csv"
    kept = events(outcomes(sample, "marketo", override))
    # Lines 11 and 12 are the webinar registration and attendance of lead 1003.
    assert (kept[11].type, kept[12].type) == ("webinar_registered", "webinar_attended")


def test_no_warning_without_a_refine_override_or_a_profile() -> None:
    assert override_warnings("marketo", {"types": {3: "page_view"}}) == []
    assert override_warnings("marketo", None) == []
    assert override_warnings(None, {"refine": []}) == []
