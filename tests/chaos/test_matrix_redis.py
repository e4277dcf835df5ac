"""Fault matrix, Redis side (issue 10, item 2): real workers through Redis faults mid-stream.

LEADFLOW_CHAOS_WORKERS (2) `leadflow worker` processes in one group on a private redis-server
(tests/outages.py: own port and directory, never the shared one) and the shared Kafka with this
test's own namespace, through the two phases of tests/chaos/matrix.py (an engagement stream,
then sales activity and deadlines), the fault injected in each; checked against the core and
the reference model; the workers must recover by themselves.

Scenarios: (a) Redis killed with -9 and restarted on the same data directory, AOF with
`appendfsync everysec` as ops/stack runs it; (a') back from an older copy of its AOF; (b) Redis
frozen (SIGSTOP) for 10 s; (c) a slow Redis (latency on every chunk through
tests/faultproxy.py) whose connections are all cut, twice, plus refused connections until every
worker reports Redis down.

`ops/chaos matrix` runs them (marker `matrix`; LEADFLOW_CHAOS_RUNS runs of
LEADFLOW_CHAOS_EVENTS); the default suite runs (a) once at 300 events (`short`, marker `chaos`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable

import pytest

from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord
from tests.chaos.matrix import (
    MakeRig,
    Rig,
    Size,
    a_third_scored,
    all_workers,
    assert_alive,
    assert_recovered_by_themselves,
    assert_scoring_exact,
    cut_connections,
    history,
    metric_sum,
    record_counters,
    run_scenario,
    runs,
    start_workers,
)
from tests.harness import consumer_caught_up, eventually, produce, read_topic
from tests.oracle import expected_outcome, stored_leads_equal

FREEZE_SECONDS = 10.0


async def kill_and_restart(rig: Rig, during: Callable[[], Awaitable[None]]) -> None:
    assert rig.redis is not None
    rig.redis.kill()
    await during()
    await all_workers(rig, 503, 30, "every worker to report Redis down")
    rig.redis.start()


async def freeze_10s(rig: Rig, during: Callable[[], Awaitable[None]]) -> None:
    assert rig.redis is not None
    started = time.monotonic()
    rig.redis.freeze()
    try:
        await during()
        await all_workers(rig, 503, 30, "every worker to report Redis frozen")
        await asyncio.sleep(max(0.0, FREEZE_SECONDS - (time.monotonic() - started)))  # the fault
    finally:
        rig.redis.thaw()


@pytest.mark.parametrize("size", runs(1000, short=True))
async def test_redis_kill_9_and_restart(make_rig: MakeRig, size: Size) -> None:
    """(a) kill -9 mid-stream, AOF with fsync every second (ops/stack's setting), restarted on the
    same directory: every write Redis acknowledged is in the AOF (written before the reply; the
    page cache outlives the process), so nothing is replayed or lost."""
    rig = await make_rig(appendfsync="everysec")
    await run_scenario(rig, kill_and_restart, size)


@pytest.mark.parametrize("size", runs(2000))
async def test_redis_frozen_10s(make_rig: MakeRig, size: Size) -> None:
    """(b) SIGSTOP for 10 s mid-stream, then SIGCONT."""
    rig = await make_rig()
    await run_scenario(rig, freeze_10s, size)


@pytest.mark.parametrize("size", runs(3000))
async def test_redis_slow_and_dropped_connections(make_rig: MakeRig, size: Size) -> None:
    """(c) 5 ms on every chunk each way through the fault proxy for the whole run; all
    connections cut mid-stream, again while scoring resumes, then new connections refused until
    every worker reports Redis down."""
    rig = await make_rig(proxy="redis")
    assert rig.proxy is not None
    rig.proxy.latency = float(os.environ.get("LEADFLOW_CHAOS_REDIS_LATENCY", "0.005"))
    await run_scenario(rig, cut_connections("Redis"), size)
    rig.stats["proxy_connections"] = rig.proxy.connections


async def restore_older_copy(rig: Rig, records: list[SampleRecord]) -> None:
    """Snapshot the AOF directory mid-stream (Redis frozen for the copy), let the workers score
    the rest, then kill -9 and bring Redis back from the snapshot: older than Kafka, as after a
    failover to a lagging replica or a restore from backup."""
    assert rig.redis is not None
    snapshot = rig.tmp / "snapshot"
    rig.redis.freeze()
    try:
        shutil.copytree(rig.redis.directory, snapshot)
    finally:
        rig.redis.thaw()
    # Everything after the snapshot is scored (handoffs sent, offsets committed to Kafka too).
    await produce(rig.direct, [(r.key, r.value) for r in records[len(records) * 2 // 3 :]])
    await eventually(lambda: consumer_caught_up(rig.direct), 300, "the stream to be scored")
    rig.stats["handoffs_before_restore"] = len(await read_topic(rig.direct, rig.direct.handoff))
    rig.redis.kill()
    shutil.rmtree(rig.redis.directory)
    shutil.copytree(snapshot, rig.redis.directory)
    await all_workers(rig, 503, 30, "every worker to report Redis down")
    rig.redis.start()


@pytest.mark.parametrize("size", runs(4000))
async def test_redis_restored_older_replays_exactly(make_rig: MakeRig, size: Size) -> None:
    """(a') kill -9 and Redis back from an older copy of its AOF (what everysec can cost on a
    host crash, or a failover to a lagging replica): its offsets are older too, so the workers
    replay the gap and the leads, handoff ids and dead letters are exact. Scoring side only: the
    sales activities applied in the lost gap are a documented limit (docs/reliability.md)."""
    rig = await make_rig()
    started = time.monotonic()
    await start_workers(rig)
    records = history(size)
    await produce(rig.direct, [(r.key, r.value) for r in records[: len(records) * 2 // 3]])
    await a_third_scored(rig, records)
    await restore_older_copy(rig, records)
    await all_workers(rig, 200, 90, "every worker healthy after the restore")

    async def noticed() -> bool:
        assert_alive(rig)
        return sum(metric_sum(w, "leadflow_offset_resyncs_total") for w in rig.workers) >= 1

    await eventually(noticed, 60, "a worker to notice that Redis went back")
    # Kafka's committed offsets go back only at the next commit: wait for the states instead.
    s = rig.direct
    expected = expected_outcome(records, load_rules(s.rules), s)

    async def replayed() -> bool:
        assert_alive(rig)
        return await stored_leads_equal(s, expected)

    await eventually(replayed, 240, "the gap to be replayed", every=1.0)
    await eventually(lambda: consumer_caught_up(s), 120, "the stream to be scored")
    await assert_scoring_exact(rig, records)
    assert_recovered_by_themselves(rig)
    record_counters(rig)
    rig.stats["seconds"] = round(time.monotonic() - started, 1)
