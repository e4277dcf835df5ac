"""`leadflow backtest`: the command, and its tables, summary and JSON.

The inputs are read by streams.jobs.backtest, the scoring replay is streams.core.backtest,
the chart is drawn by streams.cli.charts. See docs/backtest.md.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from streams.cli.errors import fail, user_errors
from streams.cli.output import out
from streams.core.backtest import Backtest, BacktestError, Lift, ThresholdResult
from streams.jobs.backtest import (
    EventsRead,
    InputError,
    OutcomesRead,
    human_duration,
    read_inputs,
    run_backtest,
    short_duration,
)


class TargetChoice(StrEnum):
    opportunity = "opportunity"
    won = "won"


class MethodChoice(StrEnum):
    trajectory = "trajectory"
    replay = "replay"


# -- the tables and the summary ------------------------------------------------------------


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mark(row: ThresholdResult, report: Backtest) -> tuple[str, str | None]:
    recommended = report.recommended is not None and row.threshold == report.recommended.threshold
    current = row.threshold == report.current.threshold
    if recommended and current:
        return "◀ keep current", "bold green"
    if recommended:
        return "◀ recommended", "bold green"
    if current:
        return "◀ current", "bold cyan"
    return "", None


def threshold_table(report: Backtest) -> Table:
    window = f", within {human_duration(report.window)}" if report.window else ""
    table = Table(
        title=f"MQL threshold backtest (target: {report.target}{window}; goal: {report.goal})",
        caption="lead time: median from MQL to outcome, over the hits",
        title_justify="left",
        caption_justify="left",
    )
    cells = [
        [
            f"{row.threshold:g}",
            str(row.mqls),
            str(row.hits),
            str(row.late),
            _share(row.precision),
            _share(row.recall),
            _ratio(row.f1, 3),
            short_duration(row.median_lead_time),
        ]
        for row in report.rows
    ]
    names = ("threshold", "MQLs", "hits", "late", "precision", "recall", "F1", "lead time")
    for i, name in enumerate(names):
        # A narrow terminal shortens the headers, never the numbers.
        widest = max((len(c[i]) for c in cells), default=1)
        table.add_column(name, justify="right", min_width=widest)
    table.add_column("", no_wrap=True)
    for row, values in zip(report.rows, cells, strict=True):
        mark, style = _mark(row, report)
        table.add_row(*values, mark, style=style)
    return table


# Lift tables by source and campaign show this many values (--json has them all).
TOUCH_LIFT_ROWS = 15


def lift_table(report: Backtest, by: str = "rule") -> Table:
    """Lift by rule, or (by="source" / "campaign") by the touches' source or campaign."""
    if by == "rule":
        items: Sequence[Lift] = report.lifts
        title = "Which rules carry lift: conversion of leads with the rule vs without"
        caption = "leads: where the rule contributed, as of the outcome"
    else:
        every = report.lifts_by_source if by == "source" else report.lifts_by_campaign
        items = every[:TOUCH_LIFT_ROWS]
        title = f"Which {by}s carry lift: conversion of leads touched by the {by} vs not"
        caption = f"leads: with a touch from the {by} as of the outcome (docs/kpis.md)"
        if len(every) > len(items):
            caption += f"; the top {len(items)} of {len(every)}, --json has all"
    table = Table(
        title=title,
        caption=caption + ". Ranked by the lower end of the 95% CI; green: reliably above 1, "
        "red: below",
        title_justify="left",
        caption_justify="left",
    )
    rows = []
    for item in items:
        interval = item.interval
        span = f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-"
        strong = interval is not None and interval[0] > 1
        weak = interval is not None and interval[1] < 1
        values = [
            f"{item.points:+g}" if item.kind in ("fit", "engagement") else "-",
            str(item.with_leads),
            _share(item.rate_with),
            _share(item.rate_without),
            _ratio(item.lift),
            span,
        ]
        rows.append((item, values, "green" if strong else ("red" if weak else None)))
    labels = [f"fit: {item.rule}" if item.kind == "fit" else item.rule for item, _, _ in rows]
    table.add_column(by, overflow="fold")  # a narrow terminal folds names, keeps numbers
    names = ("points", "leads", "with", "without", "lift", "95% CI")
    for i, name in enumerate(names):
        widest = max((len(values[i]) for _, values, _ in rows), default=1)
        table.add_column(name, justify="right", min_width=widest)
    for label, (_, values, style) in zip(labels, rows, strict=True):
        table.add_row(escape(label), *values, style=style)
    return table


def _change(label: str, old: float | None, new: float | None, fmt: str = "share") -> str:
    if fmt == "share":
        return f"{label} {_share(old)} -> {_share(new)}"
    return f"{label} {_ratio(old, 3)} -> {_ratio(new, 3)}"


