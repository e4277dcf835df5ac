"""`leadflow rules check`: validate a rules file and show what every rule is worth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
) -> None:
    """Validate a rules file and show what it does."""
    with user_errors():
        rules = load_rules(path or load_settings().rules)
    out.print(points_table(rules))
    out.print(qualification_summary(rules))


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
    )
