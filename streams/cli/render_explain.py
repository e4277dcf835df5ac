"""The rich view of `leadflow explain`: the score line, then reasons, recent events,
deadlines and stage history as tables (pure formatting; printed on `out`)."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.markup import escape
from rich.table import Table

from schemas.explain import LeadExplanation
from streams.cli.output import out
from streams.core.durations import format_duration


def print_explanation(e: LeadExplanation) -> None:
    """Print why the lead has its score, every part of the explanation in turn."""
    for line in header(e):
        out.print(line)
    _print_table(
        "reasons",
        ["kind", "rule", "points", "events"],
        reason_rows(e),
        "nothing scores yet",
    )
    _print_table(
        "recent events (points as counted, before decay)",
        ["occurred_at", "type", "event_id", "points"],
        event_rows(e),
        "none",
    )
    _print_table(
        f"deadlines at {timestamp(e.now)} (open first)",
        ["kind", "handoff", "due", "owner", "status"],
        deadline_rows(e),
        "none",
    )
    _print_table(
        "stage history",
        ["at", "from", "to", "reason"],
        [[timestamp(j.at), j.from_stage, j.to_stage, escape(j.reason or "")] for j in e.journey],
        "no stage changes yet",
    )


# tests/unit/core/test_explain.py renders through this name.
_print_explanation = print_explanation


def header(e: LeadExplanation) -> list[str]:
    """The score against the threshold (and what blocks the MQL), then where it comes from."""
    to_mql = "" if e.points_to_mql is None else f", {e.points_to_mql:g} points to MQL"
    blocked = f" [yellow]({escape('; '.join(e.mql_blockers))})[/]" if e.mql_blockers else ""
    return [
        f"[bold]{escape(e.lead_id)}[/]  stage [bold cyan]{e.stage}[/]  score [bold]{e.score:g}[/] "
        f"vs threshold {e.threshold:g}{to_mql}{blocked}",
        f"[dim]fit {e.fit_score:g} + engagement {e.engagement_score:g} "
        f"(as of {timestamp(e.engagement_as_of)}); rules {e.rules_version}; "
        f"handoff {e.handoff_id or '-'}; owner {escape(e.owner or '-')}"
        + (f"; missing BANT {', '.join(e.missing_bant)}" if e.missing_bant else "")
        + "[/]",
        *([routing_line(e)] if e.routing is not None else []),
        *([attribution_line(e)] if e.attribution is not None and e.handoff_id else []),
    ]


def attribution_line(e: LeadExplanation) -> str:
    """Who is credited with this qualification's conversions, and its deals."""
    a = e.attribution
    assert a is not None
    credit = ", ".join(f"{source} {share:.0%}" for source, share in a.credit_by_source.items())
    deals = [
        f"{what} {d.amount} {d.currency}" if d.amount else what
        for what, d in (("opportunity", a.opportunity), ("won", a.won))
        if d is not None
    ]
    return (
        f"[dim]credited (position-based, {len(a.touches)} touches): {escape(credit)}"
        + (f"; {escape(', '.join(deals))}" if deals else "")
        + "[/]"
    )


def routing_line(e: LeadExplanation) -> str:
    """How the owner was chosen at the latest handoff."""
    r = e.routing
    assert r is not None
    why = {
        "round_robin": "its turn in the weighted rotation",
        "no_capacity": "everyone in the queue away or at capacity: escalated",
        "no_queue": "no queue matched",
    }[r.reason]
    skipped = f"; passed over {', '.join(r.passed_over)}" if r.passed_over else ""
    queue = f"queue {r.queue}: " if r.queue else ""
    return f"[dim]routed: {escape(queue)}{escape(r.owner or 'nobody')} ({why}){escape(skipped)}[/]"


def reason_rows(e: LeadExplanation) -> list[list[str]]:
    return [
        [r.kind, escape(r.rule), points(r.points), "" if r.events is None else str(r.events)]
        for r in e.reasons
    ]


def event_rows(e: LeadExplanation) -> list[list[str]]:
    return [
        [timestamp(ev.occurred_at), escape(ev.type), escape(ev.event_id), points(ev.points)]
        for ev in e.recent_events
    ]


def deadline_rows(e: LeadExplanation) -> list[list[str]]:
    """Open deadlines first (overdue ones in red), then the clocks already met or missed."""
    rows = []
    for d in e.open_deadlines:
        if d.overdue:
            state = f"[bold red]OVERDUE[/] by {span(d.due_at, e.now)}"
        else:
            state = f"open, due in {span(e.now, d.due_at)}"
        rows.append([d.kind, d.handoff_id, timestamp(d.due_at), escape(d.owner or "-"), state])
    for c in e.clocks:
        if c.status == "open":
            continue
        state = f"{c.status} {timestamp(c.ended_at)}"
        if c.late_action_at is not None:
            state += f", late action {timestamp(c.late_action_at)}"
        rows.append([c.kind, c.handoff_id, timestamp(c.due_at), escape(c.owner or "-"), state])
    return rows


def points(value: float) -> str:
    """Signed, without trailing zeros: +25, -2.5."""
    return f"{value:+.2f}".rstrip("0").rstrip(".")


def timestamp(at: datetime | None) -> str:
    return "-" if at is None else f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def span(start: datetime, end: datetime) -> str:
    """The time between two moments, to the second."""
    return format_duration(end.replace(microsecond=0) - start.replace(microsecond=0))


def _print_table(title: str, columns: list[str], rows: list[list[str]], empty: str) -> None:
    if not rows:
        out.print(f"[bold]{title}[/]: [dim]{empty}[/]")
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in ("points", "events") else "left")
    for row in rows:
        table.add_row(*row)
    out.print(table)
