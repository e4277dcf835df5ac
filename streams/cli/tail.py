"""`leadflow tail TOPIC`: the records on one of leadflow's topics, one line each.

From the beginning (or `--from-end`) up to the end offsets seen at the start, or on and on with
`--follow`. Reads without a consumer group: it commits nothing and moves no worker's offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import typer

from streams.cli.errors import fail, require_services, user_errors
from streams.cli.output import console
from streams.cli.records import VIEWS, Printer, Record
from streams.settings import Settings, load_settings

# The names `tail` takes, and the settings property of each topic.
TOPICS = {
    "handoff": "handoff",
    "lifecycle": "lifecycle",
    "alerts": "alerts",
    "deadletter": "deadletter",
    "activity": "activity",
    "engagement": "engagement",
}


class TopicMissing(Exception):
    """The topic does not exist (or the ACLs hide it); the message says what to run. Exit 3 like
    every command's missing topic (a service's part not there yet), not 2 (a usage error: an
    unknown topic *name*, `resolve`)."""


def resolve(settings: Settings, name: str) -> tuple[str, str]:
    """(kind, topic name) for a short name (`deadletter`) or a topic's name before or after the
    namespace prefix (`leads.deadletter`, `ns.leads.deadletter`)."""
    wanted = name.strip().lower()
    for kind, attribute in TOPICS.items():
        topic = str(getattr(settings, attribute))
        base = getattr(settings, f"{attribute}_topic")
        if wanted in (kind, topic, base):
            return kind, topic
    raise fail(
        f"TOPIC: unknown topic {name!r}; one of {', '.join(TOPICS)} "
        "(or its topic name, e.g. leads.deadletter)",
        2,
    )


def tail_command(
    topic: Annotated[
        str,
        typer.Argument(
            help="handoff, lifecycle, alerts, deadletter (also activity, engagement)",
            metavar="TOPIC",
            show_default=False,
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per line (dead letters with headers)")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep reading new records until Ctrl-C")
    ] = False,
    limit: Annotated[int, typer.Option(help="Stop after this many records (0 = no limit)")] = 0,
    from_end: Annotated[
        bool, typer.Option("--from-end", help="Only records written from now on (with --follow)")
    ] = False,
) -> None:
    """Show the records on a leadflow topic: handoffs, stage changes, SLA alerts, dead letters.

    TSV with a header row when stdout is not a terminal, JSON lines with --json; a dead letter
    shows its reason headers (leadflow.error.kind, leadflow.error.message, leadflow.source.*).
    Without --follow it stops at the end of the topic as it was when it started.
    """
    if limit < 0:
        raise fail(f"--limit: must be 0 (no limit) or more, got {limit}", 2)
    with user_errors():
        settings = load_settings()
    kind, name = resolve(settings, topic)
    printer = Printer(kind, json=as_json)
    with user_errors():
        require_services(settings, kafka=True)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(
                    tail(settings, name, printer, follow=follow, limit=limit, from_end=from_end)
                )
        except TopicMissing as exc:
            raise fail(str(exc), 3) from None
    if not as_json:
        console.print(f"[dim]{printer.printed} records on {name}[/]", highlight=False)


async def tail(
    settings: Settings,
    topic: str,
    printer: Printer,
    *,
    follow: bool = False,
    limit: int = 0,
    from_end: bool = False,
) -> None:
    """Print the topic's records in offset order per partition, stopping at the end offsets of
    the start (unless `follow`) or after `limit` records."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.kafka import client_options
    from streams.kafka.producer import quiet

    partitions = await _partitions(settings, topic)
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False, group_id=None)
    with quiet():
        await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(parts)
        if from_end:
            await consumer.seek_to_end(*parts)
        else:
            await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)

        async def open_parts() -> list[TopicPartition]:
            return [tp for tp in parts if await consumer.position(tp) < ends[tp]]

        while follow or await open_parts():
            batch = await consumer.getmany(timeout_ms=500)
            for tp in sorted(batch, key=lambda t: t.partition):
                records = [
                    Record(
                        topic,
                        tp.partition,
                        r.offset,
                        r.timestamp,
                        r.key,
                        r.value,
                        tuple(r.headers or ()),
                    )
                    for r in batch[tp]
                    if follow or r.offset < ends[tp]
                ]
                if limit:
                    records = records[: limit - printer.printed]
                printer.print(records)
                if limit and printer.printed >= limit:
                    return
    finally:
        with quiet():
            await consumer.stop()


async def _partitions(settings: Settings, topic: str) -> set[int]:
    """The topic's partitions; TopicMissing when Kafka does not know it."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka import client_options
    from streams.kafka.producer import quiet

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    try:
        with quiet():
            await admin.start()
            described = await admin.describe_topics([topic])
    finally:
        with quiet(), contextlib.suppress(Exception):
            await admin.close()
    found = described[0] if described else {}
    partitions = {p["partition"] for p in found.get("partitions") or []}
    if found.get("error_code") or not partitions:
        raise TopicMissing(
            f"topic {topic} does not exist (or the ACLs hide it); create it with "
            "`leadflow topics create` (same LEADFLOW_NAMESPACE), or check LEADFLOW_NAMESPACE"
        )
    return partitions


assert set(TOPICS) == set(VIEWS)
