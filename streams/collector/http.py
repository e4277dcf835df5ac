"""The HTTP shell: aiohttp handlers that do the I/O around the pure decisions, and the server.

Each refusal is answered and logged in one place (`_refuse`); an event is only answered as
accepted after Kafka acknowledged it.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streams.collector.access import (
    TOKEN_HEADER,
    RateLimiter,
    authenticate,
    check_collector_settings,
    client_address,
    cors_headers,
    origin_allowed,
    presented_token,
    retry_after,
    token_digests,
    tracker_origins,
    tracker_problem,
)
from streams.collector.body import (
    Body,
    BodyError,
    Checked,
    body_format,
    check_event,
    parse_body,
    summarize,
)
from streams.collector.gate import KafkaGate, TopicMissing
from streams.collector.metrics import CollectorMetrics
from streams.collector.tracker import TRACKER_PATH, tracker_script
from streams.core.rules import Rules, parse_rules
from streams.kafka import KafkaUnavailable
from streams.settings import Settings, TokenScope

log = structlog.get_logger("leadflow.collector")

EVENTS_PATH = "/v1/events"
RETRY_AFTER_UNAVAILABLE = 5  # seconds a client waits before retrying a 503


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
    """The aiohttp application: thin handlers around the pure functions of body and access."""

    def __init__(
        self,
        settings: Settings,
        event_types: frozenset[str],
        gate: KafkaGate | None = None,
        clock: Callable[[], float] = time.monotonic,
        rules: Rules | None = None,
    ) -> None:
        self.settings = settings
        self.event_types = event_types
        self.metrics = CollectorMetrics()
        self.gate = gate or KafkaGate(settings, self.metrics)
        self.digests = token_digests(settings.collector_tokens)
        self.limiter = RateLimiter(settings.collector_rate_per_second, settings.collector_burst)
        # Tracker tokens are public: their budget is per client address (truncated), not
        # per source.
        self.visitors = RateLimiter(
            settings.collector_tracker_rate_per_second, settings.collector_tracker_burst
        )
        self.cors = tuple(settings.collector_cors_origins)
        self.clock = clock
        self.rules = rules or parse_rules({"mql": {"threshold": 1}})
        self.tracker_types = self.rules.tracker_types
        self.script = tracker_script(self.rules)

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.collector_max_body_bytes,
            middlewares=[self._middleware],
        )
        app.router.add_post(EVENTS_PATH, self.post_events)
        app.router.add_route("OPTIONS", EVENTS_PATH, self.preflight)
        app.router.add_get(TRACKER_PATH, self.tracker_js)
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
            remote=self._client(request),  # truncated: no full address is kept
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

    def _client(self, request: web.Request) -> str:
        return client_address(
            request.remote,
            request.headers.get("X-Forwarded-For"),
            self.settings.collector_trust_forwarded,
        )

    def _scope(self, source: str) -> TokenScope | None:
        """The scope of a tracker token's source; None for a full (server-side) token."""
        scope = self.settings.collector_token_scopes.get(source)
        return scope if scope is not None and scope.scope == "tracker" else None

    async def post_events(self, request: web.Request) -> web.Response:
        """Authenticate, read the body, take the rate, validate, produce, answer."""
        source = self._source(request)
        if isinstance(source, web.Response):
            return source
        scope = self._scope(source)
        if scope is not None:
            origin = request.headers.get("Origin")
            if not origin_allowed(origin, tracker_origins(scope, self.cors)):
                self.metrics.tracker_refused.labels("origin").inc()
                return self._refuse(
                    request,
                    403,
                    f"origin {origin!r} may not use the tracker token of source {source}; "
                    "list it in the token's origins (LEADFLOW_COLLECTOR_TOKENS)",
                    "origin_not_allowed",
                    source=source,
                )
        body = await self._read_events(request, source)
        if isinstance(body, web.Response):
            return body
        if scope is not None:
            limited = self._visitor_rate_limit(request, source, len(body.items))
        else:
            limited = self._rate_limit(request, source, len(body.items))
        if limited is not None:
            return limited
        checked = [
            check_event(item, source, self.event_types, self.settings.max_event_bytes)
            for item in body.items
        ]
        if scope is not None:
            checked = [self._tracker_may(c) for c in checked]
        accepted = [c for c in checked if c.accepted]
        if accepted:
            unavailable = await self._produce(source, accepted)
            if unavailable is not None:
                return unavailable
        self._count_rejected(source, checked, len(accepted))
        status, answer = summarize(checked, body.single)
        return _json(status, answer)

    def _tracker_may(self, checked: Checked) -> Checked:
        """The event as a tracker token may send it: refused when it is not a visitor's event
        or identify of the tracker's types."""
        if not checked.accepted:
            return checked
        problem = tracker_problem(checked, self.tracker_types)
        if problem is None:
            return checked
        self.metrics.tracker_refused.labels("scope").inc()
        field, error = problem
        return Checked(
            checked.index,
            checked.event_id,
            checked.line,
            reason="not_allowed",
            error=error,
            field=field,
        )

    def _source(self, request: web.Request) -> str | web.Response:
        """The source whose token the request presents, or the 401/403 answer."""
        token = presented_token(
            request.headers.get("Authorization"), request.headers.get(TOKEN_HEADER)
        )
        in_url = request.query.get("token")
        if token is None and in_url:
            # sendBeacon cannot set headers: a tracker token (public anyway) may come in the
            # URL. A server-side token never may: URLs end up in access logs.
            source = authenticate(in_url, self.digests)
            if source is None:
                return self._refuse(request, 403, "token not recognised", "forbidden")
            if self._scope(source) is None:
                return self._refuse(
                    request,
                    403,
                    "only a tracker token may be sent in the URL (?token=); send this one in a "
                    f"header (Authorization: Bearer or {TOKEN_HEADER}), and rotate it: it may "
                    "now be in access logs",
                    "forbidden",
                    source=source,
                )
            return source
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
        return source

    async def _read_events(self, request: web.Request, source: str) -> Body | web.Response:
        """The request's events, or the 413/415/400 answer when the body cannot be used."""
        s = self.settings
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
        return parsed

    def _rate_limit(self, request: web.Request, source: str, count: int) -> web.Response | None:
        """None when the source may send `count` events now; else the 429 answer."""
        wait = self.limiter.take(source, count, self.clock())
        if wait <= 0:
            return None
        s = self.settings
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

    def _visitor_rate_limit(
        self, request: web.Request, source: str, count: int
    ) -> web.Response | None:
        """A tracker token's budget: per client address (truncated), not per source."""
        client = self._client(request)
        wait = self.visitors.take(f"{source}|{client}", count, self.clock())
        if wait <= 0:
            return None
        s = self.settings
        self.metrics.rate_limited.labels(source).inc()
        self.metrics.events_rejected.labels("rate_limited").inc(count)
        return self._refuse(
            request,
            429,
            f"rate limit of {s.collector_tracker_rate_per_second:g} events/s per client "
            f"(burst {s.collector_tracker_burst}) exceeded for tracker source {source}; "
            "retry later",
            "rate_limited",
            {"Retry-After": retry_after(wait)},
            source=source,
        )

    async def _produce(self, source: str, accepted: Sequence[Checked]) -> web.Response | None:
        """None once Kafka acknowledged every accepted event; else the 503 answer."""
        started = time.perf_counter()
        try:
            topics = {"engagement": self.settings.engagement, "anonymous": self.settings.anonymous}
            records = [(topics[r], key, value) for c in accepted for r, key, value in c.records()]
            await self.gate.produce(records, self.settings.collector_ack_timeout)
        except KafkaUnavailable as exc:
            detail = str(exc)
            reason = "topic_missing" if isinstance(exc, TopicMissing) else "kafka_unavailable"
            self.metrics.events_rejected.labels(reason).inc(len(accepted))
            log.error(
                "kafka did not acknowledge; answering 503",
                reason=reason,
                source=source,
                events=len(accepted),
                detail=detail,
            )
            return _json(
                503,
                {
                    "error": f"events not stored, retry later: {detail}",
                    "reason": reason,
                },
                {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)},
            )
        self.metrics.produce_seconds.observe(time.perf_counter() - started)
        self.metrics.events_accepted.labels(source).inc(len(accepted))
        return None

    def _count_rejected(self, source: str, checked: Sequence[Checked], accepted: int) -> None:
        rejected = [c for c in checked if not c.accepted]
        for c in rejected:
            self.metrics.events_rejected.labels(c.reason or "invalid_event").inc()
        if rejected:
            log.warning(
                "events rejected",
                source=source,
                accepted=accepted,
                rejected=len(rejected),
                first=[c.result() for c in rejected[:5]],
            )

    async def preflight(self, request: web.Request) -> web.Response:
        origin = request.headers.get("Origin")
        if request.headers.get("Access-Control-Request-Method") is None:
            return web.Response(status=204, headers={"Allow": "POST, OPTIONS"})
        headers = cors_headers(origin, self.cors, preflight=True)
        if not headers:
            return self._refuse(request, 403, f"origin {origin!r} is not allowed", "cors_origin")
        return web.Response(status=204, headers=headers)

    async def tracker_js(self, request: web.Request) -> web.Response:
        """tracker.js, with the rules' page types written in; cached by browsers 5 minutes."""
        headers = {
            "Cache-Control": "public, max-age=300",
            "ETag": self.script.etag,
            "Access-Control-Allow-Origin": "*",
        }
        if request.headers.get("If-None-Match") == self.script.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(
            body=self.script.body,
            content_type="application/javascript",
            charset="utf-8",
            headers=headers,
        )

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


def run_collector(
    settings: Settings, event_types: frozenset[str], rules: Rules | None = None
) -> None:
    """Serve until SIGTERM/SIGINT; in-flight requests get their answer before the producer
    stops."""
    check_collector_settings(settings)
    # aiokafka logs every failed connection attempt; the collector logs state changes instead.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    collector = Collector(settings, event_types, rules=rules)
    log.info(
        "starting collector",
        listen=f"http://{settings.collector_host}:{settings.collector_port}",
        kafka=settings.kafka_bootstrap,
        topic=settings.engagement,
        sources=sorted(settings.collector_tokens),
        cors_origins=list(settings.collector_cors_origins),
    )
    # Kafka not there by LEADFLOW_STARTUP_TIMEOUT: stop the way SIGTERM does (in-flight
    # requests answered), then end the command with the gate's one line naming the variable.
    collector.gate.on_startup_failure = lambda _: signal.raise_signal(signal.SIGTERM)
    web.run_app(
        collector.app(),
        host=settings.collector_host,
        port=settings.collector_port,
        print=None,
        access_log=None,
        shutdown_timeout=settings.collector_ack_timeout + 5,
    )
    if collector.gate.startup_failure is not None:
        raise collector.gate.startup_failure
