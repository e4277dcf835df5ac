"""`leadflow produce`: play an NDJSON file into the engagement topic, keyed by lead."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.progress import Progress

from streams.cli.errors import require_services, user_errors
from streams.cli.output import console, out
from streams.settings import Settings, load_settings


def produce_command(
    path: Annotated[
        Path, typer.Argument(help="NDJSON file of engagement events", exists=True, dir_okay=False)
    ],
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible)")] = 0,
) -> None:
    """Play an NDJSON file into the engagement topic, keyed by lead_id (bad lines too)."""
    with user_errors():
        settings = load_settings()
        lines = read_lines(path)
        require_services(settings, kafka=True, topics=[settings.engagement])
        sent = asyncio.run(play_events(settings, lines, rate))
    out.print(f"sent {sent} records to {settings.engagement}")


def read_lines(path: Path) -> list[bytes]:
    """The non-blank lines of an NDJSON file, as they are (a broken line is played too)."""
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()]


def lead_key(line: bytes) -> bytes | None:
    """The record key: the line's lead_id, or none when the line has no usable one."""
    try:
        lead = orjson.loads(line).get("lead_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return lead.encode() if isinstance(lead, str) and lead.strip() else None


async def play_events(settings: Settings, lines: list[bytes], rate: float) -> int:
    """Send every line to the engagement topic at `rate` per second (0: at once), showing
    progress; return the number sent once Kafka acknowledged them all."""
    from streams.kafka import Producer

    sent = 0
    async with Producer(settings, client_id="leadflow-produce") as producer:
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task(f"producing to {settings.engagement}", total=len(lines))
            started = time.monotonic()
            pending = []
            for line in lines:
                pending.append(await producer.send(settings.engagement, line, key=lead_key(line)))
                sent += 1
                progress.advance(task)
                await _keep_pace(sent, rate, started)
            await asyncio.gather(*pending)
    return sent


async def _keep_pace(sent: int, rate: float, started: float) -> None:
    if rate > 0:
        ahead = sent / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)
