"""`leadflow import`: event ids are the export's own or derived from the row, and stable."""

from __future__ import annotations

import dataclasses
from datetime import UTC

import pytest

from streams.importer.rows import derive_event_id, parse_time
from tests.unit.importer.samples import (
    DATA,
    ROW,
    WEBINAR_MAPPING,
    _id,
    _webinar_compiled,
    events,
    outcomes,
)

pytestmark = pytest.mark.unit


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
