"""The sales side's consumer: handoffs and sales activities in batches, into the sales service.

Read with aiokafka, like the engagement topic, not through a Faust agent: Faust's consumer did
not always come back after a broker restart (it rejoined its group, and fetched nothing more;
faust-streaming issues #175 and #523), and the broker fault matrix caught it once
(docs/reliability.md, "Broker restarts"). This loop reconnects like the engagement loop does.

Offsets are Kafka's, committed once the batch is in Redis: every sales record is applied once
per lead (its mark is kept with the lead), so a batch read again after a crash or a rebalance
changes nothing and sends nothing twice.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor

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
from streams.pipeline.sales import SalesService
from streams.settings import Settings


def known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The partition's next fetch offset if the consumer has one now, without waiting:
    `AIOKafkaConsumer.position()` waits (up to the request timeout) while a position is being
    reset, which would hold up every batch behind it. Reads aiokafka's subscription state; an
    aiokafka without it (a future version) gets no gate at all rather than no sweep at all."""
    subscriptions = getattr(consumer, "_subscription", None)
    if subscriptions is None or not hasattr(subscriptions, "subscription"):
        return sys.maxsize
    try:
        state = subscriptions.subscription.assignment.state_value(tp)
    except Exception:  # unassigned meanwhile, or the consumer is between subscriptions
        return None
    return int(state.position) if state is not None and state.has_valid_position else None


class SalesConsumer(CommittedConsumer):
    """Reads the handoff and sales-activity topics in batches and hands each to the sales
    service; the consumer group is the app id's (`<namespace>.leadflow-scoring`)."""

    def __init__(
        self, settings: Settings, sales: SalesService, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(settings, metrics, "sales", **kwargs)
        self.sales = sales
        self.topics = (settings.handoff, settings.activity)
        self._flush: set[int] = set()
        # Partitions read up to the end they had when this worker got them: only these are
        # swept (an in-time contact still in the backlog must not lose to the sweeper).
        self.caught_up: set[TopicPartition] = set()
        # Per partition not caught up yet: its end when this worker first learnt it (a moving
        # end under steady traffic would never be reached).
        self._catch_up_to: dict[TopicPartition, int] = {}

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="track-sales")

    async def on_stop(self) -> None:
        await wind_down(self._task, self.sales.delivery, self.consumer, self.commits)

    def assigned(self) -> list[int]:
        """The partitions of the handoff topic this worker owns (the same numbers of the
        activity topic: both are keyed by lead id and have as many partitions)."""
        return partitions_of(self.consumer, self.settings.handoff)

    def sweepable(self) -> list[int]:
        """The owned partitions whose deadlines may be judged now: both topics read up to
        where they ended when the partition came to this worker. A worker that takes over
        after a crash or an outage first applies the activities waiting for it, so a contact
        made in time but not yet read is never taken for a missed deadline."""
        s = self.settings
        return [
            p
            for p in self.assigned()
            if {TopicPartition(s.handoff, p), TopicPartition(s.activity, p)} <= self.caught_up
        ]

    async def _run(self) -> None:
        s = self.settings
        # Range, not round robin: with both topics of one partition count, each worker gets the
        # same partition numbers of both, so a lead's handoff and activities meet on one worker
        # (and its deadlines are swept where its activities are read).
        consumer = await join_group(
            s,
            s.app_id,
            self.topics,
            Rebalances(self),
            self._hold,
            assignors=(RangePartitionAssignor,),
        )
        # After a failure, read again from the last commit (the records applied since are
        # recognised and skipped).
        await keep_stepping(
            partial(self._step, consumer), partial(self._rewind, consumer), self._loop_ticks
        )

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if self._flush:
            # Outputs a crash or an outage left in the outbox of partitions new to this
            # worker leave before anything new is applied to them.
            parts, self._flush = self._flush, set()
            try:
                await self.sales.flush_outbox(p for p in parts if p in self.assigned())
            except BaseException:
                self._flush |= parts
                raise
        wait_ms = int(self.settings.batch_within * 1000)
        fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=self.settings.batch_max)
        if fetched:
            records = [
                InRecord(r.key, r.value, tp.topic, tp.partition, r.offset)
                for tp, batch in fetched.items()
                for r in batch
            ]
            await finish_even_if_cancelled(self.sales.process(records))
            self._applied(consumer, fetched)
        await self._note_caught_up(consumer)
        self.commits.maybe()

    async def _note_caught_up(self, consumer: AIOKafkaConsumer) -> None:
        for tp in consumer.assignment() - self.caught_up:
            # The end is known once a fetch for the partition came back (read_committed: the
            # last stable offset; an open transaction's records are not readable yet).
            end = self._catch_up_to.get(tp)
            if end is None:
                end = consumer.last_stable_offset(tp)
                if end is None or end < 0:
                    end = consumer.highwater(tp)
                if end is None:
                    continue
                self._catch_up_to[tp] = end
            position = known_position(consumer, tp)
            if position is not None and position >= end:
                self.caught_up.add(tp)
                self._catch_up_to.pop(tp, None)

    def _forget(self, tp: TopicPartition) -> None:
        self.caught_up.discard(tp)
        self._catch_up_to.pop(tp, None)

    async def assigned_anew(self, partitions: Iterable[TopicPartition]) -> None:
        self._flush |= {tp.partition for tp in partitions if tp.topic == self.settings.handoff}
