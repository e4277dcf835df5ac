"""Rebalance (issue 11 item 4): 3 workers share 8 partitions; during the stream workers leave
(SIGTERM and kill -9) and join, and the result equals the oracle.

The stream and the checks are the fault matrix's (tests/chaos/segments.py): the historical
engagement stream checked lead by lead against the core's fold and the reference model (every
score), live leads with sales activity (one handoff_id per qualification, one alert per passed
deadline, KPIs exact), nothing lost, nothing counted twice, every running worker healthy.

The group starts with 3 workers. Between segments (a seeded random 0.5-3 s into the next one,
so moves land mid-stream) one move is made, with 2 to 4 workers running:
- leave with SIGTERM: a graceful stop (final commit, the group rebalances at once);
- leave with kill -9: no shutdown at all; its partitions wait for the session timeout (6 s)
  before the group hands them to the others; it is not started again;
- join: a new worker process joins the group (not awaited: the next move may overlap its
  rebalance).
Each kind happens at least once (the first moves are chosen among those not yet made).

Redis mode comes from the environment: LEADFLOW_REDIS_CLUSTER=true with LEADFLOW_REDIS_URL at a
cluster node runs it on Redis Cluster (workers and checks go through `open_store`).

Marked `chaos` (the default suite, single Redis), `cluster` (ops/test runs it once more on the
cluster) and `matrix` (`ops/chaos matrix`). Sizes: LEADFLOW_REBALANCE_EVENTS (default 5,000;
the issue's size is 100,000), LEADFLOW_REBALANCE_STEPS (moves; default 8, at least 3),
LEADFLOW_CHAOS_SEED (default random, printed).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from streams.settings import Settings
from tests.chaos.segments import Stream, history_for, play, seed_of, settle_and_check
from tests.harness import WorkerProcess, consumer_caught_up

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.matrix]

EVENTS = int(os.environ.get("LEADFLOW_REBALANCE_EVENTS", "5000"))
STEPS = max(3, int(os.environ.get("LEADFLOW_REBALANCE_STEPS", "8")))
MOVES = ("leave-sigterm", "leave-kill9", "join")


async def test_leave_and_join_among_three_workers(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    assert settings.topic_partitions == 8
    seed = seed_of("leave-and-join")
    rng = random.Random(seed)
    made = 0

    def new_worker() -> WorkerProcess:
        nonlocal made
        w = WorkerProcess(settings, tmp_path / f"w{made}.log", {"LEADFLOW_BATCH_MAX": "200"})
        made += 1
        workers.append(w)
        return w.start()

    running = [new_worker() for _ in range(3)]
    for w in running:
        await w.wait_ready()
    started = time.monotonic()
    stream = Stream(history_for(seed, EVENTS), segments=STEPS + 1)
    moves: Counter[str] = Counter()

    async def move(k: int) -> str:
        await asyncio.sleep(rng.uniform(0.5, 3.0))
        # 2 to 4 running: at 2 only a join, at 4 only a leave.
        if len(running) <= 2:
            allowed = ["join"]
        elif len(running) >= 4:
            allowed = ["leave-sigterm", "leave-kill9"]
        else:
            allowed = list(MOVES)
        fresh = [m for m in allowed if not moves[m]]
        chosen = rng.choice(fresh or allowed)
        busy = not await consumer_caught_up(settings)
        moves[chosen] += 1
        if chosen == "join":
            running.append(new_worker())
        else:
            leaving = running.pop(rng.randrange(len(running)))
            if chosen == "leave-kill9":
                leaving.kill()
            else:
                await asyncio.to_thread(leaving.stop)
        return f"{chosen} ({'mid-stream' if busy else 'idle'}; {len(running)} running)"

    done = await play(settings, workers, stream, move)
    print(f"leave-and-join: {done}")
    assert len(done) == STEPS
    assert set(moves) == set(MOVES), f"not every kind of move was made: {moves}"
    assert any("mid-stream" in d for d in done), "no move landed while the workers were busy"
    report = await settle_and_check(settings, workers, stream, started)
    print(
        f"leave-and-join result: seed={seed} partitions={settings.topic_partitions} "
        f"redis_cluster={settings.redis_cluster} workers_started={made} "
        f"joins={moves['join']} sigterm_leaves={moves['leave-sigterm']} "
        f"kill9_leaves={moves['leave-kill9']} {report}"
    )
    assert report["events"] >= EVENTS
