"""What the worker's two batch consumers share: joining their group through an outage, and
telling Kafka how far they are without holding up the batches."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import (
    CommitFailedError,
    CoordinatorLoadInProgressError,
    IllegalGenerationError,
    IllegalStateError,
    KafkaError,
    NotCoordinatorForGroupError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from mode import Service

from streams.kafka import client_options
from streams.observability import Metrics, log
from streams.pipeline.retry import Ticks
from streams.settings import Settings

# How long `getmany` waits when nothing is buffered (latency at low load is this at most).
POLL_MS = 100
# Backoff of a fetch loop after a failed step (an outage while resuming, say).
LOOP_RETRY_MIN_SECONDS = 1.0
LOOP_RETRY_MAX_SECONDS = 10.0
# The longest a commit at shutdown or revocation is waited for.
COMMIT_NOW_SECONDS = 5.0
# A commit refused because the group is rebalancing or its coordinator is moving: expected,
# not an outage (the next commit, a second later, usually goes through).
REBALANCING: tuple[type[BaseException], ...] = (
    CommitFailedError,
    RebalanceInProgressError,
    IllegalGenerationError,
    UnknownMemberIdError,
    IllegalStateError,
    CoordinatorLoadInProgressError,
    NotCoordinatorForGroupError,
)


async def join_group(
    settings: Settings,
    group: str,
    topics: Iterable[str],
    listener: ConsumerRebalanceListener,
    hold: Callable[[AIOKafkaConsumer | None], None],
    assignors: tuple[type[AbstractPartitionAssignor], ...] = (RoundRobinPartitionAssignor,),
) -> AIOKafkaConsumer:
    """A started consumer of `topics` in `group`, retried (with backoff, one log line a try)
    until Kafka answers. `hold` gets the consumer before it starts, since the group's first
    assignment may reach the listener while start() runs, and None if that start failed."""
    delay = 0.5
    while True:
        consumer = AIOKafkaConsumer(
            **client_options(settings),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max,
            session_timeout_ms=int(settings.kafka_session_timeout * 1000),
            heartbeat_interval_ms=int(settings.kafka_heartbeat_interval * 1000),
            isolation_level="read_committed",
            partition_assignment_strategy=assignors,
        )
        consumer.subscribe(list(topics), listener=listener)
        hold(consumer)
        try:
            await consumer.start()
            return consumer
        except (KafkaError, OSError) as exc:
            hold(None)
            with contextlib.suppress(Exception):
                await consumer.stop()
            log.error(
                "kafka unavailable; retrying",
                group=group,
                error=repr(exc),
                retry_in_seconds=delay,
                hint="check that kafka is reachable (LEADFLOW_KAFKA_BOOTSTRAP)",
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


class OffsetCommits:
    """Commits a consumer's offsets to Kafka at most every `interval` seconds, in the
    background: a commit waits out a rebalance of the group, and the batches must not.

    `offsets` names what may be committed now (only partitions the consumer still owns are
    sent); a refusal because the group is rebalancing is expected and logged at debug level,
    an outage is a failed tick (the next commit tries again)."""

    def __init__(
        self,
        task: str,
        consumer: Callable[[], AIOKafkaConsumer | None],
        offsets: Callable[[], Mapping[TopicPartition, int]],
        interval: float,
        metrics: Metrics,
    ) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.interval = interval
        self.metrics = metrics
        self._ticks = Ticks(task, metrics, dependency="kafka")
        self._last = 0.0
        self._running: asyncio.Task[None] | None = None

    def maybe(self) -> None:
        """Start a commit in the background if the last was `interval` ago and is done."""
        now = time.monotonic()
        busy = self._running is not None and not self._running.done()
        if busy or now - self._last < self.interval:
            return
        self._last = now
        self._running = asyncio.create_task(self._commit(), name=self._ticks.task)

    async def now(self) -> None:
        """Commit at once and wait (a few seconds at most): at a shutdown or a revocation."""
        if self._running is not None and not self._running.done():
            self._running.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._commit(), timeout=COMMIT_NOW_SECONDS)

    async def _commit(self) -> None:
        consumer = self.consumer()
        if consumer is None:
            return
        mine = consumer.assignment()
        offsets = {tp: o for tp, o in self.offsets().items() if tp in mine}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
        except REBALANCING as exc:
            log.debug("could not commit offsets to Kafka (a rebalance)", error=repr(exc))
        except Exception as exc:
            self._ticks.failed(exc)
        else:
            self._ticks.succeeded()
            self.metrics.dependencies.succeeded("kafka")


async def wind_down(
    task: asyncio.Task[None] | None,
    delivery: Any,
    consumer: AIOKafkaConsumer | None,
    commits: OffsetCommits,
) -> None:
    """A consumer service's stop: end its loop, let its deliveries finish, tell Kafka how far it
    got (a few seconds at most), leave the group."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await delivery.settle()
    if consumer is not None:
        await commits.now()
        with contextlib.suppress(KafkaError, OSError):
            await consumer.stop()


