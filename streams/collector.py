"""The HTTP collector: trackers POST engagement events; Kafka has them before the answer.

`leadflow collector` runs this as its own process (docs/collector.md). The decisions - body into
items, per-event validation, token check, rate bucket, response shape, CORS headers - are small
pure functions at the top of this module; the aiohttp handlers below only do I/O around them.
Events are validated exactly like the worker validates them
(streams.pipeline.intake.parse_engagement), so an event the collector accepts is never
dead-lettered by the worker for its shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import structlog
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import SecretStr

from schemas.deadletter import DeadLetterKind
from schemas.engagement import EngagementEvent
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import Settings, SettingsError

log = structlog.get_logger("leadflow.collector")

EVENTS_PATH = "/v1/events"
NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
# text/plain: what a browser sends for a string body when no Content-Type is set.
JSON_TYPES = frozenset({"", "application/json", "text/plain"})
TOKEN_HEADER = "X-Leadflow-Token"
RETRY_AFTER_UNAVAILABLE = 5  # seconds a client waits before retrying a 503
HTTP_LOCATION = RecordLocation(topic="http", partition=-1, offset=-1)
NOT_JSON = DeadLetterKind.NOT_JSON.value

# -- body parsing (pure) -------------------------------------------------------------------

BodyFormat = Literal["json", "ndjson"]


@dataclass(frozen=True, slots=True)
class Item:
    """One event of a request body, decoded but not validated yet."""

    index: int
    value: Any  # the decoded JSON (anything: validation says what is wrong with it)
    raw: bytes  # the event's JSON as sent (object body, NDJSON line) or re-encoded (array item)
    line: int | None = None  # NDJSON: 1-based line number in the body
    error: str | None = None  # NDJSON: this line is not JSON


@dataclass(frozen=True, slots=True)
class Body:
    items: tuple[Item, ...]
    single: bool  # one JSON object (not an array or NDJSON): the short response shape


@dataclass(frozen=True, slots=True)
class BodyError:
    """The body as a whole is unusable: 400 (or 415 for the media type)."""

    error: str
    reason: str
    status: int = 400


def body_format(content_type: str | None) -> BodyFormat | None:
    """NDJSON for the NDJSON media types, JSON for JSON (and text/plain); None = 415."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in JSON_TYPES or media.endswith("+json"):
        return "json"
    return None


def _json_problem(exc: orjson.JSONDecodeError) -> str:
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def parse_body(body: bytes, fmt: BodyFormat) -> Body | BodyError:
    """Split a request body into events: one object, an array of objects, or NDJSON lines.

    A body that is not JSON at all is a BodyError naming line and column. In NDJSON each line
    stands alone: a line that is not JSON is rejected as that event (naming its line) and the
    other lines still count.
    """
    empty = BodyError(
        "no events in the body; send one JSON event object, a JSON array of events, or NDJSON",
        "empty_body",
    )
    if fmt == "ndjson":
        items: list[Item] = []
        for number, line in enumerate(body.split(b"\n"), start=1):
            text = line.strip()
            if not text:
                continue
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                problem = f"line {number}: not valid JSON: {exc.msg} at column {exc.colno}"
                items.append(Item(len(items), None, text, number, problem))
                continue
            items.append(Item(len(items), value, text, number))
        return Body(tuple(items), single=False) if items else empty
    if not body.strip():
        return empty
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return BodyError(f"body is not valid JSON: {_json_problem(exc)}", NOT_JSON)
    if isinstance(decoded, dict):
        return Body((Item(0, decoded, body.strip()),), single=True)
    if isinstance(decoded, list):
        if not decoded:
            return empty
        return Body(
            tuple(Item(i, value, orjson.dumps(value)) for i, value in enumerate(decoded)),
            single=False,
        )
    return BodyError(
        f"expected a JSON object (one event) or an array of event objects, "
        f"got {type(decoded).__name__}",
        "invalid_body",
    )


# -- per-event validation (pure) -----------------------------------------------------------

_FIELD_PATH = re.compile(r"^[A-Za-z_][\w.\[\]-]*$")


def field_of(kind: DeadLetterKind, message: str) -> str | None:
    """The field a dead-letter message names ("occurred_at: Field required" -> occurred_at)."""
    if kind not in (DeadLetterKind.INVALID_EVENT, DeadLetterKind.UNKNOWN_TYPE):
        return None
    head, sep, _ = message.partition(": ")
    return head if sep and _FIELD_PATH.match(head) else None


