"""`leadflow report`: formatting, the tables, --json, the charts, and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import struct
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from streams.cli import app
from streams.cli.charts import write_report_charts as write_charts
from streams.cli.report import notes, render_tables
from streams.core.funnel import SERIES, Period
from streams.jobs import report as report_module
from streams.jobs.report import (
    KpiData,
    Report,
    build_report,
    humanize,
    percent,
    period_from_json,
    period_to_json,
    report_to_json,
    resolve_range,
    today_in,
)
from streams.observability import Metrics
from streams.settings import Settings

pytestmark = pytest.mark.unit

D = date.fromisoformat
FC, SA = SERIES["mql_first_contact"], SERIES["sql_follow_up"]
ENV = {"COLUMNS": "200", "NO_COLOR": "1", "LEADFLOW_NAMESPACE": "unit-report"}

# One week of counters, with figures worked out by hand in the tests below.
COUNTS: dict[date, dict[str, int]] = {
    D("2026-11-23"): {
        "mql": 4,
        "sql": 2,
        "nurture": 1,
        "disqualified": 1,
        "cohort_sql": 2,
        "nurture_missing:budget": 1,
        "clock:mql_first_contact:met": 3,
        "clock:mql_first_contact:breached": 1,
        "clock:mql_first_contact:late": 1,
        "clock:mql_first_contact:expired": 2,
        "breach_owner:sato": 1,
    },
    D("2026-11-24"): {
        "sql": 1,
        "won": 1,
        "lost": 1,
        "cohort_won": 1,
        "clock:sql_follow_up:met": 2,
    },
    D("2026-11-30"): {"mql": 2},  # the next week
}
DURATIONS: dict[tuple[date, str], list[float]] = {
    (D("2026-11-23"), FC): [60.0, 600.0, 11_520.0],  # 1m, 10m, 3h12m
    (D("2026-11-24"), SA): [93_600.0],  # 1d02h
}


def sample_report(period: Period = "week") -> Report:
    return build_report(
        COUNTS, DURATIONS, D("2026-11-23"), D("2026-12-01"), period, "UTC", "unit-report"
    )


# -- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.0, "0.0s"),
        (1.25, "1.2s"),
        (9.96, "10.0s"),
        (42.4, "42s"),
        (60.0, "1m00s"),
        (725.0, "12m05s"),
        (3599.4, "59m59s"),
        (11_520.0, "3h12m"),
        (86_399.0, "23h59m"),
        (93_600.0, "1d02h"),
        (float("nan"), "-"),
    ],
)
def test_durations_are_humanised(seconds: float | None, text: str) -> None:
    assert humanize(seconds) == text


@pytest.mark.parametrize(
    ("value", "text"), [(None, "-"), (0.0, "0.0%"), (1 / 3, "33.3%"), (0.9996, "100.0%")]
)
def test_percentages_have_one_decimal(value: float | None, text: str) -> None:
    assert percent(value) == text


TODAY = D("2026-11-25")


def opt(text: str | None) -> date | None:
    return None if text is None else D(text)


@pytest.mark.parametrize(
    ("days", "since", "until", "expected"),
    [
        (None, None, None, ("2026-10-29", "2026-11-25")),  # 28 days ending today
        (1, None, None, ("2026-11-25", "2026-11-25")),
        (7, None, "2026-11-01", ("2026-10-26", "2026-11-01")),
        (None, "2026-11-01", None, ("2026-11-01", "2026-11-25")),
        (None, "2026-01-01", "2026-01-31", ("2026-01-01", "2026-01-31")),
    ],
)
def test_the_range(
    days: int | None, since: str | None, until: str | None, expected: tuple[str, str]
) -> None:
    got = resolve_range(TODAY, days, opt(since), opt(until))
    assert got == (D(expected[0]), D(expected[1]))


@pytest.mark.parametrize(
    ("days", "since", "until", "message"),
    [
        (7, "2026-11-01", None, "not both"),
        (0, None, None, "not a positive number"),
        (None, "2026-11-02", "2026-11-01", "is after"),
        (None, "2000-01-01", None, "more than"),
    ],
)
def test_bad_ranges_are_refused(
    days: int | None, since: str | None, until: str | None, message: str
) -> None:
    with pytest.raises(typer.BadParameter, match=message):
        resolve_range(TODAY, days, opt(since), opt(until))


def test_today_is_the_date_in_the_reporting_time_zone() -> None:
    late_evening_utc = datetime(2026, 11, 25, 22, 30, tzinfo=UTC)
    assert today_in("UTC", late_evening_utc) == D("2026-11-25")
    assert today_in("Asia/Tokyo", late_evening_utc) == D("2026-11-26")


# -- tables ----------------------------------------------------------------------------------


def rendered(report: Report) -> str:
    console = Console(width=200, record=True, color_system=None)
    for table in render_tables(report):
        console.print(table)
    for line in notes(report):
        console.print(line)
    return console.export_text()


def row_of(text: str, label: str) -> list[list[str]]:
    """The cells of the table rows that start with `label` (both tables), split on bars."""
    rows = [ln for ln in text.splitlines() if re.match(rf"[│┃]\s*{re.escape(label)}\s", ln)]
    return [[c.strip() for c in r.strip("│┃ ").split("│")] for r in rows]


def test_table_shows_the_hand_computed_figures() -> None:
    text = rendered(sample_report())
    (w48_funnel, w48_sla) = row_of(text, "2026-W48")
    # MQL 4, SQL 3, nurture 1, disq. 1, won 1, lost 1; 2 of 4 MQLs became SQL, 1 of 3 SQLs won.
    assert w48_funnel == ["2026-W48", "4", "3", "1", "1", "1", "1", "50.0%", "33.3%"]
    # Contact: 3 met of 4 decided (the 2 expired are left out); p50 10m, p90 600 + 0.8 * 10920.
    # Follow-up: 2 of 2; one sample of 26 h. One breach, and it got a late contact.
    assert w48_sla == [
        "2026-W48",
        "75.0% (3/4)",
        "10m00s / 2h35m",
        "100.0% (2/2)",
        "1d02h / 1d02h",
        "1",
        "1",
    ]
    (w49_funnel, w49_sla) = row_of(text, "2026-W49*")  # Mon and Tue only: partial
    assert w49_funnel == ["2026-W49*", "2", "0", "0", "0", "0", "0", "0.0%", "-"]
    assert w49_sla[1:] == ["-", "-", "-", "-", "0", "0"]
    (total_funnel, _) = row_of(text, "total")
    assert total_funnel == ["total", "6", "3", "1", "1", "1", "1", "33.3%", "33.3%"]
    assert "not counted: first contact: 2 expired" in text and "0 closed" not in text
    assert "missing BANT when sent to nurture: budget 1" in text
    assert "breaches by owner: sato 1" in text
    assert "* partial period" in text


def test_day_rows_list_empty_days_too() -> None:
    text = rendered(sample_report("day"))
    assert row_of(text, "2026-11-25")[0][1:] == ["0", "0", "0", "0", "0", "0", "-", "-"]
    days = [ln for ln in text.splitlines() if re.match(r"│ 2026-11-2\d ", ln)]
    assert len(days) == 2 * 7  # 11-23 .. 11-29, in both tables


# -- JSON ------------------------------------------------------------------------------------


def test_json_round_trip_gives_back_every_period() -> None:
    report = sample_report()
    body = orjson.loads(orjson.dumps(report_to_json(report)))
    assert [period_from_json(p) for p in body["periods"]] == report.periods
    assert period_from_json(body["total"]) == report.total
    assert body["total"]["sla"]["mql_first_contact"] == {
        "met": 3,
        "breached": 1,
        "expired": 2,
        "closed": 0,
        "late": 1,
        "compliance": 0.75,
    }
    assert body["total"]["mql_to_sql"] == pytest.approx(2 / 6)
    assert body["total"]["time_to_first_contact"] == {
        "samples": 3,
        "median_seconds": 600.0,
        "p90_seconds": pytest.approx(9336.0),
    }
    assert (body["start"], body["end"], body["period"], body["has_data"]) == (
        "2026-11-23",
        "2026-12-01",
        "week",
        True,
    )


def test_period_json_has_no_surprise_fields() -> None:
    p = sample_report().total
    assert set(period_to_json(p)) >= {"mqls", "mql_to_sql", "sql_to_won", "sla", "partial"}


# -- the command -----------------------------------------------------------------------------


@pytest.fixture
def fake_redis(monkeypatch: pytest.MonkeyPatch) -> list[tuple[date, date]]:
    """read_kpi_data answers from COUNTS and DURATIONS; records the ranges asked for."""
    asked: list[tuple[date, date]] = []

    async def read(settings: Settings, start: date, end: date) -> KpiData:
        asked.append((start, end))
        days = {d: c for d, c in COUNTS.items() if start <= d <= end}
        samples = {k: v for k, v in DURATIONS.items() if start <= k[0] <= end}
        anywhere = () if days else tuple(sorted(COUNTS))
        return KpiData(days, samples, anywhere)

    monkeypatch.setattr(report_module, "read_kpi_data", read)
    return asked


def test_cli_json_round_trip(fake_redis: list[tuple[date, date]]) -> None:
    result = CliRunner().invoke(
        app, ["report", "--since", "2026-11-23", "--until", "2026-12-01", "--json"], env=ENV
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    expected = sample_report()
    assert body == orjson.loads(orjson.dumps(report_to_json(expected)))
    assert [period_from_json(p) for p in body["periods"]] == expected.periods
    assert body["namespace"] == "unit-report"
    assert fake_redis == [(D("2026-11-23"), D("2026-12-01"))]


def test_cli_table_and_period(fake_redis: list[tuple[date, date]]) -> None:
    result = CliRunner().invoke(
        app,
        ["report", "--since", "2026-11-01", "--until", "2026-11-30", "--period", "month"],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    # Not a terminal: each table is TSV (its title on a `# ` line), no box drawing.
    assert "│" not in result.stdout and "\x1b[" not in result.stdout
    (funnel, sla) = [
        ln.split("\t") for ln in result.stdout.splitlines() if ln.startswith("2026-11\t")
    ]
    assert funnel == ["2026-11", "6", "3", "1", "1", "1", "1", "33.3%", "33.3%"]
    assert sla[1] == "75.0% (3/4)"


def test_cli_without_data_says_what_to_run_and_exits_0(
    fake_redis: list[tuple[date, date]],
) -> None:
    result = CliRunner().invoke(
        app, ["report", "--since", "2025-01-01", "--until", "2025-01-31"], env=ENV
    )
    assert result.exit_code == 0, result.output
    assert "No KPI data between 2025-01-01 and 2025-01-31" in result.stderr
    assert "--since 2026-11-23 --until 2026-11-30" in result.stderr
    assert "│" not in result.stdout  # no empty table


def test_cli_refuses_an_unknown_period(fake_redis: list[tuple[date, date]]) -> None:
    result = CliRunner().invoke(app, ["report", "--period", "year"], env=ENV)
    assert result.exit_code == 2
    assert "'year' is not one of day, week, month" in result.stderr
    assert fake_redis == []


def test_cli_writes_the_charts(fake_redis: list[tuple[date, date]], tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        ["report", "--since", "2026-11-23", "--until", "2026-12-01", "--charts", str(tmp_path)],
        env=ENV,
    )
    assert result.exit_code == 0, result.output
    for name in ("funnel.png", "trend.png"):
        assert_png(tmp_path / name)
        assert f"wrote {tmp_path / name}" in result.stderr.replace("\n", "")


# -- charts ----------------------------------------------------------------------------------


def assert_png(path: Path) -> tuple[int, int]:
    """A valid PNG of a size a person can read, without comparing pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    assert 800 <= width <= 4000 and 450 <= height <= 3000, (width, height)
    assert len(data) > 20_000, "suspiciously small: an empty plot?"
    with Image.open(path) as image:
        image.verify()
    return width, height


