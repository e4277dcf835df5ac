"""`leadflow backtest`: the shell around streams.core.backtest.

Reads the history (NDJSON engagement events, validated exactly as the worker validates them)
and the outcomes (CSV), runs the pure backtest, and renders it: rich tables, a PNG chart,
or JSON. Nothing here scores a lead; see streams/core/backtest.py and docs/backtest.md.
"""

from __future__ import annotations

import csv
import math
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from schemas.engagement import EngagementEvent
from streams.core.backtest import (
    OUTCOME_KINDS,
    Backtest,
    BacktestError,
    Outcome,
    OutcomeKind,
    ThresholdResult,
    backtest,
    parse_goal,
    parse_thresholds,
)
from streams.core.durations import parse_duration
from streams.core.rules import Rules, RulesError, load_rules
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import Settings

console = Console(stderr=True)
out = Console()

# The worker's default record size limit (LEADFLOW_MAX_EVENT_BYTES).
MAX_EVENT_BYTES: int = Settings.model_fields["max_event_bytes"].default
OUTCOME_COLUMNS = ("lead_id", "outcome", "occurred_at")
EXAMPLES = 5  # problems quoted per input file


class InputError(ValueError):
    """An input file that cannot be used at all (unreadable, missing columns)."""


class TargetChoice(StrEnum):
    opportunity = "opportunity"
    won = "won"


class MethodChoice(StrEnum):
    trajectory = "trajectory"
    replay = "replay"


# --------------------------------------------------------------------------------------------
# Reading


@dataclass
class EventsRead:
    events: list[EngagementEvent]
    lines: int = 0  # non-blank lines
    invalid: Counter[str] = field(default_factory=Counter)  # dead-letter kind -> lines
    examples: list[str] = field(default_factory=list)


def read_events(path: Path, rules: Rules) -> EventsRead:
    """Every line through the worker's own edge validation; bad lines are counted, not fatal."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read events file {path}: {exc.strerror}") from None
    result = EventsRead(events=[])
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        result.lines += 1
        where = RecordLocation(topic=str(path), partition=0, offset=number)
        parsed = parse_engagement(None, line, where, rules.event_types, MAX_EVENT_BYTES)
        if isinstance(parsed, DeadLetter):
            kind = parsed.headers.error_kind.value
            result.invalid[kind] += 1
            if len(result.examples) < EXAMPLES:
                result.examples.append(f"line {number}: {kind}: {parsed.headers.error_message}")
        else:
            result.events.append(parsed)
    return result


@dataclass
class OutcomesRead:
    outcomes: list[Outcome]
    rows: int = 0
    invalid: int = 0
    examples: list[str] = field(default_factory=list)


def _outcome_time(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"occurred_at {text!r} is not an ISO 8601 time") from None
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"occurred_at {text!r} needs a UTC offset (e.g. Z or +09:00)")
    return at


def parse_outcome_row(row: dict[str, str | None]) -> Outcome:
    """One CSV row (keys already lower-case); raise ValueError naming what is wrong."""
    lead_id = (row.get("lead_id") or "").strip()
    if not lead_id:
        raise ValueError("empty lead_id")
    kind = (row.get("outcome") or "").strip().lower()
    if kind not in OUTCOME_KINDS:
        raise ValueError(f"outcome {kind!r} is not one of {', '.join(OUTCOME_KINDS)}")
    outcome: OutcomeKind = kind
    text = (row.get("occurred_at") or "").strip()
    if outcome == "none":
        return Outcome(lead_id, outcome, None)
    if not text:
        raise ValueError(f"occurred_at is required for outcome {kind!r}")
    return Outcome(lead_id, outcome, _outcome_time(text))


def read_outcomes(path: Path) -> OutcomesRead:
    """The outcomes CSV (header row; extra columns ignored); bad rows are counted, not fatal."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read outcomes file {path}: {reason}") from None
    reader = csv.DictReader(text.splitlines())
    header = [(name or "").strip().lower() for name in reader.fieldnames or []]
    missing = [c for c in OUTCOME_COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"{path}: missing column(s) {', '.join(missing)}; the header must name "
            f"{', '.join(OUTCOME_COLUMNS)} (see docs/backtest.md)"
        )
    reader.fieldnames = header
    result = OutcomesRead(outcomes=[])
    for row in reader:
        result.rows += 1
        try:
            result.outcomes.append(parse_outcome_row(row))
        except ValueError as exc:
            result.invalid += 1
            if len(result.examples) < EXAMPLES:
                # line_num counts physical lines read so far: the header is line 1.
                result.examples.append(f"line {reader.line_num}: {exc}")
    return result


