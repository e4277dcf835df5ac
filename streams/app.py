"""The worker's Faust app: the agents, the timers (outbox, SLA sweep, KPI gauges) and the web
views (/health, /metrics, /leads/<id>/explain). Built by streams.bootstrap."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from faust.app.base import BootStrategy
from prometheus_client import generate_latest

from streams.agents.identity import IdentityConsumer
from streams.agents.sales import SalesConsumer
from streams.agents.scoring import EngagementConsumer
from streams.bootstrap import LiveRules, open_store
from streams.core.explain import explain, lead_id_problem
from streams.core.lead import LeadState
from streams.core.routing import Routing
from streams.core.rules import Rules
from streams.kafka import KafkaPing, Producer
from streams.observability import Metrics, dependency_hint, log
from streams.pipeline.background import BackgroundTasks
from streams.pipeline.identity import IdentityService
from streams.pipeline.retry import OUTAGES
from streams.pipeline.routing import recorded_routing
from streams.pipeline.sales import SalesService
from streams.pipeline.scoring import ScoringService
from streams.settings import Settings, SettingsError
from streams.store import Generation, LeadStore
from streams.store.identity import VisitorStore
from streams.store.routing_ledger import RoutingLedger

PROMETHEUS_TEXT = "text/plain; version=0.0.4"
HEALTH_PING_SECONDS = 2.0


@dataclass
class Worker:
    app: faust.App
    service: ScoringService
    sales: SalesService
    engagement: EngagementConsumer
    sales_consumer: SalesConsumer
    store: LeadStore
    metrics: Metrics
    rules: Rules
    kafka_ping: KafkaPing
    identity_consumer: IdentityConsumer


class WorkerBoot(BootStrategy):
    """Faust runs the worker's services, timers and web views. Its Kafka clients are not
    started: both inputs are read by leadflow's own batch consumers (streams/agents), and every
    output leaves through leadflow's producer (streams/kafka/producer.py)."""

    enable_kafka = False


class WorkerApp(faust.App):
    BootStrategy = WorkerBoot


def new_app(settings: Settings) -> faust.App:
    datadir = settings.data_dir / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    return WorkerApp(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        # leadflow creates its own topics with explicit partition counts (`leadflow topics
        # create`); Faust must not invent any.
        topic_allow_declare=False,
        topic_disable_leader=True,
        store="memory://",
        datadir=str(datadir),
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
    )


def check_identity_rules(settings: Settings, rules: Rules) -> None:
    """A visitor's events may be re-sent for as long as they are kept: the scoring side must
    remember their ids at least that long, or a re-sent event would count twice."""
    kept = rules.visitors.retention
    if kept > timedelta(days=settings.dedupe_ttl_days):
        raise SettingsError(
            f"invalid configuration: rules identity.retention ({kept.days} days) is longer than "
            f"LEADFLOW_DEDUPE_TTL_DAYS ({settings.dedupe_ttl_days}): a re-sent visitor's event "
            "could be counted twice; shorten the first or lengthen the second"
        )


def create_worker(settings: Settings, rules: Rules, generation: int = 0) -> Worker:
    check_identity_rules(settings, rules)
    app = new_app(settings)
    metrics = Metrics()
    store = open_store(settings, settings.state_cache_leads).at_generation(generation)
    publisher = Producer(settings, client_id=settings.app_id)
    service = ScoringService(settings, rules, store, publisher, metrics)
    sales = SalesService(settings, rules, store.for_source(settings.handoff), publisher, metrics)
    engagement = EngagementConsumer(settings, service, metrics, loop=app.loop)
    sales_consumer = SalesConsumer(settings, sales, metrics, loop=app.loop)
    visitors = VisitorStore(store.redis, store.keys)
    identity = IdentityService(settings, rules, visitors, publisher, metrics)
    identity_consumer = IdentityConsumer(settings, identity, metrics, loop=app.loop)

    @app.task  # type: ignore[untyped-decorator]
    async def start_consumers() -> None:
        # Started and stopped with the app (mode runtime dependencies).
        await app.add_runtime_dependency(engagement)
        await app.add_runtime_dependency(sales_consumer)
        await app.add_runtime_dependency(identity_consumer)

    worker = Worker(
        app,
        service,
        sales,
        engagement,
        sales_consumer,
        store,
        metrics,
        rules,
        KafkaPing(settings),
        identity_consumer,
    )

    @app.on_before_shutdown.connect  # type: ignore[arg-type]
    async def close_kafka_ping(app: faust.App, *args: Any, **kwargs: Any) -> None:
        await worker.kafka_ping.close()

    register_timers(worker, settings)
    register_views(worker, settings)
    return worker


