"""The identity agent's consumer: leads.anonymous in batches, into the identity service.

An aiokafka batch consumer like the sales side's (agents/sales.py): its own group
(`<namespace>.leadflow-identity`), Kafka's committed offsets, committed once a batch's visitors
are in Redis and its forwarded events acknowledged by Kafka. A batch read again (a crash, a
rebalance, a failed step) re-sends the same events with the same ids, which the scoring side
counts once per lead, so nothing is counted twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.agents.consumer import (
    CommittedConsumer,
    Rebalances,
    join_group,
    keep_stepping,
    partitions_of,
    wind_down,
)
from streams.agents.scoring import finish_even_if_cancelled
from streams.observability import Metrics
from streams.pipeline.batch import InRecord
from streams.pipeline.identity import IdentityService
from streams.settings import Settings


class _NoDeliveries:
    """The identity service waits for Kafka inside each batch: nothing to settle at a stop."""

    async def settle(self) -> None:
        return None


class IdentityConsumer(CommittedConsumer):
    """Reads leads.anonymous in batches and hands each to the identity service."""

    def __init__(
        self, settings: Settings, identity: IdentityService, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(settings, metrics, "identity", **kwargs)
        self.identity = identity

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="identity")

    async def on_stop(self) -> None:
        await wind_down(self._task, _NoDeliveries(), self.consumer, self.commits)

    def assigned(self) -> list[int]:
        return partitions_of(self.consumer, self.settings.anonymous)

    async def _run(self) -> None:
        s = self.settings
        consumer = await join_group(
            s, s.identity_group, (s.anonymous,), Rebalances(self), self._hold
        )
        # After a failure, read again from what was applied last: applying a record twice
        # changes nothing the lead counts.
        await keep_stepping(
            partial(self._step, consumer), partial(self._rewind, consumer), self._loop_ticks
        )

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        s = self.settings
        fetched = await consumer.getmany(
            timeout_ms=int(s.batch_within * 1000), max_records=s.batch_max
        )
        if fetched:
            records = [
                InRecord(r.key, r.value, tp.topic, tp.partition, r.offset)
                for tp, batch in fetched.items()
                for r in batch
            ]
            await finish_even_if_cancelled(self.identity.process(records))
            self._applied(consumer, fetched)
        self.commits.maybe()

    async def assigned_anew(self, partitions: Iterable[TopicPartition]) -> None:
        return None
