"""The one Kafka producer: acks=all and idempotent, with an error that says what to do.

The CLI, the importer, the collector and the worker's delivery all build their producer here,
so every record leadflow writes has the same durability, and every "Kafka is not there" reads
the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.kafka.options import client_options
from streams.settings import Settings


class KafkaUnavailable(RuntimeError):
    """Kafka did not take the records, or cannot be reached; the message says what to do."""


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to write: topic, key, value and headers."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def unreachable(settings: Settings, exc: BaseException | str, hint: str = "") -> KafkaUnavailable:
    return KafkaUnavailable(
        f"cannot reach Kafka at {settings.kafka_bootstrap} ({exc}); start it with "
        f"`ops/stack up` or point LEADFLOW_KAFKA_BOOTSTRAP at your cluster{hint}"
    )


def new_producer(settings: Settings, client_id: str, **tuning: Any) -> AIOKafkaProducer:
    """The one producer construction: acks=all, idempotent; `tuning` sets linger and sizes."""
    options = {"linger_ms": 5, **tuning}
    return AIOKafkaProducer(
        **client_options(settings),
        acks="all",
        enable_idempotence=True,
        client_id=client_id,
        **options,
    )


@contextlib.contextmanager
def quiet(logger: str = "aiokafka") -> Iterator[None]:
    """Silence a library logger while we report the problem in one clear line ourselves."""
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


class Producer:
    """A started producer for commands and the worker: `send` one, `publish` and wait."""

    def __init__(self, settings: Settings, client_id: str, **tuning: Any) -> None:
        self.settings = settings
        self.client_id = client_id
        self.tuning = tuning
        self._producer: AIOKafkaProducer | None = None

    @property
    def started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("Producer.start() was not called")
        return self._producer

    async def start(
        self, require_topics: Sequence[str] = (), hint: str = "", then: str = "try again"
    ) -> Producer:
        """Connect; raise KafkaUnavailable naming the fix when Kafka or a topic is missing."""
        if require_topics:
            await require(self.settings, require_topics, hint, then)
        producer = new_producer(self.settings, self.client_id, **self.tuning)
        try:
            with quiet():
                await producer.start()
        except (KafkaError, OSError) as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise unreachable(self.settings, repr(exc), hint) from None
        self._producer = producer
        return self

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves when Kafka acknowledged it."""
        future: asyncio.Future[Any] = await self.started.send(
            topic, value, key=key, headers=headers
        )
        return future

    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send records and return once Kafka acknowledged every one (raise otherwise).

        Starts the producer on first use, so a worker can be built before Kafka answers."""
        if self._producer is None:
            await self.start()
        pending = [await self.send(r.topic, r.value, r.key, r.headers or None) for r in records]
        if pending:
            await asyncio.gather(*pending)

    async def flush(self) -> None:
        await self.started.flush()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def __aenter__(self) -> Producer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def require(
    settings: Settings, topics: Sequence[str], hint: str = "", then: str = "try again"
) -> None:
    """Check that Kafka answers and the topics exist; KafkaUnavailable says how to fix it."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    try:
        with quiet():
            await admin.start()
            existing = set(await admin.list_topics())
    except (KafkaError, OSError) as exc:
        raise unreachable(settings, repr(exc), hint) from None
    finally:
        with contextlib.suppress(KafkaError, OSError):
            await admin.close()
    missing = [t for t in topics if t not in existing]
    if missing:
        raise KafkaUnavailable(
            f"topic {', '.join(missing)} does not exist; create it with `leadflow topics create` "
            f"(same LEADFLOW_NAMESPACE) and {then}"
        )