# --------------------------------------------------------------------------------------------
# Rendering


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ratio(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def human_duration(value: timedelta | None) -> str:
    """'12d 4h', '30d', '5h 30m', '45m' (to the minute)."""
    if value is None:
        return "-"
    minutes = round(value.total_seconds() / 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m"


def short_duration(value: timedelta | None) -> str:
    """'12.9d', '5.2h', for a column of comparable numbers."""
    if value is None:
        return "-"
    days = value.total_seconds() / 86400
    return f"{days:.1f}d" if days >= 1 else f"{days * 24:.1f}h"


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


def lift_table(report: Backtest) -> Table:
    table = Table(
        title="Which rules carry lift: conversion of leads with the rule vs without",
        caption="leads: where the rule contributed, as of the outcome. Ranked by the lower "
        "end of the 95% CI; green: reliably above 1, red: below",
        title_justify="left",
        caption_justify="left",
    )
    rows = []
    for item in report.lifts:
        interval = item.interval
        span = f"{interval[0]:.2f}-{interval[1]:.2f}" if interval else "-"
        strong = interval is not None and interval[0] > 1
        weak = interval is not None and interval[1] < 1
        values = [
            f"{item.points:+g}",
            str(item.with_leads),
            _share(item.rate_with),
            _share(item.rate_without),
            _ratio(item.lift),
            span,
        ]
        rows.append((item, values, "green" if strong else ("red" if weak else None)))
    labels = [f"fit: {item.rule}" if item.kind == "fit" else item.rule for item, _, _ in rows]
    table.add_column("rule", overflow="fold")  # a narrow terminal folds names, keeps numbers
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


# --------------------------------------------------------------------------------------------
# The chart


def write_chart(report: Backtest, path: Path) -> None:
    """Precision, recall and F1 against the threshold, MQL volume behind them, both marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    def values(pick: Any) -> list[float]:
        return [math.nan if (v := pick(r)) is None else v for r in report.rows]

    x = [r.threshold for r in report.rows]
    fig = Figure(figsize=(10, 5.6), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    volume = ax.twinx()
    step = min((b - a for a, b in pairwise(x)), default=1.0)
    volume.bar(x, [r.mqls for r in report.rows], width=step * 0.8, color="#d9d9d9", zorder=0)
    volume.set_ylabel("MQLs handed off (bars)", color="#777777")
    volume.tick_params(axis="y", colors="#777777")
    ax.set_zorder(volume.get_zorder() + 1)
    ax.patch.set_visible(False)
    precision = values(lambda r: r.precision)
    recall = values(lambda r: r.recall)
    f1 = values(lambda r: r.f1)
    ax.plot(x, precision, color="#1f77b4", lw=2, label="precision")
    ax.plot(x, recall, color="#ff7f0e", lw=2, label="recall")
    ax.plot(x, f1, color="#2ca02c", lw=2.5, ls="--", label="F1")
    highest = max(
        (v for pick in (precision, recall, f1) for v in pick if not math.isnan(v)), default=1
    )
    ax.set_ylim(0, min(1.05, math.ceil((highest + 0.08) * 10) / 10))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("MQL threshold (fit + engagement score)")
    ax.set_ylabel("precision / recall / F1")
    ax.grid(True, alpha=0.3)
    current = report.current.threshold
    best = report.recommended.threshold if report.recommended is not None else None
    ax.axvline(current, color="#555555", ls=":", lw=1.8, label=f"current {current:g}")
    labels = [(current, "#555555", f"current {current:g}")]
    if best is not None:
        ax.axvline(best, color="#d62728", ls="-", lw=1.8, label=f"recommended {best:g}")
        labels = (
            [(best, "#d62728", f"recommended = current {best:g}")]
            if best == current
            else [(best, "#d62728", f"recommended {best:g}"), *labels]
        )
    if report.goal.target is not None:
        line = {"recall": "#ff7f0e", "precision": "#1f77b4"}.get(report.goal.kind, "#555555")
        ax.axhline(report.goal.target, color=line, ls="-.", lw=1, alpha=0.8)
        ax.annotate(
            f"{report.goal.kind} target {report.goal.target:.0%}",
            xy=(1.0, report.goal.target),
            xycoords=("axes fraction", "data"),
            xytext=(-5, 3),
            textcoords="offset points",
            ha="right",
            va="bottom",
            color=line,
            fontsize=9,
        )
    for i, (at, color, text) in enumerate(labels):
        # Each label on the side facing away from the other line, so they never cross it.
        right = best is None or best == current or (at == best) == (best > current)
        ax.annotate(
            text,
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(5 if right else -5, -4 - 14 * i),
            textcoords="offset points",
            ha="left" if right else "right",
            va="top",
            color=color,
            fontsize=9,
            fontweight="bold",
        )
    ax.legend(loc="center right", framealpha=0.9, fontsize=9)
    window = f", within {human_duration(report.window)}" if report.window else ""
    fig.suptitle("Backtest: precision, recall and F1 by MQL threshold", fontweight="bold")
    ax.set_title(
        f"{report.leads} leads, {report.converted} converted ({report.target}{window}); "
        f"goal {report.goal}; rules {report.rules.version}",
        fontsize=9,
        color="#444444",
    )
    fig.savefig(path, format="png")


# --------------------------------------------------------------------------------------------
# The command


@contextmanager
def _user_errors() -> Iterator[None]:
    try:
        yield
    except (RulesError, BacktestError, InputError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None


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
    with _user_errors():
        rules = load_rules(rules_path)
        grid = parse_thresholds(thresholds)
        wanted = parse_goal(goal)
        try:
            within = parse_duration(window) if window else None
        except ValueError as exc:
            raise BacktestError(f"--window: {exc}") from None
        read = read_events(events, rules)
        known = read_outcomes(outcomes)
    report = backtest(
        read.events,
        known.outcomes,
        rules,
        grid,
        wanted,
        target="won" if target is TargetChoice.won else "opportunity",
        window=within,
        method="replay" if method is MethodChoice.replay else "trajectory",
    )
    if chart is not None:
        try:
            write_chart(report, chart)
        except OSError as exc:
            console.print(f"[bold red]error:[/] cannot write chart {chart}: {exc.strerror}")
            raise typer.Exit(2) from None
    if as_json:
        body = orjson.dumps(to_json(report, read, known), option=orjson.OPT_INDENT_2)
        sys.stdout.write(body.decode() + "\n")
    else:
        render(report, read, known)
        if chart is not None:
            out.print(f"chart written to {escape(str(chart))}")
