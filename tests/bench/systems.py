"""The systems `ops/bench compare` runs, each as its own process with its own consumer group.

- leadflow: a real `leadflow worker` (tests.harness.WorkerProcess) with the bench rules; its
  engagement group is settings.engagement_group, its output the namespace's handoff topic.
- quix: tests/bench/quix_app.py, Quix Streams with RocksDB state.
- faust-naive: tests/bench/faust_naive.py, one Redis Lua call per event.
- faust-parse: the same Faust app that only parses JSON (no output).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

from streams.settings import Settings
from tests.bench.backlog import BENCH_RULES
from tests.harness import ROOT, WorkerProcess


class Running(Protocol):
    pid: int

    def alive(self) -> bool: ...
    def stop(self) -> None: ...
    def tail(self) -> str: ...


@dataclass(frozen=True)
class System:
    name: str
    label: str
    redis_backed: bool
    # None: the system emits nothing (the parse-only floor).
    output_suffix: str | None

    def group(self, settings: Settings) -> str:
        if self.name == "leadflow":
            return settings.engagement_group
        return settings.topic(f"bench-{self.name}")

    def output(self, settings: Settings) -> str | None:
        if self.name == "leadflow":
            return settings.handoff
        return settings.topic(self.output_suffix) if self.output_suffix else None

    def redis_prefix(self, settings: Settings) -> str:
        return f"{settings.namespace}:{self.name}:"

    def start(self, settings: Settings, workdir: Path) -> Running:
        log = workdir / f"{self.name}.log"
        if self.name == "leadflow":
            return LeadflowRun.start(settings, log)
        module = "tests.bench.quix_app" if self.name == "quix" else "tests.bench.faust_naive"
        args = [] if self.name == "quix" else ["worker", "-l", "warn"]
        env = {
            "BENCH_BROKER": settings.kafka_bootstrap,
            "BENCH_INPUT": settings.engagement,
            "BENCH_OUTPUT": self.output(settings) or settings.topic("bench-unused"),
            "BENCH_GROUP": self.group(settings),
            "BENCH_RULES": str(BENCH_RULES),
            "BENCH_STATE_DIR": tempfile.mkdtemp(prefix=f"{self.name}-", dir=workdir),
            "BENCH_REDIS_URL": settings.redis_url.get_secret_value(),
            "BENCH_REDIS_PREFIX": self.redis_prefix(settings),
            "BENCH_FAUST_MODE": "score" if self.name == "faust-naive" else "parse",
        }
        return PeerRun.start([sys.executable, "-m", module, *args], env, log)


SYSTEMS = {
    s.name: s
    for s in (
        System("leadflow", "leadflow worker", True, None),
        System("quix", "Quix Streams, RocksDB", False, "bench-quix-handoff"),
        System("faust-naive", "Faust naive, Lua/event", True, "bench-faust-handoff"),
        System("faust-parse", "Faust, parse only", False, None),
    )
}


@dataclass
class PeerRun:
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, argv: list[str], env: dict[str, str], log: Path) -> PeerRun:
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv, env={**os.environ, **env}, cwd=ROOT, stdout=out, stderr=out
            )
        return cls(proc, log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@dataclass
class LeadflowRun:
    worker: WorkerProcess

    @classmethod
    def start(cls, settings: Settings, log: Path) -> LeadflowRun:
        env = {
            "LEADFLOW_LOG_LEVEL": "WARNING",
            # WorkerProcess refreshes KPI gauges every second for the tests; use the default.
            "LEADFLOW_KPI_REFRESH_INTERVAL": "30",
        }
        return cls(WorkerProcess(settings, log, env).start())

    @property
    def pid(self) -> int:
        assert self.worker.proc is not None
        return self.worker.proc.pid

    def alive(self) -> bool:
        return self.worker.proc is not None and self.worker.proc.poll() is None

    def stop(self) -> None:
        self.worker.stop()

    def tail(self) -> str:
        return self.worker.tail(30)


def handoff_leads(values: list[bytes | None]) -> list[str]:
    """Lead ids of the handoff records on an output topic (leadflow's or a peer's)."""
    return [str(orjson.loads(v)["lead_id"]) for v in values if v]
