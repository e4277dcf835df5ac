"""`ops/bench compare`: leadflow beside Quix Streams and Faust, in one run, on one backlog.

One fresh namespace, one 8-partition engagement topic (`leadflow topics create` logic), one
pre-loaded backlog (default 200,000 records for 20,000 leads, 5 % redelivered). Then each system
drains it with its own consumer group, one after another, as its own process:

  leadflow      a real `leadflow worker` (LEADFLOW_RULES=tests/bench/rules.yaml)
  quix          Quix Streams, RocksDB state (tests/bench/quix_app.py)
  faust-naive   a per-event Faust agent, one Redis Lua call per event (tests/bench/faust_naive.py)
  faust-parse   a per-event Faust agent that only parses JSON: Faust's per-event floor

Measured per system (method: docs/benchmarks.md): events/s between the first
and last change of the group's committed offsets; CPU seconds per 100k events over that window
(worker process tree; redis-server for the Redis-backed ones; the Kafka broker for information);
peak and final RSS of the worker; its handoffs against the oracle (leadflow's pure core over
the same records and rules). For leadflow also: Redis bytes per lead over a sample of leads.

Output: a table, and JSON to --out. Never asserted anywhere: these are measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.progress import Progress

from streams.kafka import client_options
from streams.settings import Settings
from streams.store.redis_store import Keys
from tests.bench import backlog, report
from tests.bench.measure import DrainWatch, memory_kib
from tests.bench.servers import broker_pid, cleanup, code_state, loadavg, redis_pid, versions
from tests.bench.systems import SYSTEMS, System, handoff_leads
from tests.harness import ROOT, read_topic

console = Console()
if not console.is_terminal:
    console = Console(width=150)  # logs keep the table readable
DEFAULT_OUT = ROOT / "ops" / ".run" / "bench" / "compare.json"


@dataclass
class DrainResult:
    system: str
    label: str
    events_per_s: float = float("nan")
    events_per_s_busy: float = float("nan")
    ratio_to_quix: float | None = None
    window_s: float = float("nan")
    window_events: int = 0
    offset_changes: int = 0
    cpu_per_100k: dict[str, float | None] = field(default_factory=dict)
    cpu_run_s: float = float("nan")
    seconds_to_drain: float = float("nan")
    other_load_cores: float = float("nan")
    rss_peak_mib: float = float("nan")
    rss_final_mib: float = float("nan")
    # (records committed, worker RSS MiB), sampled along the drain: is memory flat?
    rss_along: list[tuple[int, float]] = field(default_factory=list)
    handoffs: int = 0
    handoff_leads: int = 0
    matches: bool = False
    verdict: str = ""
    error: str | None = None


@dataclass
class Watched:
    watch: DrainWatch
    started: float
    rss_peak_mib: float
    rss_final_mib: float
    rss_along: list[tuple[int, float]]


async def watch_drain(system: System, settings: Settings, total: int, workdir: Path) -> Watched:
    """Start `system`, follow its group's committed offsets to the end, stop it."""
    servers = {"redis": await redis_pid(settings), "kafka": broker_pid()}
    run = system.start(settings, workdir)
    started = time.monotonic()
    along: list[tuple[int, float]] = []
    pids = {"worker": run.pid, **{k: v for k, v in servers.items() if v}}
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    watch = DrainWatch(admin, system.group(settings), settings.engagement, total, pids)
    try:
        with Progress(console=console) as progress:
            task = progress.add_task(f"{system.name}: committed offsets", total=total)

            def seen(done: int) -> None:
                progress.update(task, completed=done)
                if not along or done - along[-1][0] >= total // 50:
                    along.append((done, memory_kib(run.pid, "VmRSS") / 1024))

            await watch.run(3600, run.alive, seen)
        peak, final = memory_kib(run.pid, "VmHWM"), memory_kib(run.pid, "VmRSS")
    except BaseException:
        console.print(f"[red]{system.name} failed; its log ends:[/red]\n{run.tail()}")
        raise
    finally:
        run.stop()
        await admin.close()
    return Watched(watch, started, peak / 1024, final / 1024, along)


def cpu_per_100k(system: System, watch: DrainWatch) -> dict[str, float | None]:
    """Worker, redis-server (Redis-backed systems only), their sum, and the broker."""
    sampled = watch.first.cpu
    out: dict[str, float | None] = {
        "worker": watch.cpu_per_100k("worker"),
        "redis": watch.cpu_per_100k("redis")
        if system.redis_backed and "redis" in sampled
        else None,
        "kafka": watch.cpu_per_100k("kafka") if "kafka" in sampled else None,
    }
    out["total"] = (out["worker"] or 0.0) + (out["redis"] or 0.0)
    return out


