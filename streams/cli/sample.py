"""`leadflow sample generate`: a deterministic engagement history to play or import."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from streams.cli.errors import fail
from streams.cli.output import out


def parse_start(value: str) -> datetime:
    """A date (`2026-11-02`, midnight UTC) or a time (RFC 3339; UTC when it has no offset)."""
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise fail(
            f"--start: {value!r} is not a date (YYYY-MM-DD) or time (YYYY-MM-DDTHH:MM:SS+00:00)", 2
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def sample_generate(
    output: Annotated[Path, typer.Option("--out", help="NDJSON file to write")],
    leads: int = 200,
    events: int = 2000,
    seed: int = 7,
    invalid_every: Annotated[int, typer.Option(help="A broken record after every N")] = 100,
    duplicate_every: Annotated[int, typer.Option(help="Re-send every Nth event")] = 50,
    start: Annotated[
        str | None,
        typer.Option(
            help="When the history starts: a date (YYYY-MM-DD, UTC) or an RFC 3339 time "
            "[default: so that it ends now]",
            show_default=False,
        ),
    ] = None,
    days: Annotated[float, typer.Option(help="How many days the history spans")] = 14.0,
) -> None:
    """Write a deterministic, realistic engagement history (with some bad records).

    The same seed and --start give the same file; without --start the history ends now, so the
    first-contact clocks of leads that qualify late in it are still open when it is played.
    """
    from streams.jobs.sample import generate

    if days <= 0:
        raise fail(f"--days: must be more than 0, got {days:g}", 2)
    # Whole seconds: a sample made twice in the same second is the same file.
    begin = (
        parse_start(start)
        if start is not None
        else datetime.now(UTC).replace(microsecond=0) - timedelta(days=days)
    )
    records = generate(
        leads,
        events,
        seed,
        start=begin,
        days=days,
        invalid_every=invalid_every,
        duplicate_every=duplicate_every,
    )
    try:
        with output.open("wb") as fh:
            for r in records:
                fh.write(r.value + b"\n")
    except OSError as exc:
        raise fail(f"--out: cannot write {output}: {exc.strerror}", 2) from None
    end = begin + timedelta(days=days)
    out.print(
        f"wrote {len(records)} records for {leads} leads to {output} "
        f"({begin.astimezone(UTC):%Y-%m-%d %H:%M}Z to {end.astimezone(UTC):%Y-%m-%d %H:%M}Z)",
        soft_wrap=True,
    )
