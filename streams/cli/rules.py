"""`leadflow rules check`: validate a rules file and show what every rule is worth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.table import Table

from streams.cli.errors import user_errors
from streams.cli.output import out
from streams.core.durations import format_duration
from streams.core.rules import Rules, load_rules
from streams.settings import load_settings


def rules_check(
    path: Annotated[
        Path | None, typer.Argument(help="Rules file (default: LEADFLOW_RULES)")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the checked rules as one JSON object")
    ] = False,
) -> None:
    """Validate a rules file and show what it does."""
    with user_errors():
        chosen = path or load_settings().rules
        rules = load_rules(chosen)
    if as_json:
        body = orjson.dumps(rules_to_json(rules, chosen), option=orjson.OPT_INDENT_2)
        out.file.write(body.decode() + "\n")
        out.file.flush()
        return
    out.print(points_table(rules))
    out.print(qualification_summary(rules))


def rules_to_json(rules: Rules, path: Path) -> dict[str, Any]:
    """What `rules check` shows, for machines: the rules with their points, the MQL condition,
    decay and SLA (durations as the rules file writes them: `24h`), the event types accepted."""
    return {
        "path": str(path),
        "valid": True,
        "version": rules.version,
        "rules": [
            {
                "kind": "engagement",
                "name": name,
                "points": rule.points,
                "cap_per_day": rule.cap_per_day,
            }
            for name, rule in rules.engagement.items()
        ]
        + [{"kind": "fit", "name": fit.describe(), "points": fit.points} for fit in rules.fit],
        "mql": {
            "threshold": rules.mql.threshold,
            "min_fit": rules.mql.min_fit,
            "min_engagement": rules.mql.min_engagement,
        },
        "decay_half_life": format_duration(rules.decay.half_life) if rules.decay else None,
        "first_contact_due": format_duration(rules.sla.mql_first_contact),
        "event_types": sorted(rules.event_types),
        "summary": qualification_summary(rules),
    }


def points_table(rules: Rules) -> Table:
    """One row per engagement and fit rule, with the points it adds."""
    table = Table(title=f"rules {rules.version}")
    table.add_column("rule")
    table.add_column("points", justify="right")
    for name, rule in rules.engagement.items():
        cap = f" (cap {rule.cap_per_day:g}/day)" if rule.cap_per_day else ""
        table.add_row(escape(f"engagement: {name}{cap}"), f"{rule.points:+g}")
    for fit in rules.fit:
        table.add_row(escape(f"fit: {fit.describe()}"), f"{fit.points:+g}")
    return table


def qualification_summary(rules: Rules) -> str:
    """When a lead becomes an MQL, how engagement decays and when first contact is due."""
    return (
        f"MQL at score >= {rules.mql.threshold:g}"
        + (f", fit >= {rules.mql.min_fit:g}" if rules.mql.min_fit is not None else "")
        + (f", engagement >= {rules.mql.min_engagement:g}" if rules.mql.min_engagement else "")
        + (
            f"; engagement half-life {format_duration(rules.decay.half_life)}"
            if rules.decay
            else "; no decay"
        )
        + f"; first contact due {format_duration(rules.sla.mql_first_contact)} after handoff"
        + routing_summary(rules)
    )


def routing_summary(rules: Rules) -> str:
    """Who gets the MQLs: each queue's members (with weights) and escalation."""
    if rules.routing is None:
        return ""  # owners come from sales activity
    queues = []
    for q in rules.routing.queues:
        members = ", ".join(m.owner + (f" x{m.weight}" if m.weight != 1 else "") for m in q.members)
        escalate = f" -> {q.escalate_to}" if q.escalate_to else ""
        queues.append(f"{q.name} ({members}{escalate})")
    return "; routed to " + "; ".join(queues)
