"""Producing: records go to the engagement topic through the one producer (acks=all,
idempotent), keyed by lead, with a bounded number of sends waiting for Kafka's acknowledgement."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from streams.kafka import Producer, wait_for_kafka
from streams.kafka.producer import unreachable
from streams.startup import ServiceUnavailable

if TYPE_CHECKING:
    from streams.settings import Settings
    from streams.startup import Say

MAX_IN_FLIGHT = 10_000
# An import can always be checked without a broker: say so whenever Kafka is not there.
DRY_RUN_HINT = " (or check the file without Kafka: --dry-run)"


class KafkaSink:
    """Produce to the engagement topic, acks=all, with at most `max_in_flight` unacknowledged."""

    def __init__(
        self, settings: Settings, max_in_flight: int = MAX_IN_FLIGHT, say: Say | None = None
    ) -> None:
        self.settings = settings
        self.say = say
        self.topic = settings.engagement
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.delivered = 0
        self.failure: BaseException | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.producer: Any = None  # a started streams.kafka.Producer

    async def start(self) -> None:
        """Connect; KafkaUnavailable (naming the fix) when Kafka or the topic is not there. The
        import never creates the topic: the broker's default partition count would be wrong.

        A broker that is still starting is waited for (each attempt told to `say`), up to
        LEADFLOW_STARTUP_TIMEOUT."""
        within = self.settings.startup_within(service=False)
        try:
            await wait_for_kafka(self.settings, within, self.say)
        except ServiceUnavailable:
            raise unreachable(
                self.settings, f"no answer within {within:g} s", DRY_RUN_HINT
            ) from None
        producer = Producer(
            self.settings, client_id="leadflow-import", linger_ms=20, max_batch_size=256 * 1024
        )
        self.producer = await producer.start(
            require_topics=[self.topic], hint=DRY_RUN_HINT, then="run the import again"
        )

    async def send(self, key: bytes, value: bytes) -> None:
        """Queue one record; waits while `max_in_flight` records are unacknowledged, so memory
        stays bounded however fast the file is read."""
        while self.in_flight >= self.max_in_flight:
            self._room.clear()
            await self._room.wait()
        if self.failure is not None:
            return  # the import stops; nothing more is sent
        self.in_flight += 1
        self._idle.clear()
        try:
            future = await self.producer.send(self.topic, value, key=key)
        except Exception as exc:
            self._settle(exc)
            return
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self._settle(asyncio.CancelledError())
        else:
            self._settle(future.exception())

    def _settle(self, exc: BaseException | None) -> None:
        self.in_flight -= 1
        if exc is None:
            self.delivered += 1
        elif self.failure is None:
            self.failure = exc
        self._room.set()
        if self.in_flight == 0:
            self._idle.set()

    async def drain(self) -> None:
        await self.producer.flush()
        await self._idle.wait()

    async def stop(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
