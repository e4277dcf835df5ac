"""`leadflow import`: the command around streams.importer, with a progress bar and a summary.

Exit codes: 0 when it ran (even with rejects), 2 for a bad profile, mapping, option or input
file (or credentials the broker refused), 3 when Kafka is unreachable (after waiting up to
LEADFLOW_STARTUP_TIMEOUT) or the topic is missing, 1 when Kafka did not accept every record.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.markup import escape

from streams.cli.errors import fail, user_errors, waiting
from streams.cli.output import console, out

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress

    from streams.importer import CompiledMapping, ImportMapping, ImportSummary
    from streams.importer.identity import EmailIdentities
    from streams.settings import Settings


def render_summary(summary: ImportSummary, to: Console) -> None:
    from rich.table import Table

    where = "dry run, nothing produced" if summary.dry_run else f"to {summary.topic}"
    to.print(f"[bold]{escape(summary.path.name)}[/]: profile {summary.profile}, {escape(where)}")
    table = Table()
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_row("read", f"{summary.rows:,}")
    if summary.dry_run:
        table.add_row("would be produced", f"{summary.mapped:,}")
    else:
        table.add_row("produced", f"{summary.produced:,}")
    table.add_row("duplicates within the file", f"{summary.duplicates:,}")
    table.add_row("skipped (type not imported)", f"{sum(summary.skipped.values()):,}")
    for name, n in summary.skipped.most_common(10):
        table.add_row(escape(f"  {name}"), f"{n:,}", style="dim")
    if len(summary.skipped) > 10:
        rest = sum(n for _, n in summary.skipped.most_common()[10:])
        table.add_row(f"  {len(summary.skipped) - 10} more types", f"{rest:,}", style="dim")
    table.add_row("rejected", f"{sum(summary.rejected.values()):,}")
    for reason, n in summary.rejected.most_common():
        table.add_row(escape(f"  {reason}"), f"{n:,}", style="dim")
    to.print(table)
    rate = summary.rows / summary.seconds if summary.seconds > 0 else 0.0
    to.print(f"{summary.bytes_read / 1e6:,.1f} MB in {summary.seconds:,.1f} s ({rate:,.0f} rows/s)")
    if summary.rejected_file is not None:
        to.print(f"rejected rows with their reason and line: {escape(str(summary.rejected_file))}")


def summary_to_json(summary: ImportSummary) -> dict[str, Any]:
    """The summary for machines: every count of the table (skipped and rejected by type and
    reason, complete), where the rejected rows went, and the failure (if any)."""
    return {
        "path": str(summary.path),
        "profile": summary.profile,
        "topic": summary.topic,
        "dry_run": summary.dry_run,
        "rows": summary.rows,
        "mapped": summary.mapped,
        "produced": summary.produced,
        "duplicates": summary.duplicates,
        "skipped": dict(summary.skipped.most_common()),
        "rejected": dict(summary.rejected.most_common()),
        "rejected_file": None if summary.rejected_file is None else str(summary.rejected_file),
        "notes": list(summary.notes),
        "bytes_read": summary.bytes_read,
        "seconds": round(summary.seconds, 3),
        "failure": summary.failure,
    }


def _progress_bar() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TextColumn("{task.fields[rows]:,} rows"),
        TimeRemainingColumn(),
        console=console,
    )


def _run_with_progress(
    path: Path,
    chosen: ImportMapping,
    *,
    note_missing: bool,
    dry_run: bool,
    timezone: str | None,
    settings: Settings,
    known_types: frozenset[str],
    identities: EmailIdentities | None,
) -> ImportSummary:
    """Run the import; the bar starts once the mapping fits the file (after its notes) and
    Kafka answered, so an error before any row is one clear line without a bar."""
    from streams.importer import import_file

    bar = _progress_bar()
    task = bar.add_task(f"importing {path.name}", total=path.stat().st_size, rows=0)
    started: list[bool] = []

    def progress(done: int, rows: int) -> None:
        bar.update(task, completed=done, rows=rows)

    def ready(compiled: CompiledMapping) -> None:
        for note in compiled.notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
        bar.start()
        started.append(True)

    try:
        return asyncio.run(
            import_file(
                path,
                chosen,
                known_types,
                None if dry_run else settings,
                timezone=timezone,
                max_event_bytes=settings.max_event_bytes,
                note_missing=note_missing,
                identities=identities,
                progress=progress,
                on_ready=ready,
                say=waiting,
            )
        )
    finally:
        if started:
            bar.stop()


def _header_names(text: str) -> dict[str, str]:
    """--header-names: the JSON object given to Marketo as columnHeaderNames (or a file with it)."""
    from streams.importer import MappingError

    source = text
    if not text.lstrip().startswith("{"):
        try:
            source = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise MappingError(
                f"--header-names: cannot read {text}: {exc.strerror or exc}"
            ) from None
    try:
        names = orjson.loads(source)
    except orjson.JSONDecodeError as exc:
        raise MappingError(f"--header-names: not a JSON object ({exc})") from None
    if not isinstance(names, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in names.items()
    ):
        raise MappingError(
            '--header-names: expected a JSON object of column -> header, e.g. {"leadId": "Lead ID"}'
        )
    return names


async def _identity_store_call(settings: Settings, save: Any = None) -> Any:
    """Load the namespace's Redis identity map, or save pairs into it."""
    from streams.bootstrap import open_redis
    from streams.store.email_identity import EmailIdentityStore

    store = EmailIdentityStore(open_redis(settings), settings.redis_prefix)
    try:
        return await (store.save(save) if save is not None else store.load())
    finally:
        await store.close()


