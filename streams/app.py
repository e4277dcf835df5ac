"""The one wiring point: settings in, Faust app out."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import faust
from prometheus_client import generate_latest

from streams.agents.sales import register_sales_agent
from streams.agents.scoring import register_scoring_agent
from streams.core.explain import explain, lead_id_problem
from streams.core.funnel import SERIES, days_between, total
from streams.core.lead import LeadState
from streams.core.rules import Rules, load_rules, parse_rules
from streams.observability import Metrics, log
from streams.sales_service import SalesService
from streams.service import OutRecord, ScoringService
from streams.settings import Settings
from streams.store import Generation, LeadStore

PROMETHEUS_TEXT = "text/plain; version=0.0.4"


class FaustPublisher:
    """Publishes through the app's producer and waits for every acknowledgement (acks=all)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app

    async def publish(self, records: Sequence[OutRecord]) -> None:
        pending = [
            await self.app.producer.send(
                r.topic, r.key, r.value, partition=None, timestamp=None, headers=r.headers
            )
            for r in records
        ]
        await asyncio.gather(*pending)


def broker_credentials(settings: Settings) -> Any:
    protocol = settings.kafka_security_protocol
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        cafile = str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
        context = ssl.create_default_context(cafile=cafile)
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=context,
        )
    return context


@dataclass
class Worker:
    app: faust.App
    service: ScoringService
    sales: SalesService
    store: LeadStore
    metrics: Metrics
    rules: Rules


async def live_generation(settings: Settings, rules: Rules) -> tuple[int, Rules]:
    """The key space to work on and its rules. The first worker records its rules; after a
    `leadflow rescore` the rescored key space's rules win over a stale rules file."""
    store = LeadStore.from_url(settings.redis_url, settings.redis_prefix, settings.engagement, 60)
    try:
        generation = await store.ensure_generation(
            rules.version, rules.model_dump(mode="json", by_alias=True)
        )
        while generation.state != "active":
            log.info("waiting for a rescore to finish switching", generation=generation.number)
            await asyncio.sleep(0.5)
            generation = await store.active_generation()
    finally:
        await store.close()
    if generation.rules is not None and generation.rules_version != rules.version:
        log.warning(
            "the rules file differs from the rules the live lead states were built with; "
            "using the live ones. To change rules, run `leadflow rescore --rules FILE`",
            rules_file=str(settings.rules),
            rules_file_version=rules.version,
            live_rules_version=generation.rules_version,
        )
        rules = parse_rules(generation.rules, origin="active generation")
    return generation.number, rules


def create_worker(settings: Settings, rules: Rules | None = None, generation: int = 0) -> Worker:
    rules = rules or load_rules(settings.rules)
    datadir = settings.data_dir / settings.app_id
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=broker_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        # leadflow creates its own topics with explicit partition counts (`leadflow topics
        # create`); Faust must not invent them with broker defaults.
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.kafka_session_timeout,
        broker_heartbeat_interval=settings.kafka_heartbeat_interval,
        producer_acks=-1,
        store="memory://",
        datadir=str(datadir),
        web_enabled=True,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        web_host=settings.web_host,
    )
    metrics = Metrics()
    store = LeadStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        source_topic=settings.engagement,
        dedupe_ttl_seconds=settings.dedupe_ttl_days * 86400,
    ).at_generation(generation)
    publisher = FaustPublisher(app)
    service = ScoringService(settings, rules, store, publisher, metrics)
    sales = SalesService(settings, rules, store.for_source(settings.handoff), publisher, metrics)
    engagement = app.topic(settings.engagement, value_serializer="raw", key_serializer="raw")
    register_scoring_agent(app, engagement, service, settings)
    sales_inputs = app.topic(
        settings.handoff, settings.activity, value_serializer="raw", key_serializer="raw"
    )
    register_sales_agent(app, sales_inputs, sales, settings)

    def assigned(topic: str) -> list[int]:
        return [tp.partition for tp in app.consumer.assignment() if tp.topic == topic]

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def deliver_outbox() -> None:
        # Outputs whose Kafka write did not complete before a crash or rebalance.
        await service.check_generation()
        await sales.check_generation()
        await service.flush_outbox(assigned(settings.engagement))
        await sales.flush_outbox(assigned(settings.handoff))
        metrics.open_deadlines.set(await sales.open_deadlines(assigned(settings.handoff)))

    @app.timer(interval=settings.sla_sweep_interval)  # type: ignore[untyped-decorator]
    async def sweep_deadlines() -> None:
        # Every worker sweeps the partitions it owns (no leader: Faust skips leader timers
        # during rebalances); the version check on the lead makes each alert happen once.
        await sales.sweep(assigned(settings.handoff))

    @app.timer(interval=settings.kpi_refresh_interval)  # type: ignore[untyped-decorator]
    async def refresh_kpis() -> None:
        today = datetime.now(ZoneInfo(service.rules.reporting.timezone)).date()
        for window, days in (("7d", 7), ("28d", 28)):
            start = today - timedelta(days=days - 1)
            counts, durations = await store.read_kpis(days_between(start, today), SERIES.values())
            metrics.observe_kpis(window, total(counts, durations, start, today))

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp rejects a charset inside content_type, so the text format is named without it.
        return web.bytes(generate_latest(metrics.registry), content_type=PROMETHEUS_TEXT)

    @app.page("/health")
    async def health_view(web: Any, request: Any) -> Any:
        try:
            redis_ok = await asyncio.wait_for(store.ping(), timeout=2)
        except Exception:
            redis_ok = False
        body = {
            "status": "ok" if redis_ok else "degraded",
            "redis": redis_ok,
            "assigned_partitions": sorted(assigned(settings.engagement)),
            "rules_version": service.rules.version,
            "namespace": settings.namespace,
        }
        return web.json(body, status=200 if redis_ok else 503)

    # Explained under the live key space and its rules (read per request: a rescore may have
    # switched them since this worker started). Parsed rules are kept by version.
    explain_rules: dict[str, Rules] = {rules.version: rules}

    async def read_live_lead(lead_id: str) -> tuple[LeadState | None, Generation]:
        live = await store.active_generation()
        return await store.at_generation(live.number).read_lead(lead_id), live

    def live_rules(live: Generation) -> Rules:
        if live.rules is None or live.rules_version is None:
            return rules
        if live.rules_version not in explain_rules:
            explain_rules[live.rules_version] = parse_rules(live.rules, origin="active generation")
        return explain_rules[live.rules_version]

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
        except Exception as exc:
            log.warning("explain: cannot read lead", lead_id=lead_id, error=repr(exc))
            return web.json({"error": "redis unavailable", "lead_id": lead_id}, status=503)
        if state is None:
            body = {"error": "unknown lead", "lead_id": lead_id, "namespace": settings.namespace}
            return web.json(body, status=404)
        explanation = explain(state, live_rules(live), datetime.now(UTC))
        return web.bytes(explanation.model_dump_json().encode(), content_type="application/json")

    return Worker(app, service, sales, store, metrics, rules)
