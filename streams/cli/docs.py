"""`leadflow docs generate`: the reference tables in docs/ from the code (streams/reference.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from streams.cli.output import console, out


def docs_generate(
    check: Annotated[bool, typer.Option(help="Fail if a checked-in table is stale")] = False,
) -> None:
    """Rewrite the generated tables in docs/ (the settings table of operations.md)."""
    from streams.reference import regenerate

    stale = regenerate(check=check)
    if check and stale:
        console.print(f"[red]stale:[/] {', '.join(stale)}; run `leadflow docs generate`")
        raise typer.Exit(1)
    out.print("docs are current" if check else f"docs written ({len(stale)} table(s) changed)")