@dataclass(frozen=True, slots=True)
class Checked:
    """One event's verdict: accepted (with the bytes and key to produce) or rejected (why)."""

    index: int
    event_id: str | None
    line: int | None = None
    event: EngagementEvent | None = None
    key: bytes | None = None
    value: bytes | None = None
    reason: str | None = None
    error: str | None = None
    field: str | None = None

    @property
    def accepted(self) -> bool:
        return self.event is not None

    def result(self) -> dict[str, Any]:
        """The per-event entry of a batch response."""
        out: dict[str, Any] = {"index": self.index}
        if self.line is not None:
            out["line"] = self.line
        out["status"] = "accepted" if self.accepted else "rejected"
        if self.event_id is not None:
            out["event_id"] = self.event_id
        if not self.accepted:
            out.update(error=self.error, reason=self.reason, field=self.field)
        return out


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_event(
    item: Item, source: str | None, known_types: frozenset[str], max_bytes: int
) -> Checked:
    """Validate one event like the worker does; stamp the authenticated source if it has none.

    The bytes produced are the event as sent; only when `source` is missing (or null/blank) is
    it re-encoded with `source` set. The size limit applies to exactly the bytes produced.
    """
    raw_id = item.value.get("event_id") if isinstance(item.value, dict) else None
    event_id = raw_id.strip() if isinstance(raw_id, str) and raw_id.strip() else None
    if item.error is not None:
        return Checked(item.index, event_id, item.line, reason=NOT_JSON, error=item.error)
    value = item.raw
    if source and isinstance(item.value, dict) and _blank(item.value.get("source")):
        value = orjson.dumps({**item.value, "source": source})
    parsed = parse_engagement(None, value, HTTP_LOCATION, known_types, max_bytes)
    if isinstance(parsed, DeadLetter):
        kind = parsed.headers.error_kind
        message = parsed.headers.error_message
        return Checked(
            item.index,
            event_id,
            item.line,
            reason=kind.value,
            error=message,
            field=field_of(kind, message),
        )
    return Checked(
        item.index,
        parsed.event_id,
        item.line,
        event=parsed,
        key=parsed.lead_id.encode("utf-8"),
        value=value,
    )


def summarize(checked: Sequence[Checked], single: bool) -> tuple[int, dict[str, Any]]:
    """HTTP status and JSON body for a request whose events were all checked (and the accepted
    ones acknowledged by Kafka).

    One object: 202 {"accepted": 1, "event_id"} or 400 {"error", "reason", "field", ...}.
    A batch (array or NDJSON): {"accepted", "rejected", "results": [...]} with 202 when at least
    one event was accepted (look at "rejected" and the results for the others), 400 when none.
    """
    if single:
        (only,) = checked
        if only.accepted:
            return 202, {"accepted": 1, "event_id": only.event_id}
        body: dict[str, Any] = {"error": only.error, "reason": only.reason, "field": only.field}
        if only.event_id is not None:
            body["event_id"] = only.event_id
        return 400, body
    accepted = sum(1 for c in checked if c.accepted)
    body = {
        "accepted": accepted,
        "rejected": len(checked) - accepted,
        "results": [c.result() for c in checked],
    }
    if accepted:
        return 202, body
    return 400, {"error": "no event in the batch was accepted; see results", **body}


# -- authentication (pure) -----------------------------------------------------------------


def presented_token(authorization: str | None, x_token: str | None) -> str | None:
    """The token a request presents: `Authorization: Bearer <token>` or `X-Leadflow-Token`."""
    if authorization:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            return credentials.strip()
    if x_token and x_token.strip():
        return x_token.strip()
    return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_digests(tokens: Mapping[str, SecretStr]) -> dict[str, bytes]:
    """source -> SHA-256 of its token: equal-length values for the constant-time comparison."""
    return {source: _digest(token.get_secret_value()) for source, token in tokens.items()}


def authenticate(presented: str, digests: Mapping[str, bytes]) -> str | None:
    """The source whose token was presented, or None.

    Compares with hmac.compare_digest against every configured token, without stopping at a
    match, so the time taken says nothing about which token (or how much of one) matched.
    """
    candidate = _digest(presented)
    match: str | None = None
    for source, digest in digests.items():
        if hmac.compare_digest(candidate, digest):
            match = source
    return match


