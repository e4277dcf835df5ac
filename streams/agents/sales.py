"""The sales agent: handoffs and sales activities in, lifecycle events out."""

from __future__ import annotations

from typing import Any

import faust

from streams.agents.scoring import finish_even_if_cancelled
from streams.pipeline.batch import InRecord
from streams.pipeline.sales import SalesService
from streams.settings import Settings


def register_sales_agent(
    app: faust.App, topics: Any, service: SalesService, settings: Settings
) -> Any:
    @app.agent(topics, concurrency=1, name="track_sales")
    async def track_sales(stream: Any) -> None:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within):
            await finish_even_if_cancelled(service.process(to_records(events)))

    return track_sales


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
