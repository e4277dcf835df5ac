"""`leadflow notify` as its own process, on the real broker and Redis, against a local HTTP
receiver (an aiohttp server in the test, on a free port) that scripts its answers per delivery.

Every wait polls something observable (what the receiver got, /health, committed offsets,
the dead-letter topic); nothing sleeps for a fixed time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client.parser import text_string_to_metric_families

from schemas.notify import NotifyDeadLetterHeaders
from streams.kafka import client_options
from streams.settings import Settings
from tests.harness import OwnedProcess, eventually, free_port, produce, read_topic, topic_partitions

pytestmark = pytest.mark.integration

SECRET = "whsec-" + os.urandom(12).hex()
NOW = datetime.now(UTC)


# -- the receiver ----------------------------------------------------------------------------


@dataclass
class Hit:
    path: str
    delivery: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A webhook receiver: records every POST; answers from `script[(path, delivery)]` (a list
    of answers taken in turn: a status, (429, retry_after), "timeout", or "hang"), else 200."""

    port: int = field(default_factory=free_port)
    hits: list[Hit] = field(default_factory=list)
    script: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    delay: float = 0.0
    runner: web.AppRunner | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def handle(self, request: web.Request) -> web.Response:
        delivery = request.headers.get("X-Leadflow-Delivery", "")
        path = request.match_info["path"]
        body = await request.read()
        self.hits.append(Hit(path, delivery, dict(request.headers), body, time.monotonic()))
        answers = self.script.get((path, delivery))
        answer = answers.pop(0) if answers else 200
        if self.delay:
            await asyncio.sleep(self.delay)
        if answer == "timeout":
            await asyncio.sleep(5)  # longer than the target's timeout
            return web.Response(status=200)
        if isinstance(answer, tuple):
            status, retry_after = answer
            return web.Response(status=status, headers={"Retry-After": retry_after})
        return web.Response(status=int(answer), text="ok")

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, shutdown_timeout=1).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def open_connections(self) -> int:
        """Client connections still open (a killed client's close once the kernel resets them)."""
        server = self.runner.server if self.runner is not None else None
        return len(server.connections) if server is not None else 0

    def of(self, path: str, delivery: str | None = None) -> list[Hit]:
        return [h for h in self.hits if h.path == path and delivery in (None, h.delivery)]

    def counts(self, path: str) -> Counter[str]:
        return Counter(h.delivery for h in self.hits if h.path == path)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


# -- the notify process ----------------------------------------------------------------------


@dataclass
class NotifyProcess(OwnedProcess):
    """A real `leadflow notify` process, as an operator would run it."""

    settings: Settings
    config: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NotifyProcess:
        env = {
            **os.environ,
            "LEADFLOW_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "LEADFLOW_REDIS_URL": self.settings.redis_url.get_secret_value(),
            "LEADFLOW_NAMESPACE": self.settings.namespace,
            "LEADFLOW_RULES": str(self.settings.rules),
            "LEADFLOW_NOTIFY_CONFIG": str(self.config),
            "LEADFLOW_NOTIFY_WEB_PORT": str(self.port),
            "LEADFLOW_NOTIFY_START": "earliest",
            "LEADFLOW_KAFKA_SESSION_TIMEOUT": "6",
            "LEADFLOW_KAFKA_HEARTBEAT_INTERVAL": "1",
            "LEADFLOW_LOG_FORMAT": "json",
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "notify"], env=env, stdout=log, stderr=log
            )
        return self

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        """Until /health answers 200 with partitions assigned."""

        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"notify exited {self.proc.returncode}:\n{self.tail()}")
            try:
                async with http.get(f"{self.url}/health") as resp:
                    body = await resp.json()
                    return resp.status == 200 and bool(body["assigned_partitions"])
            except aiohttp.ClientError:
                return False

        await eventually(ready, 90, f"notify health at {self.url}", every=0.1)

    async def metric(self, http: aiohttp.ClientSession, name: str, **labels: str) -> float:
        async with http.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0


Spawn = Callable[[str], NotifyProcess]


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Spawn]:
    """`spawn(config_yaml)` writes the config and starts a notify process; all stopped at the
    end (their logs shown when the test failed)."""
    started: list[NotifyProcess] = []

    def start(config_text: str) -> NotifyProcess:
        config = tmp_path / "notify.yaml"
        config.write_text(config_text, encoding="utf-8")
        process = NotifyProcess(settings, config, tmp_path / f"notify-{len(started)}.log")
        started.append(process.start())
        return process

    yield start
    for process in started:
        process.stop()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for i, process in enumerate(started):
            print(f"--- notify {i} log ---\n{process.tail(80)}")


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


