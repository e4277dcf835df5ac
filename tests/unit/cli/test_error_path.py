"""The one error path of `leadflow` (issue 16): `main()` ends usage mistakes and unexpected
errors with one `error:` line (a traceback only when debugging), and `--help` shows flags as
flags and arguments by name."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

import streams.cli as cli
from streams.settings import load_settings

pytestmark = pytest.mark.unit

ENV = {"COLUMNS": "200", "NO_COLOR": "1"}


def test_explain_help_shows_the_json_flag_without_a_value_and_the_argument_by_name() -> None:
    result = CliRunner().invoke(cli.app, ["explain", "--help"], env=ENV)
    assert result.exit_code == 0, result.output
    assert "explain [OPTIONS] LEAD_ID" in result.output
    assert "{lead_id}" not in result.output and "LEAD_ID" in result.output
    json_line = next(line for line in result.output.splitlines() if "--json" in line)
    assert "<bool>" not in json_line and "Print the explanation as JSON" in json_line
    help_line = next(line for line in result.output.splitlines() if "--help" in line)
    assert "<bool>" not in help_line
    # Options that do take a value still say which.
    report = CliRunner().invoke(cli.app, ["handoffs", "--help"], env=ENV)
    assert "<int>" in next(line for line in report.output.splitlines() if "--limit" in line)


def run_main(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    monkeypatch.setattr("sys.argv", ["leadflow", *args])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    return int(ended.value.code or 0), capsys.readouterr().err


def test_a_usage_mistake_is_one_line_naming_the_option(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    code, err = run_main(monkeypatch, capsys, "report", "--no-such-option")
    assert code == 2
    assert err.strip().splitlines() == [
        "error: No such option: --no-such-option (see `leadflow report --help`)"
    ]
    code, err = run_main(monkeypatch, capsys, "explain")
    assert code == 2 and err.strip() == (
        "error: Missing argument 'LEAD_ID'. (see `leadflow explain --help`)"
    )


@pytest.fixture
def broken_command(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom() -> None:
        raise RuntimeError("something\nunforeseen")

    monkeypatch.delenv("LEADFLOW_LOG_LEVEL", raising=False)
    monkeypatch.delenv(cli.DEBUG_VARIABLE, raising=False)
    app = typer.Typer()
    app.callback()(cli._options)
    app.command("boom")(boom)
    monkeypatch.setattr(cli, "app", app)


@pytest.mark.usefixtures("broken_command")
def test_an_unexpected_error_is_one_line_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_main(monkeypatch, capsys, "boom")
    assert code == 1
    assert err.strip().splitlines() == [
        "error: unexpected RuntimeError: something unforeseen (`leadflow --debug ...` or "
        "LEADFLOW_LOG_LEVEL=DEBUG shows the traceback)"
    ]


@pytest.mark.usefixtures("broken_command")
@pytest.mark.parametrize("how", ["--debug", "LEADFLOW_LOG_LEVEL=debug"])
def test_debugging_shows_the_traceback(how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["boom"]
    if how == "--debug":
        args = ["--debug", "boom"]
    else:
        monkeypatch.setenv("LEADFLOW_LOG_LEVEL", "debug")
    monkeypatch.setattr("sys.argv", ["leadflow", *args])
    with pytest.raises(RuntimeError, match="unforeseen"):
        cli.main()


def test_log_level_is_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_LOG_LEVEL", "debug")
    assert load_settings().log_level == "DEBUG"


@pytest.mark.parametrize("bootstrap", ["notahost:", "", "host:port", "h:0", ":9092", "h1:1,"])
def test_a_kafka_bootstrap_that_is_not_host_port_names_the_variable(
    bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.settings import SettingsError

    monkeypatch.setenv("LEADFLOW_KAFKA_BOOTSTRAP", bootstrap)
    with pytest.raises(SettingsError, match=r"LEADFLOW_KAFKA_BOOTSTRAP: .* is not host:port"):
        load_settings()


def test_a_kafka_bootstrap_list_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADFLOW_KAFKA_BOOTSTRAP", "kafka-1:9092, kafka-2:9092,[::1]:9093")
    assert load_settings().kafka_bootstrap == "kafka-1:9092,kafka-2:9092,[::1]:9093"