def test_charts_are_valid_pngs(tmp_path: Path) -> None:
    paths = write_charts(sample_report(), tmp_path / "new" / "dir")
    assert [p.name for p in paths] == ["funnel.png", "trend.png"]
    for p in paths:
        assert_png(p)


def test_charts_of_a_long_range_and_of_no_data(tmp_path: Path) -> None:
    long = build_report(COUNTS, DURATIONS, D("2026-01-01"), D("2026-12-31"), "week")
    for p in write_charts(long, tmp_path / "long"):
        width, _ = assert_png(p)
    assert width > 1200  # a year of weeks gets a wider trend chart
    empty = build_report({}, {}, D("2026-11-23"), D("2026-11-29"), "week")
    for p in write_charts(empty, tmp_path / "empty"):
        with Image.open(p) as image:
            image.verify()


# -- the Grafana dashboard -------------------------------------------------------------------

DASHBOARD = Path(__file__).resolve().parents[3] / "ops" / "grafana" / "leadflow-dashboard.json"

# Gauges the KPI exporter publishes (name -> labels); `window` is "7d" or "28d".
KPI_GAUGES: dict[str, set[str]] = {
    "leadflow_kpi_mql_to_sql_ratio": {"window"},
    "leadflow_kpi_sql_to_won_ratio": {"window"},
    "leadflow_kpi_sla_compliance_ratio": {"clock", "window"},
    "leadflow_kpi_time_to_contact_seconds": {"quantile", "window"},
    "leadflow_kpi_time_to_action_seconds": {"quantile", "window"},
    "leadflow_kpi_stage_count": {"stage", "window"},
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def known_metrics() -> dict[str, set[str]]:
    """Every series name the worker exports (from streams/observability.py), with its labels."""
    metrics = Metrics()
    labels = {
        getattr(m, "_name", ""): set(getattr(m, "_labelnames", ()))
        for m in vars(metrics).values()
        if hasattr(m, "_labelnames")
    }
    known: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            extra = {"le"} if suffix == "_bucket" else set()
            known[family.name + suffix] = labels.get(family.name, set()) | extra
    return {**known, **KPI_GAUGES}


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out += all_panels(p.get("panels", []))
    return out


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and templating query."""
    queries = [
        (f"panel {p['title']!r}", t["expr"])
        for p in all_panels(dashboard["panels"])
        for t in p.get("targets", [])
    ]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            queries.append((f"variable {var['name']}", q["query"] if isinstance(q, dict) else q))
    return queries


def promql_problems(expr: str, known: dict[str, set[str]]) -> list[str]:
    """Metric names and label names in `expr` that no exported metric has."""
    problems = []
    names = set(re.findall(r"\b(leadflow_[A-Za-z0-9_]+)", expr))
    if not names:
        problems.append("no leadflow metric")
    for name in sorted(names - known.keys()):
        problems.append(f"unknown metric {name}")
    for name, body in re.findall(r"\b(leadflow_[A-Za-z0-9_]+)\s*\{([^}]*)\}", expr):
        for label in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", body):
            if label not in known.get(name, set()) | TARGET_LABELS:
                problems.append(f"{name} has no label {label}")
    usable = set().union(*(known.get(n, set()) for n in names)) | TARGET_LABELS
    for grouping in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            if label not in usable:
                problems.append(f"grouping by {label}, which none of {sorted(names)} has")
    return problems


def test_every_dashboard_query_uses_metrics_the_worker_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    known = known_metrics()
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 15
    problems = [f"{where}: {p}" for where, expr in queries for p in promql_problems(expr, known)]
    assert problems == []


def test_the_checker_catches_a_renamed_metric_or_label() -> None:
    known = known_metrics()
    assert promql_problems("rate(leadflow_events_total[5m])", known) == []
    assert promql_problems("rate(leadflow_event_total[5m])", known) == [
        "unknown metric leadflow_event_total"
    ]
    assert promql_problems('leadflow_sla_alerts_total{sevirity="breach"}', known) == [
        "leadflow_sla_alerts_total has no label sevirity"
    ]
    assert promql_problems("sum by (stage) (leadflow_events_total)", known) == [
        "grouping by stage, which none of ['leadflow_events_total'] has"
    ]
    assert "leadflow_sla_alert_delay_seconds_bucket" in known  # histograms: their series


def test_dashboard_is_importable_and_covers_the_kpis() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] and dashboard["title"]
    panels = all_panels(dashboard["panels"])
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]), p["title"]
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            assert all(t["datasource"]["uid"] == "${DS_PROMETHEUS}" for t in p["targets"])
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    for metric in [
        *KPI_GAUGES,
        "leadflow_lifecycle_transitions_total",
        "leadflow_sla_alerts_total",
        "leadflow_sla_clocks_ended_total",
        "leadflow_sla_late_actions_total",
        "leadflow_sla_alert_delay_seconds_bucket",
        "leadflow_handoffs_total",
        "leadflow_events_total",
        "leadflow_deadletters_total",
        "leadflow_consumer_lag_messages",
        "leadflow_event_lag_seconds",
        "leadflow_sla_open_deadlines",
    ]:
        assert metric in exprs, f"no panel shows {metric}"
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in (
        "funnel",
        "conversion",
        "sla compliance",
        "time to first contact",
        "breaches",
        "late",
        "throughput",
        "dead letters",
        "lag",
    ):
        assert topic in titles, f"no panel about {topic}"
    window = next(v for v in dashboard["templating"]["list"] if v["name"] == "window")
    assert [o["value"] for o in window["options"]] == ["7d", "28d"]
