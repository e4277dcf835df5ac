"""`leadflow report`: funnel KPIs from the daily counters in Redis, as a table, JSON or charts.

The shell around streams.core.funnel: it works out the date range in the reporting time zone,
reads the counters (LeadStore.read_kpis), and renders what the core summarised. Definitions of
every figure: docs/kpis.md.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, cast, get_args
from zoneinfo import ZoneInfo

import orjson
import typer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streams.bootstrap import open_store
from streams.core.funnel import (
    CLOCKS,
    SERIES,
    ClockKpis,
    Counts,
    DurationKpis,
    Durations,
    Period,
    PeriodKpis,
    days_between,
    summarize,
    total,
)
from streams.core.rules import Rules
from streams.settings import Settings

DEFAULT_DAYS = 28
MAX_DAYS = 3660  # ten years of days: one Redis pipeline of three reads per day
PERIODS: tuple[str, ...] = get_args(Period)
CLOCK_TITLES = {"mql_first_contact": "first contact", "sql_follow_up": "sales follow-up"}


# -- the range -----------------------------------------------------------------------------


def resolve_range(
    today: date,
    days: int | None = None,
    since: date | None = None,
    until: date | None = None,
) -> tuple[date, date]:
    """--days N (ending at --until or today) or --since/--until; both ends included."""
    if days is not None and since is not None:
        raise typer.BadParameter("use --days or --since, not both", param_hint="'--days'")
    if days is not None and days < 1:
        raise typer.BadParameter(f"{days} is not a positive number of days", param_hint="'--days'")
    end = until or today
    start = since or end - timedelta(days=(days or DEFAULT_DAYS) - 1)
    if start > end:
        raise typer.BadParameter(f"--since {start} is after --until {end}", param_hint="'--since'")
    if (end - start).days + 1 > MAX_DAYS:
        raise typer.BadParameter(
            f"{(end - start).days + 1} days is more than {MAX_DAYS}", param_hint="'--since'"
        )
    return start, end


def check_period(period: str) -> Period:
    if period not in PERIODS:
        raise typer.BadParameter(
            f"{period!r} is not one of {', '.join(PERIODS)}", param_hint="'--period'"
        )
    return cast(Period, period)


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KpiData:
    counts: dict[date, dict[str, int]]
    durations: dict[tuple[date, str], list[float]]
    days_anywhere: tuple[date, ...]  # days with counters at all (only looked up when needed)

    @property
    def empty(self) -> bool:
        return not any(any(v for v in c.values()) for c in self.counts.values()) and not any(
            self.durations.values()
        )


async def read_kpi_data(settings: Settings, start: date, end: date) -> KpiData:
    store = open_store(settings)
    try:
        counts, durations = await store.read_kpis(days_between(start, end), SERIES.values())
        data = KpiData(counts, durations, ())
        if data.empty:
            data = KpiData(counts, durations, tuple(await store.kpi_days()))
        return data
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise TimeoutError(
            f"Redis at {settings.redis_url} is not answering ({exc}); start it with "
            "`ops/stack up` or set LEADFLOW_REDIS_URL"
        ) from None
    finally:
        await store.close()


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    namespace: str
    timezone: str
    start: date
    end: date
    period: Period
    periods: list[PeriodKpis]
    total: PeriodKpis
    weeks: list[PeriodKpis]  # always weekly, for the trend chart

    @property
    def has_data(self) -> bool:
        return self.total.days_with_data > 0


def build_report(
    counts: Counts,
    durations: Durations,
    start: date,
    end: date,
    period: Period,
    timezone: str = "UTC",
    namespace: str = "",
) -> Report:
    return Report(
        namespace=namespace,
        timezone=timezone,
        start=start,
        end=end,
        period=period,
        periods=summarize(counts, durations, start, end, period),
        total=total(counts, durations, start, end),
        weeks=summarize(counts, durations, start, end, "week"),
    )


# -- formatting ----------------------------------------------------------------------------


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def humanize(seconds: float | None) -> str:
    """3h12m, 12m05s, 42s, 1.5s, 2d03h; '-' for no value."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        minutes = whole // 60
        return f"{minutes // 60}h{minutes % 60:02d}m"
    hours = whole // 3600
    return f"{hours // 24}d{hours % 24:02d}h"


def _sla_cell(clock: ClockKpis) -> str:
    if not clock.decided:
        return "-"
    return f"{percent(clock.compliance)} ({clock.met}/{clock.decided})"


def _times(d: DurationKpis) -> str:
    return "-" if not d.samples else f"{humanize(d.median)} / {humanize(d.p90)}"


def _label(p: PeriodKpis) -> str:
    return f"{p.label}*" if p.partial else p.label


