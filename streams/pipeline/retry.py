"""Waiting out an outage: a taken batch is retried until Redis or Kafka answer again, because
giving up on it would lose records (they are already fetched, and their offsets move on)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from streams.kafka import KafkaUnavailable
from streams.observability import Metrics, log

T = TypeVar("T")

# Errors that mean "the service is not answering right now", not "the request is wrong".
OUTAGES: tuple[type[BaseException], ...] = (
    TimeoutError,
    RedisError,
    KafkaError,
    KafkaUnavailable,
    OSError,
)
VARIABLE = {"redis": "LEADFLOW_REDIS_URL", "kafka": "LEADFLOW_KAFKA_BOOTSTRAP"}


class Retrying:
    """Retry an I/O step with exponential backoff (capped), counting and logging each wait."""

    def __init__(self, metrics: Metrics, max_delay: float) -> None:
        self.metrics = metrics
        self.max_delay = max_delay

    async def __call__(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        while True:
            try:
                return await call()
            except OUTAGES as exc:
                self.metrics.retries.labels(operation).inc()
                log.error(
                    f"{operation} unavailable; retrying",
                    error=repr(exc),
                    detail=str(exc)[:300],
                    retry_in_seconds=delay,
                    hint=f"check that {operation} is reachable ({VARIABLE[operation]})",
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_delay)