def partitions_of(consumer: AIOKafkaConsumer | None, topic: str) -> list[int]:
    """The partitions of `topic` the consumer owns now (none before it has started)."""
    if consumer is None:
        return []
    return sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)


class Rebalances(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards a group's rebalance callbacks to the consumer service that owns it."""

    def __init__(self, owner: Any) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self.owner.assigned_anew(assigned)


async def keep_stepping(
    step: Callable[[], Awaitable[None]],
    recover: Callable[[], Awaitable[None]],
    ticks: Ticks,
) -> None:
    """A consumer's loop: `step` again and again, and never let one failure end it while the
    process lives on. A failure is reported through `ticks` (one warning naming the
    dependency, then one every 30 s, not a traceback a second), `recover` sets the consumer
    back to what was applied last, and the loop backs off (1 s doubling to 10 s) while
    failures last."""
    delay = LOOP_RETRY_MIN_SECONDS
    while True:
        try:
            await step()
        except Exception as exc:
            ticks.failed(exc)
            await recover()
            await asyncio.sleep(delay)
            delay = min(delay * 2, LOOP_RETRY_MAX_SECONDS)
        else:
            delay = LOOP_RETRY_MIN_SECONDS
            ticks.succeeded()


async def rewind(consumer: AIOKafkaConsumer, done: Mapping[TopicPartition, int]) -> None:
    """After a failed step, fetch again from what this worker applied last (`done`), else the
    group's last commit, else the beginning: a batch that failed half-way is read again, never
    skipped (applying a record twice changes nothing: its id is remembered)."""
    for tp in consumer.assignment():
        applied = done.get(tp)
        with contextlib.suppress(Exception):
            if applied is not None:
                consumer.seek(tp, applied)
            else:
                committed = await consumer.committed(tp)
                if committed is not None:
                    consumer.seek(tp, committed)
                else:
                    await consumer.seek_to_beginning(tp)


class CommittedConsumer(Service):
    """What the batch consumers whose offsets live in Kafka (sales, identity) share: the
    consumer once joined, `done` (per partition, the next offset whose records are applied:
    all Kafka may be told), background commits, the loop's failure ticks, rewinding after a
    failed step, and committing before letting revoked partitions go."""

    def __init__(self, settings: Settings, metrics: Metrics, name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.metrics = metrics
        self.consumer: AIOKafkaConsumer | None = None
        self.done: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._loop_ticks = Ticks(f"{name}_loop", metrics)
        self.commits = OffsetCommits(
            f"{name}_offset_commit",
            lambda: self.consumer,
            lambda: self.done,
            settings.offsets_commit_interval,
            metrics,
        )

    def _hold(self, consumer: AIOKafkaConsumer | None) -> None:
        self.consumer = consumer

    def _applied(
        self, consumer: AIOKafkaConsumer, fetched: Mapping[TopicPartition, list[Any]]
    ) -> None:
        """A fetched batch is applied: what Kafka may be told, for the partitions still this
        worker's (a rebalance during the batch that gave a partition back keeps it; one that
        moved it away leaves it to the next owner, who reads it again). Never backwards."""
        mine = consumer.assignment()
        for tp, batch in fetched.items():
            if tp in mine:
                self.done[tp] = max(self.done.get(tp, 0), batch[-1].offset + 1)

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        await rewind(consumer, self.done)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        # The next owner starts from here: tell Kafka what is applied before letting go.
        await self.commits.now()
        for tp in partitions:
            self.done.pop(tp, None)
            self._forget(tp)

    def _forget(self, tp: TopicPartition) -> None:
        """What else a subclass keeps per partition, dropped when the partition is revoked."""
