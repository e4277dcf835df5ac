"""`leadflow import` as a command: the dry-run summary and the exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.importer.rejects import rejected_path
from tests.unit.importer.samples import DATA, ENV, WEBINAR_MAPPING

pytestmark = pytest.mark.unit


# -- the command -----------------------------------------------------------------------------------


def test_import_command_dry_run(tmp_path: Path) -> None:
    path = tmp_path / "hubspot.csv"
    shutil.copy(DATA / "hubspot_events.csv", path)
    result = CliRunner(env=ENV).invoke(
        app, ["import", str(path), "--profile", "hubspot", "--dry-run", "--timezone", "UTC"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dry run" in text and "would be produced 6" in text
    assert "rejected 3" in text and "skipped (type not imported) 1" in text
    assert str(rejected_path(path)) in text


def test_import_command_dry_run_json(tmp_path: Path) -> None:
    path = tmp_path / "hubspot.csv"
    shutil.copy(DATA / "hubspot_events.csv", path)
    result = CliRunner(env=ENV).invoke(
        app,
        ["import", str(path), "--profile", "hubspot", "--dry-run", "--timezone", "UTC", "--json"],
    )
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)  # one JSON object; the progress bar is on stderr
    assert body["dry_run"] is True and body["topic"] is None and body["profile"] == "hubspot"
    assert (body["mapped"], body["produced"]) == (6, 0)
    assert sum(body["rejected"].values()) == 3 and sum(body["skipped"].values()) == 1
    assert body["rejected_file"] == str(rejected_path(path))
    assert body["path"] == str(path) and body["failure"] is None


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


def test_an_override_that_drops_profile_rules_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "marketo.csv"
    shutil.copy(DATA / "marketo_activities.csv", path)
    mapping = tmp_path / "ours.yaml"
    mapping.write_text(
        "refine:\n"
        "  - {source_types: [1], column: primaryAttributeValue, contains: [/pricing],"
        " type: pricing_page_view}\n"
    )
    args = ["import", str(path), "--profile", "marketo", "--mapping", str(mapping), "--dry-run"]
    plain = CliRunner(env=ENV).invoke(app, args)
    assert plain.exit_code == 0, plain.output
    lines = [line for line in plain.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 3  # the two webinar rules, and the pricing rule's URL fallback
    as_json = CliRunner(env=ENV).invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert orjson.loads(as_json.stdout)["warnings"] == [
        line.removeprefix("warning: ") for line in lines
    ]