def register_timers(worker: Worker, settings: Settings) -> None:
    """The timers' bodies are streams.pipeline.background's: a tick that meets an outage is
    logged and skipped (the next tick tries again), never raised into Faust, which would crash
    the worker (docs/reliability.md, "Outages of Redis or Kafka")."""
    app = worker.app
    ticks = BackgroundTasks(
        worker.service,
        worker.sales,
        worker.store,
        worker.metrics,
        worker.engagement.assigned,
        worker.sales_consumer.assigned,
        worker.sales_consumer.sweepable,
    )

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def deliver_outbox() -> None:
        await ticks.deliver_outbox()

    @app.timer(interval=settings.sla_sweep_interval)  # type: ignore[untyped-decorator]
    async def sweep_deadlines() -> None:
        await ticks.sweep_deadlines()

    @app.timer(interval=settings.kpi_refresh_interval)  # type: ignore[untyped-decorator]
    async def refresh_kpis() -> None:
        await ticks.refresh_kpis()


async def routing_if_available(
    ledger: RoutingLedger, state: LeadState, rules: Rules
) -> Routing | None:
    """The lead's routing decision for explain; None if Redis stops answering after the lead
    was read (the rest of the explanation is worth more than this part of it)."""
    try:
        return await asyncio.wait_for(recorded_routing(ledger, state, rules), timeout=5)
    except OUTAGES:
        return None


def register_views(worker: Worker, settings: Settings) -> None:
    app, service, store, metrics = worker.app, worker.service, worker.store, worker.metrics

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp rejects a charset inside content_type, so the text format is named without it.
        return web.bytes(generate_latest(metrics.registry), content_type=PROMETHEUS_TEXT)

    async def answers(dependency: str, ping: Callable[[], Awaitable[object]]) -> bool:
        try:
            await asyncio.wait_for(ping(), timeout=HEALTH_PING_SECONDS)
        except Exception as exc:
            metrics.dependencies.failed(dependency, exc)
            return False
        metrics.dependencies.succeeded(dependency)
        return True

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        # Both asked now, at once (2 s at most): Redis with PING, Kafka with a Metadata request
        # on the health client's own connection (streams/kafka/ping.py). The worker's own
        # calls report failures between two /health requests (leadflow_dependency_up).
        redis_ok, _ = await asyncio.gather(
            answers("redis", store.ping), answers("kafka", worker.kafka_ping)
        )
        unavailable = metrics.dependencies.unavailable()
        stopped = worker.engagement.stopped
        body = {
            "status": "ok" if not unavailable and not stopped else "degraded",
            "redis": redis_ok,
            "kafka": "kafka" not in unavailable,
            "unavailable": unavailable,
            "assigned_partitions": worker.engagement.assigned(),
            "stopped_partitions": {str(p): why for p, why in sorted(stopped.items())},
            "rules_version": service.rules.version,
            "namespace": settings.namespace,
        }
        if unavailable:
            return web.json(body, status=503)
        if not body["assigned_partitions"]:
            # Not ready (503) until the group has given this worker engagement partitions.
            body.update(status="starting", not_ready="no engagement partitions assigned yet")
            return web.json(body, status=503)
        return web.json(body, status=200)

    # Explained under the live key space and its rules (read per request: a rescore may have
    # switched them since this worker started). Parsed rules are kept by version.
    live_rules = LiveRules(worker.rules)

    async def read_live_lead(lead_id: str) -> tuple[LeadState | None, Generation]:
        live = await store.active_generation()
        return await store.at_generation(live.number).read_lead(lead_id), live

    ledger = RoutingLedger(store.redis, store.keys.prefix)

    # `[^/]*` rather than the default `[^{}/]+`: an empty id gets a 400 naming the problem,
    # not a bare 404; a `/` inside an id is sent as %2F.
    @app.page("/leads/{lead_id:[^/]*}/explain")
    async def explain_view(web: Any, request: Any, lead_id: str) -> Any:
        problem = lead_id_problem(lead_id)
        if problem is not None:
            return web.json({"error": problem}, status=400)
        lead_id = lead_id.strip()
        try:
            state, live = await asyncio.wait_for(read_live_lead(lead_id), timeout=5)
        except OUTAGES as exc:
            metrics.dependencies.failed("redis", exc)
            hint = dependency_hint("redis", exc)
            log.warning(
                "explain: redis unavailable",
                lead_id=lead_id,
                error=type(exc).__name__,
                detail=str(exc)[:300],
                hint=hint,
            )
            body = {
                "error": "redis unavailable",
                "unavailable": "redis",
                "hint": hint,
                "lead_id": lead_id,
            }
            return web.json(body, status=503)
        if state is None:
            body = {"error": "unknown lead", "lead_id": lead_id, "namespace": settings.namespace}
            return web.json(body, status=404)
        rules = live_rules.of(live)
        routing = await routing_if_available(ledger, state, rules)
        explanation = explain(state, rules, datetime.now(UTC), routing)
        return web.bytes(explanation.model_dump_json().encode(), content_type="application/json")
