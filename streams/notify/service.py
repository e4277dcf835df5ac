"""The shell of `leadflow notify`: consume, POST, remember, dead-letter, commit.

Per partition, records are handled in order, one at a time; a record's targets are served
concurrently. A record's offset is committed only once every target that wants it has either
answered 2xx or had it dead-lettered, and each settled (target, id) pair is remembered in Redis
before the commit, so a record read again after a restart or a rebalance is not POSTed again to a
target that already has it. What is left (a POST answered 2xx, then the process killed before the
marker was written) is at-least-once: the receiver sees the same X-Leadflow-Delivery again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
import orjson
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from schemas.catalog import package_version
from schemas.notify import NotifyDeadLetterHeaders, NotifyDeadLetterReason
from streams.bootstrap import open_redis
from streams.kafka import OutRecord, Producer, client_options
from streams.notify.config import NotifyConfig, Target
from streams.notify.decide import (
    Notice,
    NotRecord,
    Outcome,
    Source,
    after_failure,
    matches,
    parse_notice,
    render,
    request_headers,
)
from streams.notify.metrics import NotifyMetrics
from streams.settings import Settings
from streams.startup import describe
from streams.store.notify_markers import DeliveryMarkers, Settled

log = structlog.get_logger("leadflow.notify")

USER_AGENT = f"leadflow-notify/{package_version()} (+https://github.com/leadflow)"
# Longest wait between retries of Redis or Kafka (the markers, the dead letter, the commit).
SERVICE_RETRY_MAX = 10.0
# How long a revoked partition's record in progress may finish before the rebalance goes on.
REVOKE_GRACE = 30.0
T = TypeVar("T")


class Stopping(Exception):
    """SIGTERM while a record was in progress: it is left uncommitted (read again next time)."""


class Notifier:
    def __init__(self, settings: Settings, config: NotifyConfig) -> None:
        self.settings = settings
        self.config = config
        self.metrics = NotifyMetrics()
        self.stopping = asyncio.Event()
        self.sources: dict[str, Source] = {settings.alerts: "alert", settings.handoff: "handoff"}
        if config.wants_lifecycle:
            self.sources[settings.lifecycle] = "lifecycle"
        self.markers = DeliveryMarkers(
            open_redis(settings),
            settings.redis_prefix,
            int(settings.notify_dedupe_ttl_days * 86400),
        )
        self.producer = Producer(settings, "leadflow-notify")
        self.consumer: AIOKafkaConsumer | None = None
        self.http: aiohttp.ClientSession | None = None
        self.started = False
        self.busy: dict[TopicPartition, asyncio.Task[None]] = {}
        self.revoked: set[TopicPartition] = set()

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        self.http = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT}, raise_for_status=False
        )
        self.consumer = AIOKafkaConsumer(
            **client_options(s),
            group_id=s.notify_group,
            client_id="leadflow-notify",
            enable_auto_commit=False,
            auto_offset_reset=s.notify_start,
            session_timeout_ms=int(s.kafka_session_timeout * 1000),
            heartbeat_interval_ms=int(s.kafka_heartbeat_interval * 1000),
            # A record may wait out a receiver's retries (minutes) before the next fetch.
            max_poll_interval_ms=3_600_000,
        )
        self.consumer.subscribe(list(self.sources), listener=_Revocations(self))
        await self.consumer.start()
        self.started = True
        log.info(
            "notify started",
            topics=list(self.sources),
            group=s.notify_group,
            targets=[t.name for t in self.config.targets],
            deadletter=s.notify_deadletter,
        )
        try:
            while not self.stopping.is_set():
                batch = await self.consumer.getmany(timeout_ms=500, max_records=500)
                tasks = {
                    tp: asyncio.create_task(self._partition(tp, records))
                    for tp, records in batch.items()
                }
                self.busy = tasks
                if tasks:
                    await asyncio.gather(*tasks.values(), return_exceptions=False)
                self.busy = {}
                self.revoked.clear()
        finally:
            await self.close()

    async def close(self) -> None:
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.stop()
        with contextlib.suppress(Exception):
            await self.producer.stop()
        if self.http is not None:
            await self.http.close()
        with contextlib.suppress(Exception):
            await self.markers.close()

    async def _partition(self, tp: TopicPartition, records: list[ConsumerRecord[Any, Any]]) -> None:
        """Handle a partition's records in order, committing after each one."""
        assert self.consumer is not None
        for record in records:
            if self.stopping.is_set() or tp in self.revoked:
                return
            try:
                await self.handle(tp.topic, record)
            except Stopping:
                return
            try:
                await self.consumer.commit({tp: record.offset + 1})
            except KafkaError as exc:
                # A rebalance took the partition: its new owner reads from the last commit, and
                # the markers keep it from POSTing what was delivered here.
                log.warning(
                    "offset not committed; the partition's next owner reads the record again "
                    "and skips the targets already served",
                    topic=tp.topic,
                    partition=tp.partition,
                    offset=record.offset,
                    error=describe(exc),
                )
                return

    async def handle(self, topic: str, record: ConsumerRecord[Any, Any]) -> None:
        """Deliver one record to every target that wants it (concurrently)."""
        source = self.sources[topic]
        try:
            notice = parse_notice(source, record.value or b"")
        except NotRecord as exc:
            self.metrics.invalid.labels(topic).inc()
            log.error(
                "record is not a valid " + source + "; not delivered",
                topic=topic,
                partition=record.partition,
                offset=record.offset,
                error=str(exc),
            )
            return
        targets = [t for t in self.config.targets if matches(t, notice)]
        if not targets:
            return
        self.metrics.in_flight.inc()
        try:
            results = await asyncio.gather(
                *(self.deliver(t, notice, record) for t in targets), return_exceptions=True
            )
        finally:
            self.metrics.in_flight.dec()
        for result in results:
            if isinstance(result, BaseException):
                raise result

    # -- one target ------------------------------------------------------------------------

    async def deliver(
        self, target: Target, notice: Notice, record: ConsumerRecord[Any, Any]
    ) -> None:
        """POST until a 2xx, or dead-letter; remember either in Redis."""
        settled = await self._again(lambda: self.markers.settled(target.name, notice.delivery_id))
        if settled is not None:
            self.metrics.skipped.labels(target.name, "already_settled").inc()
            log.info(
                "already settled; not sent again",
                target=target.name,
                delivery_id=notice.delivery_id,
                settled=settled,
            )
            return
        policy = self.config.policy(target)
        body = render(target.format, notice)
        attempt = 0
        while True:
            attempt += 1
            outcome = await self.post(target, notice, body, attempt, policy.timeout)
            if outcome.ok:
                await self._settle(target, notice, "delivered")
                self.metrics.delivered.labels(target.name).inc()
                log.info(
                    "delivered",
                    target=target.name,
                    delivery_id=notice.delivery_id,
                    kind=notice.kind,
                    status=outcome.status,
                    attempts=attempt,
                )
                return
            self.metrics.failed_attempts.labels(target.name, outcome.reason).inc()
            decision = after_failure(outcome, attempt, policy, datetime.now(UTC))
            if decision.action == "retry":
                log.warning(
                    "delivery failed; retrying",
                    target=target.name,
                    delivery_id=notice.delivery_id,
                    reason=outcome.reason,
                    attempt=attempt,
                    next_in=round(decision.delay, 3),
                )
                await self._pause(decision.delay)
                continue
            await self.deadletter(target, notice, record, decision.reason, outcome, attempt)
            return

    async def post(
        self, target: Target, notice: Notice, body: bytes, attempt: int, within: float
    ) -> Outcome:
        """One POST; its outcome (never raises for HTTP or network failures)."""
        assert self.http is not None
        headers = request_headers(target, notice, body, attempt, USER_AGENT)
        started = time.perf_counter()
        try:
            async with self.http.post(
                target.url.get_secret_value(),
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=within),
                allow_redirects=False,
            ) as resp:
                await resp.read()
                return Outcome(status=resp.status, retry_after=resp.headers.get("Retry-After"))
        except TimeoutError:
            return Outcome(error="timeout")
        except (aiohttp.ClientError, OSError):
            return Outcome(error="connection_error")
        finally:
            self.metrics.latency.labels(target.name).observe(time.perf_counter() - started)

    async def deadletter(
        self,
        target: Target,
        notice: Notice,
        record: ConsumerRecord[Any, Any],
        reason: str,
        outcome: Outcome,
        attempts: int,
    ) -> None:
        headers = NotifyDeadLetterHeaders(
            target=target.name,
            reason=NotifyDeadLetterReason(reason),
            last_error=outcome.reason,
            attempts=attempts,
            delivery_id=notice.delivery_id,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        )
        out = OutRecord(
            self.settings.notify_deadletter, record.key, record.value, headers.to_kafka()
        )
        await self._again(lambda: self.producer.publish([out]))
        await self._settle(target, notice, "deadlettered")
        self.metrics.deadlettered.labels(target.name, reason).inc()
        log.error(
            "dead-lettered",
            target=target.name,
            delivery_id=notice.delivery_id,
            reason=reason,
            last_error=outcome.reason,
            attempts=attempts,
            topic=self.settings.notify_deadletter,
        )

    async def _settle(self, target: Target, notice: Notice, how: Settled) -> None:
        await self._again(lambda: self.markers.settle(target.name, notice.delivery_id, how))

    async def _pause(self, seconds: float) -> None:
        """Wait between retries; SIGTERM ends the wait (the record stays uncommitted)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
        if self.stopping.is_set():
            raise Stopping

    async def _again(self, step: Callable[[], Awaitable[T]]) -> T:
        """Run a Redis or Kafka step until it succeeds (outages are waited out, logged)."""
        delay = 0.5
        while True:
            try:
                return await step()
            except (Stopping, asyncio.CancelledError):
                raise
            except Exception as exc:
                log.warning(
                    "redis or kafka step failed; retrying", error=describe(exc), next_in=delay
                )
                await self._pause(delay)
                delay = min(delay * 2, SERVICE_RETRY_MAX)

    # -- web ----------------------------------------------------------------------------------

    def web_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        return app

    async def health(self, _request: web.Request) -> web.Response:
        assigned = sorted(
            f"{tp.topic}:{tp.partition}"
            for tp in (self.consumer.assignment() if self.consumer is not None else set())
        )
        body = {
            "status": "ok" if self.started else "starting",
            "assigned_partitions": assigned,
            "targets": [t.name for t in self.config.targets],
            "topics": list(self.sources),
            "namespace": self.settings.namespace,
        }
        return web.Response(
            status=200 if self.started else 503,
            body=orjson.dumps(body),
            content_type="application/json",
        )

    async def metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


class _Revocations(ConsumerRebalanceListener):  # type: ignore[misc]
    """On a rebalance, let the record in progress of each revoked partition finish (and be
    committed) before the partition moves, and take no further one of its batch."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        n = self.notifier
        n.revoked |= set(revoked)
        tasks = [task for tp, task in n.busy.items() if tp in revoked and not task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=REVOKE_GRACE)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info(
            "partitions assigned",
            partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in assigned),
        )


async def serve(settings: Settings, config: NotifyConfig) -> None:
    """Run until SIGTERM/SIGINT: /health and /metrics, and the delivery loop."""
    notifier = Notifier(settings, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, notifier.stopping.set)
    runner = web.AppRunner(notifier.web_app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.notify_web_host, settings.notify_web_port)
    await site.start()
    log.info("notify web", listen=f"http://{settings.notify_web_host}:{settings.notify_web_port}")
    try:
        await notifier.run()
    finally:
        await runner.cleanup()
        log.info("notify stopped")
