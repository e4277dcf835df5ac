"""`ops/bench scale`: 1, 2, 4 ... workers in one group drain one backlog (issue 11 item 5).

For each worker count N, in its own fresh namespace (topics with 8 partitions, consumer group,
Redis keys): N real `leadflow worker` processes start in one group, then the same pre-generated
backlog (default 200,000 records for 20,000 leads, 5 % redelivered; tests/bench/backlog.py) is
produced and the group's committed offsets are followed to the end.

The group first settles on the empty topic (every worker ready, the 8 partitions split among
all N without overlap); then the backlog is produced and drained (method: docs/benchmarks.md
"Scale-out"):
- events/s: between the first and the last change of the group's committed offsets;
- CPU seconds per 100k events of each worker (its process tree, /proc/<pid>/stat) and of each
  Redis node (its redis-server process; the nodes are the cluster's masters, or the one Redis),
  plus the broker for information, and the rest of the machine (other jobs on the shared box),
  from the settled group (before the first record) to the last change of the offsets;
- the group idle for --idle-seconds before the backlog: each worker's (and node's) CPU with
  nothing to do, in cores; the workers' CPU per 100k less that idle rate over the drain is the
  "net" per-event figure, the rest is the fixed cost of running N processes;
- Redis memory per lead: INFO memory used_memory of each node after the drain minus before it,
  over the leads in the backlog; and MEMORY USAGE of a sample of lead keys;
- the handoffs on the topic against the oracle (leadflow's pure core over the same records).

Redis mode: single Redis (LEADFLOW_REDIS_URL, default 127.0.0.1:6379) or, with --cluster, the
Redis Cluster at LEADFLOW_REDIS_URL (default redis://127.0.0.1:7000/0) through leadflow's
cluster client (LEADFLOW_REDIS_CLUSTER=true for the workers too).

Output: a table, JSON to --out and a PNG chart beside it (CPU s per 100k events per worker
count, workers vs Redis nodes; --also adds earlier runs' JSON to the chart, e.g. the other
Redis mode). Never asserted anywhere: these are measurements.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from streams.kafka import client_options
from streams.settings import Settings
from streams.store.redis_store import Keys
from tests.bench import backlog, report
from tests.bench.measure import DrainWatch, Sample, memory_kib
from tests.bench.servers import _is_local, broker_pid, code_state, loadavg, versions
from tests.bench.systems import handoff_leads
from tests.harness import ROOT, WorkerProcess, drop_topics, purge_redis, read_topic, redis_client

console = Console()
if not console.is_terminal:
    console = Console(width=160)
DEFAULT_OUT = ROOT / "ops" / ".run" / "bench" / "scale.json"
CLUSTER_URL = "redis://127.0.0.1:7000/0"


@dataclass(frozen=True)
class Node:
    """One Redis node (a cluster master, or the single Redis) and its local process."""

    name: str
    host: str
    port: int
    pid: int | None

    def client(self, settings: Settings) -> aioredis.Redis:
        return aioredis.Redis(
            host=self.host, port=self.port, socket_timeout=10, **settings.redis_options()
        )


async def redis_nodes(settings: Settings) -> list[Node]:
    """The masters of the cluster (cluster mode) or the single Redis, with their pids."""
    if settings.redis_cluster:
        cluster = aioredis.RedisCluster.from_url(
            settings.redis_url.get_secret_value(), **settings.redis_options()
        )
        try:
            await cluster.initialize()
            addresses = sorted((n.host, int(n.port)) for n in cluster.get_primaries())
        finally:
            await cluster.aclose()
    else:
        url = urlparse(settings.redis_url.get_secret_value())
        addresses = [(url.hostname or "127.0.0.1", url.port or 6379)]
    nodes = []
    for host, port in addresses:
        client = aioredis.Redis(host=host, port=port, **settings.redis_options())
        try:
            pid = int((await client.info("server")).get("process_id", 0))
        finally:
            await client.aclose()
        nodes.append(Node(f"redis:{port}", host, port, pid if _is_local(pid, "redis") else None))
    return nodes


async def used_memory(settings: Settings, nodes: list[Node]) -> dict[str, int]:
    out = {}
    for node in nodes:
        client = node.client(settings)
        try:
            out[node.name] = int((await client.info("memory"))["used_memory"])
        finally:
            await client.aclose()
    return out


async def lead_key_bytes(settings: Settings, leads: list[str]) -> float:
    """MEMORY USAGE of the lead keys of a sample of leads (through leadflow's client, so it
    reaches the right node on the cluster), averaged."""
    keys = Keys(settings.redis_prefix, settings.topic_partitions)
    client = redis_client(settings)
    try:
        sizes = [await client.memory_usage(keys.lead(lead), samples=0) or 0 for lead in leads]
    finally:
        await client.aclose()
    return sum(sizes) / max(len(sizes), 1)


def _health(w: WorkerProcess) -> list[int] | None:
    body = w.health()
    return None if body is None else [int(p) for p in body["assigned_partitions"]]


async def stable_group(workers: list[WorkerProcess], partitions: int, within: float) -> list[int]:
    """Wait until the workers split every partition among them, each holding some, no overlap;
    returns the number each holds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc is not None and w.proc.poll() is not None:
                raise RuntimeError(f"a worker exited with {w.proc.returncode}:\n{w.tail()}")
        held = [await asyncio.to_thread(_health, w) for w in workers]
        if all(held):
            flat = [p for h in held if h for p in h]
            if len(flat) == partitions and set(flat) == set(range(partitions)):
                return [len(h or []) for h in held]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the group of {len(workers)} workers did not settle in {within:.0f}s")