async def drain(
    system: System, settings: Settings, total: int, oracle: set[str], workdir: Path
) -> DrainResult:
    """One system drains the backlog: its rate, CPU and memory, its handoffs judged."""
    watched = await watch_drain(system, settings, total, workdir)
    watch = watched.watch
    outcome = backlog.judge(await settled_outputs(system, settings, len(oracle)), oracle)
    return DrainResult(
        system=system.name,
        label=system.label,
        events_per_s=watch.events_per_second(),
        events_per_s_busy=watch.events_per_second_busy(),
        window_s=watch.last.at - watch.first.at,
        window_events=watch.last.committed - watch.first.committed,
        offset_changes=len(watch.changes),
        cpu_per_100k=cpu_per_100k(system, watch),
        cpu_run_s=watch.last.cpu["worker"],
        seconds_to_drain=watch.last.at - watched.started,
        other_load_cores=watch.other_load(),
        rss_peak_mib=watched.rss_peak_mib,
        rss_final_mib=watched.rss_final_mib,
        rss_along=watched.rss_along,
        handoffs=outcome.count,
        handoff_leads=outcome.leads,
        matches=outcome.matches,
        verdict=outcome.describe() if system.output(settings) else "no output (floor)",
    )


async def settled_outputs(system: System, settings: Settings, expected: int) -> list[str]:
    """The system's handoffs once its output topic stops growing (sends may trail commits)."""
    topic = system.output(settings)
    if topic is None:
        return []
    previous, deadline = -1, time.monotonic() + 30
    while True:
        leads = handoff_leads([r.value for r in await read_topic(settings, topic)])
        if len(leads) == previous and (len(leads) >= expected or time.monotonic() > deadline):
            return leads
        previous = len(leads)
        await asyncio.sleep(1.0)


async def redis_bytes_per_lead(settings: Settings, leads: list[str]) -> dict[str, float]:
    """MEMORY USAGE of leadflow's lead and seen keys for a sample of leads, averaged."""
    keys = Keys(settings.redis_prefix, settings.topic_partitions)
    client = aioredis.Redis.from_url(settings.redis_url.get_secret_value())
    try:
        state = seen = 0
        for lead in leads:
            state += await client.memory_usage(keys.lead(lead), samples=0) or 0
    finally:
        await client.aclose()
    n = max(len(leads), 1)
    return {
        "leads": len(leads),
        "lead_key": state / n,
        "seen_key": seen / n,
        "total": (state + seen) / n,
    }


async def compare(args: argparse.Namespace) -> dict[str, Any]:
    code = code_state()  # at the start: others may change the shared tree during the run
    settings = backlog.bench_settings()
    systems = [SYSTEMS[name] for name in args.systems]
    outputs = tuple(t for s in systems if s.name != "leadflow" and (t := s.output(settings)))
    console.print(
        f"namespace [bold]{settings.namespace}[/bold]; systems: {', '.join(args.systems)}"
    )
    with console.status("generating the backlog and the oracle"):
        records = backlog.make_backlog(args.events, args.leads)
        oracle = backlog.oracle_handoffs(records)
    console.print(
        f"{len(records):,} records for {args.leads:,} leads; oracle: {len(oracle):,} handoffs"
    )
    workdir = Path(tempfile.mkdtemp(prefix="leadflow-bench-"))
    memory: dict[str, float] | None = None
    try:
        await backlog.create_bench_topics(settings, outputs)
        await backlog.produce_backlog(settings, records, console)
        results = await drain_each(systems, settings, len(records), oracle, workdir)
        if "leadflow" in args.systems:
            memory = await redis_bytes_per_lead(settings, backlog.sample_leads(records, 1000))
    finally:
        if not args.keep:
            await cleanup(settings)
    add_ratios(results)
    return {
        "command": "ops/bench " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "namespace": settings.namespace,
        "versions": await versions(settings),
        "loadavg_at_end": loadavg(),
        "code": code,
        "records": len(records),
        "leads": args.leads,
        "oracle_handoffs": len(oracle),
        "workdir": str(workdir),
        "systems": [asdict(r) for r in results],
        "leadflow_redis_bytes_per_lead": memory,
    }


async def drain_each(
    systems: list[System], settings: Settings, total: int, oracle: set[str], workdir: Path
) -> list[DrainResult]:
    """One system after another; a system that fails is reported and the others still run."""
    results = []
    for system in systems:
        try:
            result = await drain(system, settings, total, oracle, workdir)
        except Exception as exc:
            result = DrainResult(system.name, system.label, error=f"{exc!r}"[:500])
        results.append(result)
        console.print(report.drain_line(result))
    return results


def add_ratios(results: list[DrainResult]) -> None:
    quix = next((r for r in results if r.system == "quix"), None)
    for r in results:
        r.ratio_to_quix = r.events_per_s / quix.events_per_s if quix and not quix.error else None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ops/bench compare", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--events", type=int, default=200_000, help="records in the backlog (200000)")
    p.add_argument("--leads", type=int, default=20_000, help="leads in the backlog (20000)")
    p.add_argument(
        "--systems",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=list(SYSTEMS),
        help=f"comma-separated, run in this order (default {','.join(SYSTEMS)})",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"JSON results ({DEFAULT_OUT.relative_to(ROOT)})",
    )
    p.add_argument("--keep", action="store_true", help="keep the namespace's topics and Redis keys")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser().error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    result = asyncio.run(compare(args))
    report.write_json(args.out, result)
    report.drain_table(console, result)
    report.rss_along(console, result, args.out.with_suffix(".rss.png"))
    console.print(f"JSON: {args.out}")
