"""`leadflow import`: what the worker would dead-letter, and what cannot be read, is rejected."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.importer.rows import Rejected
from tests.unit.importer.samples import events, outcomes, rejects

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
