"""`ops/bench latency --rate N`: handoff latency at a steady input rate, measured from outside.

For each system (default: leadflow, then Quix Streams), in a fresh namespace of its own:
1. start the system and a consumer tailing its output topic;
2. warm up: send one qualifying lead and wait for its handoff (the system is then consuming);
3. produce synthetic engagement at a steady `--rate` events/s for `--seconds`, remembering the
   send time of every event_id;
4. for each handoff that arrives, latency = its arrival time minus the send time of the event
   that triggered it (`triggering_event_id`; the peers emit the same field).

Record timestamps are not used: Quix Streams copies the input record's timestamp to its outputs
(docs/benchmarks.md, method). Reported: p50, p99 and max, and the rate achieved.
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
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.progress import Progress

from streams.jobs.sample import SampleRecord
from streams.kafka import client_options
from streams.settings import Settings
from tests.bench import backlog, report
from tests.bench.measure import cpu_seconds, machine_busy_seconds, own_cpu_seconds
from tests.bench.servers import cleanup, code_state, loadavg
from tests.bench.systems import SYSTEMS, System
from tests.harness import ROOT, qualifying

console = Console()
if not console.is_terminal:
    console = Console(width=150)  # logs keep the table readable
TICK = 0.005  # seconds between bursts of the paced producer


@dataclass
class LatencyResult:
    system: str
    label: str
    event_ids_sent: int  # records minus redeliveries
    achieved_rate: float
    expected_handoffs: int
    handoffs: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    note: str
    worker_cores: float = float("nan")
    harness_cores: float = float("nan")
    other_cores: float = float("nan")


class Tail:
    """A consumer on an output topic that notes the arrival time of every record."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings, self.topic = settings, topic
        self.arrivals: list[tuple[float, bytes]] = []
        self.consumer = AIOKafkaConsumer(
            **client_options(settings), enable_auto_commit=False, fetch_max_wait_ms=100
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.consumer.start()
        parts = [TopicPartition(self.topic, p) for p in range(self.settings.topic_partitions)]
        self.consumer.assign(parts)
        await self.consumer.seek_to_beginning(*parts)
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.monotonic()
            for records in batch.values():
                self.arrivals.extend((now, r.value) for r in records if r.value)

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        await self.consumer.stop()


async def warm_up(settings: Settings, tail: Tail, within: float = 300) -> None:
    """Send one qualifying lead; return when its handoff is on the output topic."""
    events = qualifying("bench-warmup", datetime.now(UTC))
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        for key, value in events:
            await producer.send_and_wait(settings.engagement, value, key=key)
    finally:
        await producer.stop()
    deadline = time.monotonic() + within
    while not tail.arrivals:
        if time.monotonic() > deadline:
            raise TimeoutError("no warm-up handoff: the system is not consuming")
        await asyncio.sleep(0.1)


async def paced_send(
    settings: Settings, records: list[SampleRecord], rate: int
) -> tuple[dict[str, float], float]:
    """Produce at `rate` records/s; return event_id -> send time and the achieved rate."""
    sent_at: dict[str, float] = {}
    ids = [orjson.loads(r.value)["event_id"] for r in records]
    producer = AIOKafkaProducer(**client_options(settings), acks="all")
    await producer.start()
    try:
        with Progress(console=console) as progress:
            task = progress.add_task(f"producing at {rate:,}/s", total=len(records))
            start = time.monotonic()
            i = 0
            while i < len(records):
                due = min(len(records), int((time.monotonic() - start) * rate) + 1)
                for n in range(i, due):
                    sent_at.setdefault(ids[n], time.monotonic())
                    await producer.send(settings.engagement, records[n].value, key=records[n].key)
                progress.advance(task, due - i)
                i = due
                await asyncio.sleep(TICK)
            elapsed = time.monotonic() - start
        await producer.flush()
    finally:
        await producer.stop()
    return sent_at, len(records) / elapsed


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


async def settle(tail: Tail, expected: int, quiet: float = 5.0, within: float = 120) -> None:
    """Wait for every expected handoff, or until nothing arrived for `quiet` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and len(tail.arrivals) < expected:
        last = tail.arrivals[-1][0] if tail.arrivals else 0.0
        if time.monotonic() - last > quiet:
            return
        await asyncio.sleep(0.2)


async def measure(system: System, rate: int, seconds: int) -> LatencyResult:
    settings = backlog.bench_settings()
    output = system.output(settings)
    if output is None:
        raise SystemExit(f"{system.name} emits nothing; latency needs a system with handoffs")
    total = rate * seconds
    records = backlog.make_backlog(total, max(total // 10, 1), seed=rate)
    expected = len(backlog.oracle_handoffs(records)) + 1  # + the warm-up lead
    workdir = Path(tempfile.mkdtemp(prefix="leadflow-latency-"))
    await backlog.create_bench_topics(settings, (output,) if system.name != "leadflow" else ())
    run = system.start(settings, workdir)
    tail = Tail(settings, output)
    try:
        await tail.start()
        with console.status(f"{system.name}: starting and warming up"):
            await warm_up(settings, tail)
        before = cpu_snapshot(run.pid)
        sent_at, achieved = await paced_send(settings, records, rate)
        load = cores_used(before, cpu_snapshot(run.pid))
        with console.status(f"{system.name}: waiting for the last handoffs"):
            await settle(tail, expected)
        if not run.alive():
            raise RuntimeError(f"{system.name} exited:\n{run.tail()}")
    finally:
        await tail.stop()
        run.stop()
        await cleanup(settings)
    result = summarise(system, tail.arrivals, sent_at, achieved, expected - 1)
    result.worker_cores, result.harness_cores = load["worker"], load["harness"]
    result.other_cores = load["other"]
    return result


def cpu_snapshot(worker: int) -> dict[str, float]:
    """CPU seconds of the system's worker, this harness (producer and tail) and the box."""
    return {
        "at": time.monotonic(),
        "worker": cpu_seconds(worker),
        "harness": own_cpu_seconds(os.getpid()),  # without the worker, its child
        "machine": machine_busy_seconds(),
    }


def cores_used(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Cores the worker used while the load was produced, and what the rest of the box used
    besides the worker and this harness (redis-server, the broker, other jobs)."""
    span = after["at"] - before["at"]
    used = {k: (after[k] - before[k]) / span for k in ("worker", "harness", "machine")}
    other = used["machine"] - used["worker"] - used["harness"]
    return {"worker": used["worker"], "harness": used["harness"], "other": other}


def summarise(
    system: System,
    arrivals: list[tuple[float, bytes]],
    sent_at: dict[str, float],
    achieved: float,
    expected: int,
) -> LatencyResult:
    latencies = []
    for arrived, value in arrivals:
        trigger = orjson.loads(value).get("triggering_event_id")
        if trigger in sent_at:
            latencies.append((arrived - sent_at[trigger]) * 1000)
    note = "" if len(latencies) == expected else f"{expected:,} expected"
    return LatencyResult(
        system=system.name,
        label=system.label,
        event_ids_sent=len(sent_at),
        achieved_rate=achieved,
        expected_handoffs=expected,
        handoffs=len(latencies),
        p50_ms=percentile(latencies, 0.50),
        p99_ms=percentile(latencies, 0.99),
        max_ms=max(latencies, default=float("nan")),
        note=note,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ops/bench latency", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--rate", type=int, default=1000, help="events per second (1000)")
    p.add_argument("--seconds", type=int, default=30, help="how long to produce (30)")
    p.add_argument(
        "--systems",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        default=["leadflow", "quix"],
        help="comma-separated (default leadflow,quix; faust-naive also works)",
    )
    p.add_argument("--out", type=Path, help="JSON results (ops/.run/bench/latency-<rate>.json)")
    return p


async def run_all(args: argparse.Namespace) -> dict[str, Any]:
    code = code_state()  # at the start: others may change the shared tree during the run
    results = [await measure(SYSTEMS[name], args.rate, args.seconds) for name in args.systems]
    return {
        "command": "ops/bench " + shlex.join(sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "loadavg_at_end": loadavg(),
        "code": code,
        "rate": args.rate,
        "seconds": args.seconds,
        "systems": [asdict(r) for r in results],
    }


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    unknown = [s for s in args.systems if s not in SYSTEMS]
    if unknown:
        parser().error(f"unknown system(s) {', '.join(unknown)}; known: {', '.join(SYSTEMS)}")
    out = args.out or ROOT / "ops" / ".run" / "bench" / f"latency-{args.rate}.json"
    result = asyncio.run(run_all(args))
    report.write_json(out, result)
    report.latency_table(console, result)
    console.print(f"JSON: {out}")
