"""`ops/bench batch`: the worker's batch step in process, with a real Redis and no Kafka.

`ScoringService.process` over batches of synthetic engagement events, the publisher stubbed, so
what is measured is parse + read + fold + write: events/s and the process's CPU seconds per 100k
events, with the worker's garbage-collector settings or Python's defaults, and optionally a
cProfile of the whole run (the profile table in docs/benchmarks.md comes from `--profile`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import time
import uuid
from collections.abc import Sequence

from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import generate
from streams.kafka import OutRecord
from streams.observability import Metrics, configure_logging
from streams.pipeline.batch import InRecord
from streams.pipeline.scoring import ScoringService
from streams.settings import load_settings


class Discard:
    """A publisher that acknowledges everything at once: Kafka is not what is measured."""

    async def publish(self, records: Sequence[OutRecord]) -> None:
        return None

    async def stop(self) -> None:
        return None


async def run(args: argparse.Namespace) -> None:
    settings = load_settings(namespace=f"bench-batch-{uuid.uuid4().hex[:8]}")
    rules = load_rules(settings.rules)
    records = generate(leads=args.leads, events=args.events, seed=5)
    batch = [
        InRecord(r.key, r.value, settings.engagement, i % settings.topic_partitions, i)
        for i, r in enumerate(records)
    ]
    store = open_store(settings, args.cache)
    service = ScoringService(settings, rules, store, Discard(), Metrics())
    profile = cProfile.Profile() if args.profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profile:
        profile.enable()
    for i in range(0, len(batch), args.batch):
        await service.process(batch[i : i + args.batch], wait_for_delivery=False)
    await service.delivery.settle()
    if profile:
        profile.disable()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(
        f"{args.events:,} events, {args.leads:,} leads, batches of {args.batch}, state cache "
        f"{args.cache:,}, gc {'worker' if args.worker_gc else 'default'}: "
        f"{args.events / wall:,.0f} events/s, {cpu / args.events * 1e5:.1f} CPU s per 100k events"
    )
    try:
        keys = [k async for k in store.redis.scan_iter(match=f"{settings.redis_prefix}*")]
        for j in range(0, len(keys), 500):
            await store.redis.delete(*keys[j : j + 500])
    finally:
        await store.close()
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(30)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="ops/bench batch", description=__doc__)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--leads", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=500, help="records per batch")
    parser.add_argument("--cache", type=int, default=20_000, help="LEADFLOW_STATE_CACHE_LEADS")
    parser.add_argument(
        "--default-gc", dest="worker_gc", action="store_false", help="Python's gc settings"
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the run")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    if args.worker_gc:  # as `leadflow worker` sets them (streams/cli/worker.py)
        gc.freeze()
        gc.set_threshold(100_000, 50, 10)
    asyncio.run(run(args))
