"""`leadflow import`: the import loop (dry run) and the rejected file."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import pytest

from streams.importer.compile import ERROR_COLUMN, LINE_COLUMN
from streams.importer.rejects import rejected_path
from tests.unit.importer.samples import DATA, ROW, WEBINAR_MAPPING, _id, dry_run, events, outcomes

pytestmark = pytest.mark.unit


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
