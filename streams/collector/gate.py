"""The collector's way into Kafka: one producer, started in the background with retries, watched
every second; its state and detail decide between accepting events and answering 503.

Until the first connection the gate is starting: one log line per attempt ("waiting for Kafka at
... (attempt N, next in S s)"), and when LEADFLOW_STARTUP_TIMEOUT passes without one it tells
`on_startup_failure` (the collector then exits naming LEADFLOW_KAFKA_BOOTSTRAP). Once connected,
an outage is answered with 503s and the gate reconnects for as long as it takes.

Connected, the gate checks that the engagement topic exists (cluster metadata: every second while
it is missing, every TOPIC_RECHECK seconds once it was found). While it is missing the state is
`topic_missing`: events are answered 503 (reason `topic_missing`) and one line naming `leadflow
topics create` is logged every TOPIC_LOG_INTERVAL seconds. Never ready by LEADFLOW_STARTUP_TIMEOUT
(a wrong LEADFLOW_NAMESPACE, no `topics create` in the deployment): `on_startup_failure` with
that line, as for Kafka not answering (exit 3). Once it was ready the collector never exits over
it (a topic deleted and re-created: 503s meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiokafka.errors import KafkaConnectionError

from streams.collector.metrics import CollectorMetrics
from streams.kafka import KafkaUnavailable, new_producer
from streams.kafka.topics import diagnose, kafka_dependency
from streams.settings import Settings
from streams.startup import ServiceRefused, ServiceUnavailable, attempt_line, describe

log = structlog.get_logger("leadflow.collector")

KafkaState = Literal["connecting", "ready", "unavailable", "topic_missing", "stopped"]
WATCH_INTERVAL = 1.0
TOPIC_RECHECK = 30.0  # seconds between checks that the topic still exists, once it was found
TOPIC_LOG_INTERVAL = 30.0  # seconds between the `leadflow topics create` lines while it is missing


class TopicMissing(KafkaUnavailable):
    """The engagement topic does not exist (or the ACLs hide it): 503 with reason
    `topic_missing`."""


def _consume_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class KafkaGate:
    """The collector's one idempotent producer (acks=all): started in the background with
    retries, watched every second, and the only way events reach Kafka."""

    def __init__(
        self,
        settings: Settings,
        metrics: CollectorMetrics,
        factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.topic = settings.engagement
        # Both must exist: events of known leads go to the first, visitors' to the second.
        self.topics = (settings.engagement, settings.anonymous)
        self._missing = settings.engagement
        self.metrics = metrics
        self.factory = factory or self._new_producer
        self.state: KafkaState = "connecting"
        self.detail = "starting the producer"
        self.since = datetime.now(UTC)
        self._producer: Any = None
        self._task: asyncio.Task[None] | None = None
        # Start-up: attempts before the first connection, and who hears when they ran out.
        self.dependency = kafka_dependency(settings)
        self.connected_once = False
        self.ready_once = False  # connected and the topic there
        self.attempts = 0
        self.startup_within = settings.startup_within(service=True)
        self._startup_deadline = 0.0
        self.startup_failure: ServiceUnavailable | ServiceRefused | None = None
        # The topic: when it was last seen (loop time), when its absence was last logged.
        self._topic_checked = float("-inf")
        self._topic_logged = float("-inf")
        self.on_startup_failure: Callable[[ServiceUnavailable | ServiceRefused], None] | None = None

    def _new_producer(self) -> Any:
        return new_producer(self.settings, client_id="leadflow-collector", linger_ms=2)

    def _set(self, state: KafkaState, detail: str) -> None:
        if state != self.state:
            self.since = datetime.now(UTC)
            logger = log.error if state == "unavailable" else log.info
            logger(
                "kafka " + state,
                detail=detail,
                previous=self.state,
                kafka=self.settings.kafka_bootstrap,
                topic=self.topic,
            )
        self.state = state
        self.detail = detail
        if state == "ready":
            self.ready_once = True
        self.metrics.kafka_up.set(1 if state == "ready" else 0)

    def start(self) -> None:
        self._startup_deadline = asyncio.get_running_loop().time() + self.startup_within
        self._task = asyncio.create_task(self._run(), name="collector-kafka")

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            try:
                backoff = await self._step(backoff)
            except Exception as exc:  # a bug here must not leave the state frozen
                log.exception("kafka watcher failed; retrying")
                self._set("unavailable", f"watcher failed: {exc!r}")
                await asyncio.sleep(WATCH_INTERVAL)

    async def _step(self, backoff: float) -> float:
        """One round of start-or-watch; returns the backoff for the next start attempt."""
        if self._producer is None:
            producer = self.factory()
            try:
                await producer.start()
            except Exception as exc:  # KafkaError, OSError, ...: keep trying
                await self._stop(producer, within=5)
                self._set("unavailable", f"cannot reach Kafka: {exc}")
                await asyncio.sleep(await self._starting(exc, backoff))
                return min(backoff * 2, 5.0)
            self._producer = producer
            self.connected_once = True
            await self._check_topic()
        elif self._broken():
            old, self._producer = self._producer, None
            self._set("unavailable", "producer failed; starting a new one")
            await self._stop(old, within=5)
            return 0.5
        elif await self._connected():
            await self._check_topic()
        else:
            self._set("unavailable", "no Kafka broker answers")
        await asyncio.sleep(WATCH_INTERVAL)
        return 0.5

    async def _starting(self, exc: BaseException, backoff: float) -> float:
        """Before the first connection: log the attempt, give up once the start-up timeout
        passed (or at once when Kafka refused the credentials); the wait before the next one."""
        if self.connected_once or self.startup_failure is not None:
            return backoff
        self.attempts += 1
        remaining = self._startup_deadline - asyncio.get_running_loop().time()
        reason = describe(exc)
        # aiokafka's bootstrap says only "Unable to bootstrap" when the broker refused the SASL
        # login or the TLS handshake: ask why, as the other commands' start-up does.
        refusal = await diagnose(self.settings) if isinstance(exc, KafkaConnectionError) else None
        if refusal is not None:
            self._give_up(ServiceRefused(refusal))
        elif isinstance(exc, self.dependency.refusals):
            self._give_up(
                ServiceRefused(
                    f"Kafka at {self.settings.kafka_bootstrap} refused the connection ({reason}); "
                    "check the credentials in LEADFLOW_KAFKA_SASL_USERNAME / _PASSWORD"
                )
            )
        elif remaining <= 0:
            self._give_up(self.dependency.unavailable(self.startup_within, self.attempts, reason))
        else:
            backoff = round(min(backoff, remaining), 1) or 0.1
            log.warning(attempt_line(self.dependency, self.attempts, backoff), error=reason)
        return backoff

    def missing_line(self) -> str:
        engagement = self._missing == self.topic
        variable = "LEADFLOW_ENGAGEMENT_TOPIC" if engagement else "LEADFLOW_ANONYMOUS_TOPIC"
        return (
            f"topic {self._missing} does not exist at {self.settings.kafka_bootstrap} (or the ACLs "
            "hide it); create it with `leadflow topics create` (same LEADFLOW_NAMESPACE), or "
            f"check LEADFLOW_NAMESPACE / {variable}"
        )

    async def _check_topic(self) -> None:
        """Connected: ready if the topic exists (asked again every TOPIC_RECHECK s, every second
        while missing), else `topic_missing` (logged every TOPIC_LOG_INTERVAL s; past the start-up
        timeout without ever being ready: give up)."""
        now = asyncio.get_running_loop().time()
        if self.state == "ready" and now - self._topic_checked < TOPIC_RECHECK:
            return
        try:
            metadata = await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 5)
        except Exception as exc:  # KafkaError, TimeoutError: not known; the watch goes on
            self._set("unavailable", f"cannot read the cluster metadata: {exc!r}")
            return
        missing = [t for t in self.topics if t not in metadata.topics()]
        if not missing:
            self._topic_checked = now
            self._set("ready", "producer connected")
            return
        self._missing = missing[0]
        line = self.missing_line()
        self._set("topic_missing", line)
        if now - self._topic_logged >= TOPIC_LOG_INTERVAL:
            self._topic_logged = now
            log.error(line, topic=self.topic, kafka=self.settings.kafka_bootstrap)
        if not self.ready_once and self.startup_failure is None and now >= self._startup_deadline:
            self._give_up(
                ServiceUnavailable(
                    f"{line} (not there within {self.startup_within:g} s, LEADFLOW_STARTUP_TIMEOUT)"
                )
            )

    def _give_up(self, failure: ServiceUnavailable | ServiceRefused) -> None:
        self.startup_failure = failure
        log.error("kafka start-up failed", detail=str(failure))
        if self.on_startup_failure is not None:
            self.on_startup_failure(failure)

    def _broken(self) -> bool:
        sender = getattr(self._producer, "_sender", None)
        task = getattr(sender, "sender_task", None)
        return task is not None and task.done()

    async def _connected(self) -> bool:
        client = self._producer.client
        for broker in client.cluster.brokers():
            try:
                if await asyncio.wait_for(client.ready(broker.nodeId), timeout=2):
                    return True
            except Exception:
                continue
        return False

    async def produce(self, records: Sequence[tuple[str, bytes, bytes]], within: float) -> None:
        """Return once Kafka acknowledged every (topic, key, value) record (acks=all); else
        KafkaUnavailable.

        Records Kafka did not acknowledge in time may still arrive later (the idempotent producer
        keeps retrying them); the client's retry may then add a duplicate, which the worker drops
        by event_id. Nothing is reported as accepted that Kafka did not acknowledge.
        """
        producer = self._producer
        if producer is None or self.state != "ready":
            if self.state == "topic_missing":
                raise TopicMissing(self.detail)
            raise KafkaUnavailable(f"Kafka is {self.state}: {self.detail}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(within):
                for topic, key, value in records:
                    future = await producer.send(topic, value, key=key)
                    future.add_done_callback(_consume_exception)
                    futures.append(future)
        except TimeoutError:
            self._set("unavailable", f"Kafka did not take the events within {within:g}s")
            raise KafkaUnavailable(self.detail) from None
        except Exception as exc:
            raise KafkaUnavailable(f"producing failed: {exc!r}") from exc
        _, pending = await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        if pending:
            self._set(
                "unavailable",
                f"Kafka acknowledged {len(futures) - len(pending)} of {len(futures)} events "
                f"within {within:g}s",
            )
            raise KafkaUnavailable(self.detail)
        for future in futures:
            error = future.exception()
            if error is not None:
                raise KafkaUnavailable(f"Kafka refused an event: {error!r}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._producer is not None:
            await self._stop(self._producer, within=self.settings.collector_ack_timeout + 5)
            self._producer = None
        self._set("stopped", "collector stopped")

    @staticmethod
    async def _stop(producer: Any, within: float) -> None:
        # Whatever is still unacknowledged was answered 503, so giving up on it here is safe.
        try:
            await asyncio.wait_for(producer.stop(), timeout=within)
        except Exception as exc:
            log.warning("producer did not stop cleanly", error=repr(exc))
