"""Chaos tests use the same real-stack fixtures as the integration tests, and the fault
matrix's rig (tests/chaos/matrix.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

import pytest

from tests.chaos.matrix import MakeRig, Rig, show_logs
from tests.faultproxy import FaultProxy
from tests.harness import drop_topics, ensure_topics, free_port, fresh_settings, purge_redis
from tests.integration.conftest import (  # noqa: F401 - re-exported fixtures
    pytest_runtest_makereport,
    services,
    settings,
    workers,
)
from tests.outages import PrivateKafka, PrivateRedis


@pytest.fixture
async def make_rig(
    services: None,  # noqa: F811 - the stack must be up (fails, never skips, otherwise)
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[MakeRig]:
    """make_rig(redis=..., kafka=..., proxy=...) -> a Rig: a private redis-server (the default,
    AOF fsync `appendfsync`) or the shared Redis; the shared broker (the default) or a private
    one (PrivateKafka); `proxy` puts a FaultProxy between the workers and Redis or the broker
    (for the broker: its PROXIED listener, advertised as the proxy's address). Everything is
    stopped at the end, the workers' and services' logs shown when the test failed."""
    rigs: list[Rig] = []

    async def make(
        redis: Literal["private", "shared"] = "private",
        appendfsync: str = "always",
        kafka: Literal["private", "shared"] = "shared",
        proxy: Literal["redis", "kafka"] | None = None,
    ) -> Rig:
        if proxy is not None:
            assert {"redis": redis, "kafka": kafka}[proxy] == "private", "a proxy needs its own"
        ns = f"t{uuid.uuid4().hex[:10]}"
        shared = fresh_settings(ns)
        rig = Rig(shared, shared, tmp_path)
        rigs.append(rig)
        # (this test's address, the workers' address) of each service
        redis_urls = (shared.redis_url.get_secret_value(),) * 2
        kafka_addresses = (shared.kafka_bootstrap,) * 2
        if redis == "private":
            rig.redis = PrivateRedis(tmp_path / "redis", appendfsync=appendfsync).start()
            redis_urls = (rig.redis.url, rig.redis.url)
            if proxy == "redis":
                rig.proxy = FaultProxy(rig.redis.port).start()
                redis_urls = (rig.redis.url, rig.proxy.url)
        if kafka == "private":
            if proxy == "kafka":  # the proxy forwards to the PROXIED listener, which names it
                rig.proxy = FaultProxy(free_port()).start()
                rig.kafka = PrivateKafka(
                    tmp_path / "stack",
                    proxied_port=rig.proxy.target_port,
                    proxy_port=rig.proxy.port,
                ).start()
                kafka_addresses = (rig.kafka.bootstrap, rig.kafka.proxied_bootstrap)
            else:
                rig.kafka = PrivateKafka(tmp_path / "stack").start()
                kafka_addresses = (rig.kafka.bootstrap, rig.kafka.bootstrap)
        direct, via = (
            fresh_settings(ns, redis_url=url, kafka_bootstrap=address)
            for url, address in zip(redis_urls, kafka_addresses, strict=True)
        )
        rig.direct, rig.via = direct, via
        await ensure_topics(direct)
        return rig

    yield make
    failed = getattr(request.node, "rep_call", None)
    for rig in rigs:
        for w in rig.workers:
            w.stop()
        if failed is not None and failed.failed:
            show_logs(rig)
        if rig.proxy is not None:
            rig.proxy.stop()
        if rig.redis is not None:
            rig.redis.stop()
        else:
            await purge_redis(rig.direct)
        if rig.kafka is not None:
            rig.kafka.stop()
        else:
            await drop_topics(rig.direct)
    for rig in rigs:
        print(f"matrix stats: {rig.stats}")
