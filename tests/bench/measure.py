"""What `ops/bench compare` measures from outside a system: committed offsets, CPU, RSS.

The method (docs/benchmarks.md, "Side by side"):
- the drain rate is taken between the first and the last change of the consumer group's
  committed offsets, so start-up and group joins drop out;
- CPU is user+sys of the process and its children from /proc/<pid>/stat (fields 14-17),
  sampled at those same two moments, and the same for redis-server and the Kafka broker;
- the rest of the machine's CPU over the window (/proc/stat) says how busy the box was
  with other work, so a disturbed figure shows;
- RSS is the worker's VmHWM (peak) and VmRSS (at the end) from /proc/<pid>/status.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

TICKS = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant of it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(_stat_fields(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo += children.get(current, [])
    return out


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on; the command name may contain spaces."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime (fields 14-17) of `pid` and its live descendants."""
    total = 0
    for each in process_tree(pid):
        try:
            fields = _stat_fields(each)
        except OSError:
            continue
        total += sum(int(v) for v in fields[11:15])  # fields 14..17, counted from 3
    return total / TICKS


def own_cpu_seconds(pid: int) -> float:
    """utime + stime (fields 14-15) of `pid` alone, without its children."""
    return sum(int(v) for v in _stat_fields(pid)[11:13]) / TICKS


def machine_busy_seconds() -> float:
    """CPU time all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS


def memory_kib(pid: int, name: str) -> int:
    """A line of /proc/<pid>/status in KiB, e.g. VmHWM (peak RSS) or VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


@dataclass
class Sample:
    at: float
    committed: int
    cpu: dict[str, float]


@dataclass
class DrainWatch:
    """Polls a group's committed offsets on one topic until they reach `target`.

    `cpu` maps a name ("worker", "redis", "kafka") to the pid whose CPU is sampled whenever the
    committed total changes.
    """

    admin: AIOKafkaAdminClient
    group: str
    topic: str
    target: int
    cpu: dict[str, int]
    changes: list[Sample] = field(default_factory=list)

    async def committed(self) -> int:
        offsets = await self.admin.list_consumer_group_offsets(self.group)
        return sum(meta.offset for tp, meta in offsets.items() if tp.topic == self.topic)

    def sample(self, committed: int) -> Sample:
        cpu = {k: cpu_seconds(p) for k, p in self.cpu.items()}
        cpu["machine"] = machine_busy_seconds()
        return Sample(time.monotonic(), committed, cpu)

    async def run(
        self, within: float, alive: Callable[[], bool], progress: Callable[[int], None]
    ) -> None:
        last = 0
        deadline = time.monotonic() + within
        while last < self.target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {self.group} committed {last:,} of {self.target:,}")
            if not alive():
                raise RuntimeError(f"the process of group {self.group} exited")
            now = await self.committed()
            if now != last:
                self.changes.append(self.sample(now))
                progress(now)
                last = now
            await asyncio.sleep(0.1)

    @property
    def first(self) -> Sample:
        return self.changes[0]

    @property
    def last(self) -> Sample:
        return self.changes[-1]

    def events_per_second(self) -> float:
        span = self.last.at - self.first.at
        return (self.last.committed - self.first.committed) / span if span > 0 else float("nan")

    def events_per_second_busy(self) -> float:
        """The rate up to the second-to-last change, while the backlog was surely not empty
        (the last interval may end idle); needs three changes."""
        if len(self.changes) < 3:
            return float("nan")
        a, b = self.first, self.changes[-2]
        return (b.committed - a.committed) / (b.at - a.at)

    def other_load(self) -> float:
        """Cores busy with anything but the worker, redis-server and the broker (the harness
        itself, other jobs on the box) over the window: how disturbed the figures are."""
        span = self.last.at - self.first.at
        if span <= 0:
            return float("nan")
        used = {k: self.last.cpu[k] - self.first.cpu[k] for k in self.last.cpu}
        return (used.pop("machine") - sum(used.values())) / span

    def cpu_per_100k(self, name: str) -> float:
        events = self.last.committed - self.first.committed
        if events <= 0:
            return float("nan")
        return (self.last.cpu[name] - self.first.cpu[name]) / events * 100_000
