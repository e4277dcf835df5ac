"""The one wiring point: settings in, Faust app out."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faust
from prometheus_client import generate_latest

from streams.agents.scoring import register_scoring_agent
from streams.core.rules import Rules, load_rules
from streams.observability import Metrics
from streams.service import OutRecord, ScoringService
from streams.settings import Settings
from streams.store import LeadStore

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
    store: LeadStore
    metrics: Metrics
    rules: Rules


def create_worker(settings: Settings, rules: Rules | None = None) -> Worker:
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
    )
    service = ScoringService(settings, rules, store, FaustPublisher(app), metrics)
    engagement = app.topic(settings.engagement, value_serializer="raw", key_serializer="raw")
    register_scoring_agent(app, engagement, service, settings)

    def assigned_partitions() -> list[int]:
        return [tp.partition for tp in app.consumer.assignment() if tp.topic == settings.engagement]

    @app.timer(interval=2.0)  # type: ignore[untyped-decorator]
    async def deliver_outbox() -> None:
        # Handoffs whose Kafka write did not complete before a crash or rebalance.
        await service.flush_outbox(assigned_partitions())

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
            "assigned_partitions": sorted(assigned_partitions()),
            "rules_version": rules.version,
            "namespace": settings.namespace,
        }
        return web.json(body, status=200 if redis_ok else 503)

    return Worker(app, service, store, metrics, rules)
