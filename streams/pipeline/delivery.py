"""Delivery: outputs leave the Redis outbox for Kafka, in the order they were written, and are
cleared once Kafka acknowledged them (acks=all).

A batch's outputs are written to the outbox in the same Redis step as the states that caused
them, so a crash between that write and Kafka's acknowledgement loses nothing: the owner of the
partition delivers what is left (the outbox sweep), with the same output ids.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Protocol

from streams.kafka import OutRecord
from streams.observability import Metrics, log
from streams.pipeline.retry import Retrying
from streams.store import LeadStore, OutboxEntry


class Publisher(Protocol):
    async def publish(self, records: Sequence[OutRecord]) -> None:
        """Send records and return once Kafka acknowledged every one (raise otherwise)."""

    async def stop(self) -> None:
        """Flush and close (a later publish may start it again)."""


class Delivery:
    """Sends outbox entries, one delivery at a time, and clears them once Kafka has them.

    `send_later` lets the worker fold the next batch while this one is on its way to Kafka
    (deliveries still leave in order: a lead's outputs are never reordered). Entries whose
    delivery is pending are marked in flight, so the outbox sweep never sends them itself.
    """

    def __init__(
        self,
        store: LeadStore,
        publisher: Publisher,
        metrics: Metrics,
        retrying: Retrying,
        crash_after_sends: int = 0,
    ) -> None:
        self.store = store
        self.publisher = publisher
        self.metrics = metrics
        self.retrying = retrying
        self._turn = asyncio.Lock()  # FIFO: deliveries leave in the order they were queued
        self._in_flight: set[tuple[int, str]] = set()
        self._pending: set[asyncio.Task[None]] = set()
        # Fault injection for the chaos tests: die half-way through the Nth delivery.
        self._crash_after_sends = crash_after_sends
        self._deliveries = 0

    def reserve(self, entries: Iterable[OutboxEntry]) -> None:
        """Mark entries about to be written as in flight (before the Redis write)."""
        self._in_flight.update((e.partition, e.output_id) for e in entries)

    def release(self, entries: Iterable[OutboxEntry]) -> None:
        """The write did not happen: the entries are not ours to send."""
        self._in_flight.difference_update((e.partition, e.output_id) for e in entries)

    async def send(self, entries: Sequence[OutboxEntry]) -> None:
        """Deliver reserved entries and wait until Kafka has them."""
        if not entries:
            return
        async with self._turn:
            await self._send(entries)

    async def send_later(self, entries: Sequence[OutboxEntry], queued_at_most: int = 2) -> None:
        """Deliver reserved entries in the background, after every delivery queued before.

        Waits first while `queued_at_most` deliveries are still on their way: the next batch is
        folded while one is in flight, but a Kafka slower than scoring slows scoring down
        instead of queueing outputs in memory without end."""
        if not entries:
            return
        while len(self._pending) >= queued_at_most:
            await asyncio.wait(list(self._pending), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.ensure_future(self.send(entries))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def settle(self) -> None:
        """Wait for every background delivery (before a shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def _send(self, entries: Sequence[OutboxEntry]) -> None:
        records = [OutRecord(e.topic, e.key, e.value, list(e.headers)) for e in entries]
        try:
            self._maybe_crash(records)
            await self.retrying("kafka", partial(self.publisher.publish, records))
            for r in records:
                self.metrics.delivered.labels(r.topic).inc()
            await self.retrying("redis", partial(self.store.clear_outbox, entries))
        finally:
            self.release(entries)

    def _maybe_crash(self, records: list[OutRecord]) -> None:
        if not self._crash_after_sends:
            return
        self._deliveries += 1
        if self._deliveries == self._crash_after_sends:
            log.error("fault injection: exiting in the middle of a delivery", records=len(records))
            half = records[: len(records) // 2 or 1]
            task = asyncio.ensure_future(self.publisher.publish(half))
            task.add_done_callback(lambda _: os._exit(137))

    async def flush_outbox(self, partitions: Iterable[int]) -> int:
        """Deliver outputs that were written to Redis but not acknowledged by Kafka (a crash),
        except those a delivery of this worker is about to send."""
        parts = sorted(set(partitions))
        if not parts:
            return 0
        async with self._turn:
            pending = await self.retrying("redis", partial(self.store.pending_outbox, parts))
            pending = [e for e in pending if (e.partition, e.output_id) not in self._in_flight]
            self.metrics.outbox_pending.set(len(pending))
            if not pending:
                return 0
            log.info("delivering outputs left in the outbox", count=len(pending))
            self.reserve(pending)
            await self._send(pending)
            self.metrics.outbox_pending.set(0)
            return len(pending)
