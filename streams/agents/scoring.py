"""The scoring hot path: engagement batches straight from aiokafka into the scoring service.

Faust's per-event stream costs about 100 µs an event before any work is done (an Event, futures
and an ack per message; docs/benchmarks.md), so the engagement topic is not a Faust agent. It is
read by this service, which Faust starts and stops with the app, in batches of whatever has
already been fetched (`getmany`, up to LEADFLOW_BATCH_MAX, never a wait to fill one).

Offsets live with the state (docs/reliability.md): each partition resumes from the next offset
stored in Redis beside the lead states computed from the records before it, and every batch
moves those offsets in the same Redis step as its states. Kafka's committed offsets follow
afterwards, for lag tools only. A partition whose offsets Redis lost while the group had already
consumed it is stopped with one clear error, never scored from a late offset with empty state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Iterable
from functools import partial
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from mode import Service

from streams.agents.consumer import (
    POLL_MS,
    OffsetCommits,
    Rebalances,
    join_group,
    keep_stepping,
    partitions_of,
    wind_down,
)
from streams.observability import Metrics, log
from streams.pipeline.batch import BatchPositions, InRecord, Resync
from streams.pipeline.retry import Ticks
from streams.pipeline.scoring import ScoringService
from streams.settings import Settings

# How long a batch already taken may keep running after the worker was asked to stop.
SHUTDOWN_GRACE_SECONDS = 20.0


async def finish_even_if_cancelled(work: Awaitable[Any]) -> Any:
    """Run a batch to the end even if the worker is stopping.

    A batch abandoned half-way has nothing to undo (its Redis write is all or nothing), but it
    may be in the middle of that write: we wait for it, and if it cannot finish we exit hard;
    the offsets in Redis then say where to resume.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await asyncio.wait_for(task, SHUTDOWN_GRACE_SECONDS)
        except BaseException:
            log.error("batch could not finish during shutdown; exiting without committing it")
            os._exit(75)
        raise


