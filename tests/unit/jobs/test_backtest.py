"""`leadflow backtest`: files in, tables / JSON / a PNG chart out; bad input named clearly."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from streams.cli import app
from streams.core.backtest import Outcome
from streams.core.rules import Rules
from streams.jobs.backtest import human_duration, read_events, read_outcomes, short_duration
from tests.history import History, generate

pytestmark = pytest.mark.unit

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner(env=ENV)


@pytest.fixture(scope="module")
def history() -> History:
    return generate(400, seed=21)


@pytest.fixture
def files(tmp_path: Path, history: History) -> tuple[Path, Path]:
    return history.write(tmp_path)


def flat(text: str) -> str:
    return " ".join(text.split())


def test_backtest_tables_and_chart(
    runner: CliRunner, files: tuple[Path, Path], example_rules_path: Path, tmp_path: Path
) -> None:
    events, outcomes = files
    chart = tmp_path / "chart.png"
    result = runner.invoke(
        app,
        [
            "backtest",
            "--events", str(events),
            "--outcomes", str(outcomes),
            "--rules", str(example_rules_path),
            "--thresholds", "40:160:10",
            "--chart", str(chart),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    text = flat(result.output)
    assert "MQL threshold backtest" in text
    assert "◀ current" in text or "◀ keep current" in text
    assert "◀ recommended" in text
    assert "invalid event lines skipped" in text
    assert "pricing_page_view" in text and "Target industry" in text
    assert f"chart written to {chart}" in text
    data = chart.read_bytes()
    assert data.startswith(PNG) and len(data) > 20_000


def test_backtest_json(
    runner: CliRunner,
    files: tuple[Path, Path],
    example_rules_path: Path,
    example_rules: Rules,
    history: History,
    tmp_path: Path,
) -> None:
    events, outcomes = files
    chart = tmp_path / "chart.png"
    args = ["backtest", "--events", str(events), "--outcomes", str(outcomes)]
    args += ["--rules", str(example_rules_path), "--thresholds", "50:150:25", "--json"]
    result = runner.invoke(app, [*args, "--goal", "recall:0.5", "--chart", str(chart)])
    assert result.exit_code == 0, result.output
    body = orjson.loads(result.stdout)  # nothing but JSON on stdout
    assert body["rules_version"] == example_rules.version
    assert (body["goal"], body["target"], body["window"]) == ("recall:0.5", "opportunity", None)
    assert [row["threshold"] for row in body["thresholds"]] == [50, 75, 100, 125, 150]
    assert body["current_threshold"] == 100
    assert body["recommended_threshold"] in {50, 75, 100, 125, 150}
    chosen = next(r for r in body["thresholds"] if r["threshold"] == body["recommended_threshold"])
    assert chosen["recall"] >= 0.5
    assert body["input"]["invalid_event_lines"] == history.invalid_lines > 0
    assert body["input"]["outcome_rows"] == len(history.outcomes)
    assert body["converted_without_events"] == len(history.unknown_outcome_leads)
    assert {item["rule"] for item in body["lift"]} >= {"pricing_page_view", "Decision maker"}
    assert chart.read_bytes().startswith(PNG)
    # The full replay per threshold gives the same numbers.
    slow = runner.invoke(app, [*args, "--goal", "recall:0.5", "--method", "replay"])
    assert slow.exit_code == 0, slow.output
    assert orjson.loads(slow.stdout) | {"method": None} == body | {"method": None}


def test_backtest_window_and_target(
    runner: CliRunner, files: tuple[Path, Path], example_rules_path: Path
) -> None:
    events, outcomes = files
    args = ["backtest", "--events", str(events), "--outcomes", str(outcomes), "--json"]
    args += ["--rules", str(example_rules_path), "--thresholds", "80"]
    wide = orjson.loads(runner.invoke(app, args).stdout)
    narrow = orjson.loads(runner.invoke(app, [*args, "--window", "7d"]).stdout)
    won = orjson.loads(runner.invoke(app, [*args, "--target", "won"]).stdout)
    assert narrow["window"] == "7d" and won["target"] == "won"
    assert narrow["thresholds"][0]["true_positives"] < wide["thresholds"][0]["true_positives"]
    assert won["converted"] < wide["converted"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--thresholds", "200:40:5", "start <= stop"),
        ("--goal", "recall", "unknown goal"),
        ("--window", "soon", "--window: invalid duration"),
    ],
)
def test_backtest_bad_arguments(
    runner: CliRunner,
    files: tuple[Path, Path],
    example_rules_path: Path,
    option: str,
    value: str,
    message: str,
) -> None:
    events, outcomes = files
    result = runner.invoke(
        app,
        [
            "backtest",
            "--events", str(events),
            "--outcomes", str(outcomes),
            "--rules", str(example_rules_path),
            option, value,
        ],
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in flat(result.output)
    assert "Traceback" not in result.output


def test_backtest_bad_files(
    runner: CliRunner, files: tuple[Path, Path], example_rules_path: Path, tmp_path: Path
) -> None:
    events, _ = files
    no_column = tmp_path / "no-column.csv"
    no_column.write_text("lead_id,status\nL1,won\n", encoding="utf-8")
    base = ["backtest", "--rules", str(example_rules_path)]
    result = runner.invoke(app, [*base, "--events", str(events), "--outcomes", str(no_column)])
    assert result.exit_code == 2
    assert "missing column(s) outcome, occurred_at" in flat(result.output)
    missing = tmp_path / "missing.ndjson"
    result = runner.invoke(app, [*base, "--events", str(missing), "--outcomes", str(no_column)])
    assert result.exit_code == 2
    assert f"cannot read events file {missing}" in flat(result.output)


def test_read_outcomes(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text(
        "\ufeffLead_ID, Outcome ,occurred_at,amount\n"  # Excel BOM, odd case and spacing
        "L1,opportunity,2026-03-01T10:00:00Z,1000\n"
        "L1,Won,2026-04-01T10:00:00+09:00,1000\n"
        "L2,none,,\n"
        "L3,opportunity,2026-03-01T10:00:00,\n"  # no offset
        "L4,closed,2026-03-01T10:00:00Z,\n"
        ",won,2026-03-01T10:00:00Z,\n"
        "L5,lost,,\n",
        encoding="utf-8",
    )
    read = read_outcomes(path)
    assert (read.rows, read.invalid) == (7, 4)
    assert [o.kind for o in read.outcomes] == ["opportunity", "won", "none"]
    assert read.outcomes[2] == Outcome("L2", "none", None)
    assert read.outcomes[1].occurred_at is not None
    assert read.outcomes[1].occurred_at.utcoffset() == timedelta(hours=9)
    assert read.examples == [
        "line 5: occurred_at '2026-03-01T10:00:00' needs a UTC offset (e.g. Z or +09:00)",
        "line 6: outcome 'closed' is not one of opportunity, won, lost, none",
        "line 7: empty lead_id",
        "line 8: occurred_at is required for outcome 'lost'",
    ]


def test_read_events_counts_bad_lines(tmp_path: Path, example_rules: Rules) -> None:
    path = tmp_path / "events.ndjson"
    path.write_bytes(
        b'{"event_id": "e1", "lead_id": "L1", "type": "download",'
        b' "occurred_at": "2026-03-01T10:00:00Z"}\n'
        b"\n"
        b"not json\n"
        b'{"event_id": "e2", "lead_id": "L1", "type": "tiktok_like",'
        b' "occurred_at": "2026-03-01T10:00:00Z"}\n'
    )
    read = read_events(path, example_rules)
    assert (len(read.events), read.lines) == (1, 3)
    assert dict(read.invalid) == {"not_json": 1, "unknown_type": 1}
    assert read.examples[0].startswith("line 3: not_json")


def test_human_duration() -> None:
    assert human_duration(None) == "-"
    assert human_duration(timedelta(days=12, hours=4, minutes=20)) == "12d 4h"
    assert human_duration(timedelta(hours=5, minutes=30)) == "5h 30m"
    assert human_duration(timedelta(minutes=45)) == "45m"
    assert human_duration(timedelta(days=30)) == "30d"
    assert human_duration(timedelta(hours=2)) == "2h"
    assert short_duration(None) == "-"
    assert short_duration(timedelta(days=12, hours=23)) == "13.0d"
    assert short_duration(timedelta(hours=5, minutes=15)) == "5.2h"
