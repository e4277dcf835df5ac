"""`leadflow migrate`: move a namespace's Redis keys into the current key layout."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from streams.cli.errors import fail, require_services, user_errors
from streams.cli.output import out, progress_bar
from streams.settings import load_settings, redact_url

if TYPE_CHECKING:
    from streams.jobs.migrate import MigrateSummary


def migrate_command(
    from_url: Annotated[
        str | None,
        typer.Option(
            "--from-url",
            help="The Redis holding the old keys (default: LEADFLOW_REDIS_URL, migrated in place)",
        ),
    ] = None,
    from_cluster: Annotated[
        bool, typer.Option("--from-cluster", help="--from-url is a node of a Redis Cluster")
    ] = False,
    from_partitions: Annotated[
        int | None,
        typer.Option(
            "--from-partitions",
            min=1,
            help="Re-lay keys written for this many partitions (after partitions were added to "
            "the topics) instead of moving keys of the layout before 0.9",
        ),
    ] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the old keys in place")] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
) -> None:
    """Move this namespace's Redis keys into the current layout (hash-tagged by partition, as
    Redis Cluster needs: docs/operations.md, "Redis key layout"). Stop every worker first.

    Moves the live lead states, input offsets, undelivered outputs, deadline reminders, KPI
    counters and the generation record; the target is LEADFLOW_REDIS_URL (a cluster with
    LEADFLOW_REDIS_CLUSTER=true) laid out for LEADFLOW_TOPIC_PARTITIONS partitions.
    """
    from streams.jobs.migrate import AlreadyMigrated, MigrateError, run_migrate

    with user_errors():
        settings = load_settings()
        require_services(settings, redis=True)
    source = redact_url(from_url) if from_url else "this Redis"
    if not yes:
        typer.confirm(
            f"Move namespace '{settings.namespace}' from {source} into the current layout "
            f"({settings.topic_partitions} partitions)? Every worker must be stopped.",
            abort=True,
        )
    try:
        with progress_bar("moving keys") as advance:
            summary = run_migrate(
                settings,
                from_url=from_url,
                from_cluster=from_cluster,
                from_partitions=from_partitions,
                keep=keep,
                progress=advance,
            )
    except AlreadyMigrated as exc:
        out.print(str(exc))
        return
    except MigrateError as exc:  # after the bar is gone: the error is the last line
        raise fail(str(exc)) from None
    out.print(outcome(summary))


def outcome(summary: MigrateSummary) -> str:
    skipped = ", ".join(f"{n} {what}" for what, n in sorted(summary.skipped.items()))
    return (
        f"migrated from the {summary.source} to {summary.partitions} partitions "
        f"(generation {summary.generation}): {summary.leads} leads, {summary.offsets} offsets, "
        f"{summary.outbox} undelivered outputs, {summary.reminders} reminders, KPIs of "
        f"{summary.kpi_days} days; {summary.deleted} old keys deleted"
        + (f"; left in place: {skipped}" if skipped else "")
    )