@dataclass
class ScaleRun:
    workers: int
    namespace: str
    partitions_per_worker: list[int] = field(default_factory=list)
    window_s: float = math.nan
    window_events: int = 0
    cpu_s: float = math.nan
    offset_changes: int = 0
    events_per_s: float = math.nan
    cpu_per_100k: dict[str, float] = field(default_factory=dict)
    worker_cpu_per_100k: float = math.nan
    # The workers' CPU less what they would have used idle over the same time.
    worker_cpu_per_100k_net: float = math.nan
    # Redis's CPU less its idle rate (on a shared Redis: other clients' steady load).
    redis_cpu_per_100k_net: float = math.nan
    idle_cores: dict[str, float] = field(default_factory=dict)
    redis_cpu_per_100k: float = math.nan
    cpu_per_100k_total: float = math.nan
    events_per_core_s: float = math.nan
    other_load_cores: float = math.nan
    rss_peak_mib: list[float] = field(default_factory=list)
    # Records per batch, over every batch of every worker (leadflow_batch_records).
    batch_records_mean: float = math.nan
    used_memory_delta: dict[str, int] = field(default_factory=dict)
    redis_bytes_per_lead: float = math.nan
    lead_key_bytes: float = math.nan
    handoffs: int = 0
    verdict: str = ""
    seconds: float = math.nan


def net_per_100k(run: dict[str, Any], kind: str, events: int) -> float:
    """The CPU s/100k of the workers ("worker") or the Redis nodes ("redis") less what they
    use idle, at their measured idle rate, over the same time (from a run's JSON too)."""
    idle = sum(v for k, v in run.get("idle_cores", {}).items() if kind in k)
    total = sum(v for k, v in run["cpu_per_100k"].items() if kind in k)
    return float(total - idle * run["cpu_s"] / events * 100_000)


def _delta(a: Sample, b: Sample, name: str, events: int) -> float:
    return (b.cpu[name] - a.cpu[name]) / events * 100_000