def render_tables(report: Report) -> list[Table]:
    """Two tables, one row per period and a total row: the funnel, and the SLA clocks."""
    rows = [*report.periods, report.total]
    funnel = Table(
        title=f"leadflow funnel {report.start} to {report.end} ({report.timezone})",
        title_justify="left",
    )
    funnel.add_column("period", no_wrap=True)
    for name in ("MQL", "SQL", "nurture", "disq.", "won", "lost", "MQL→SQL", "SQL→won"):
        funnel.add_column(name, justify="right", no_wrap=True)
    for p in rows:
        funnel.add_row(
            _label(p),
            str(p.mqls),
            str(p.sqls),
            str(p.nurture),
            str(p.disqualified),
            str(p.won),
            str(p.lost),
            percent(p.mql_to_sql),
            percent(p.sql_to_won),
            style="bold" if p is report.total else None,
            end_section=p is rows[-2],
        )
    sla = Table(
        title="SLA clocks (by the day the clock started)",
        title_justify="left",
        caption="p50/p90: time from the handoff to the first contact (contact SLA), and from "
        "SQL to the first sales action (follow-up SLA)",
        caption_justify="left",
    )
    sla.add_column("period", no_wrap=True)
    # Narrow terminals fold the SLA and duration cells at their space; the rest never wraps.
    for name, min_width in (
        ("contact SLA", 9),
        ("p50 / p90", 7),
        ("follow-up SLA", 9),
        ("p50 / p90", 7),
    ):
        sla.add_column(name, justify="right", min_width=min_width)
    for name in ("breached", "late"):
        sla.add_column(name, justify="right", no_wrap=True)
    for p in rows:
        contact, follow = p.sla["mql_first_contact"], p.sla["sql_follow_up"]
        sla.add_row(
            _label(p),
            _sla_cell(contact),
            _times(p.time_to_first_contact),
            _sla_cell(follow),
            _times(p.time_to_sales_action),
            str(contact.breached + follow.breached),
            str(contact.late + follow.late),
            style="bold" if p is report.total else None,
            end_section=p is rows[-2],
        )
    return [funnel, sla]


def notes(report: Report) -> list[str]:
    """The lines under the tables: what is excluded, BANT gaps, breaches by owner."""
    t = report.total
    lines = []
    if any(p.partial for p in report.periods):
        lines.append("* partial period: only the days inside the range are counted")
    excluded = [
        f"{CLOCK_TITLES[k]}: "
        + ", ".join(
            f"{n} {what}" for n, what in ((c.expired, "expired"), (c.closed, "closed")) if n
        )
        for k in CLOCKS
        if (c := t.sla[k]).expired or c.closed
    ]
    lines.append(
        "conversion: of the MQLs (SQLs) of a period, how many became SQL (won) so far; "
        "SLA compliance: met / (met + breached)"
        + (f"; not counted: {'; '.join(excluded)}" if excluded else "")
    )
    if any(t.missing_bant.values()):
        gaps = ", ".join(f"{k} {n}" for k, n in t.missing_bant.items() if n)
        lines.append(f"missing BANT when sent to nurture: {gaps}")
    if t.breaches_by_owner:
        owners = ", ".join(
            f"{'unassigned' if k == '-' else k} {n}" for k, n in t.breaches_by_owner.items()
        )
        lines.append(f"breaches by owner: {owners}")
    return lines


# -- JSON ----------------------------------------------------------------------------------


def _duration_json(d: DurationKpis) -> dict[str, Any]:
    return {"samples": d.samples, "median_seconds": d.median, "p90_seconds": d.p90}


def period_to_json(p: PeriodKpis) -> dict[str, Any]:
    return {
        "label": p.label,
        "start": p.start.isoformat(),
        "end": p.end.isoformat(),
        "partial": p.partial,
        "days_with_data": p.days_with_data,
        "mqls": p.mqls,
        "sqls": p.sqls,
        "nurture": p.nurture,
        "disqualified": p.disqualified,
        "won": p.won,
        "lost": p.lost,
        "missing_bant": p.missing_bant,
        "cohort": {"sql": p.cohort_sql, "won": p.cohort_won, "lost": p.cohort_lost},
        "mql_to_sql": p.mql_to_sql,
        "sql_to_won": p.sql_to_won,
        "sql_to_lost": p.sql_to_lost,
        "sla": {
            kind: {
                "met": c.met,
                "breached": c.breached,
                "expired": c.expired,
                "closed": c.closed,
                "late": c.late,
                "compliance": c.compliance,
            }
            for kind, c in p.sla.items()
        },
        "time_to_first_contact": _duration_json(p.time_to_first_contact),
        "time_to_sales_action": _duration_json(p.time_to_sales_action),
        "breaches_by_owner": p.breaches_by_owner,
    }