# -- records ---------------------------------------------------------------------------------


def alert(n: int, owner: str | None = None, severity: str = "breach") -> tuple[bytes, bytes]:
    lead = f"L{n}"
    body = {
        "schema_version": 1,
        "alert_id": f"a-{n}",
        "lead_id": lead,
        "handoff_id": f"h-{n}",
        "kind": "mql_first_contact",
        "severity": severity,
        "due_at": (NOW - timedelta(minutes=1)).isoformat(),
        "detected_at": NOW.isoformat(),
        "owner": owner,
    }
    return lead.encode(), orjson.dumps(body)


def handoff(n: int) -> tuple[bytes, bytes]:
    lead = f"L{n}"
    body = {
        "schema_version": 1,
        "handoff_id": f"h-{n}",
        "lead_id": lead,
        "qualified_at": NOW.isoformat(),
        "score": 125.0,
        "fit_score": 55.0,
        "engagement_score": 70.0,
        "threshold": 100.0,
        "rules_version": "v",
        "triggering_event_id": f"e-{n}",
        "reasons": [{"kind": "engagement", "rule": "demo_request", "points": 40.0}],
        "first_contact_due_at": (NOW + timedelta(hours=24)).isoformat(),
    }
    return lead.encode(), orjson.dumps(body)


async def committed_to_end(settings: Settings, topics: list[str]) -> bool:
    """The notify group has committed every record on these topics."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    consumer = AIOKafkaConsumer(**client_options(settings), enable_auto_commit=False)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(settings.notify_group)
        parts = [tp for t in topics for tp in await topic_partitions(admin, t)]
        ends = await consumer.end_offsets(parts)
        return all((committed[tp].offset if tp in committed else 0) >= ends[tp] for tp in parts)
    finally:
        await consumer.stop()
        await admin.close()


def verify(hit: Hit) -> bool:
    """What a receiver does: recompute the HMAC over the raw body, compare in constant time."""
    expected = "sha256=" + hmac.new(SECRET.encode(), hit.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, hit.headers.get("X-Leadflow-Signature", ""))


# -- the tests -------------------------------------------------------------------------------


async def test_bodies_signature_retries_and_dead_letters(
    settings: Settings, receiver: Receiver, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    r = receiver
    config = f"""
defaults: {{max_attempts: 4, timeout: 1, backoff_initial: 0.2, backoff_max: 1}}
targets:
  - {{name: slack, url: "{r.url("slack")}", format: slack, secret: "{SECRET}", kinds: [alert]}}
  - {{name: json, url: "{r.url("json")}", format: json, secret: "{SECRET}"}}
  - {{name: owned, url: "{r.url("owned")}", owners: [sato]}}
  - {{name: dead, url: "{r.url("dead")}", kinds: [handoff], max_attempts: 3}}
