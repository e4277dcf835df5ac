"""`leadflow schemas generate`: the JSON Schema and AsyncAPI files, written or checked."""

from __future__ import annotations

from typing import Annotated

import typer

from streams.cli.output import console, out


def schemas_generate(
    check: Annotated[bool, typer.Option(help="Fail if a checked-in file is stale")] = False,
) -> None:
    """Write schemas/json/*.json and schemas/asyncapi.yaml from the pydantic models."""
    from schemas.generate import write_all

    stale = write_all(check=check)
    if check and stale:
        console.print(f"[red]stale:[/] {', '.join(stale)}; run `leadflow schemas generate`")
        raise typer.Exit(1)
    out.print("schemas are current" if check else "schemas written")