async def run_once(
    n: int, records: list[Any], leads: list[str], oracle: set[str], args: argparse.Namespace
) -> ScaleRun:
    settings = backlog.bench_settings()
    run = ScaleRun(n, settings.namespace)
    began = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix=f"leadflow-scale-{n}-"))
    console.rule(f"{n} worker(s), namespace {settings.namespace}")
    nodes = await redis_nodes(settings)
    pool: list[WorkerProcess] = []
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await backlog.create_bench_topics(settings, ())
        memory_before = await used_memory(settings, nodes)
        env = {
            "LEADFLOW_BATCH_MAX": str(args.batch_max),
            "LEADFLOW_LOG_LEVEL": "WARNING",
            "LEADFLOW_KPI_REFRESH_INTERVAL": "30",
        }
        pool = [WorkerProcess(settings, workdir / f"w{i}.log", env) for i in range(n)]
        for w in pool:
            w.start()
        # The group settles on the empty topic first, so that every event is scored by the
        # whole group and every CPU second of the drain falls in the window.
        run.partitions_per_worker = await stable_group(pool, settings.topic_partitions, 180)
        pids = {f"worker{i}": w.proc.pid for i, w in enumerate(pool) if w.proc}
        pids |= {node.name: node.pid for node in nodes if node.pid}
        kafka = broker_pid()
        if kafka:
            pids["kafka"] = kafka
        await admin.start()
        group, topic = settings.engagement_group, settings.engagement
        watch = DrainWatch(admin, group, topic, len(records), pids)
        # What the group costs with nothing to do (heartbeats, timers, polls), per worker: the
        # fixed part of its CPU, apart from the part that grows with the events.
        idle_from = watch.sample(0)
        await asyncio.sleep(args.idle_seconds)
        baseline = watch.sample(0)
        idle_span = baseline.at - idle_from.at
        run.idle_cores = {
            k: (baseline.cpu[k] - idle_from.cpu[k]) / idle_span for k in pids if k != "kafka"
        }

        def alive() -> bool:
            return all(w.proc is not None and w.proc.poll() is None for w in pool)

        drain = asyncio.create_task(watch.run(3600, alive, lambda done: None))
        try:
            await backlog.produce_backlog(settings, records, console)
            with console.status(f"{n} worker(s) draining"):
                await drain
        finally:
            drain.cancel()
        rss = [memory_kib(w.proc.pid, "VmHWM") / 1024 for w in pool if w.proc]
        run.batch_records_mean = await batch_mean(pool)
        last = watch.last
        events = last.committed
        run.window_s = last.at - watch.first.at
        run.window_events = last.committed - watch.first.committed
        run.offset_changes = len(watch.changes)
        run.events_per_s = watch.events_per_second()
        run.cpu_s = last.at - baseline.at
        run.cpu_per_100k = {k: _delta(baseline, last, k, events) for k in pids}
        run.worker_cpu_per_100k = sum(v for k, v in run.cpu_per_100k.items() if "worker" in k)
        run.redis_cpu_per_100k = sum(v for k, v in run.cpu_per_100k.items() if "redis" in k)
        run.cpu_per_100k_total = run.worker_cpu_per_100k + run.redis_cpu_per_100k
        run.events_per_core_s = 100_000 / run.cpu_per_100k_total
        run.worker_cpu_per_100k_net = net_per_100k(asdict(run), "worker", events)
        run.redis_cpu_per_100k_net = net_per_100k(asdict(run), "redis", events)
        used = {k: last.cpu[k] - baseline.cpu[k] for k in last.cpu}
        run.other_load_cores = (used.pop("machine") - sum(used.values())) / run.cpu_s
        run.rss_peak_mib = [round(r, 1) for r in rss]
        for w in pool:
            await asyncio.to_thread(w.stop)
        memory_after = await used_memory(settings, nodes)
        run.used_memory_delta = {k: memory_after[k] - memory_before[k] for k in memory_after}
        run.redis_bytes_per_lead = sum(run.used_memory_delta.values()) / len(leads)
        run.lead_key_bytes = await lead_key_bytes(settings, backlog.sample_leads(records, 500))
        await wait_handoffs(settings, oracle, 60)
        on_topic = await read_topic(settings, settings.handoff)
        outcome = backlog.judge(handoff_leads([r.value for r in on_topic]), oracle)
        run.handoffs, run.verdict = outcome.count, outcome.describe()
    except BaseException:
        for w in pool:
            console.print(f"[red]worker log {w.log_path}:[/red]\n{w.tail(20)}")
        raise
    finally:
        for w in pool:
            await asyncio.to_thread(w.stop)
        await admin.close()
        if not args.keep:
            await purge_redis(settings)
            await drop_topics(settings)
    run.seconds = time.monotonic() - began
    console.print(line(run))
    return run


async def batch_mean(pool: list[WorkerProcess]) -> float:
    """Mean records per batch over the workers (their leadflow_batch_records histograms)."""
    total = count = 0.0
    for w in pool:
        total += await asyncio.to_thread(w.metric, "leadflow_batch_records_sum") or 0.0
        count += await asyncio.to_thread(w.metric, "leadflow_batch_records_count") or 0.0
    return total / count if count else math.nan


