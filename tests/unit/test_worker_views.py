"""The worker's web views through a Redis or Kafka outage: /health and /leads/<id>/explain
answer 503 with a JSON body naming what is down, /metrics keeps answering, and all of them
answer normally again once the dependency is back. The aiohttp handlers are called in memory
(no server, no Redis: the store's calls are replaced by failing or answering fakes)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError, RequestTimedOutError
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.app import Worker, create_worker
from streams.core.rules import load_rules
from streams.settings import load_settings
from streams.store import Generation

pytestmark = pytest.mark.unit

OUTAGES = {
    "redis ConnectionError": lambda: RedisConnectionError("Error 111 connecting"),
    "ConnectionError": lambda: ConnectionRefusedError(111, "Connection refused"),
    "TimeoutError": lambda: TimeoutError("Timeout reading from socket"),
}


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    # Nothing connects before the app starts: the port below is never dialled.
    settings = load_settings(
        namespace="tviews", redis_url="redis://127.0.0.1:9/0", data_dir=tmp_path
    )
    worker = create_worker(settings, load_rules(settings.rules))
    # As if the group had given it partitions (until then /health says "starting", 503).
    worker.engagement.assigned = lambda: [0, 1]  # type: ignore[method-assign]
    worker.kafka_ping = Kafka()  # type: ignore[assignment]
    yield worker


class Kafka:
    """The health client's ping: down (raising `error`) or answering."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self.pings = 0

    async def __call__(self) -> None:
        self.pings += 1
        if self.error is not None:
            raise self.error

    async def close(self) -> None:
        return None


class Redis:
    """The store's calls the views make: down (raising `error`) or answering."""

    def __init__(self, worker: Worker) -> None:
        self.error: BaseException | None = None
        store = worker.store
        store.ping = self.ping  # type: ignore[method-assign]
        store.active_generation = self.active_generation  # type: ignore[method-assign]
        self.store = store

    async def ping(self) -> bool:
        if self.error is not None:
            raise self.error
        return True

    async def active_generation(self) -> Generation:
        if self.error is not None:
            raise self.error
        return Generation(0, "active", None, None)


async def get(worker: Worker, path: str) -> tuple[int, Any]:
    app = worker.app.web.web_app
    request = make_mocked_request("GET", path, app=app)
    match = await app.router.resolve(request)
    request._match_info = match
    response = await match.handler(request)
    body = response.body
    return response.status, orjson.loads(body) if path != "/metrics" else body.decode()


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_health_names_redis_while_it_is_down_and_recovers(worker, error) -> None:
    redis = Redis(worker)
    redis.error = error()
    status, body = await get(worker, "/health")
    assert status == 503
    assert body["status"] == "degraded" and body["redis"] is False
    assert "LEADFLOW_REDIS_URL" in body["unavailable"]["redis"]["hint"]
    redis.error = None
    status, body = await get(worker, "/health")
    assert status == 200 and body["status"] == "ok" and body["unavailable"] == {}


def kafka_up(worker: Worker) -> float | None:
    return worker.metrics.registry.get_sample_value(
        "leadflow_dependency_up", {"dependency": "kafka"}
    )


KAFKA_OUTAGES = {
    "KafkaConnectionError": lambda: KafkaConnectionError("Unable to bootstrap from 127.0.0.1:9"),
    "NodeNotReadyError": lambda: NodeNotReadyError("node 1 is not ready"),
    "RequestTimedOutError": lambda: RequestTimedOutError(),
    "TimeoutError": lambda: TimeoutError(),
}


@pytest.mark.parametrize("error", KAFKA_OUTAGES.values(), ids=KAFKA_OUTAGES.keys())
async def test_health_names_kafka_while_it_does_not_answer_and_recovers(worker, error) -> None:
    """A broker that is gone (or does not answer a ping in time) is reported at once, even by
    a worker that had nothing to send (its own calls would only wait inside aiokafka)."""
    Redis(worker)
    worker.kafka_ping.error = error()
    status, body = await get(worker, "/health")
    assert status == 503 and body["status"] == "degraded"
    assert body["kafka"] is False and body["redis"] is True
    assert "LEADFLOW_KAFKA_BOOTSTRAP" in body["unavailable"]["kafka"]["hint"]
    assert kafka_up(worker) == 0
    worker.kafka_ping.error = None
    status, body = await get(worker, "/health")
    assert status == 200 and body["kafka"] is True and body["unavailable"] == {}


async def test_health_waits_for_a_hung_kafka_ping_2_seconds_at_most(worker, monkeypatch) -> None:
    Redis(worker)
    monkeypatch.setattr("streams.app.HEALTH_PING_SECONDS", 0.05)

    async def hung() -> None:
        await asyncio.sleep(3600)

    worker.kafka_ping = hung  # type: ignore[assignment]
    status, body = await asyncio.wait_for(get(worker, "/health"), timeout=5)
    assert status == 503 and body["kafka"] is False
    assert "TimeoutError" in body["unavailable"]["kafka"]["error"]


async def test_health_names_kafka_when_the_workers_kafka_calls_fail(worker) -> None:
    """A failed delivery or commit marks Kafka down for /metrics at once; /health asks Kafka
    itself, so a broker that answers again is healthy again."""
    Redis(worker)
    worker.metrics.dependencies.failed("kafka", KafkaConnectionError("broker down"))
    assert kafka_up(worker) == 0
    status, body = await get(worker, "/health")
    assert status == 200 and body["kafka"] is True


@pytest.mark.parametrize("error", OUTAGES.values(), ids=OUTAGES.keys())
async def test_explain_answers_503_naming_redis_and_recovers(worker, error, monkeypatch) -> None:
    redis = Redis(worker)
    redis.error = error()
    status, body = await get(worker, "/leads/lead-1/explain")
    assert status == 503
    assert body["unavailable"] == "redis" and "LEADFLOW_REDIS_URL" in body["hint"]
    redis.error = None

    async def no_lead(store: object, lead_id: str) -> None:
        return None

    # The view reads the lead from the store of the live generation (a copy of this one).
    monkeypatch.setattr(type(redis.store), "read_lead", no_lead)
    status, body = await get(worker, "/leads/lead-1/explain")
    assert status == 404 and body["error"] == "unknown lead"


async def test_metrics_answer_while_redis_is_down(worker) -> None:
    redis = Redis(worker)
    redis.error = RedisConnectionError("Error 111 connecting")
    status, text = await get(worker, "/metrics")
    assert status == 200 and "leadflow_dependency_up" in text
