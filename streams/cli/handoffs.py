"""`leadflow handoffs`: the MQL handoffs on the handoff topic, one line each."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer
from rich.markup import escape

from schemas.handoff import MqlHandoff
from streams.cli.errors import require_services, user_errors
from streams.cli.output import console, out
from streams.cli.records import Printer, Record
from streams.settings import Settings, load_settings


def handoffs_command(
    idle: Annotated[
        float, typer.Option(help="Stop after this many seconds without a new one")
    ] = 5.0,
    limit: Annotated[int, typer.Option(help="Stop after this many (0 = no limit)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per handoff")] = False,
) -> None:
    """Show MQL handoffs on the handoff topic, from the beginning.

    One line each; TSV with a header row when stdout is not a terminal, JSON lines with --json
    (`leadflow tail handoff` shows the same without waiting for --idle).
    """
    MODE["json"] = as_json
    with user_errors():
        settings = load_settings()
        require_services(settings, kafka=True, topics=[settings.handoff])
        seen = asyncio.run(watch(settings, settings.handoff, idle, limit, show=True))
    summary = f"{len(seen)} handoffs on {settings.handoff}"
    if out.is_terminal:
        out.print(summary)
    else:  # stdout stays rows only
        console.print(summary, highlight=False)


# How `handoffs` prints: set by the command (JSON lines), else by stdout (a terminal or not).
MODE = {"json": False}
_ROWS: dict[str, Printer] = {}


def print_handoff(h: MqlHandoff) -> None:
    """One handoff: a JSON line (--json), a TSV row (stdout not a terminal), else a line for
    people."""
    if MODE["json"] or not out.is_terminal:
        printer = _ROWS.setdefault("handoff", Printer("handoff", json=MODE["json"]))
        value = h.model_dump_json().encode()
        printer.print([Record("", 0, 0, 0, h.lead_id.encode(), value)])
        return
    print_handoff_line(h)


def print_handoff_line(h: MqlHandoff) -> None:
    """One line per handoff: the lead, its score, when sales must call and the top reasons."""
    reasons = escape("; ".join(f"{r.rule} {r.points:+.0f}" for r in h.reasons[:3]))
    owner = f"  -> {escape(h.owner)} ({escape(h.queue or '')})" if h.owner else ""
    out.print(
        f"[bold green]MQL[/] {h.lead_id:<16} score {h.score:6.1f} "
        f"(fit {h.fit_score:g} + engagement {h.engagement_score:.1f})  "
        f"contact by {h.first_contact_due_at:%Y-%m-%d %H:%M:%S}{owner}  [dim]{reasons}[/]",
        soft_wrap=True,
    )


def _room(limit: int, seen: list[bytes]) -> int | None:
    return max(1, limit - len(seen)) if limit > 0 else None


async def watch(settings: Settings, topic: str, idle: float, limit: int, show: bool) -> list[bytes]:
    """Read `topic` from the beginning until `idle` seconds pass without a record or `limit`
    records were read (0: no limit); print each as a handoff when `show`."""
    from aiokafka import AIOKafkaConsumer

    from streams.kafka import client_options

    consumer = AIOKafkaConsumer(
        topic, **client_options(settings), auto_offset_reset="earliest", enable_auto_commit=False
    )
    seen: list[bytes] = []
    try:
        # Started inside the try: a start that fails (a broker gone) still closes the client,
        # so no "Unclosed AIOKafkaConsumer" warning follows the error line.
        await consumer.start()
        last = time.monotonic()
        while time.monotonic() - last < idle and not (0 < limit <= len(seen)):
            batch = await consumer.getmany(timeout_ms=250, max_records=_room(limit, seen))
            for records in batch.values():
                for r in records:
                    if 0 < limit <= len(seen):
                        break  # a batch can hold more than --limit leaves room for
                    seen.append(r.value)
                    last = time.monotonic()
                    if show:
                        print_handoff(MqlHandoff.model_validate_json(r.value))
    finally:
        await consumer.stop()
    return seen
