"""The inputs of `leadflow backtest`, read and checked, and the run of streams.core.backtest.

The history (NDJSON engagement events) goes through the worker's own edge validation; the
outcomes come from a CSV. Bad lines and rows are counted and quoted, not fatal; a file that
cannot be used at all is an InputError. See docs/backtest.md.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from schemas.engagement import EngagementEvent
from streams.core.backtest import (
    OUTCOME_KINDS,
    Backtest,
    BacktestError,
    Goal,
    Method,
    Outcome,
    OutcomeKind,
    Target,
    backtest,
    parse_goal,
    parse_thresholds,
)
from streams.core.durations import parse_duration
from streams.core.rules import Rules, load_rules
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import Settings

# The worker's default record size limit (LEADFLOW_MAX_EVENT_BYTES).
MAX_EVENT_BYTES: int = Settings.model_fields["max_event_bytes"].default
OUTCOME_COLUMNS = ("lead_id", "outcome", "occurred_at")
EXAMPLES = 5  # problems quoted per input file


class InputError(ValueError):
    """An input file that cannot be used at all (unreadable, missing columns)."""


# -- reading the files ---------------------------------------------------------------------


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


# -- the run -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BacktestInputs:
    """Everything a backtest runs on, read and checked."""

    rules: Rules
    thresholds: tuple[float, ...]
    goal: Goal
    window: timedelta | None
    events: EventsRead
    outcomes: OutcomesRead


def read_inputs(
    events: Path,
    outcomes: Path,
    rules: Path,
    *,
    thresholds: str,
    goal: str,
    window: str | None,
) -> BacktestInputs:
    """The rules, the options as typed (--thresholds, --goal, --window), then the files.
    Raises RulesError, BacktestError or InputError with a message naming what is wrong."""
    loaded = load_rules(rules)
    grid = parse_thresholds(thresholds)
    wanted = parse_goal(goal)
    try:
        within = parse_duration(window) if window else None
    except ValueError as exc:
        raise BacktestError(f"--window: {exc}") from None
    return BacktestInputs(
        rules=loaded,
        thresholds=grid,
        goal=wanted,
        window=within,
        events=read_events(events, loaded),
        outcomes=read_outcomes(outcomes),
    )


def run_backtest(inputs: BacktestInputs, target: Target, method: Method) -> Backtest:
    return backtest(
        inputs.events.events,
        inputs.outcomes.outcomes,
        inputs.rules,
        inputs.thresholds,
        inputs.goal,
        target=target,
        window=inputs.window,
        method=method,
    )


# -- how durations are written (the tables and the chart share these) ---------------------


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
