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
    path = tmp_path / "pardot.json"
    shutil.copy(DATA / "pardot_visitor_activities.json", path)
    result = CliRunner(env=ENV).invoke(
        app, ["import", str(path), "--profile", "pardot", "--dry-run"]
    )
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "dry run" in text and "would be produced 7" in text
    assert "rejected 1" in text and "skipped (type not imported) 2" in text
    assert str(rejected_path(path)) in text


def test_import_command_dry_run_json(tmp_path: Path) -> None:
    path = tmp_path / "email-events.json"
    shutil.copy(DATA / "hubspot_email_events.json", path)
    args = ["--profile", "hubspot-email-events", "--dry-run", "--json"]
    result = CliRunner(env=ENV).invoke(
        app, ["import", str(path), *args, "--identity", str(DATA / "hubspot_contacts.csv")]
    )
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)  # one JSON object; the progress bar is on stderr
    assert body["dry_run"] is True and body["topic"] is None
    assert body["profile"] == "hubspot-email-events"
    assert (body["mapped"], body["produced"]) == (3, 0)
    assert body["rejected"] == {"unknown_identity": 1}
    assert sum(body["skipped"].values()) == 5
    assert body["rejected_file"] == str(rejected_path(path))
    assert body["path"] == str(path) and body["failure"] is None
    with rejected_path(path).open(encoding="utf-8") as fh:
        rejected = fh.read()
    assert "dora@delta.example" in rejected and "unknown_identity" in rejected


def test_the_email_events_profile_needs_an_identity_map(tmp_path: Path) -> None:
    path = tmp_path / "email-events.json"
    shutil.copy(DATA / "hubspot_email_events.json", path)
    runner = CliRunner(env=ENV)
    result = runner.invoke(
        app, ["import", str(path), "--profile", "hubspot-email-events", "--dry-run"]
    )
    assert result.exit_code == 2
    assert "--identity" in result.output and "recipient" in result.output
    missing = runner.invoke(
        app, ["import", str(path), "--profile", "hubspot-email-events", "--identity", "nope.csv"]
    )
    assert missing.exit_code == 2 and "--identity: no file nope.csv" in missing.output
    pardot = tmp_path / "pardot.json"
    shutil.copy(DATA / "pardot_visitor_activities.json", pardot)
    contacts = str(DATA / "hubspot_contacts.csv")
    wrong = runner.invoke(
        app, ["import", str(pardot), "--profile", "pardot", "--identity", contacts]
    )
    assert wrong.exit_code == 2 and "--identity: the pardot mapping reads lead ids" in wrong.output


def test_marketo_renamed_headers_from_the_columnheadernames_object(tmp_path: Path) -> None:
    path = tmp_path / "extract.tsv"
    shutil.copy(DATA / "marketo_activities_renamed.tsv", path)
    runner = CliRunner(env=ENV)
    base = ["import", str(path), "--profile", "marketo", "--dry-run", "--json"]
    without = runner.invoke(app, base)
    assert without.exit_code == 2 and "'leadId'" in without.output and "Lead ID" in without.output
    names = str(DATA / "marketo_header_names.json")
    for given in (names, (DATA / "marketo_header_names.json").read_text()):
        result = runner.invoke(app, [*base, "--header-names", given])
        assert result.exit_code == 0, result.output
        body = orjson.loads(result.stdout)
        assert (body["mapped"], body["skipped"], body["rejected"]) == (4, {"6 (Send Email)": 1}, {})
    bad = runner.invoke(app, [*base, "--header-names", '{"leadId": 5}'])
    assert bad.exit_code == 2 and "--header-names" in bad.output


def test_help_documents_the_new_options() -> None:
    result = CliRunner(env=ENV).invoke(app, ["import", "--help"])
    text = " ".join(result.output.split())
    for option in ("--identity", "--save-identity", "--header-names", "hubspot-contacts", "mautic"):
        assert option in text


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


def test_save_identity_needs_an_email_column_and_a_real_run(tmp_path: Path) -> None:
    contacts = tmp_path / "contacts.csv"
    shutil.copy(DATA / "hubspot_contacts.csv", contacts)
    runner = CliRunner(env=ENV)
    dry = runner.invoke(
        app,
        ["import", str(contacts), "--profile", "hubspot-contacts", "--save-identity", "--dry-run"],
    )
    assert dry.exit_code == 2 and "--save-identity: a dry run saves nothing" in dry.output
    pardot = tmp_path / "pardot.json"
    shutil.copy(DATA / "pardot_visitor_activities.json", pardot)
    no_email = runner.invoke(app, ["import", str(pardot), "--profile", "pardot", "--save-identity"])
    assert no_email.exit_code == 2 and "names no e-mail column" in no_email.output
