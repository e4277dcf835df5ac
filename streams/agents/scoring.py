"""The scoring agent: engagement batches in, lead scores and MQL handoffs out."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import faust

from streams.observability import log
from streams.pipeline.batch import InRecord
from streams.pipeline.scoring import ScoringService
from streams.settings import Settings

# How long a batch already taken may keep running after the worker was asked to stop.
SHUTDOWN_GRACE_SECONDS = 20.0


def register_scoring_agent(
    app: faust.App, topic: Any, service: ScoringService, settings: Settings
) -> Any:
    @app.agent(topic, concurrency=1, name="score_engagement")
    async def score_engagement(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within):
            batch = to_records(events)
            await finish_even_if_cancelled(service.process(batch))
            report_consumer_lag(app, service, batch)

    return score_engagement


def to_records(events: Any) -> list[InRecord]:
    return [
        InRecord(
            key=e.message.key,
            value=e.message.value,
            topic=e.message.topic,
            partition=e.message.partition,
            offset=e.message.offset,
        )
        for e in events
    ]


async def finish_even_if_cancelled(work: Any) -> None:
    """Run a batch to the end even if the agent is cancelled.

    Faust acks a taken batch when the agent leaves it, whatever happened. A batch abandoned
    half-way would be committed without having been scored, so on shutdown we wait for it,
    and if it cannot finish we exit hard: the uncommitted batch is then re-delivered.
    """
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(task, SHUTDOWN_GRACE_SECONDS)
        except BaseException:
            log.error("batch could not finish during shutdown; exiting without committing it")
            os._exit(75)
        raise


def report_consumer_lag(app: faust.App, service: ScoringService, batch: list[InRecord]) -> None:
    last: dict[tuple[str, int], int] = {}
    for rec in batch:
        last[(rec.topic, rec.partition)] = max(rec.offset, last.get((rec.topic, rec.partition), -1))
    for (topic, partition), offset in last.items():
        try:
            highwater = app.consumer.highwater(faust.types.TP(topic, partition))
        except Exception:
            continue
        if highwater is not None:
            service.metrics.consumer_lag.labels(topic, str(partition)).set(
                max(highwater - offset - 1, 0)
            )