# -- rate limiting (pure, time passed in) --------------------------------------------------


@dataclass
class TokenBucket:
    """`rate` events per second with bursts up to `burst` events.

    A request of n events needs min(n, burst) tokens in the bucket and then takes n: a batch
    larger than the burst is let through when the bucket is full, and the debt is paid back
    before the next request, so the long-run rate holds either way.
    """

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.tokens = float(self.burst)

    def take(self, n: int, now: float) -> float:
        """Take n tokens at time `now` (seconds). 0.0 = allowed; otherwise the seconds until a
        request of this size would be (nothing is taken then)."""
        if self.updated is not None:
            elapsed = max(0.0, now - self.updated)
            self.tokens = min(float(self.burst), self.tokens + elapsed * self.rate)
        self.updated = now if self.updated is None else max(now, self.updated)
        need = min(float(n), float(self.burst))
        if self.tokens + 1e-9 >= need:  # float refills: 0.1 s x 10/s is 1 token
            self.tokens -= n
            return 0.0
        return (need - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per authenticated source."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.buckets: dict[str, TokenBucket] = {}

    def take(self, source: str, n: int, now: float) -> float:
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.rate, self.burst)
        return bucket.take(n, now)


def retry_after(seconds: float) -> str:
    """Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


# -- CORS (pure) ---------------------------------------------------------------------------

CORS_ALLOW_HEADERS = f"Authorization, Content-Type, {TOKEN_HEADER}"


def cors_allowed(origin: str | None, allowed: Sequence[str]) -> bool:
    if not origin or not allowed:
        return False
    return "*" in allowed or origin.rstrip("/") in {a.rstrip("/") for a in allowed}


def cors_headers(origin: str | None, allowed: Sequence[str], preflight: bool) -> dict[str, str]:
    """CORS response headers for a request from `origin`; empty when it is not allowed (or
    CORS is off). No credentials: trackers authenticate with a header, not cookies."""
    if not cors_allowed(origin, allowed):
        return {}
    assert origin is not None
    headers = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
    if preflight:
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                "Access-Control-Max-Age": "600",
            }
        )
    else:
        headers["Access-Control-Expose-Headers"] = "Retry-After"
    return headers


# -- configuration -------------------------------------------------------------------------


def check_collector_settings(settings: Settings) -> None:
    """What the collector needs beyond what Settings validates; raises SettingsError."""
    if not settings.collector_tokens:
        raise SettingsError(
            "invalid configuration: LEADFLOW_COLLECTOR_TOKENS: no tokens configured; set a JSON "
            'object {"source-name": "token"} (tokens of at least 16 characters)'
        )


# -- metrics -------------------------------------------------------------------------------


class CollectorMetrics:
    """Everything the collector exports on /metrics, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "leadflow_collector_requests",
            "HTTP requests answered, by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.events_accepted = Counter(
            "leadflow_collector_events_accepted",
            "Events acknowledged by Kafka and answered as accepted, by source.",
            ["source"],
            registry=r,
        )
        self.events_rejected = Counter(
            "leadflow_collector_events_rejected",
            "Events not accepted, by reason (invalid_event, unknown_type, oversized, not_json, "
            "rate_limited, kafka_unavailable).",
            ["reason"],
            registry=r,
        )
        self.produce_seconds = Histogram(
            "leadflow_collector_produce_seconds",
            "Time from producing a request's events to Kafka acknowledging all of them.",
            buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.rate_limited = Counter(
            "leadflow_collector_rate_limited",
            "Requests answered 429 because the source's rate was exceeded, by source.",
            ["source"],
            registry=r,
        )
        self.kafka_up = Gauge(
            "leadflow_collector_kafka_up",
            "1 while the producer is connected and events are accepted, else 0.",
            registry=r,
        )


# -- Kafka ---------------------------------------------------------------------------------

KafkaState = Literal["connecting", "ready", "unavailable", "stopped"]
WATCH_INTERVAL = 1.0


class KafkaUnavailable(Exception):
    """Kafka did not take (all) the events: the answer is 503 and the client retries."""


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
        self.metrics = metrics
        self.factory = factory or self._new_producer
        self.state: KafkaState = "connecting"
        self.detail = "starting the producer"
        self.since = datetime.now(UTC)
        self._producer: Any = None
        self._task: asyncio.Task[None] | None = None

    def _new_producer(self) -> Any:
        from aiokafka import AIOKafkaProducer

        from streams.kafka import client_options

        return AIOKafkaProducer(
            **client_options(self.settings),
            acks="all",
            enable_idempotence=True,
            linger_ms=2,
            client_id="leadflow-collector",
        )

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
        self.metrics.kafka_up.set(1 if state == "ready" else 0)

    def start(self) -> None:
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
                await asyncio.sleep(backoff)
                return min(backoff * 2, 5.0)
            self._producer = producer
            self._set("ready", "producer connected")
        elif self._broken():
            old, self._producer = self._producer, None
            self._set("unavailable", "producer failed; starting a new one")
            await self._stop(old, within=5)
            return 0.5
        elif await self._connected():
            self._set("ready", "producer connected")
        else:
            self._set("unavailable", "no Kafka broker answers")
        await asyncio.sleep(WATCH_INTERVAL)
        return 0.5

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

    async def produce(self, records: Sequence[tuple[bytes, bytes]], within: float) -> None:
        """Return once Kafka acknowledged every record (acks=all); else KafkaUnavailable.

        Records Kafka did not acknowledge in time may still arrive later (the idempotent producer
        keeps retrying them); the client's retry may then add a duplicate, which the worker drops
        by event_id. Nothing is reported as accepted that Kafka did not acknowledge.
        """
        producer = self._producer
        if producer is None or self.state != "ready":
            raise KafkaUnavailable(f"Kafka is {self.state}: {self.detail}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(within):
                for key, value in records:
                    future = await producer.send(self.topic, value, key=key)
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


# -- HTTP ----------------------------------------------------------------------------------


def _json(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


class Collector:
    """The aiohttp application: thin handlers around the pure functions above."""

    def __init__(
        self,
        settings: Settings,
        event_types: frozenset[str],
        gate: KafkaGate | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.event_types = event_types
        self.metrics = CollectorMetrics()
        self.gate = gate or KafkaGate(settings, self.metrics)
        self.digests = token_digests(settings.collector_tokens)
        self.limiter = RateLimiter(settings.collector_rate_per_second, settings.collector_burst)
        self.cors = tuple(settings.collector_cors_origins)
        self.clock = clock

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.collector_max_body_bytes,
            middlewares=[self._middleware],
        )
        app.router.add_post(EVENTS_PATH, self.post_events)
        app.router.add_route("OPTIONS", EVENTS_PATH, self.preflight)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics_page)
        app.cleanup_ctx.append(self._kafka)
        return app

    async def _kafka(self, _app: web.Application) -> AsyncIterator[None]:
        self.gate.start()
        yield
        await self.gate.close()

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            response = await handler(request)
        except web.HTTPRequestEntityTooLarge:
            response = self._too_large(request)
        except web.HTTPException as exc:  # 404, 405 from the router
            response = _json(exc.status, {"error": exc.reason, "reason": "http"})
        except Exception:
            log.exception("request failed", path=request.path, method=request.method)
            response = _json(500, {"error": "internal error", "reason": "internal"})
        if request.path == EVENTS_PATH and request.method != "OPTIONS":
            response.headers.update(cors_headers(request.headers.get("Origin"), self.cors, False))
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    def _refuse(
        self,
        request: web.Request,
        status: int,
        error: str,
        reason: str,
        headers: Mapping[str, str] | None = None,
        **context: Any,
    ) -> web.Response:
        log.warning(
            "request refused",
            status=status,
            reason=reason,
            error=error,
            remote=request.remote,
            **context,
        )
        return _json(status, {"error": error, "reason": reason}, headers)

    def _too_large(self, request: web.Request, source: str | None = None) -> web.Response:
        limit = self.settings.collector_max_body_bytes
        return self._refuse(
            request,
            413,
            f"body is larger than {limit} bytes (LEADFLOW_COLLECTOR_MAX_BODY_BYTES)",
            "body_too_large",
            source=source,
        )

    async def post_events(self, request: web.Request) -> web.Response:
        s = self.settings
        token = presented_token(
            request.headers.get("Authorization"), request.headers.get(TOKEN_HEADER)
        )
        if token is None:
            return self._refuse(
                request,
                401,
                f"missing token: send Authorization: Bearer <token> or {TOKEN_HEADER}",
                "unauthenticated",
                {"WWW-Authenticate": 'Bearer realm="leadflow"'},
            )
        source = authenticate(token, self.digests)
        if source is None:
            return self._refuse(request, 403, "token not recognised", "forbidden")
        if (
            request.content_length is not None
            and request.content_length > s.collector_max_body_bytes
        ):
            return self._too_large(request, source)
        fmt = body_format(request.headers.get("Content-Type"))
        if fmt is None:
            return self._refuse(
                request,
                415,
                "send application/json (an event object or an array of events) or "
                "application/x-ndjson",
                "unsupported_media_type",
                source=source,
            )
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large(request, source)
        parsed = parse_body(raw, fmt)
        if isinstance(parsed, BodyError):
            return self._refuse(request, parsed.status, parsed.error, parsed.reason, source=source)
        count = len(parsed.items)
        if count > s.collector_max_batch_events:
            return self._refuse(
                request,
                413,
                f"{count} events in one request; the limit is {s.collector_max_batch_events} "
                "(LEADFLOW_COLLECTOR_MAX_BATCH_EVENTS)",
                "too_many_events",
                source=source,
            )
        wait = self.limiter.take(source, count, self.clock())
        if wait > 0:
            self.metrics.rate_limited.labels(source).inc()
            self.metrics.events_rejected.labels("rate_limited").inc(count)
            return self._refuse(
                request,
                429,
                f"rate limit of {s.collector_rate_per_second:g} events/s (burst "
                f"{s.collector_burst}) exceeded for source {source}; retry later",
                "rate_limited",
                {"Retry-After": retry_after(wait)},
                source=source,
            )
        checked = [
            check_event(item, source, self.event_types, s.max_event_bytes) for item in parsed.items
        ]
        accepted = [c for c in checked if c.accepted]
        if accepted:
            started = time.perf_counter()
            try:
                await self.gate.produce(
                    [(c.key or b"", c.value or b"") for c in accepted], s.collector_ack_timeout
                )
            except KafkaUnavailable as exc:
                self.metrics.events_rejected.labels("kafka_unavailable").inc(len(accepted))
                log.error(
                    "kafka did not acknowledge; answering 503",
                    source=source,
                    events=len(accepted),
                    detail=str(exc),
                )
                return _json(
                    503,
                    {
                        "error": f"events not stored, retry later: {exc}",
                        "reason": "kafka_unavailable",
                    },
                    {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
                )
            self.metrics.produce_seconds.observe(time.perf_counter() - started)
            self.metrics.events_accepted.labels(source).inc(len(accepted))
        rejected = [c for c in checked if not c.accepted]
        for c in rejected:
            self.metrics.events_rejected.labels(c.reason or "invalid_event").inc()
        if rejected:
            log.warning(
                "events rejected",
                source=source,
                accepted=len(accepted),
                rejected=len(rejected),
                first=[c.result() for c in rejected[:5]],
            )
        status, body = summarize(checked, parsed.single)
        return _json(status, body)

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if request.headers.get("Access-Control-Request-Method") is None:
            return web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
        headers = cors_headers(origin, self.cors, preflight=True)
        if not headers:
            return self._refuse(request, 403, f"origin {origin!r} is not allowed", "cors_origin")
        return web.Response(status=204, headers=headers)

    async def health(self, _request: web.Request) -> web.Response:
        gate = self.gate
        ok = gate.state == "ready"
        body = {
            "status": "ok" if ok else "unavailable",
            "kafka": {
                "state": gate.state,
                "detail": gate.detail,
                "since": gate.since.isoformat(),
                "bootstrap": self.settings.kafka_bootstrap,
                "topic": gate.topic,
            },
        }
        return _json(200 if ok else 503, body)

    async def metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


def run_collector(settings: Settings, event_types: frozenset[str]) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get their answer before the producer
    stops."""
    check_collector_settings(settings)
    # aiokafka logs every failed connection attempt; the collector logs state changes instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    collector = Collector(settings, event_types)
    log.info(
        "starting collector",
        listen=f"http://{settings.collector_host}:{settings.collector_port}",
        kafka=settings.kafka_bootstrap,
        topic=settings.engagement,
        sources=sorted(settings.collector_tokens),
        cors_origins=list(settings.collector_cors_origins),
    )
    web.run_app(
        collector.app(),
        host=settings.collector_host,
        port=settings.collector_port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.collector_ack_timeout + 5,
    )
