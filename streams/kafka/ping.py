"""Is Kafka answering now? For /health: one small request on a connection of its own.

The worker's other Kafka calls do not tell it in time: during a broker outage aiokafka's
consumers and producers wait and retry inside the library (a send waits for metadata and then
for its request timeout), so nothing fails for tens of seconds and an idle worker makes no call
at all. The ping is a Metadata request for no topic (the brokers only: a few hundred bytes, also
on a cluster with many topics) on its own client, bootstrapped on first use and kept open, so a
ping costs one round trip. It raises on any failure; the caller bounds it with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

from streams.kafka.options import client_options
from streams.settings import Settings


class KafkaPing:
    def __init__(self, settings: Settings, timeout: float = 2.0) -> None:
        self.settings = settings
        self.timeout = timeout
        self._client: AIOKafkaClient | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> None:
        """Return when a broker answered a Metadata request; raise otherwise."""
        async with self._lock:  # concurrent /health requests share one client
            client = await self._connected()
        node = client.get_random_node()
        if node is None:
            raise KafkaConnectionError("no broker known to the health client")
        await client.send(node, MetadataRequest([]))

    async def _connected(self) -> AIOKafkaClient:
        client = self._client
        if client is None:
            client = AIOKafkaClient(
                **client_options(self.settings),
                client_id=f"{self.settings.app_id}-health",
                request_timeout_ms=int(self.timeout * 1000),
            )
            try:
                await client.bootstrap()
            except BaseException:
                with contextlib.suppress(Exception):
                    await client.close()
                raise
            self._client = client
        return client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()