class EngagementConsumer(Service):
    """Reads the engagement topic in batches and hands each to the scoring service."""

    def __init__(
        self, settings: Settings, scoring: ScoringService, metrics: Metrics, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.scoring = scoring
        self.metrics = metrics
        self.topic = settings.engagement
        self.consumer: AIOKafkaConsumer | None = None
        # Bumped whenever positions are re-read from Redis: older batches' results are moot.
        self.epoch = 0
        # Next offset Redis holds (or will hold, once the batches fetched so far are written),
        # per assigned partition; None while Redis holds none.
        self.next: dict[int, int | None] = {}
        # Next offset per partition that Redis does hold: what Kafka may be told.
        self.stored: dict[int, int] = {}
        self.stopped: dict[int, str] = {}
        self._resync = False
        self._task: asyncio.Task[None] | None = None
        self._last_offsets_check = 0.0
        # Background work that logs and skips a failure instead of raising (retry.Ticks).
        self._loop_ticks = Ticks("engagement_loop", metrics)
        self._lag_ticks = Ticks("consumer_lag", metrics)
        # Kafka is told how far Redis is, for lag tools only (Redis stays the truth on restart).
        self.commits = OffsetCommits(
            "kafka_offset_commit",
            lambda: self.consumer,
            self._committable,
            settings.offsets_commit_interval,
            metrics,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="score-engagement")

    async def on_stop(self) -> None:
        await wind_down(self._task, self.scoring.delivery, self.consumer, self.commits)
        with contextlib.suppress(KafkaError, OSError):
            await self.scoring.delivery.publisher.stop()

    def assigned(self) -> list[int]:
        return partitions_of(self.consumer, self.topic)

    def _hold(self, consumer: AIOKafkaConsumer | None) -> None:
        self.consumer = consumer

    async def _connect(self) -> AIOKafkaConsumer:
        s = self.settings
        return await join_group(s, s.engagement_group, [self.topic], Rebalances(self), self._hold)

    # -- the loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        consumer = self.consumer = await self._connect()

        async def start_again_from_redis() -> None:
            self._resync = True

        await keep_stepping(partial(self._step, consumer), start_again_from_redis, self._loop_ticks)

    async def _step(self, consumer: AIOKafkaConsumer) -> None:
        if self._resync:
            self._resync = False
            await self.resume(consumer.assignment())
        epoch = self.epoch
        fetched = await consumer.getmany(timeout_ms=POLL_MS, max_records=self.settings.batch_max)
        if self._resync or epoch != self.epoch:
            return  # fetched across a rebalance: from positions not read from Redis
        if fetched:
            await self._score(fetched)
        await self._check_offsets()
        self.commits.maybe()

    async def _check_offsets(self) -> None:
        """Notice a Redis that came back older (or emptied) even while no partition gets records.

        A batch finds other offsets in Redis at its write, but an idle partition has no next
        write: its leads would stay as old as Redis until its next record. So every
        LEADFLOW_OFFSETS_COMMIT_INTERVAL seconds the offsets Redis holds for the partitions this
        worker owns are compared with the ones it wrote; any difference resumes from Redis (and
        replays the gap). One attempt: an outage fails the step, which resumes from Redis too.
        """
        now = time.monotonic()
        if now - self._last_offsets_check < self.settings.offsets_commit_interval:
            return
        self._last_offsets_check = now
        mine = [p for p in self.assigned() if p in self.stored and p not in self.stopped]
        held = await self.scoring.store.read_offsets(mine)
        moved = {p: o for p, o in held.items() if o != self.stored.get(p)}
        if moved and not self._resync:
            log.warning(
                "Redis holds other offsets than this worker wrote (restored, failed over or "
                "emptied?); resuming from the offsets in Redis",
                stored=moved,
            )
            self.metrics.resyncs.inc()
            self._resync = True

    async def _score(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        records: list[InRecord] = []
        starts: dict[int, int | None] = {}
        ends: dict[int, int] = {}
        for tp, batch in fetched.items():
            p = tp.partition
            starts[p] = self.next.get(p)
            ends[p] = batch[-1].offset + 1
            self.next[p] = ends[p]
            records += [InRecord(r.key, r.value, tp.topic, p, r.offset) for r in batch]
        positions = BatchPositions(starts, ends, self.epoch)
        try:
            await finish_even_if_cancelled(
                self.scoring.process(records, positions, wait_for_delivery=False)
            )
        except Resync as exc:
            log.warning(
                "batch not written; resuming from the offsets in Redis",
                reason=str(exc),
                stored=exc.stored or None,
            )
            self.metrics.resyncs.inc()
            self._resync = True
            return
        if positions.epoch == self.epoch:
            self.stored.update(ends)
        self._report_lag(ends)

    def _report_lag(self, ends: dict[int, int]) -> None:
        """The lag gauges, from what the last fetch learnt of each partition's end (no I/O).
        A gauge is not worth a batch: a partition revoked meanwhile is skipped, and any error
        is logged and skipped like a failed timer tick."""
        consumer = self.consumer
        if consumer is None:
            return
        try:
            mine = consumer.assignment()
            for p, end in ends.items():
                tp = TopicPartition(self.topic, p)
                if tp not in mine:
                    continue
                highwater = consumer.highwater(tp)
                if highwater is not None:
                    lag = max(highwater - end, 0)
                    self.metrics.consumer_lag.labels(self.topic, str(p)).set(lag)
        except Exception as exc:
            self._lag_ticks.failed(exc)
        else:
            self._lag_ticks.succeeded()

    def _committable(self) -> dict[TopicPartition, int]:
        return {
            TopicPartition(self.topic, p): o
            for p, o in self.stored.items()
            if p not in self.stopped
        }

    # -- where to resume ----------------------------------------------------------------------

    # No I/O in these two: the fetch loop re-reads the offsets from Redis and seeks before it
    # scores anything fetched after a rebalance (records fetched across one are dropped).
    async def assigned_anew(self, partitions: Iterable[TopicPartition]) -> None:
        self.epoch += 1
        self._resync = True

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self.epoch += 1
        self._resync = True
        for tp in partitions:
            if tp.topic == self.topic:
                self.next.pop(tp.partition, None)
                self.stored.pop(tp.partition, None)
                self._unstop(tp.partition)

    async def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Seek each partition to the offset kept in Redis with the lead states."""
        assert self.consumer is not None
        self.epoch += 1
        parts = sorted((tp for tp in partitions if tp.topic == self.topic), key=lambda t: t[1])
        await self.scoring.follow_generation()  # offsets belong to the live generation
        store = self.scoring.store
        store.cache.clear()  # a rebalance or a restore: states are read from Redis again
        stored = await self.scoring.retrying(
            "redis", lambda: store.read_offsets(tp.partition for tp in parts)
        )
        # Outputs left in the outbox by a crash go out before anything new is scored.
        await self.scoring.flush_outbox(tp.partition for tp in parts)
        for tp in parts:
            if tp not in self.consumer.assignment():
                self._resync = True  # the assignment moved on while Redis was read
                continue
            offset = stored.get(tp.partition)
            if offset is not None:
                self.consumer.seek(tp, offset)
                self.next[tp.partition] = self.stored[tp.partition] = offset
                self._unstop(tp.partition)
            else:
                await self._resume_without_offsets(tp)
        log.info(
            "resuming engagement partitions from Redis",
            partitions={tp.partition: stored.get(tp.partition) for tp in parts},
            stopped=sorted(self.stopped) or None,
        )

    async def _resume_without_offsets(self, tp: TopicPartition) -> None:
        assert self.consumer is not None
        consumed = await self.consumer.committed(tp)
        policy = self.settings.offsets_missing
        self.next[tp.partition] = None
        self.stored.pop(tp.partition, None)
        if consumed is None or policy == "earliest":
            # A new deployment (nothing consumed yet), or the operator asked for a replay.
            await self.consumer.seek_to_beginning(tp)
            self._unstop(tp.partition)
        elif policy == "committed":
            self.consumer.seek(tp, consumed)
            self._unstop(tp.partition)
        else:
            self._stop(tp, consumed)

    def _stop(self, tp: TopicPartition, consumed: int) -> None:
        assert self.consumer is not None
        self.consumer.pause(tp)
        if tp.partition in self.stopped:
            return
        reason = (
            f"Redis holds no offsets for partition {tp.partition} of {self.topic}, but consumer "
            f"group {self.settings.engagement_group} has already consumed it up to offset "
            f"{consumed}: Redis was emptied or restored without leadflow's keys. Scoring from "
            "there would start from empty lead states, so this partition is stopped. Rebuild the "
            "lead states from the log with `leadflow rescore --rules FILE`, or set "
            "LEADFLOW_OFFSETS_MISSING=earliest and restart to replay the partition from the "
            "earliest retained offset."
        )
        self.stopped[tp.partition] = reason
        self.metrics.partitions_stopped.labels(self.topic, str(tp.partition)).set(1)
        log.error("partition stopped: no offsets in Redis", partition=tp.partition, reason=reason)

    def _unstop(self, partition: int) -> None:
        if self.stopped.pop(partition, None) is not None:
            self.metrics.partitions_stopped.labels(self.topic, str(partition)).set(0)
            if self.consumer is not None:
                self.consumer.resume(TopicPartition(self.topic, partition))