"""
    r.script = {
        ("json", "a-1"): [500, 500, 200],
        ("json", "a-2"): [(429, "1"), 200],
        ("json", "a-3"): ["timeout", 200],
        ("dead", "h-1"): [500, 503, 502, 200],  # three attempts allowed: never reaches 200
        ("dead", "h-2"): [410],
    }
    alerts = [alert(1, owner="sato"), alert(2), alert(3), alert(4, severity="warning")]
    handoffs = [handoff(1), handoff(2)]
    await produce(settings, alerts, topic=settings.alerts)
    await produce(settings, handoffs, topic=settings.handoff)
    started = time.monotonic()
    notify = spawn(config)
    await notify.wait_ready(http)

    async def all_settled() -> bool:
        return (
            len(r.counts("slack")) == 4
            and sum(r.counts("json").values()) == 3 + 2 + 2 + 1 + 2
            and len(r.of("dead")) == 4
            and await committed_to_end(settings, [settings.alerts, settings.handoff])
        )

    await eventually(all_settled, 90, "every delivery settled and committed")
    elapsed = time.monotonic() - started

    # Slack: Block Kit, signed, one POST per alert, handoffs filtered out (kinds: [alert]).
    assert r.counts("slack") == {"a-1": 1, "a-2": 1, "a-3": 1, "a-4": 1}
    for hit in r.of("slack"):
        assert verify(hit), hit.delivery
        body = orjson.loads(hit.body)
        assert body["blocks"][0]["type"] == "header"
        assert body["text"].startswith(f"Lead L{hit.delivery[2:]}: first contact ")
        assert hit.headers["User-Agent"].startswith("leadflow-notify/")
        assert hit.headers["X-Leadflow-Target"] == "slack"
        assert hit.headers["Content-Type"] == "application/json"
    first = orjson.loads(r.of("slack", "a-1")[0].body)
    assert first["blocks"][0]["text"]["text"] == "SLA breach: first contact"
    assert {"type": "mrkdwn", "text": "*Owner*\nsato"} in first["blocks"][2]["fields"]
    assert "warning" in orjson.loads(r.of("slack", "a-4")[0].body)["blocks"][0]["text"]["text"]

    # JSON: the record's bytes as is, signed; retried through 500s, a 429 and a timeout.
    produced = {orjson.loads(v)["alert_id"]: v for _, v in alerts}
    produced |= {orjson.loads(v)["handoff_id"]: v for _, v in handoffs}
    assert r.counts("json") == {"a-1": 3, "a-2": 2, "a-3": 2, "a-4": 1, "h-1": 1, "h-2": 1}
    for hit in r.of("json"):
        assert hit.body == produced[hit.delivery]
        assert verify(hit)
    assert [h.headers["X-Leadflow-Attempt"] for h in r.of("json", "a-1")] == ["1", "2", "3"]
    wait_429 = r.of("json", "a-2")[1].at - r.of("json", "a-2")[0].at
    assert wait_429 >= 0.95, f"Retry-After: 1 not honoured ({wait_429:.2f} s)"
    wait_timeout = r.of("json", "a-3")[1].at - r.of("json", "a-3")[0].at
    assert wait_timeout >= 1.0  # the 1 s timeout, then the backoff

    # A filter on owner: only the alert with owner sato (the others have none).
    assert r.counts("owned") == {"a-1": 1}
    assert "X-Leadflow-Signature" not in r.of("owned")[0].headers

    # Dead letters: three 5xx (max_attempts 3), and a 410 not retried.
    assert r.counts("dead") == {"h-1": 3, "h-2": 1}
    dead = await read_topic(settings, settings.notify_deadletter)
    by_id = {NotifyDeadLetterHeaders.from_kafka(d.headers).delivery_id: d for d in dead}
    assert sorted(by_id) == ["h-1", "h-2"]
    h1 = NotifyDeadLetterHeaders.from_kafka(by_id["h-1"].headers)
    assert (h1.target, h1.reason, h1.last_error, h1.attempts) == (
        "dead",
        "attempts_exhausted",
        "http_502",
        3,
    )
    assert h1.source_topic == settings.handoff
    assert by_id["h-1"].value == produced["h-1"] and by_id["h-1"].key == b"L1"
    h2 = NotifyDeadLetterHeaders.from_kafka(by_id["h-2"].headers)
    assert (h2.reason, h2.last_error, h2.attempts) == ("not_retryable", "http_410", 1)
    on_topic = await read_topic(settings, settings.handoff)
    source = next(c for c in on_topic if c.value == produced["h-2"])
    assert (h2.source_partition, h2.source_offset) == (source.partition, source.offset)

    # Metrics per target.
    m = notify.metric
    assert await m(http, "leadflow_notify_delivered_total", target="json") == 6
    assert await m(http, "leadflow_notify_delivered_total", target="slack") == 4
    assert await m(http, "leadflow_notify_delivered_total", target="owned") == 1
    failed = "leadflow_notify_failed_attempts_total"
    assert await m(http, failed, target="json", reason="http_500") == 2
    assert await m(http, failed, target="json", reason="http_429") == 1
    assert await m(http, failed, target="json", reason="timeout") == 1
    dl = "leadflow_notify_deadlettered_total"
    assert await m(http, dl, target="dead", reason="attempts_exhausted") == 1
    assert await m(http, dl, target="dead", reason="not_retryable") == 1
    assert await m(http, "leadflow_notify_request_seconds_count", target="json") == 10

    # Logs: JSON lines, naming targets, never the secret or a webhook URL.
    notify.stop()
    text = notify.log_path.read_text()
    lines = [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(e["event"] == "dead-lettered" and e["target"] == "dead" for e in lines)
    assert SECRET not in text
    assert f"127.0.0.1:{r.port}" not in text
    print(f"notify settled 16 POSTs (with retries) in {elapsed:.1f} s")


async def test_no_duplicate_post_across_kill_9_and_lost_commits(
    settings: Settings, receiver: Receiver, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    r = receiver
    r.delay = 0.02  # each answer takes a little while: the kill lands mid-request
    config = f"""
targets:
  - {{name: json, url: "{r.url("json")}", format: json, secret: "{SECRET}"}}
  - {{name: slack, url: "{r.url("slack")}", format: slack}}
