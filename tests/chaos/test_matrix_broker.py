"""Fault matrix, broker side (issue 10, item 2): real workers through Kafka faults mid-stream.

LEADFLOW_CHAOS_WORKERS (2) `leadflow worker` processes in one group on a broker of this test's
own (tests/outages.py PrivateKafka: `ops/stack up kafka` on free ports and a temp dir; the
shared broker is never touched) and the shared Redis with this test's own namespace, through
the two phases of tests/chaos/matrix.py (an engagement stream, then sales activity and
deadlines), the fault injected in each; checked against the core and the reference model
(nothing lost, nothing counted twice, one handoff_id per qualification, one alert per deadline,
KPIs exact); the workers must recover by themselves (same pids, /health 200, no crash).

Scenarios:
(a) the broker killed with -9 mid-stream (a third of the stream scored, batches and deliveries
    in flight; in phase 2 while deadlines come due), and, once every worker's /health says
    Kafka is down, restarted by ops/stack on the same data directory; the rest of the stream is
    produced after the restart;
(b) a slow broker: the workers reach it only through tests/faultproxy.py (ops/stack's PROXIED
    listener, advertised as the proxy's address, so every connection of theirs, bootstrap,
    fetches, produce, group coordination and the /health ping, goes through it), with latency on
    every chunk for the whole run; all connections cut mid-stream, again once scoring resumed,
    then new connections refused until every worker reports Kafka down and for at least
    LEADFLOW_CHAOS_REFUSE_SECONDS (8: longer than the 6 s session timeout, so the groups lose
    their members and rebalance when the link is back). The test itself talks to the broker's
    own listener.

`ops/chaos matrix -k broker` runs them (marker `matrix`; LEADFLOW_CHAOS_RUNS runs of
LEADFLOW_CHAOS_EVENTS); the default suite runs (a) once at 300 events (`short`, marker `chaos`).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pytest

from tests.chaos.matrix import MakeRig, Rig, Size, all_workers, cut_connections, run_scenario, runs

REFUSE_SECONDS = float(os.environ.get("LEADFLOW_CHAOS_REFUSE_SECONDS", "8"))


async def kill_and_restart(rig: Rig, during: Callable[[], Awaitable[None]]) -> None:
    """kill -9 of the broker; restarted once every worker has noticed, on the same data."""
    kafka = rig.kafka
    assert kafka is not None
    t0 = time.monotonic()
    await asyncio.to_thread(kafka.kill)
    await all_workers(rig, 503, 30, "every worker to report Kafka down")
    noticed = time.monotonic()
    await asyncio.to_thread(kafka.start)  # ops/stack waits until the broker is ready
    for key, value in (("all_503_s", noticed - t0), ("restart_s", time.monotonic() - noticed)):
        rig.stats[key] = max(rig.stats.get(key, 0.0), round(value, 1))  # the longer of the two
    rig.stats["broker_kills"] = rig.stats.get("broker_kills", 0) + 1
    await during()  # the rest of the stream: nobody can produce to a dead broker


@pytest.mark.parametrize("size", runs(5000, short=True))
async def test_broker_kill_9_and_restart(make_rig: MakeRig, size: Size) -> None:
    rig = await make_rig(redis="shared", kafka="private")
    await run_scenario(rig, kill_and_restart, size)


@pytest.mark.parametrize("size", runs(6000))
async def test_broker_slow_and_dropped_connections(make_rig: MakeRig, size: Size) -> None:
    rig = await make_rig(redis="shared", kafka="private", proxy="kafka")
    assert rig.proxy is not None
    rig.proxy.latency = float(os.environ.get("LEADFLOW_CHAOS_KAFKA_LATENCY", "0.005"))
    await run_scenario(rig, cut_connections("Kafka", refuse_for=REFUSE_SECONDS), size)
    rig.stats["proxy_connections"] = rig.proxy.connections