def _duration_from_json(d: dict[str, Any]) -> DurationKpis:
    return DurationKpis(d["samples"], d["median_seconds"], d["p90_seconds"])


def period_from_json(d: dict[str, Any]) -> PeriodKpis:
    return PeriodKpis(
        label=d["label"],
        start=date.fromisoformat(d["start"]),
        end=date.fromisoformat(d["end"]),
        partial=d["partial"],
        mqls=d["mqls"],
        sqls=d["sqls"],
        nurture=d["nurture"],
        disqualified=d["disqualified"],
        won=d["won"],
        lost=d["lost"],
        missing_bant=dict(d["missing_bant"]),
        cohort_sql=d["cohort"]["sql"],
        cohort_won=d["cohort"]["won"],
        cohort_lost=d["cohort"]["lost"],
        sla={
            kind: ClockKpis(c["met"], c["breached"], c["expired"], c["closed"], c["late"])
            for kind, c in d["sla"].items()
        },
        time_to_first_contact=_duration_from_json(d["time_to_first_contact"]),
        time_to_sales_action=_duration_from_json(d["time_to_sales_action"]),
        breaches_by_owner=dict(d["breaches_by_owner"]),
        days_with_data=d["days_with_data"],
    )


def report_to_json(report: Report) -> dict[str, Any]:
    return {
        "namespace": report.namespace,
        "timezone": report.timezone,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "period": report.period,
        "has_data": report.has_data,
        "periods": [period_to_json(p) for p in report.periods],
        "total": period_to_json(report.total),
    }


# -- charts --------------------------------------------------------------------------------

BLUE = ("#1f4e79", "#2e75b6", "#70ad47")
SIDE = {"nurture": "#f4b183", "disqualified": "#a5a5a5", "lost": "#c55a5a"}


