"""The `leadflow` command line: help everywhere, rules check, schema check, sample data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from typer.testing import CliRunner

from schemas.engagement import EngagementEvent
from streams.cli import app
from streams.core.rules import Rules, load_rules
from streams.jobs.sample import generate
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement

pytestmark = pytest.mark.unit

# Wide enough that Rich never wraps a path or a field name in the middle.
ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def subcommands(command: Any) -> dict[str, Any]:
    """The sub-commands of a group (Typer vendors click, so go by the attribute)."""
    return dict(getattr(command, "commands", None) or {})


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command of the app, found by walking the command tree."""
    paths = [prefix]
    for name, sub in sorted(subcommands(command).items()):
        paths += command_paths(sub, (*prefix, name))
    return paths


COMMANDS = command_paths(typer.main.get_command(app))


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=ENV)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_the_app_has_the_documented_commands() -> None:
    names = {" ".join(path) for path in COMMANDS}
    assert {
        "rules check",
        "schemas generate",
        "sample generate",
        "worker",
        "topics create",
    } <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "leadflow")
def test_help(runner: CliRunner, path: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert "Traceback" not in result.output


def test_groups_without_arguments_show_help(runner: CliRunner) -> None:
    groups = [p for p in COMMANDS if p and subcommands(_lookup(p))]
    assert groups
    for path in groups:
        result = runner.invoke(app, list(path))
        assert "Usage" in result.output, path


def _lookup(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = subcommands(command)[name]
    return command


def test_rules_check_example(
    runner: CliRunner, example_rules_path: Path, example_rules: Rules
) -> None:
    result = runner.invoke(app, ["rules", "check", str(example_rules_path)])
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert example_rules.version in text
    assert f"MQL at score >= {example_rules.mql.threshold:g}" in text
    for name in example_rules.engagement:
        assert f"engagement: {name}" in text
    for rule in example_rules.fit:
        assert rule.describe() in text


def test_rules_check_json(
    runner: CliRunner, example_rules_path: Path, example_rules: Rules
) -> None:
    result = runner.invoke(app, ["rules", "check", str(example_rules_path), "--json"])
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)  # one JSON object, nothing else on stdout
    assert body["valid"] is True and body["version"] == example_rules.version
    assert body["path"] == str(example_rules_path)
    engagement = {r["name"]: r for r in body["rules"] if r["kind"] == "engagement"}
    assert {n: r["points"] for n, r in engagement.items()} == {
        n: r.points for n, r in example_rules.engagement.items()
    }
    fit = [r for r in body["rules"] if r["kind"] == "fit"]
    assert [r["name"] for r in fit] == [f.describe() for f in example_rules.fit]
    assert body["mql"]["threshold"] == example_rules.mql.threshold
    assert set(body["event_types"]) == set(example_rules.event_types)
    assert body["summary"].startswith("MQL at score >= ")


def test_rules_check_json_on_a_bad_file_is_the_one_error_line(
    runner: CliRunner, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("mql:\n  threshold: -1\n", encoding="utf-8")
    result = runner.invoke(app, ["rules", "check", str(bad), "--json"])
    assert result.exit_code == 2 and result.stdout == ""
    assert "mql.threshold" in flat(result.output)


def test_rules_check_bad_file_names_the_field(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "mql:\n  threshold: 50\nfit:\n  - {field: industry, points: 10}\n", encoding="utf-8"
    )
    result = runner.invoke(app, ["rules", "check", str(bad)])
    assert result.exit_code == 2
    text = flat(result.output)
    assert "error:" in text
    assert "fit[0]" in text
    assert str(bad) in text
    assert "Traceback" not in result.output


def test_rules_check_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = runner.invoke(app, ["rules", "check", str(missing)])
    assert result.exit_code == 2
    assert str(missing) in flat(result.output)


def test_rules_check_shows_the_values_of_unnamed_fit_rules(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "mql: {threshold: 50}\nfit:\n  - {field: industry, in: [software, retail], points: 10}\n",
        encoding="utf-8",
    )
    result = runner.invoke(app, ["rules", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert load_rules(path).fit[0].describe() in flat(result.output)


def test_schemas_generate_check(runner: CliRunner) -> None:
    result = runner.invoke(app, ["schemas", "generate", "--check"])
    assert result.exit_code == 0, result.output
    assert "schemas are current" in result.output


def test_sample_generate(runner: CliRunner, tmp_path: Path, example_rules: Rules) -> None:
    out = tmp_path / "sample.ndjson"
    leads, events, seed = 20, 300, 11
    result = runner.invoke(
        app,
        ["sample", "generate", "--out", str(out), "--leads", str(leads),
         "--events", str(events), "--seed", str(seed), "--start", "2026-11-02"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    expected = generate(leads, events, seed, invalid_every=100, duplicate_every=50)
    assert len(lines) == len(expected)
    assert f"wrote {len(lines)} records for {leads} leads" in flat(result.output)

    where = RecordLocation("leads.engagement", 0, 0)
    parsed = []
    for n, (line, record) in enumerate(zip(lines, expected, strict=True)):
        assert line == record.value
        outcome = parse_engagement(record.key, line, where, example_rules.event_types, 65_536)
        if record.valid:
            assert isinstance(outcome, EngagementEvent), (n, line[:200])
            parsed.append(outcome)
        else:
            assert isinstance(outcome, DeadLetter), (n, line[:200])
    assert len({e.lead_id for e in parsed}) <= leads
    # Every valid line is an engagement event as the JSON schema describes it.
    assert all(orjson.loads(line).keys() >= {"event_id", "lead_id", "type", "occurred_at"}
               for line, record in zip(lines, expected, strict=True) if record.valid)  # fmt: skip
    # Some records are broken and some re-sent, as documented for the defaults.
    assert any(not r.valid for r in expected)
    assert len({e.event_id for e in parsed}) < len(parsed)


def test_sample_generate_ends_now_by_default(runner: CliRunner, tmp_path: Path) -> None:
    """Without --start the history ends now (played today, its clocks are not all expired);
    --start and --days place it exactly; a bad date exits 2 naming --start."""
    out = tmp_path / "sample.ndjson"
    args = ["sample", "generate", "--out", str(out), "--leads", "10", "--events", "200"]
    before = datetime.now(UTC)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    times = [
        datetime.fromisoformat(orjson.loads(line)["occurred_at"])
        for line in out.read_bytes().splitlines()
        if line.startswith(b"{") and b'"occurred_at":"20' in line
    ]
    assert times
    assert max(times) <= datetime.now(UTC)
    assert max(times) > before - timedelta(days=1)
    assert min(times) >= before - timedelta(days=14, seconds=2)

    result = runner.invoke(app, [*args, "--start", "2025-01-06", "--days", "2"])
    assert result.exit_code == 0, result.output
    times = [
        datetime.fromisoformat(orjson.loads(line)["occurred_at"])
        for line in out.read_bytes().splitlines()
        if line.startswith(b"{") and b'"occurred_at":"20' in line
    ]
    assert min(times) >= datetime(2025, 1, 6, tzinfo=UTC)
    assert max(times) <= datetime(2025, 1, 8, tzinfo=UTC)

    result = runner.invoke(app, [*args, "--start", "next tuesday"])
    assert result.exit_code == 2
    assert "--start" in result.output and "Traceback" not in result.output
