"""Benchmarks (not part of the test suite): `ops/bench [core|pipeline|sla|compare|latency|batch]`.

batch:    the worker's batch step in process (real Redis, no Kafka): events/s, CPU per 100k,
          optionally a cProfile (`ops/bench batch --help`; tests/bench/batch.py).

core:     the pure fold (`replay`) over a synthetic history, events per second.
sla:      N open deadlines (default 1,000,000) in the reminder index, then 200 leads whose
          first-contact deadlines pass while a real worker runs: how long after its due time
          each alert is on the alerts topic.
pipeline: a backlog of N engagement events on the real broker, drained by one real
          `leadflow worker` process into the real Redis; events per second from the moment the
          worker reports ready until its group has committed the last offset, plus the batch
          latency histogram the worker exports.
compare:  leadflow beside Quix Streams and Faust peers on one pre-loaded backlog, same rules,
          same run: events/s, CPU per 100k events, RSS, handoffs against an oracle
          (`ops/bench compare --help`; tests/bench/compare.py).
latency:  handoff latency at a steady input rate, from a consumer tailing the output topic
          (`ops/bench latency --help`; tests/bench/latency.py).
scale:    1, 2, 4 workers in one group drain one backlog, on single Redis or (--cluster) Redis
          Cluster: events/s, CPU per 100k events per worker and per Redis node, Redis bytes
          per lead, a chart (`ops/bench scale --help`; tests/bench/scale.py).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.progress import Progress

from schemas.engagement import EngagementEvent
from streams.core.lead import replay
from streams.core.rules import load_rules
from streams.jobs.sample import generate
from tests.harness import (
    WorkerProcess,
    consumer_caught_up,
    ensure_topics,
    eventually,
    fresh_settings,
    produce,
    purge_redis,
)

console = Console()


def _compare(argv: list[str]) -> None:
    from tests.bench.compare import main

    main(argv)


def _latency(argv: list[str]) -> None:
    from tests.bench.latency import main

    main(argv)


def _batch(argv: list[str]) -> None:
    from tests.bench.batch import main

    main(argv)


def _scale(argv: list[str]) -> None:
    from tests.bench.scale import main

    main(argv)


SUBCOMMANDS = {"compare": _compare, "latency": _latency, "batch": _batch, "scale": _scale}


def bench_core(events: int, rounds: int) -> None:
    rules = load_rules(Path(__file__).resolve().parents[2] / "rules" / "example.yaml")
    records = generate(leads=max(events // 10, 1), events=events, seed=3)
    parsed = [EngagementEvent.model_validate_json(r.value) for r in records]
    timings = []
    for _ in range(rounds):
        started = time.perf_counter()
        result = replay(parsed, rules)
        timings.append(time.perf_counter() - started)
    best, median = min(timings), statistics.median(timings)
    console.print(
        f"core fold: {len(parsed):,} events, {len(result.leads):,} leads, "
        f"{len(result.handoffs):,} handoffs; median {median:.3f}s "
        f"({len(parsed) / median:,.0f} events/s), best {len(parsed) / best:,.0f} events/s"
    )


def histogram_quantile(text: str, name: str, q: float) -> float:
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == f"{name}_bucket":
                buckets.append((float(s.labels["le"]), s.value))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0
    for bound, count in buckets:
        if total and count >= q * total:
            return bound
    return float("nan")


async def bench_pipeline(events: int, batch_max: int) -> None:
    settings = fresh_settings()
    await ensure_topics(settings)
    records = generate(leads=max(events // 10, 1), events=events, seed=9)
    chunk = 20_000
    with Progress(console=console) as progress:
        task = progress.add_task("producing the backlog", total=len(records))
        for i in range(0, len(records), chunk):
            part = records[i : i + chunk]
            await produce(settings, [(r.key, r.value) for r in part])
            progress.advance(task, len(part))
    log = Path(tempfile.mkdtemp()) / "worker.log"
    worker = WorkerProcess(settings, log, {"LEADFLOW_BATCH_MAX": str(batch_max)}).start()
    try:
        await worker.wait_ready(within=120, assigned=True)
        started = time.perf_counter()
        await eventually(
            lambda: consumer_caught_up(settings), 3600, "the backlog to drain", every=0.5
        )
        elapsed = time.perf_counter() - started
        metrics = worker.metrics()
    finally:
        worker.stop()
        await purge_redis(settings)
    console.print(
        f"pipeline: {len(records):,} events drained in {elapsed:.1f}s = "
        f"{len(records) / elapsed:,.0f} events/s (batch_max {batch_max}); batch latency "
        f"p50 <= {histogram_quantile(metrics, 'leadflow_batch_seconds', 0.5)}s, "
        f"p99 <= {histogram_quantile(metrics, 'leadflow_batch_seconds', 0.99)}s"
    )
    console.print(
        "(includes up to one commit interval, 2.8 s, between the last batch and its commit)"
    )


async def bench_sla(deadlines: int, leads: int) -> None:
    """Alert delay with `deadlines` open deadlines waiting in Redis beside the ones that fire."""
    import redis.asyncio as aioredis

    from schemas.alert import SlaAlert
    from streams.store.redis_store import Keys
    from tests.harness import qualifying, wait_for

    settings = fresh_settings()
    await ensure_topics(settings)
    keys = Keys(settings.redis_prefix, settings.topic_partitions)
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
    now_ms = int(time.time() * 1000)
    month_ms = 30 * 86400 * 1000
    try:
        with Progress(console=console) as progress:
            task = progress.add_task("filling open deadlines", total=deadlines)
            for start in range(0, deadlines, 10_000):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(start + 10_000, deadlines)):
                    zset = keys.reminders(settings.handoff, i % settings.topic_partitions)
                    due = now_ms + 60_000 + (i * 7919) % month_ms  # spread over the next month
                    pipe.zadd(zset, {f"bench-{i}\x1fho-bench-{i}:mql_first_contact\x1fbreach": due})
                await pipe.execute()
                progress.advance(task, min(10_000, deadlines - start))
        log = Path(tempfile.mkdtemp()) / "worker.log"
        worker = WorkerProcess(settings, log).start()
        try:
            await worker.wait_ready(within=120, assigned=True)
            t0 = datetime.now(UTC) + timedelta(seconds=1)
            events = []
            for i in range(leads):
                events += qualifying(f"lead-{i:04d}", t0 + timedelta(milliseconds=10 * i))
            await produce(settings, events)
            records = await wait_for(
                settings, settings.alerts, lambda rs: len(rs) >= leads, within=300
            )
            open_now = await worker_open_deadlines(worker)
        finally:
            worker.stop()
    finally:
        keys_left = [k async for k in client.scan_iter(match=f"{settings.redis_prefix}*")]
        for i in range(0, len(keys_left), 500):
            await client.delete(*keys_left[i : i + 500])
        await client.aclose()
    delays = sorted(
        r.timestamp_ms / 1000 - SlaAlert.model_validate_json(r.value).due_at.timestamp()
        for r in records
    )
    console.print(
        f"sla: {leads} deadlines fired among {deadlines:,} open ones "
        f"(worker reported {open_now:,.0f} open); alert on the topic after its due time: "
        f"p50 {statistics.median(delays) * 1000:.0f} ms, "
        f"p99 {delays[int(len(delays) * 0.99) - 1] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms"
    )


async def worker_open_deadlines(worker: WorkerProcess) -> float:
    for family in text_string_to_metric_families(worker.metrics()):
        for s in family.samples:
            if s.name == "leadflow_sla_open_deadlines":
                return float(s.value)
    return float("nan")


def main() -> None:
    # compare and latency have their own options (and --help).
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        SUBCOMMANDS[sys.argv[1]](sys.argv[2:])
        return
    parser = argparse.ArgumentParser(
        prog="ops/bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "which",
        choices=["core", "pipeline", "sla", "all", *SUBCOMMANDS],
        nargs="?",
        default="all",
        help="all = core, pipeline and sla",
    )
    parser.add_argument("--deadlines", type=int, default=1_000_000, help="sla: open deadlines")
    parser.add_argument("--leads", type=int, default=200, help="sla: deadlines that fire")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5, help="core: repetitions")
    parser.add_argument("--batch-max", type=int, default=500, help="pipeline: LEADFLOW_BATCH_MAX")
    args = parser.parse_args()
    if args.which in ("core", "all"):
        bench_core(args.events, args.rounds)
    if args.which in ("pipeline", "all"):
        asyncio.run(bench_pipeline(args.events, args.batch_max))
    if args.which in ("sla", "all"):
        asyncio.run(bench_sla(args.deadlines, args.leads))


if __name__ == "__main__":
    main()
