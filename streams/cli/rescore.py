"""`leadflow rescore --rules FILE`: rebuild every lead under new rules while workers run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from streams.cli.errors import fail, require_services, user_errors
from streams.cli.output import out, progress_bar
from streams.core.rules import load_rules
from streams.settings import load_settings

if TYPE_CHECKING:
    from streams.jobs.rescore import RescoreSummary


def rescore_command(
    rules_path: Annotated[Path, typer.Option("--rules", help="The new rules file")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    keep_previous: Annotated[
        bool, typer.Option(help="Keep the previous key space in Redis (for inspection)")
    ] = False,
) -> None:
    """Rebuild every lead under new rules from the engagement log and switch over atomically.

    Workers keep running; they pause for the final catch-up, then continue on the new key space
    with the new rules. Leads already handed off keep their stage and handoff; leads that
    qualify only under the new rules are handed off after the switch.
    """
    from streams.jobs.rescore import RescoreError, run_rescore

    with user_errors():
        settings = load_settings()
        rules = load_rules(rules_path)
        require_services(settings, kafka=True, redis=True, topics=[settings.engagement])
    if not yes:
        typer.confirm(
            f"Rebuild every lead in namespace '{settings.namespace}' under rules {rules.version} "
            f"from {settings.engagement} and switch the live workers to it?",
            abort=True,
        )
    try:
        with progress_bar(f"replaying {settings.engagement}") as advance:
            summary = run_rescore(settings, rules, advance, keep_previous)
    except RescoreError as exc:  # after the bar is gone: the error is the last line
        raise fail(str(exc), 1) from None
    out.print(outcome(summary))


def outcome(summary: RescoreSummary) -> str:
    """The switch and what it did to the leads, in one line."""
    return (
        f"key space {summary.live_generation} -> {summary.new_generation}, rules "
        f"{summary.old_rules_version} -> {summary.new_rules_version}: {summary.records} records "
        f"replayed ({summary.invalid} invalid skipped, {summary.catch_up_records} caught up), "
        f"{summary.leads_rebuilt} leads rebuilt, {summary.leads_kept} kept as they were, "
        f"{summary.new_handoffs} new MQLs handed off, in {summary.seconds:.1f}s"
    )