"""
    count = 160
    await produce(settings, [alert(n) for n in range(count)], topic=settings.alerts)
    ids = {f"a-{n}" for n in range(count)}
    notify = spawn(config)
    await notify.wait_ready(http)

    async def some_delivered() -> bool:
        return len(r.hits) >= 60

    await eventually(some_delivered, 60, "60 POSTs before the kill", every=0.01)
    # Killed in a thread, so the receiver keeps reading meanwhile; then every request the process
    # sent before it died has been read (its connections are closed) before the count is taken.
    await asyncio.to_thread(notify.kill)

    async def connections_closed() -> bool:
        return r.open_connections() == 0

    await eventually(connections_closed, 30, "the killed process's connections to close")
    at_kill = Counter((h.path, h.delivery) for h in r.hits)
    restarted = spawn(config)
    await restarted.wait_ready(http)

    async def everything() -> bool:
        got = set(r.counts("json")) == ids and set(r.counts("slack")) == ids
        return got and await committed_to_end(settings, [settings.alerts])

    await eventually(everything, 120, "every alert delivered to both targets, committed")
    counts = Counter((h.path, h.delivery) for h in r.hits)
    twice = sorted(k for k, c in counts.items() if c > 1)
    # At most once more, and only for a POST that was in flight when the process died (answered,
    # its marker not yet written): at most one per partition and target.
    assert all(c <= 2 for c in counts.values()), twice
    assert all(at_kill[k] >= 1 for k in twice), twice
    assert len(twice) <= 2 * settings.topic_partitions, twice
    print(f"{len(at_kill)} POSTs before kill -9; sent again after it: {twice or 'none'}")

    # Lost commits (a rebalance to a consumer that starts over, the group's offsets reset): the
    # markers in Redis alone keep every pair from a second POST.
    restarted.stop()
    consumer = AIOKafkaConsumer(
        **client_options(settings), group_id=settings.notify_group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        admin = AIOKafkaAdminClient(**client_options(settings))
        await admin.start()
        try:
            parts = await topic_partitions(admin, settings.alerts)
        finally:
            await admin.close()
        consumer.assign(parts)
        await consumer.commit(dict.fromkeys(parts, 0))
    finally:
        await consumer.stop()
    assert not await committed_to_end(settings, [settings.alerts])
    before = len(r.hits)
    again = spawn(config)
    await again.wait_ready(http)

    async def replayed() -> bool:
        return await committed_to_end(settings, [settings.alerts])

    await eventually(replayed, 60, "the replayed alerts committed")
    assert len(r.hits) == before
    skipped = "leadflow_notify_skipped_total"
    assert await again.metric(http, skipped, target="json", reason="already_settled") == count
    assert await again.metric(http, skipped, target="slack", reason="already_settled") == count


async def test_no_duplicate_post_across_a_rebalance(
    settings: Settings, receiver: Receiver, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    """A second notify joins mid-stream, then the first leaves (SIGTERM): partitions move twice
    while records are being delivered; every id reaches the target exactly once."""
    r = receiver
    r.delay = 0.25  # 8 partitions at 4 POSTs/s each: the stream lasts while partitions move
    config = f"""
targets:
  - {{name: json, url: "{r.url("json")}", format: json}}
"""
    count = 200
    await produce(settings, [alert(n) for n in range(count)], topic=settings.alerts)
    ids = {f"a-{n}" for n in range(count)}
    first = spawn(config)
    await first.wait_ready(http)

    async def delivered(n: int) -> bool:
        return len(r.hits) >= n

    await eventually(lambda: delivered(40), 60, "40 POSTs", every=0.01)
    second = spawn(config)
    await second.wait_ready(http)
    at_join = len(r.hits)
    assert at_join < count, "the first process finished before the second joined"
    await eventually(lambda: delivered(at_join + 30), 60, "30 more POSTs", every=0.01)
    # In a thread: the receiver runs on this event loop and must keep answering meanwhile.
    await asyncio.to_thread(first.stop)

    async def everything() -> bool:
        return set(r.counts("json")) == ids and await committed_to_end(settings, [settings.alerts])

    await eventually(everything, 120, "every alert delivered and committed")
    twice = sorted(k for k, c in r.counts("json").items() if c > 1)
    assert twice == [], f"sent twice across the rebalances: {twice}"
    served = {
        await p.metric(http, "leadflow_notify_delivered_total", target="json") for p in [second]
    }
    assert served != {0.0}, "the second process took no partition"
