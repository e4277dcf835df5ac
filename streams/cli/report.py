"""`leadflow report`: the command, and the funnel and SLA tables with the notes under them.

The figures come from streams.jobs.report; the charts are drawn by streams.cli.charts.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from streams.cli.errors import require_services, user_errors
from streams.cli.output import console, out
from streams.core.funnel import CLOCKS, ClockKpis, DurationKpis, PeriodKpis
from streams.core.rules import Rules, load_rules
from streams.jobs.attribution import (
    DEFAULT_MODEL,
    AttributionReport,
    Cost,
    CostsError,
    attribution_to_json,
    build_attribution,
    check_dimension,
    check_model,
    read_costs,
)
from streams.jobs.report import (
    KpiData,
    Report,
    humanize,
    percent,
    period_label,
    read_kpi_data,
    read_report,
    report_to_json,
    resolve_range,
    today_in,
)
from streams.settings import Settings

CLOCK_TITLES = {"mql_first_contact": "first contact", "sql_follow_up": "sales follow-up"}
FUNNEL_COLUMNS = ("MQL", "SQL", "nurture", "disq.", "won", "lost", "MQL→SQL", "SQL→won")


# -- the tables ------------------------------------------------------------------------------


def _sla_cell(clock: ClockKpis) -> str:
    if not clock.decided:
        return "-"
    return f"{percent(clock.compliance)} ({clock.met}/{clock.decided})"


def _times(d: DurationKpis) -> str:
    return "-" if not d.samples else f"{humanize(d.median)} / {humanize(d.p90)}"


def _funnel_table(report: Report, rows: list[PeriodKpis]) -> Table:
    table = Table(
        title=f"leadflow funnel {report.start} to {report.end} ({report.timezone})",
        title_justify="left",
    )
    table.add_column("period", no_wrap=True)
    for name in FUNNEL_COLUMNS:
        table.add_column(name, justify="right", no_wrap=True)
    for p in rows:
        table.add_row(
            period_label(p),
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
    return table


def _sla_table(report: Report, rows: list[PeriodKpis]) -> Table:
    table = Table(
        title="SLA clocks (by the day the clock started)",
        title_justify="left",
        caption="p50/p90: time from the handoff to the first contact (contact SLA), and from "
        "SQL to the first sales action (follow-up SLA)",
        caption_justify="left",
    )
    table.add_column("period", no_wrap=True)
    # Narrow terminals fold the SLA and duration cells at their space; the rest never wraps.
    for name, min_width in (
        ("contact SLA", 9),
        ("p50 / p90", 7),
        ("follow-up SLA", 9),
        ("p50 / p90", 7),
    ):
        table.add_column(name, justify="right", min_width=min_width)
    for name in ("breached", "late"):
        table.add_column(name, justify="right", no_wrap=True)
    for p in rows:
        contact, follow = p.sla["mql_first_contact"], p.sla["sql_follow_up"]
        table.add_row(
            period_label(p),
            _sla_cell(contact),
            _times(p.time_to_first_contact),
            _sla_cell(follow),
            _times(p.time_to_sales_action),
            str(contact.breached + follow.breached),
            str(contact.late + follow.late),
            style="bold" if p is report.total else None,
            end_section=p is rows[-2],
        )
    return table


def _owner_table(report: Report) -> Table:
    t = report.total
    queues = ", ".join(
        f"{q} {n}" + (f" ({moved} reassigned)" if (moved := t.reassigned_by_queue.get(q)) else "")
        for q, n in t.by_queue.items()
    )
    table = Table(
        title="Owners (whole range)",
        title_justify="left",
        caption=f"handoffs per queue: {queues}" if queues else None,
        caption_justify="left",
    )
    table.add_column("owner", no_wrap=True)
    for name in (
        "handoffs",
        "first contact met",
        "breached",
        "breach rate",
        "mean to contact",
        "reassigned away",
    ):
        table.add_column(name, justify="right", no_wrap=True)
    for owner, o in t.by_owner.items():
        table.add_row(
            "unassigned" if owner == "-" else owner,
            str(o.handoffs),
            str(o.met),
            str(o.breached),
            percent(o.breach_rate),
            humanize(o.mean_time_to_first_contact),
            str(o.reassigned_away),
        )
    return table


def render_tables(report: Report) -> list[Table]:
    """The funnel and the SLA clocks (one row per period and a total row), and the owners'
    load and first-contact record when the data has any (routing, or owners from activity)."""
    rows = [*report.periods, report.total]
    tables = [_funnel_table(report, rows), _sla_table(report, rows)]
    if report.total.by_owner:
        tables.append(_owner_table(report))
    return tables


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


def _credits(value: object) -> str:
    number = float(value)  # type: ignore[arg-type]
    return "0" if not number else f"{number:.2f}".rstrip("0").rstrip(".")


def _amounts(per: dict[str, str]) -> str:
    return ", ".join(f"{amount} {cur}" for cur, amount in per.items()) or "-"


def attribution_table(report: AttributionReport) -> Table:
    """One row per source (campaign): credited conversions, amounts, rates and costs."""
    data = attribution_to_json(report)
    with_costs = any("cost" in row for row in data["rows"])
    table = Table(
        title=f"leadflow attribution by {report.dimension}, {report.model.replace('_', '-')} "
        f"model, {report.start} to {report.end} ({report.timezone})",
        title_justify="left",
        caption="credited: each conversion is shared among the touches that led to it "
        '(docs/kpis.md, "Attribution"); amounts per currency',
        caption_justify="left",
    )
    table.add_column(report.dimension, no_wrap=True)
    names = ["MQL", "SQL", "opp.", "won", "pipeline", "won amount", "MQL→SQL", "SQL→won"]
    if with_costs:
        names += ["cost", "per MQL", "per SQL", "ROI"]
    for name in names:
        table.add_column(name, justify="right")
    for row in data["rows"]:
        cells = [
            escape(row["value"]),
            _credits(row["mqls"]),
            _credits(row["sqls"]),
            _credits(row["opportunities"]),
            _credits(row["won"]),
            _amounts(row["pipeline_amount"]),
            _amounts(row["won_amount"]),
            percent(row["mql_to_sql"]),
            percent(row["sql_to_won"]),
        ]
        if with_costs:
            cost = row.get("cost", {})
            cells += [
                _amounts(cost),
                _amounts({k: v for k, v in row.get("cost_per_mql", {}).items() if v}),
                _amounts({k: v for k, v in row.get("cost_per_sql", {}).items() if v}),
                ", ".join(
                    f"{percent(float(v))} {cur}" for cur, v in row.get("roi", {}).items() if v
                )
                or "-",
            ]
        table.add_row(*cells)
    return table


def run_attribution(
    settings: Settings,
    rules: Rules,
    *,
    out: Console,
    console: Console,
    by: str,
    model: str,
    costs: list[Cost],
    days: int | None = None,
    since: date | None = None,
    until: date | None = None,
    charts: Path | None = None,
    as_json: bool = False,
    now: datetime | None = None,
) -> AttributionReport:
    """`leadflow report --by ...`: credited figures per value (and the chart)."""
    timezone = rules.reporting.timezone
    start, end = resolve_range(today_in(timezone, now), days, since, until)
    data = asyncio.run(read_kpi_data(settings, start, end))
    report = build_attribution(
        data.counts,
        start,
        end,
        check_dimension(by),
        check_model(model),
        costs,
        timezone,
        settings.namespace,
    )
    if as_json:
        typer.echo(orjson.dumps(attribution_to_json(report), option=orjson.OPT_INDENT_2).decode())
    if not report.has_data:
        console.print(
            f"No credited conversions between {start} and {end}. Conversions are credited "
            'by the worker as leads qualify (docs/kpis.md, "Attribution"); see '
            "[bold]leadflow report[/] for where there is KPI data."
        )
        return report
    if not as_json:
        out.print(attribution_table(report))
    if charts is not None:
        from streams.cli.charts import write_attribution_chart  # matplotlib: only when asked

        console.print(f"wrote {write_attribution_chart(report, charts)}")
    return report


# -- the command -----------------------------------------------------------------------------


def no_data_hint(settings: Settings, report: Report, data: KpiData) -> str:
    """Where there is data instead, or how KPI data comes about when there is none at all."""
    where = f"namespace {settings.namespace!r}" if settings.namespace else "the default namespace"
    if data.days_anywhere:
        first, last = data.days_anywhere[0], data.days_anywhere[-1]
        return (
            f"No KPI data between {report.start} and {report.end} in {escape(where)}; there is "
            f"data from {first} to {last}: try [bold]leadflow report --since {first} --until "
            f"{last}[/]"
        )
    return (
        f"No KPI data yet in {escape(where)} ({settings.redis_url}). KPIs are counted by "
        "the worker as leads move: run [bold]leadflow worker[/] with the same "
        "LEADFLOW_NAMESPACE and play events ([bold]leadflow produce FILE[/]), or try "
        "[bold]leadflow demo[/] and then report with its namespace."
    )


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
    report, data = asyncio.run(
        read_report(settings, rules, days=days, since=since, until=until, period=period, now=now)
    )
    if as_json:
        typer.echo(orjson.dumps(report_to_json(report), option=orjson.OPT_INDENT_2).decode())
    if not report.has_data:
        console.print(no_data_hint(settings, report, data))
        return report
    if not as_json:
        for table in render_tables(report):
            out.print(table)
        for line in notes(report):
            out.print(f"[dim]{escape(line)}[/]")
    if charts is not None:
        from streams.cli.charts import write_report_charts  # matplotlib: only when asked for

        for path in write_report_charts(report, charts):
            console.print(f"wrote {path}")
    return report


def report_command(
    days: Annotated[
        int | None, typer.Option(help="Days ending today (reporting time zone) \\[default: 28]")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First day, YYYY-MM-DD")
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last day, included \\[default: today]"),
    ] = None,
    period: Annotated[
        str, typer.Option(metavar="day|week|month", help="One row per day, ISO week or month")
    ] = "week",
    charts: Annotated[
        Path | None, typer.Option(help="Write funnel.png and trend.png to this directory")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary")] = (
        False
    ),
    by: Annotated[
        str | None,
        typer.Option(
            "--by",
            metavar="source|campaign",
            help="Attribution: credited MQLs, SQLs, opportunities, won and amounts per source "
            "or campaign (docs/kpis.md)",
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            metavar="first_touch|last_touch|linear|position_based",
            help="With --by: how a conversion is shared among its touches",
        ),
    ] = DEFAULT_MODEL,
    costs: Annotated[
        Path | None,
        typer.Option(
            help="With --by: a CSV of dimension,value,period,cost,currency; adds cost per MQL, "
            "cost per SQL and ROI"
        ),
    ] = None,
) -> None:
    """Funnel KPIs from Redis: conversion, SLA compliance, time to contact (docs/kpis.md).

    With --by source|campaign: which channels and campaigns bring the SQLs and the revenue.
    """
    # The store and Redis load only when the command runs, not for every `leadflow --help`.
    from streams.bootstrap import checked_settings

    with user_errors():
        if by is None and (costs is not None or model != DEFAULT_MODEL):
            option = "'--costs'" if costs is not None else "'--model'"
            raise typer.BadParameter("needs --by source or --by campaign", param_hint=option)
        if by is not None:
            check_dimension(by)
            check_model(model)
        try:
            cost_rows = read_costs(costs) if costs is not None else []
        except CostsError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--costs'") from None
        settings = checked_settings()
        require_services(settings, redis=True)
        if by is not None:
            run_attribution(
                settings,
                load_rules(settings.rules),
                out=out,
                console=console,
                by=by,
                model=model,
                costs=cost_rows,
                days=days,
                since=since.date() if since else None,
                until=until.date() if until else None,
                charts=charts,
                as_json=as_json,
            )
            return
        run_report(
            settings,
            load_rules(settings.rules),
            out=out,
            console=console,
            days=days,
            since=since.date() if since else None,
            until=until.date() if until else None,
            period=period,
            charts=charts,
            as_json=as_json,
        )