def summary(report: Backtest) -> str:
    current, best = report.current, report.recommended
    if best is None:
        return f"[bold yellow]No recommendation[/]: {escape(report.why)}."
    if best.threshold == current.threshold:
        return (
            f"[bold green]Keep the threshold at {best.threshold:g}[/]: {escape(report.why)}; "
            f"{best.mqls} MQLs, precision {_share(best.precision)}, recall {_share(best.recall)}."
        )
    return (
        f"[bold green]Recommended threshold {best.threshold:g}[/] ({escape(report.why)}) "
        f"instead of {current.threshold:g}: MQLs {current.mqls} -> {best.mqls}, "
        + ", ".join(
            [
                _change("precision", current.precision, best.precision),
                _change("recall", current.recall, best.recall),
                _change("F1", current.f1, best.f1, "ratio"),
            ]
        )
        + f", median lead time {short_duration(current.median_lead_time)} -> "
        f"{short_duration(best.median_lead_time)}."
    )


def input_summary(report: Backtest, events: EventsRead, outcomes: OutcomesRead) -> list[str]:
    lines = [
        f"[bold]backtest[/] of rules {report.rules.version}: {len(events.events)} events "
        f"({events.lines} lines), {report.leads} leads, {report.converted} converted "
        f"({report.target}); event-time replay ({report.method})"
    ]
    if events.invalid:
        kinds = ", ".join(f"{k} {n}" for k, n in events.invalid.most_common())
        lines.append(
            f"[yellow]{sum(events.invalid.values())} invalid event lines skipped[/] ({kinds})"
        )
    if outcomes.invalid:
        lines.append(
            f"[yellow]{outcomes.invalid} of {outcomes.rows} outcome rows skipped[/]: "
            + escape("; ".join(outcomes.examples[:3]))
        )
    if report.converted_without_events:
        lines.append(
            f"[dim]{report.converted_without_events} converted leads have no events in the "
            "history and are left out[/]"
        )
    lines.extend(f"[dim]{escape(note)}[/]" for note in report.notes)
    return lines


def render(report: Backtest, events: EventsRead, outcomes: OutcomesRead) -> None:
    for line in input_summary(report, events, outcomes):
        out.print(line)
    out.print(threshold_table(report))
    out.print(summary(report))
    out.print(lift_table(report))
    for by in ("source", "campaign"):
        if getattr(report, f"lifts_by_{by}"):
            out.print(lift_table(report, by))


def to_json(report: Backtest, events: EventsRead, outcomes: OutcomesRead) -> dict[str, Any]:
    return {
        **report.to_json(),
        "input": {
            "event_lines": events.lines,
            "events": len(events.events),
            "invalid_event_lines": sum(events.invalid.values()),
            "invalid_event_kinds": dict(events.invalid),
            "invalid_event_examples": events.examples,
            "outcome_rows": outcomes.rows,
            "invalid_outcome_rows": outcomes.invalid,
            "invalid_outcome_examples": outcomes.examples,
        },
    }


# -- the command ---------------------------------------------------------------------------


def backtest_command(
    events: Annotated[
        Path, typer.Option("--events", help="History: NDJSON engagement events (the contract)")
    ],
    outcomes: Annotated[
        Path, typer.Option("--outcomes", help="CSV: lead_id, outcome, occurred_at")
    ],
    rules_path: Annotated[Path, typer.Option("--rules", help="Rules file to tune")],
    thresholds: Annotated[
        str, typer.Option(help="start:stop:step (stop included) or a list: 60,80,100")
    ] = "40:200:5",
    goal: Annotated[
        str, typer.Option(help="f1, recall:0.8 (fewest MQLs reaching it) or precision:0.3")
    ] = "f1",
    window: Annotated[
        str | None,
        typer.Option(help="Count an MQL only if the outcome followed within this, e.g. 90d"),
    ] = None,
    target: Annotated[
        TargetChoice, typer.Option(help="What counts as converted (won: only won deals)")
    ] = TargetChoice.opportunity,
    method: Annotated[
        MethodChoice,
        typer.Option(help="trajectory: one replay; replay: a full replay per threshold"),
    ] = MethodChoice.trajectory,
    chart: Annotated[
        Path | None, typer.Option(help="Write a PNG of precision/recall/F1 by threshold")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Tune the MQL threshold on history: replay it through the scoring core, score it
    against outcomes (opportunities, wins) and recommend a threshold. See docs/backtest.md.
    """
    with user_errors(BacktestError, InputError):
        inputs = read_inputs(
            events, outcomes, rules_path, thresholds=thresholds, goal=goal, window=window
        )
    report = run_backtest(
        inputs,
        target="won" if target is TargetChoice.won else "opportunity",
        method="replay" if method is MethodChoice.replay else "trajectory",
    )
    if chart is not None:
        _write_chart(report, chart)
    if as_json:
        body = orjson.dumps(
            to_json(report, inputs.events, inputs.outcomes), option=orjson.OPT_INDENT_2
        )
        sys.stdout.write(body.decode() + "\n")
    else:
        render(report, inputs.events, inputs.outcomes)
        if chart is not None:
            out.print(f"chart written to {escape(str(chart))}")


def _write_chart(report: Backtest, path: Path) -> None:
    from streams.cli.charts import write_backtest_chart  # matplotlib: only when asked for

    try:
        write_backtest_chart(report, path)
    except OSError as exc:
        raise fail(f"cannot write chart {path}: {exc.strerror}", 2) from None