def _identities(identity: str, settings: Settings) -> EmailIdentities:
    """--identity FILE (a contact export) or --identity redis (saved by --save-identity)."""
    from streams.importer import MappingError
    from streams.importer.contacts import identities_from_file
    from streams.importer.identity import build_identities
    from streams.store.email_identity import email_identity_key

    if identity != "redis":
        path = Path(identity)
        if not path.is_file():
            raise MappingError(f"--identity: no file {identity} (give a contact export or 'redis')")
        return identities_from_file(path)
    leads = asyncio.run(_identity_store_call(settings))
    key = email_identity_key(settings.redis_prefix)
    if not leads:
        raise MappingError(
            f"--identity redis: the identity map {key} is empty; import a contact export first "
            "(leadflow import contacts.csv --profile hubspot-contacts --save-identity)"
        )
    return build_identities(leads.items(), f"Redis {key}")


def _save_identity(path: Path, chosen: ImportMapping, settings: Settings) -> str:
    from streams.importer.contacts import contact_pairs
    from streams.store.email_identity import email_identity_key

    saved = asyncio.run(_identity_store_call(settings, contact_pairs(path, chosen)))
    key = email_identity_key(settings.redis_prefix)
    return f"identity map: {saved:,} e-mail address(es) saved to Redis {key}"


def import_command(
    path: Annotated[
        Path,
        typer.Argument(
            help="CSV, TSV, NDJSON, JSON or XLSX export", exists=True, dir_okay=False, readable=True
        ),
    ],
    profile: Annotated[
        str | None,
        typer.Option(
            help="marketo, hubspot-events, hubspot-email-events, hubspot-contacts, pardot, "
            "mautic, or generic (the default with --mapping)"
        ),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option(help="YAML mapping: a generic export's columns, or overrides for a profile"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Map and check every row; produce nothing")
    ] = False,
    timezone: Annotated[
        str | None,
        typer.Option(help="Time zone of times without an offset (default: the mapping's, or UTC)"),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option(
            help="E-mail -> lead map for exports that name leads by address "
            "(hubspot-email-events): a contact export (CSV/XLSX, e.g. HubSpot's, Email -> "
            "Record ID), or 'redis' for the map saved by --save-identity"
        ),
    ] = None,
    save_identity: Annotated[
        bool,
        typer.Option(
            "--save-identity",
            help="Also save the file's e-mail -> lead pairs to Redis (hubspot-contacts), "
            "for a later --identity redis",
        ),
    ] = False,
    header_names: Annotated[
        str | None,
        typer.Option(
            help="Renamed headers: the JSON object given to Marketo as columnHeaderNames "
            '(e.g. \'{"leadId": "Lead ID"}\'), or a file holding it',
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object")
    ] = False,
) -> None:
    """Stream a Marketo, HubSpot, Account Engagement (Pardot), Mautic or other MA export
    (CSV, TSV, NDJSON, JSON API pages or XLSX) into the engagement topic, keyed by lead.

    Rejected rows go to FILE.rejected.csv with the reason and line.
    Event ids are stable: importing the same activities again counts them once.
    See docs/importer.md.
    """
    from streams.bootstrap import checked_settings
    from streams.core.rules import load_rules
    from streams.importer import MappingError, load_mapping, override_warnings
    from streams.kafka import KafkaUnavailable
    from streams.startup import ServiceRefused

    with user_errors():
        settings = checked_settings()
        known_types = load_rules(settings.rules).event_types
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    try:
        chosen = load_mapping(profile, mapping)
        if header_names is not None:
            chosen = chosen.model_copy(update={"header_names": _header_names(header_names)})
        if save_identity and (dry_run or chosen.email is None):
            raise MappingError(
                "--save-identity: a dry run saves nothing; drop --dry-run"
                if dry_run
                else f"--save-identity: the {chosen.name} mapping names no e-mail column "
                "(key 'email'); use --profile hubspot-contacts or set 'email' in --mapping"
            )
        if identity is not None and chosen.lead_from != "email":
            raise MappingError(
                f"--identity: the {chosen.name} mapping reads lead ids, not e-mail addresses "
                "(it is for hubspot-email-events, or a mapping with 'lead_from: email')"
            )
        identities = _identities(identity, settings) if identity is not None else None
        warnings = override_warnings(profile, mapping)
        for warning in warnings:
            console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
        summary = _run_with_progress(
            path,
            chosen,
            note_missing=profile in (None, "generic"),
            dry_run=dry_run,
            timezone=timezone,
            settings=settings,
            known_types=known_types,
            identities=identities,
        )
        saved = (
            _save_identity(path, chosen, settings)
            if save_identity and not summary.failure
            else None
        )
    except (MappingError, ServiceRefused) as exc:
        # A refused login (wrong SASL password, untrusted CA) is a configuration mistake: 2.
        raise fail(str(exc), 2) from None
    except KafkaUnavailable as exc:
        raise fail(str(exc), 3) from None
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise fail(
            f"cannot reach Redis for the identity map ({exc}); check LEADFLOW_REDIS_URL", 3
        ) from None
    if saved is not None:
        console.print(saved)
    if as_json:
        report = {**summary_to_json(summary), "warnings": warnings}
        out.file.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        out.file.write("\n")
        out.file.flush()
    else:
        render_summary(summary, out)
    if summary.failure:
        raise fail(summary.failure, 1)
