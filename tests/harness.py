"""Test harness for the real stack: services, namespaces, worker processes, topic readers.

Integration and chaos tests use this; unit tests never do. Nothing here sleeps for a fixed
time: every wait polls a condition a user could observe (health endpoint, committed offsets).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from streams.bootstrap import open_store
from streams.kafka import client_options, create_topics
from streams.settings import Settings, load_settings
from streams.store.redis_store import Keys

ROOT = Path(__file__).resolve().parent.parent
TEST_RULES = ROOT / "tests" / "data" / "rules.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float, what: str, every: float = 0.2
) -> None:
    """Poll `check` until it is true; fail naming `what` after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {within:.0f}s waiting for {what}")


def fresh_settings(namespace: str | None = None, **overrides: Any) -> Settings:
    ns = namespace or f"t{uuid.uuid4().hex[:10]}"
    return load_settings(namespace=ns, rules=TEST_RULES, **overrides)


class OwnedProcess:
    """What every `leadflow` process a test starts can be told: kill -9, stop (SIGTERM, then
    kill -9 if it does not end in time), and the end of its log. Subclasses set `proc` and
    `log_path`."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    def kill(self) -> None:
        """kill -9: no shutdown hooks, no final commit."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, within: float = 40) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=within)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class WorkerProcess(OwnedProcess):
    """A real `leadflow worker` process, as an operator would run it."""

    settings: Settings
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def __post_init__(self) -> None:
        self.web_port = free_port()

    def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            "LEADFLOW_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "LEADFLOW_REDIS_URL": self.settings.redis_url.get_secret_value(),
            "LEADFLOW_NAMESPACE": self.settings.namespace,
            "LEADFLOW_RULES": str(self.settings.rules),
            "LEADFLOW_WEB_PORT": str(self.web_port),
            "LEADFLOW_BATCH_WITHIN": "0.1",
            "LEADFLOW_KAFKA_SESSION_TIMEOUT": "6",
            "LEADFLOW_KAFKA_HEARTBEAT_INTERVAL": "1",
            "LEADFLOW_KPI_REFRESH_INTERVAL": "1",
            "LEADFLOW_LOG_FORMAT": "json",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=env, stdout=log, stderr=log
        )
        log.close()
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return dict(orjson.loads(resp.read()))
        except OSError:
            return None

    def metrics(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample from the worker's /metrics, as Prometheus would scrape it."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def scored(self) -> float:
        """Events this worker has scored so far (0 while its /metrics does not answer)."""
        try:
            return self.metric("leadflow_events_total", outcome="scored") or 0.0
        except OSError:
            return 0.0

    async def wait_ready(self, within: float = 90.0, assigned: bool = True) -> None:
        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            body = await asyncio.to_thread(self.health)
            return body is not None and (not assigned or bool(body["assigned_partitions"]))

        await eventually(ready, within, f"worker health at {self.url}")


async def ensure_topics(settings: Settings) -> None:
    await create_topics(settings)


async def drop_topics(settings: Settings) -> None:
    """Delete the namespace's topics once a test is done: a broker that keeps every test's
    topics runs out of file descriptors after a few thousand (one suite run makes ~900)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        listed = set(await admin.list_topics())
        mine = [t for t in settings.all_topics if t in listed]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def produce(
    settings: Settings,
    records: list[tuple[bytes | None, bytes]],
    topic: str | None = None,
    partition: int | None = None,
) -> None:
    """Produce (key, value) records to a topic (default: the engagement topic), acks=all; to
    one `partition`, as a producer with another partitioner than Kafka's default would."""
    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=10)
    await producer.start()
    try:
        futures = [
            await producer.send(topic or settings.engagement, value, key=key, partition=partition)
            for key, value in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass(frozen=True)
class Consumed:
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    partition: int
    offset: int
    timestamp_ms: int = 0


async def read_topic(settings: Settings, topic: str) -> list[Consumed]:
    """Everything currently on a topic (reads up to the end offsets taken at the start)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        parts = await topic_partitions(admin, topic)
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        out: list[Consumed] = []
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, records in batch.items():
                out.extend(
                    Consumed(r.key, r.value, tuple(r.headers), tp.partition, r.offset, r.timestamp)
                    for r in records
                )
        return out
    finally:
        await consumer.stop()


async def topic_partitions(admin: AIOKafkaAdminClient, topic: str) -> list[TopicPartition]:
    described = await admin.describe_topics([topic])
    parts = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    assert parts, f"topic {topic} has no partitions (does it exist?)"
    return parts


async def consumer_caught_up(settings: Settings, topics: tuple[str, ...] = ()) -> bool:
    """True when the worker has committed every record on these topics (default: the
    engagement topic): the engagement consumer's group for that topic, the Faust app's group
    (app_id) for the sales side's topics."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = {}
        parts = []
        for topic in topics or (settings.engagement,):
            group = settings.engagement_group if topic == settings.engagement else settings.app_id
            committed.update(await admin.list_consumer_group_offsets(group))
            parts += await topic_partitions(admin, topic)
        ends = await consumer.end_offsets(parts)
        return all(
            (committed.get(tp).offset if committed.get(tp) else 0) >= ends[tp] for tp in parts
        )
    finally:
        await consumer.stop()
        await admin.close()


async def wait_for_handoffs(settings: Settings, handoff_ids: set[str], within: float = 60) -> None:
    """Wait until every given handoff is on the handoff topic. Outputs leave in the background
    (overlapped with the next batch, or from the outbox after a crash), so a caught-up group
    may still have its last handoffs on the way."""

    async def delivered() -> bool:
        on_topic = await read_topic(settings, settings.handoff)
        return {orjson.loads(r.value or b"{}").get("handoff_id") for r in on_topic} >= handoff_ids

    await eventually(delivered, within, "every expected handoff on the topic")


def leadflow_cli(
    settings: Settings, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run `leadflow ARGS` as a user would, pointed at the settings' Kafka, Redis, namespace and
    rules (`env` adds or overrides LEADFLOW_* variables); plain, unwrapped output."""
    environment = {
        **os.environ,
        "LEADFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "LEADFLOW_REDIS_URL": settings.redis_url.get_secret_value(),
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(settings.rules),
        "COLUMNS": "200",
        "NO_COLOR": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        env=environment,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def redis_client(settings: Settings) -> aioredis.Redis:
    """A client of the settings' Redis as leadflow opens it (a cluster client in cluster mode)."""
    return open_store(settings).redis


async def namespace_keys(client: aioredis.Redis, settings: Settings) -> list[bytes]:
    """Every Redis key of the settings' namespace (the tagged ones and the layout record)."""
    keys = Keys(settings.redis_prefix, settings.topic_partitions)
    return [
        k for pattern in keys.namespace_patterns() async for k in client.scan_iter(match=pattern)
    ]


async def purge_redis(settings: Settings) -> None:
    client = redis_client(settings)
    try:
        keys = await namespace_keys(client, settings)
        for i in range(0, len(keys), 500):
            await client.delete(*keys[i : i + 500])
    finally:
        await client.aclose()


# -- inputs for the sales-side tests ---------------------------------------------------------

PROFILE = {"industry": "software", "seniority": "vp", "company_size": 500}  # fit 55


def engagement(lead: str, n: str, kind: str, at: datetime, **extra: object) -> tuple[bytes, bytes]:
    body = {"event_id": f"{lead}-{n}", "lead_id": lead, "type": kind, "occurred_at": at.isoformat()}
    return lead.encode(), orjson.dumps({**body, **extra})


def qualifying(lead: str, at: datetime, tag: str = "q1") -> list[tuple[bytes, bytes]]:
    """Fit 55 + form 5 + pricing 25 + demo request 40 = 125: an MQL at the last event."""
    return [
        engagement(lead, f"{tag}-form", "form_submit", at, attributes=PROFILE),
        engagement(lead, f"{tag}-pricing", "pricing_page_view", at),
        engagement(lead, f"{tag}-demo", "demo_request", at),
    ]


def activity(lead: str, n: str, kind: str, at: datetime, **extra: object) -> tuple[bytes, bytes]:
    body = {
        "activity_id": f"{lead}-{n}",
        "lead_id": lead,
        "type": kind,
        "occurred_at": at.isoformat(),
    }
    return lead.encode(), orjson.dumps({**body, **extra})


# BANT answers: 3 of 4 (an SQL) and 1 of 4 (back to nurture).
BANT_PASS = {"budget": True, "authority": True, "need": True, "timeframe": False}
BANT_FAIL = {"budget": False, "authority": False, "need": True, "timeframe": False}


def sales_plan(i: int, lead: str, qualified_at: datetime) -> list[tuple[bytes, bytes]]:
    """What sales does with lead i: SQL (2 in 5), nurture, disqualified, or nothing (breach)."""
    call = qualified_at + timedelta(seconds=1)
    kind = i % 5
    if kind == 4:
        return []
    steps = [activity(lead, "call", "contacted", call, owner="sato")]
    if kind in (0, 1):
        steps.append(activity(lead, "bant", "bant_assessed", call, bant=BANT_PASS))
        steps.append(activity(lead, "act", "sales_action", call + timedelta(seconds=1)))
    elif kind == 2:
        steps.append(activity(lead, "bant", "bant_assessed", call, bant=BANT_FAIL))
    else:
        steps.append(activity(lead, "dq", "disqualified", call, reason="no budget"))
    return steps


async def wait_for(
    settings: Settings, topic: str, done: Callable[[list[Consumed]], bool], within: float = 30
) -> list[Consumed]:
    seen: list[Consumed] = []

    async def check() -> bool:
        seen[:] = await read_topic(settings, topic)
        return done(seen)

    await eventually(check, within, f"records on {topic}", every=0.1)
    return seen


# Attribution counters (docs/kpis.md, "Attribution"): attr:<model>:<dimension>:<measure>:<value>,
# one conversion = 1,000,000 credit units spread over the values.
ATTRIBUTION_MODELS = ("first_touch", "last_touch", "linear", "position_based")
CREDIT = 1_000_000


def split_attribution(totals: Mapping[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """The funnel counters, and the attribution counters summed over their values per
    model, dimension and measure (`first_touch:source:mql` -> credit units)."""
    funnel: dict[str, int] = {}
    credited: dict[str, int] = {}
    for name, n in totals.items():
        if name.startswith("attr:"):
            model, dimension, measure, _value = name.removeprefix("attr:").split(":", 3)
            key = f"{model}:{dimension}:{measure}"
            credited[key] = credited.get(key, 0) + n
        else:
            funnel[name] = n
    return funnel, credited


def whole_credits(**conversions: int) -> dict[str, int]:
    """What split_attribution gives when each conversion is credited exactly once: its count
    of whole conversions under every model and dimension."""
    return {
        f"{model}:{dimension}:{measure}": count * CREDIT
        for model in ATTRIBUTION_MODELS
        for dimension in ("source", "campaign")
        for measure, count in conversions.items()
        if count
    }
