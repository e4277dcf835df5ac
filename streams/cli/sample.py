"""`leadflow sample generate`: a deterministic engagement history to play or import."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streams.cli.errors import fail
from streams.cli.output import out


def sample_generate(
    output: Annotated[Path, typer.Option("--out", help="NDJSON file to write")],
    leads: int = 200,
    events: int = 2000,
    seed: int = 7,
    invalid_every: Annotated[int, typer.Option(help="A broken record after every N")] = 100,
    duplicate_every: Annotated[int, typer.Option(help="Re-send every Nth event")] = 50,
) -> None:
    """Write a deterministic, realistic engagement history (with some bad records)."""
    from streams.jobs.sample import generate

    records = generate(
        leads, events, seed, invalid_every=invalid_every, duplicate_every=duplicate_every
    )
    try:
        with output.open("wb") as fh:
            for r in records:
                fh.write(r.value + b"\n")
    except OSError as exc:
        raise fail(f"--out: cannot write {output}: {exc.strerror}", 2) from None
    out.print(f"wrote {len(records)} records for {leads} leads to {output}")
