"""The HTTP collector over real HTTP, as its own `leadflow collector` process, on the real broker.

Every wait polls something observable (the health endpoint, the topic); nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka import wait_for_kafka
from streams.settings import Settings
from tests.harness import (
    Consumed,
    OwnedProcess,
    drop_topics,
    ensure_topics,
    eventually,
    free_port,
    fresh_settings,
    read_topic,
)
from tests.outages import PrivateKafka

pytestmark = pytest.mark.integration

WEB_TOKEN = secrets.token_urlsafe(24)
CRM_TOKEN = secrets.token_urlsafe(24)
TOKENS = orjson.dumps({"website": WEB_TOKEN, "crm": CRM_TOKEN}).decode()
NOW = datetime.now(UTC).isoformat()


def event(n: int | str, lead: str | None = None, **extra: Any) -> dict[str, Any]:
    body = {
        "event_id": f"e-{n}",
        "lead_id": lead or f"L{n}",
        "type": "download",
        "occurred_at": NOW,
    }
    return {**body, **extra}


@dataclass
class CollectorProcess(OwnedProcess):
    """A real `leadflow collector` process, as an operator would run it."""

    settings: Settings
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CollectorProcess:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("LEADFLOW_COLLECTOR_")},
            "LEADFLOW_KAFKA_BOOTSTRAP": self.settings.kafka_bootstrap,
            "LEADFLOW_NAMESPACE": self.settings.namespace,
            "LEADFLOW_RULES": str(self.settings.rules),
            "LEADFLOW_LOG_FORMAT": "json",
            "LEADFLOW_COLLECTOR_PORT": str(self.port),
            "LEADFLOW_COLLECTOR_TOKENS": TOKENS,
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "collector"], env=env, stdout=log, stderr=log
            )
        return self

    async def wait_ready(self, http: aiohttp.ClientSession, kafka: bool = True) -> None:
        """Until /health answers (200 when `kafka`: the producer is connected)."""

        async def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"collector exited {self.proc.returncode}:\n{self.tail()}")
            try:
                async with http.get(f"{self.url}/health") as resp:
                    return resp.status == 200 or not kafka
            except aiohttp.ClientError:
                return False

        await eventually(ready, 60, f"collector health at {self.url}", every=0.1)


Spawn = Callable[..., CollectorProcess]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


@pytest.fixture
def spawn(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Spawn]:
    """Start collectors with `spawn(collector_x="..")` (LEADFLOW_* env); all stopped at the end."""
    started: list[CollectorProcess] = []

    def start(on: Settings | None = None, **env: str) -> CollectorProcess:
        extra = {f"LEADFLOW_{k.upper()}": v for k, v in env.items()}
        log_path = tmp_path / f"collector-{len(started)}.log"
        process = CollectorProcess(on or settings, log_path, extra).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for i, process in enumerate(started):
            print(f"--- collector {i} log ---\n{process.tail()}")


async def post(
    http: aiohttp.ClientSession,
    collector: CollectorProcess,
    body: Any,
    *,
    token: str | None = WEB_TOKEN,
    ndjson: bool = False,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], dict[str, str]]:
    if isinstance(body, bytes):
        data = body
    elif ndjson:
        data = b"\n".join(orjson.dumps(e) for e in body) + b"\n"
    else:
        data = orjson.dumps(body)
    sent = {"Content-Type": "application/x-ndjson" if ndjson else "application/json"}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    sent.update(headers or {})
    async with http.post(f"{collector.url}/v1/events", data=data, headers=sent) as resp:
        text = await resp.read()
        payload = orjson.loads(text) if text else {}
        return resp.status, payload, dict(resp.headers)


def ids_on(records: list[Consumed]) -> Counter[str]:
    return Counter(orjson.loads(r.value or b"{}")["event_id"] for r in records)


def metric_values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def metrics(http: aiohttp.ClientSession, collector: CollectorProcess) -> dict[Any, float]:
    async with http.get(f"{collector.url}/metrics") as resp:
        assert resp.status == 200
        return metric_values(await resp.text())


def answered(values: dict[Any, float], status: int) -> float:
    """Requests to /v1/events answered with `status`, from /metrics."""
    labels = (("route", "/v1/events"), ("status", str(status)))
    return values[("leadflow_collector_requests_total", labels)]


# -- accepted events ---------------------------------------------------------------------------


async def test_accepted_events_are_on_the_topic_exactly_once_keyed_by_lead_id(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    collector = spawn()
    await collector.wait_ready(http)

    status, body, _ = await post(http, collector, event(1))
    assert (status, body) == (202, {"accepted": 1, "event_id": "e-1"})

    batch = [event(2), event(3, lead="L2", source="hubspot"), event(4)]
    status, body, _ = await post(http, collector, batch)
    assert status == 202
    assert (body["accepted"], body["rejected"]) == (3, 0)
    assert [r["event_id"] for r in body["results"]] == ["e-2", "e-3", "e-4"]

    status, body, _ = await post(http, collector, [event(5), event(6)], ndjson=True)
    assert (status, body["accepted"]) == (202, 2)

    # The other header, the other source.
    status, body, _ = await post(
        http, collector, event(7), token=None, headers={"X-Leadflow-Token": CRM_TOKEN}
    )
    assert status == 202

    # Acknowledged means on the topic: read it right away, no waiting.
    records = await read_topic(settings, settings.engagement)
    assert ids_on(records) == Counter({f"e-{n}": 1 for n in range(1, 8)})
    by_id = {orjson.loads(r.value or b"")["event_id"]: r for r in records}
    for record in records:
        value = orjson.loads(record.value or b"")
        assert record.key == value["lead_id"].encode()
    assert orjson.loads(by_id["e-1"].value or b"")["source"] == "website"
    assert orjson.loads(by_id["e-3"].value or b"")["source"] == "hubspot"
    assert orjson.loads(by_id["e-7"].value or b"")["source"] == "crm"
    # One lead's events share a partition (keyed by lead_id).
    assert by_id["e-2"].partition == by_id["e-3"].partition

    values = await metrics(http, collector)
    assert values[("leadflow_collector_events_accepted_total", (("source", "website"),))] == 6
    assert values[("leadflow_collector_events_accepted_total", (("source", "crm"),))] == 1
    assert values[("leadflow_collector_produce_seconds_count", ())] == 4
    assert answered(values, 202) == 4
    async with http.get(f"{collector.url}/health") as resp:
        health = await resp.json()
    assert health["status"] == "ok"
    assert health["kafka"]["state"] == "ready"
    assert health["kafka"]["topic"] == settings.engagement


async def test_batch_with_a_bad_event_accepts_the_others_and_names_the_field(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    collector = spawn()
    await collector.wait_ready(http)
    bad = event(2, occurred_at="2025-03-01T10:00:00")  # no offset
    status, body, _ = await post(http, collector, [event(1), bad, event(3)])
    assert status == 202
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "accepted"]
    rejected = body["results"][1]
    assert rejected["index"] == 1
    assert rejected["event_id"] == "e-2"
    assert rejected["field"] == "occurred_at"
    assert rejected["reason"] == "invalid_event"
    assert "occurred_at" in rejected["error"]

    # NDJSON: a line that is not JSON is named by its line number.
    body_bytes = orjson.dumps(event(4)) + b"\n{oops\n" + orjson.dumps(event(5, type="nope"))
    status, body, _ = await post(http, collector, body_bytes, ndjson=True)
    assert status == 202
    assert [(r["line"], r["status"]) for r in body["results"]] == [
        (1, "accepted"),
        (2, "rejected"),
        (3, "rejected"),
    ]
    assert body["results"][1]["error"].startswith("line 2: not valid JSON")
    assert body["results"][2]["field"] == "type"

    assert ids_on(await read_topic(settings, settings.engagement)) == Counter(
        {"e-1": 1, "e-3": 1, "e-4": 1}
    )
    values = await metrics(http, collector)
    assert values[("leadflow_collector_events_rejected_total", (("reason", "invalid_event"),))] == 1
    assert values[("leadflow_collector_events_rejected_total", (("reason", "not_json"),))] == 1
    assert values[("leadflow_collector_events_rejected_total", (("reason", "unknown_type"),))] == 1


async def test_rejected_single_event_is_400_naming_the_field(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    collector = spawn()
    await collector.wait_ready(http)
    status, body, _ = await post(http, collector, event(1, occurred_at="yesterday"))
    assert status == 400
    assert body["field"] == "occurred_at"
    assert body["event_id"] == "e-1"
    assert body["error"].startswith("occurred_at: ")

    missing = event(2)
    del missing["lead_id"]
    status, body, _ = await post(http, collector, missing)
    assert (status, body["field"], body["error"]) == (400, "lead_id", "lead_id: Field required")

    status, body, _ = await post(http, collector, [event(3, type="emial_open")])
    assert status == 400
    assert (body["accepted"], body["rejected"]) == (0, 1)
    assert body["results"][0]["field"] == "type"

    status, body, _ = await post(http, collector, b'{"event_id": "e-4",\n "lead_id": L4}')
    assert status == 400
    assert body["reason"] == "not_json"
    assert "line 2" in body["error"]

    status, body, _ = await post(
        http,
        collector,
        b"event_id=e-5",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415

    assert await read_topic(settings, settings.engagement) == []


# -- refused requests --------------------------------------------------------------------------


async def test_missing_token_is_401_wrong_token_403(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    collector = spawn()
    await collector.wait_ready(http)
    status, body, headers = await post(http, collector, event(1), token=None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body["reason"] == "unauthenticated"

    status, _, headers = await post(
        http, collector, event(1), token=None, headers={"Authorization": f"Basic {WEB_TOKEN}"}
    )
    assert status == 401

    status, body, _ = await post(http, collector, event(1), token=WEB_TOKEN + "x")
    assert (status, body["reason"]) == (403, "forbidden")
    status, _, _ = await post(
        http, collector, event(1), token=None, headers={"X-Leadflow-Token": "not-a-token"}
    )
    assert status == 403

    assert await read_topic(settings, settings.engagement) == []
    values = await metrics(http, collector)
    assert answered(values, 401) == 2
    assert answered(values, 403) == 2


async def test_body_too_big_and_too_many_events_are_413(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    collector = spawn(collector_max_body_bytes="4096", collector_max_batch_events="3")
    await collector.wait_ready(http)
    big = event(1, properties={"blob": "x" * 5000})
    status, body, _ = await post(http, collector, big)
    assert (status, body["reason"]) == (413, "body_too_large")
    assert "LEADFLOW_COLLECTOR_MAX_BODY_BYTES" in body["error"]

    # Without a Content-Length (chunked), the limit holds while reading.
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000
        yield orjson.dumps(event(2))

    async with http.post(
        f"{collector.url}/v1/events",
        data=chunks(),
        headers={"Authorization": f"Bearer {WEB_TOKEN}", "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["reason"] == "body_too_large"

    status, body, _ = await post(http, collector, [event(n) for n in range(3, 7)])
    assert (status, body["reason"]) == (413, "too_many_events")
    assert "LEADFLOW_COLLECTOR_MAX_BATCH_EVENTS" in body["error"]

    status, body, _ = await post(http, collector, [event(n) for n in range(7, 10)], ndjson=True)
    assert (status, body["accepted"]) == (202, 3)
    assert ids_on(await read_topic(settings, settings.engagement)) == Counter(
        {"e-7": 1, "e-8": 1, "e-9": 1}
    )


async def test_rate_limit_is_429_with_retry_after(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    collector = spawn(collector_rate_per_second="0.2", collector_burst="3")
    await collector.wait_ready(http)
    status, _, _ = await post(http, collector, [event(1), event(2), event(3)])
    assert status == 202
    status, body, headers = await post(http, collector, event(4))
    assert (status, body["reason"]) == (429, "rate_limited")
    assert int(headers["Retry-After"]) >= 1
    assert int(headers["Retry-After"]) <= 5
    # Buckets are per source: another source is not limited by this one.
    status, _, _ = await post(http, collector, event(5), token=CRM_TOKEN)
    assert status == 202

    assert ids_on(await read_topic(settings, settings.engagement)) == Counter(
        {"e-1": 1, "e-2": 1, "e-3": 1, "e-5": 1}
    )
    values = await metrics(http, collector)
    assert values[("leadflow_collector_rate_limited_total", (("source", "website"),))] == 1


async def test_cors_preflight_and_response_headers(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    shop = "https://shop.example"
    collector = spawn(collector_cors_origins=f"{shop},https://www.example")
    plain = spawn()
    await collector.wait_ready(http)
    await plain.wait_ready(http)
    preflight = {
        "Origin": shop,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    async with http.options(f"{collector.url}/v1/events", headers=preflight) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == shop
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed
        assert "content-type" in allowed
        assert "x-leadflow-token" in allowed

    evil = {**preflight, "Origin": "https://evil.example"}
    async with http.options(f"{collector.url}/v1/events", headers=evil) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers
    async with http.options(f"{plain.url}/v1/events", headers=preflight) as resp:
        assert resp.status == 403
        assert "Access-Control-Allow-Origin" not in resp.headers

    # The actual request carries the CORS headers too, errors included (so a page can read them).
    status, _, headers = await post(http, collector, event(1), headers={"Origin": shop})
    assert status == 202
    assert headers["Access-Control-Allow-Origin"] == shop
    status, _, headers = await post(http, collector, event(2), token=None, headers={"Origin": shop})
    assert status == 401
    assert headers["Access-Control-Allow-Origin"] == shop
    status, _, headers = await post(http, plain, event(3), headers={"Origin": shop})
    assert status == 202
    assert "Access-Control-Allow-Origin" not in headers


# -- Kafka down --------------------------------------------------------------------------------


async def test_broker_down_is_503_with_retry_after(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    nowhere = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    collector = spawn(on=nowhere, collector_ack_timeout="2")
    await collector.wait_ready(http, kafka=False)
    async with http.get(f"{collector.url}/health") as resp:
        assert resp.status == 503
        health = await resp.json()
    assert health["status"] == "unavailable"
    assert health["kafka"]["state"] in ("connecting", "unavailable")

    status, body, headers = await post(http, collector, [event(1), event(2)])
    assert (status, body["reason"]) == (503, "kafka_unavailable")
    assert int(headers["Retry-After"]) >= 1
    # A bad event is still a 400: the client learns what to fix even while Kafka is down.
    status, body, _ = await post(http, collector, event(3, occurred_at="soon"))
    assert (status, body["field"]) == (400, "occurred_at")


@contextmanager
def frozen(broker: PrivateKafka) -> Iterator[None]:
    """SIGSTOP the broker: connections stay open, nothing is answered (a hung broker)."""
    broker.freeze()
    try:
        yield
    finally:
        broker.thaw()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[PrivateKafka]:
    """A second, throwaway Kafka broker (ops/stack with its own ports and directory)."""
    broker = PrivateKafka(tmp_path / "stack").start()
    yield broker
    broker.stop()


async def test_events_answered_202_survive_a_broker_outage(
    settings: Settings, spawn: Spawn, http: aiohttp.ClientSession, own_broker: PrivateKafka
) -> None:
    on_own = fresh_settings(kafka_bootstrap=f"127.0.0.1:{own_broker.port}")
    await wait_for_kafka(on_own, within=60)
    await ensure_topics(on_own)
    collector = spawn(on=on_own, collector_ack_timeout="2")
    await collector.wait_ready(http)

    accepted: list[str] = []
    for n in range(5):
        batch = [event(f"{n}-{i}", lead=f"L{i}") for i in range(20)]
        status, body, _ = await post(http, collector, batch)
        assert status == 202, body
        accepted += [r["event_id"] for r in body["results"]]

    # A hung broker: connected but silent. No acknowledgement within the ack timeout -> 503.
    with frozen(own_broker):
        status, body, headers = await post(http, collector, [event("hung-1"), event("hung-2")])
        assert (status, body["reason"]) == (503, "kafka_unavailable")
        assert int(headers["Retry-After"]) >= 1
    await collector.wait_ready(http)

    # A broker that is gone.
    await asyncio.to_thread(own_broker.down)
    status, body, headers = await post(http, collector, [event("out-1"), event("out-2")])
    assert (status, body["reason"]) == (503, "kafka_unavailable")
    assert int(headers["Retry-After"]) >= 1

    async def unhealthy() -> bool:
        async with http.get(f"{collector.url}/health") as resp:
            return resp.status == 503

    await eventually(unhealthy, 30, "/health to report Kafka down")
    status, _, _ = await post(http, collector, event("out-3"))
    assert status == 503

    # The broker comes back: the collector recovers by itself and the client's retry is taken.
    await asyncio.to_thread(own_broker.start)
    await collector.wait_ready(http)
    retried = ["hung-1", "hung-2", "out-1", "out-2", "out-3"]
    status, body, _ = await post(http, collector, [event(n) for n in retried])
    assert (status, body["accepted"]) == (202, 5), body

    on_topic = ids_on(await read_topic(on_own, on_own.engagement))
    assert {i: on_topic[i] for i in accepted} == {i: 1 for i in accepted}, "lost or duplicated"
    # Answered 503 and retried: present; maybe twice (the first try may have gone through
    # after all), which the worker drops by event_id.
    assert {i: on_topic[f"e-{i}"] for i in retried}.keys() == set(retried)
    assert all(1 <= on_topic[f"e-{i}"] <= 2 for i in retried), on_topic


# -- the engagement topic missing ----------------------------------------------------------------


async def test_missing_topic_is_503_topic_missing_until_topics_create(
    services: None, spawn: Spawn, http: aiohttp.ClientSession
) -> None:
    """Kafka up, the topic not created yet (a deployment whose `topics create` runs beside the
    collector): /health and events answer 503 with reason topic_missing and the log names
    `leadflow topics create`; once the topic exists the collector takes events by itself."""
    bare = fresh_settings()  # no topics in this namespace
    collector = spawn(on=bare, startup_timeout="60")
    try:
        await collector.wait_ready(http, kafka=False)

        async def missing() -> bool:
            async with http.get(f"{collector.url}/health") as resp:
                health = await resp.json()
                return resp.status == 503 and health["kafka"]["state"] == "topic_missing"

        await eventually(missing, 20, "/health to say topic_missing")
        status, body, headers = await post(http, collector, [event(1), event(2)])
        assert (status, body["reason"]) == (503, "topic_missing"), body
        assert "leadflow topics create" in body["error"] and bare.engagement in body["error"]
        assert int(headers["Retry-After"]) >= 1
        lines = [orjson.loads(ln) for ln in collector.tail(200).splitlines() if ln.startswith("{")]
        named = [ln for ln in lines if "`leadflow topics create`" in ln["event"]]
        assert named and named[0]["level"] == "error", collector.tail()
        values = await metrics(http, collector)
        rejected = ("leadflow_collector_events_rejected_total", (("reason", "topic_missing"),))
        assert values[rejected] == 2

        await ensure_topics(bare)
        await collector.wait_ready(http)
        status, body, _ = await post(http, collector, [event(1), event(2)])
        assert (status, body["accepted"]) == (202, 2), body
        assert ids_on(await read_topic(bare, bare.engagement)) == {"e-1": 1, "e-2": 1}
    finally:
        collector.stop()
        await drop_topics(bare)
