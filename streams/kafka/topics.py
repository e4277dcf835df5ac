"""Topics: create leadflow's with explicit partition counts, wait for the cluster, list
partitions. Faust never declares topics (it would invent them with broker defaults)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    AuthenticationFailedError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)

from streams.kafka.options import client_options
from streams.kafka.producer import quiet
from streams.settings import Settings
from streams.startup import Dependency, Say, wait_for_all

TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicOutcome:
    topic: str
    partitions: int
    created: bool
    note: str = ""


def kafka_dependency(settings: Settings) -> Dependency:
    """Kafka as a start-up dependency: it answers when a metadata request succeeds."""

    async def probe() -> None:
        admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=5000)
        try:
            with quiet():
                await admin.start()
                await admin.list_topics()
        finally:
            with contextlib.suppress(Exception), quiet():
                await admin.close()

    return Dependency(
        "Kafka",
        settings.kafka_bootstrap,
        "LEADFLOW_KAFKA_BOOTSTRAP",
        probe,
        refusals=(
            SaslAuthenticationFailed,
            AuthenticationFailedError,
            UnsupportedSaslMechanismError,
        ),
    )


async def wait_for_kafka(settings: Settings, within: float = 60.0, say: Say | None = None) -> None:
    """Return once the cluster answers a metadata request, retrying with backoff (each failed
    attempt told to `say`); raise ServiceUnavailable (a TimeoutError) naming
    LEADFLOW_KAFKA_BOOTSTRAP after `within` seconds."""
    await wait_for_all([kafka_dependency(settings)], within, say or _silent)


def _silent(line: str, reason: str) -> None:
    pass


async def create_topics(
    settings: Settings, topics: tuple[str, ...] | None = None
) -> list[TopicOutcome]:
    """Create leadflow's topics with explicit partition counts; existing ones stay as they are."""
    names = topics or settings.all_topics
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in names
            if name not in existing
        ]
        errors: dict[str, int] = {}
        if wanted:
            response = await admin.create_topics(wanted, timeout_ms=30000)
            errors = {t[0]: t[1] for t in response.topic_errors}
        described = await admin.describe_topics(list(names))
        partitions = {d["topic"]: len(d["partitions"]) for d in described}
    finally:
        await admin.close()
    out = []
    for name in names:
        code = errors.get(name, TOPIC_ALREADY_EXISTS if name in existing else 0)
        if code not in (0, TOPIC_ALREADY_EXISTS):
            raise RuntimeError(f"could not create topic {name}: Kafka error code {code}")
        count = partitions.get(name, 0)
        note = ""
        if code == TOPIC_ALREADY_EXISTS and count != settings.topic_partitions:
            note = f"exists with {count} partitions, configured {settings.topic_partitions}; kept"
        out.append(TopicOutcome(name, count, code == 0, note))
    return out


async def topic_partitions(settings: Settings, topic: str) -> list[TopicPartition]:
    """The topic's partitions in order (empty when the topic does not exist)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found = [d for d in described if d.get("error_code", 0) == 0 and d["partitions"]]
    return sorted(
        (TopicPartition(topic, p["partition"]) for d in found for p in d["partitions"]),
        key=lambda tp: tp.partition,
    )
