"""`leadflow import`: mapping, profile and option errors name the key."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.engagement import KNOWN_EVENT_TYPES
from streams.importer.compile import compile_mapping
from streams.importer.mapping import ImportMapping, MappingError, load_mapping
from tests.unit.importer.samples import DATA, KNOWN, outcomes

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
    for profile in ("marketo", "hubspot"):
        mapping = load_mapping(profile)
        assert isinstance(mapping, ImportMapping)
        compile_mapping(mapping, KNOWN_EVENT_TYPES)