def write_charts(report: Report, directory: Path) -> list[Path]:
    """funnel.png (the range) and trend.png (weekly) in `directory`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    directory.mkdir(parents=True, exist_ok=True)
    return [_funnel_chart(report, directory / "funnel.png"), _trend_chart(report, directory)]


def _funnel_chart(report: Report, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    t = report.total
    main = [("MQL", t.mqls, BLUE[0]), ("SQL", t.sqls, BLUE[1]), ("Won", t.won, BLUE[2])]
    side = [
        ("Nurture", t.nurture, SIDE["nurture"]),
        ("Disqualified", t.disqualified, SIDE["disqualified"]),
        ("Lost", t.lost, SIDE["lost"]),
    ]
    xs = [0.0, 1.0, 2.0, 3.6, 4.6, 5.6]
    values = [v for _, v, _ in main + side]
    fig, ax = plt.subplots(figsize=(10, 5.8), dpi=120)
    bars = ax.bar(
        xs,
        values,
        width=0.72,
        color=[c for _, _, c in main + side],
        edgecolor="white",
    )
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=12, weight="bold")
    ax.set_xticks(xs, [n for n, _, _ in main + side], fontsize=12)
    top = max(values) if max(values) > 0 else 1
    ax.set_ylim(0, top * 1.42)
    ax.set_ylabel("stage changes in the range", fontsize=11)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.spines[["top", "right"]].set_visible(False)
    ax.axvline(2.8, color="#bbbbbb", linestyle=":", linewidth=1)
    ax.text(1.0, top * 1.34, "through the funnel", ha="center", fontsize=11, color="#444444")
    ax.text(4.6, top * 1.34, "left the funnel", ha="center", fontsize=11, color="#444444")
    for x, rate, text in (
        (0.5, t.mql_to_sql, "MQL→SQL"),
        (1.5, t.sql_to_won, "SQL→won"),
    ):
        ax.annotate(
            f"{text}\n{percent(rate) if rate is not None else 'n/a'}",
            xy=(x, top * 1.17),
            ha="center",
            va="center",
            fontsize=10,
            color="#1f4e79",
            bbox={"boxstyle": "round,pad=0.3", "fc": "#eaf1fb", "ec": "#9dc3e6"},
        )
    ax.set_title(
        f"leadflow funnel, {report.start} to {report.end} ({report.timezone})",
        fontsize=14,
        weight="bold",
        pad=12,
    )
    fig.text(
        0.01,
        0.01,
        "Bars: stage changes on days in the range. Rates: cohort conversion "
        "(of the range's MQLs / SQLs, how many became SQL / were won so far).",
        fontsize=9,
        color="#555555",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def _trend_chart(report: Report, directory: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    path = directory / "trend.png"
    weeks = report.weeks
    labels = [_label(w) for w in weeks]
    xs = list(range(len(weeks)))

    def pct(values: Sequence[float | None]) -> list[float]:
        return [math.nan if v is None else v * 100 for v in values]

    lines = [
        ("MQL→SQL conversion (cohort)", pct([w.mql_to_sql for w in weeks]), "#1f4e79", "o"),
        (
            "SLA compliance: first contact",
            pct([w.sla["mql_first_contact"].compliance for w in weeks]),
            "#ed7d31",
            "s",
        ),
        (
            "SLA compliance: sales follow-up",
            pct([w.sla["sql_follow_up"].compliance for w in weeks]),
            "#70ad47",
            "^",
        ),
    ]
    fig, ax = plt.subplots(figsize=(min(16.0, max(9.0, 0.45 * len(weeks) + 6)), 5.6), dpi=120)
    ends: list[tuple[float, float, str]] = []  # (x, y, color) of each line's latest point
    for name, ys, color, marker in lines:
        ax.plot(xs, ys, label=name, color=color, marker=marker, markersize=7, linewidth=2.2)
        known = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
        if known:
            ends.append((*known[-1], color))
    # The latest value of each line, written to its right; nudged apart when lines meet.
    placed: list[float] = []
    for x, y, color in sorted(ends, key=lambda e: e[1]):
        at = max([y, *[p + 6 for p in placed]])
        placed.append(at)
        ax.annotate(
            f"{y:.1f}%",
            (x, y),
            xytext=(x + 0.25, at),
            textcoords="data",
            va="center",
            fontsize=10,
            weight="bold",
            color=color,
        )
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    step = math.ceil(len(weeks) / 26)  # at most 26 labels; the points stay weekly
    crowded = len(weeks) > 8
    ax.set_xticks(
        xs[::step],
        labels[::step],
        rotation=45 if crowded else 0,
        ha="right" if crowded else "center",
        rotation_mode="anchor",
    )
    ax.set_xlim(-0.5, len(weeks) - 0.5 + 0.9)  # room for the end labels
    partial = " (* = partly outside the range)" if any(w.partial for w in weeks) else ""
    ax.set_xlabel(f"ISO week{partial}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
        frameon=False,
        fontsize=10,
    )
    fig.suptitle(
        f"Weekly conversion and SLA compliance, {report.start} to {report.end}",
        fontsize=13,
        weight="bold",
    )
    fig.text(
        0.01,
        0.01,
        "Conversion: of the week's MQLs, the share that became SQL so far.\n"
        "Compliance: met / (met + breached) of the clocks started that week; a gap: nothing "
        "to measure.",
        fontsize=8.5,
        color="#555555",
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


# -- the command ---------------------------------------------------------------------------


def today_in(timezone: str, now: datetime | None = None) -> date:
    return (now or datetime.now(ZoneInfo(timezone))).astimezone(ZoneInfo(timezone)).date()


def run_report(
    settings: Settings,
    rules: Rules,
    *,
    out: Console,
    console: Console,
    days: int | None = None,
    since: date | None = None,
    until: date | None = None,
    period: str = "week",
    charts: Path | None = None,
    as_json: bool = False,
    now: datetime | None = None,
) -> Report:
    """What `leadflow report` does: read, summarise, print (and draw)."""
    chosen = check_period(period)
    timezone = rules.reporting.timezone
    start, end = resolve_range(today_in(timezone, now), days, since, until)
    data = asyncio.run(read_kpi_data(settings, start, end))
    report = build_report(
        data.counts, data.durations, start, end, chosen, timezone, settings.namespace
    )
    if as_json:
        typer.echo(orjson.dumps(report_to_json(report), option=orjson.OPT_INDENT_2).decode())
    if not report.has_data:
        where = (
            f"namespace {settings.namespace!r}" if settings.namespace else "the default namespace"
        )
        if data.days_anywhere:
            first, last = data.days_anywhere[0], data.days_anywhere[-1]
            console.print(
                f"No KPI data between {start} and {end} in {escape(where)}; there is data from "
                f"{first} to {last}: try [bold]leadflow report --since {first} --until {last}[/]"
            )
        else:
            console.print(
                f"No KPI data yet in {escape(where)} ({settings.redis_url}). KPIs are counted by "
                "the worker as leads move: run [bold]leadflow worker[/] with the same "
                "LEADFLOW_NAMESPACE and play events ([bold]leadflow produce FILE[/]), or try "
                "[bold]leadflow demo[/] and then report with its namespace."
            )
        return report
    if not as_json:
        for table in render_tables(report):
            out.print(table)
        for line in notes(report):
            out.print(f"[dim]{escape(line)}[/]")
    if charts is not None:
        for path in write_charts(report, charts):
            console.print(f"wrote {path}")
    return report