async def wait_handoffs(settings: Settings, oracle: set[str], within: float) -> None:
    """Outputs leave after their batch's commit; give the last ones a moment to land."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        on_topic = await read_topic(settings, settings.handoff)
        if len(on_topic) >= len(oracle):
            return
        await asyncio.sleep(0.5)


def line(r: ScaleRun) -> str:
    return (
        f"{r.workers} worker(s) {r.partitions_per_worker}: {r.events_per_s:,.0f} events/s over "
        f"{r.window_s:.1f}s ({r.window_events:,} events); CPU s/100k workers "
        f"{r.worker_cpu_per_100k:.1f} + Redis {r.redis_cpu_per_100k:.1f} = "
        f"{r.cpu_per_100k_total:.1f} ({r.events_per_core_s:,.0f} events per CPU-second); "
        f"Redis {r.redis_bytes_per_lead:,.0f} B/lead; handoffs {r.handoffs:,} ({r.verdict})"
    )


async def scale(args: argparse.Namespace) -> dict[str, Any]:
    code = code_state()
    probe = backlog.bench_settings()
    nodes = await redis_nodes(probe)
    with console.status("generating the backlog and the oracle"):
        records = backlog.make_backlog(args.events, args.leads)
        oracle = backlog.oracle_handoffs(records)
        leads = backlog.lead_ids(records)
    mode = "cluster" if probe.redis_cluster else "single"
    console.print(
        f"Redis {mode}: {', '.join(n.name for n in nodes)}; {len(records):,} records for "
        f"{len(leads):,} leads; oracle {len(oracle):,} handoffs; workers {args.workers}"
    )
    runs = [await run_once(n, records, leads, oracle, args) for n in args.workers]
    return {
        "command": "ops/bench " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "redis_mode": mode,
        "redis_nodes": [n.name for n in nodes],
        "partitions": probe.topic_partitions,
        "batch_max": args.batch_max,
        "records": len(records),
        "leads": len(leads),
        "oracle_handoffs": len(oracle),
        "cores": os.cpu_count(),
        "loadavg_at_end": loadavg(),
        "versions": await versions(probe),
        "code": code,
        "runs": [asdict(r) for r in runs],
    }


def table(result: dict[str, Any]) -> None:
    t = Table(title=f"scale-out on Redis {result['redis_mode']} ({result['command']})")
    for column in (
        "workers",
        "partitions each",
        "events/s",
        "worker CPU s/100k (each)",
        "Redis CPU s/100k (each node)",
        "total s/100k",
        "idle cores: workers, Redis",
        "net s/100k: workers + Redis",
        "events per CPU-s",
        "records per batch",
        "other cores",
        "Redis B/lead (each node)",
        "handoffs",
    ):
        t.add_column(column, justify="right")
    for r in result["runs"]:
        cpu = r["cpu_per_100k"]
        workers = [f"{v:.1f}" for k, v in cpu.items() if "worker" in k]
        nodes = [f"{v:.1f}" for k, v in cpu.items() if "redis" in k]
        mem = [f"{v / result['leads']:,.0f}" for v in r["used_memory_delta"].values()]
        t.add_row(
            str(r["workers"]),
            ",".join(map(str, r["partitions_per_worker"])),
            f"{r['events_per_s']:,.0f}",
            f"{r['worker_cpu_per_100k']:.1f} ({' '.join(workers)})",
            f"{r['redis_cpu_per_100k']:.1f} ({' '.join(nodes)})",
            f"{r['cpu_per_100k_total']:.1f}",
            f"{idle(r, 'worker'):.3f}, {idle(r, 'redis'):.3f}",
            f"{net_per_100k(r, 'worker', result['records']):.1f} + "
            f"{net_per_100k(r, 'redis', result['records']):.1f}",
            f"{r['events_per_core_s']:,.0f}",
            f"{r.get('batch_records_mean', math.nan):.0f}",
            f"{r['other_load_cores']:.2f}",
            f"{r['redis_bytes_per_lead']:,.0f} ({' '.join(mem)})",
            f"{r['handoffs']:,} {r['verdict']}",
        )
    console.print(t)


def idle(run: dict[str, Any], kind: str) -> float:
    return float(sum(v for k, v in run.get("idle_cores", {}).items() if kind in k))


def chart(results: list[dict[str, Any]], path: Path) -> None:
    """CPU seconds per 100k events per worker count: workers and each Redis node stacked, one
    panel per run (Redis mode)."""
    from matplotlib.figure import Figure  # slow to import: only when drawn

    fig = Figure(figsize=(5 * len(results), 4.2), dpi=100)
    axes = fig.subplots(1, len(results), sharey=True, squeeze=False)[0]
    for ax, result in zip(axes, results, strict=True):
        runs = result["runs"]
        x = list(range(len(runs)))
        bottom = [0.0] * len(runs)
        workers = [r["worker_cpu_per_100k"] for r in runs]
        net = [net_per_100k(r, "worker", result["records"]) for r in runs]
        ax.bar(x, net, color="#4c72b0", label="workers (sum), per event")
        idle = [w - n for w, n in zip(workers, net, strict=True)]
        ax.bar(x, idle, bottom=net, color="#9db4d8", label="workers, idle overhead")
        bottom = workers[:]
        shades = ["#dd8452", "#c44e52", "#8c564b"]
        for i, node in enumerate(result["redis_nodes"]):
            part = [r["cpu_per_100k"].get(node, 0.0) for r in runs]
            ax.bar(x, part, bottom=bottom, color=shades[i % 3], label=node)
            bottom = [b + p for b, p in zip(bottom, part, strict=True)]
        for xi, r, top in zip(x, runs, bottom, strict=True):
            ax.annotate(
                f"{r['events_per_s']:,.0f}/s", (xi, top), ha="center", va="bottom", fontsize=8
            )
        ax.set_xticks(x, [str(r["workers"]) for r in runs])
        ax.set_xlabel("workers in the group (8 partitions)")
        others = [r["other_load_cores"] for r in runs]
        ax.set_title(
            f"Redis {result['redis_mode']}: {result['records']:,} events, {result['leads']:,} "
            f"leads\n{result['date'][:16]}Z, other load on the box "
            f"{min(others):.1f}-{max(others):.1f} cores",
            fontsize=9,
        )
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0].set_ylabel("CPU seconds per 100k events")
    fig.suptitle(
        "CPU per event as workers are added (labels: events/s, 2 shared cores)", fontsize=9
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    console.print(f"chart: {path}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ops/bench scale", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument(
        "--workers",
        type=lambda s: [int(x) for x in s.split(",") if x.strip()],
        default=[1, 2, 4],
        help="worker counts, comma-separated (1,2,4)",
    )
    p.add_argument("--events", type=int, default=200_000, help="records in the backlog (200000)")
    p.add_argument("--leads", type=int, default=20_000, help="leads in the backlog (20000)")
    p.add_argument("--batch-max", type=int, default=500, help="LEADFLOW_BATCH_MAX (500)")
    p.add_argument(
        "--idle-seconds", type=float, default=10.0, help="idle group measured first (10)"
    )
    p.add_argument(
        "--cluster",
        action="store_true",
        help=f"Redis Cluster (LEADFLOW_REDIS_URL, default {CLUSTER_URL}); else single Redis",
    )
    p.add_argument("--out", type=Path, default=None, help="JSON (ops/.run/bench/scale-<mode>.json)")
    p.add_argument("--also", type=Path, nargs="*", default=[], help="earlier JSON for the chart")
    p.add_argument(
        "--render",
        type=Path,
        nargs="+",
        default=None,
        help="run nothing: the tables and one chart (to --out's .png) of earlier JSON files",
    )
    p.add_argument("--keep", action="store_true", help="keep the namespaces' topics and keys")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    if any(n < 1 for n in args.workers):
        parser().error("--workers: positive counts")
    if args.cluster:
        # The workers inherit the environment: the same mode and URL for them and for us.
        os.environ["LEADFLOW_REDIS_CLUSTER"] = "true"
        os.environ.setdefault("LEADFLOW_REDIS_URL", CLUSTER_URL)
    mode = "cluster" if args.cluster else "single"
    out = args.out or DEFAULT_OUT.with_name(f"scale-{mode}.json")
    if args.render:
        drawn = [orjson.loads(p.read_bytes()) for p in args.render]
        for each in drawn:
            table(each)
        chart(drawn, (args.out or DEFAULT_OUT).with_suffix(".png"))
        return
    result = asyncio.run(scale(args))
    report.write_json(out, result)
    table(result)
    earlier = [orjson.loads(p.read_bytes()) for p in args.also]
    chart([*earlier, result], out.with_suffix(".png"))
    console.print(f"JSON: {out}")
