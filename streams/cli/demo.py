"""`leadflow demo`: topics, a worker, sample events and simulated sales, and what comes out.

Events are stamped with the time they are played, so SLA clocks of seconds (rules/demo.yaml)
are met or breached while you watch.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import orjson
import typer
from rich.markup import escape

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.cli.errors import require_services, user_errors
from streams.cli.handoffs import print_handoff_line
from streams.cli.output import console, out
from streams.cli.produce import play_events, read_lines
from streams.core.durations import format_duration
from streams.core.rules import Rules, load_rules
from streams.jobs.sample import simulate_sales
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.kafka import Producer

BUNDLED_SAMPLE = files("streams").joinpath("data/engagement-sample.ndjson")
DEMO_RULES = Path(__file__).resolve().parents[2] / "rules" / "demo.yaml"
# How long the worker may take to join its consumer group and take partitions.
WORKER_READY_WITHIN = 90.0


def demo_command(
    sample: Annotated[
        Path | None,
        typer.Option(help="NDJSON events (default: bundled)", exists=True, dir_okay=False),
    ] = None,
    rate: Annotated[float, typer.Option(help="Events per second to play")] = 400.0,
) -> None:
    """Create topics, start a worker, play sample events and simulated sales, show what happens.

    Events are stamped with the time they are played and the demo rules (rules/demo.yaml, unless
    LEADFLOW_RULES is set) use SLA windows of seconds, so deadlines are met or breached while
    you watch.
    """
    namespace = os.environ.get("LEADFLOW_NAMESPACE") or f"demo-{datetime.now(UTC):%Y%m%d%H%M%S}"
    rules_path = Path(os.environ.get("LEADFLOW_RULES") or DEMO_RULES)
    settings, rules = _prepare_kafka(namespace, rules_path)
    lines = read_lines(sample) if sample else BUNDLED_SAMPLE.read_bytes().splitlines()
    console.print(
        f"[bold]leadflow demo[/]: namespace [cyan]{namespace}[/], {len(lines)} sample events, "
        f"rules {settings.rules} (first contact due "
        f"{format_duration(rules.sla.mql_first_contact)} after handoff)"
    )
    log_path = Path(os.environ.get("LEADFLOW_DEMO_LOG", f"/tmp/leadflow-{namespace}.log"))
    run = DemoRun(settings)
    # Play on until no output came for one first-contact window (and then some), so the
    # breaches of the last handoffs are shown too.
    quiet_for = rules.sla.mql_first_contact.total_seconds() + 8
    with worker_process(settings, namespace, rules_path, log_path) as health:
        console.print(f"worker ready (log: {log_path}), partitions {health['assigned_partitions']}")
        asyncio.run(run.run(lines, rate, quiet_for))
    out.print(run.summary())


def _prepare_kafka(namespace: str, rules_path: Path) -> tuple[Settings, Rules]:
    """The demo's settings and rules, once Kafka answers and the topics exist."""
    from streams.bootstrap import checked_settings
    from streams.kafka import create_topics

    with user_errors():
        settings = checked_settings(namespace=namespace, rules=rules_path)
        rules = load_rules(settings.rules)
        require_services(settings, kafka=True, redis=True, service=True)
        asyncio.run(create_topics(settings))
    return settings, rules


@contextmanager
def worker_process(
    settings: Settings, namespace: str, rules_path: Path, log_path: Path
) -> Iterator[dict[str, object]]:
    """A worker in a child process (logging to `log_path`), ready to score; stopped after."""
    env = {
        **os.environ,
        "LEADFLOW_NAMESPACE": namespace,
        "LEADFLOW_RULES": str(rules_path),
        "LEADFLOW_LOG_FORMAT": "console",
    }
    health_url = f"http://{settings.web_host}:{settings.web_port}/health"
    with log_path.open("wb") as worker_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=worker_log,
            stderr=worker_log,
        )
        try:
            with user_errors():
                health = wait_until_ready(health_url, WORKER_READY_WITHIN)
            yield health
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def wait_until_ready(url: str, within: float) -> dict[str, object]:
    """The worker's health once it has partitions assigned; TimeoutError after `within`."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                body = orjson.loads(resp.read())
                if body.get("assigned_partitions"):
                    return dict(body)
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"worker at {url} was not ready within {within:.0f}s")


def at_play_time(lines: list[bytes]) -> list[bytes]:
    """Stamp each sample event with the time it is played, so the SLA clocks run in real time."""
    now = datetime.now(UTC).isoformat()
    stamped = []
    for line in lines:
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            stamped.append(line)  # a deliberately broken sample record: play it as it is
            continue
        if _has_valid_time(body):
            body["occurred_at"] = now
        stamped.append(orjson.dumps(body))
    return stamped


def _has_valid_time(body: object) -> bool:
    # An event with a broken occurred_at keeps it, so it is dead-lettered as in the sample.
    if not isinstance(body, dict) or not isinstance(body.get("occurred_at"), str):
        return False
    try:
        datetime.fromisoformat(body["occurred_at"])
    except ValueError:
        return False
    return True


class DemoRun:
    """The demo's view of the pipeline: plays events, plays sales, prints what comes out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self.missing: Counter[str] = Counter()
        self.last_output = time.monotonic()
        self.pending_sales: list[asyncio.Task[None]] = []

    async def run(self, lines: list[bytes], rate: float, quiet_for: float) -> None:
        """Play the events and show the outputs until the events are played and no output
        came for `quiet_for` seconds; then wait for the simulated sales still playing."""
        from aiokafka import AIOKafkaConsumer

        from streams.kafka import Producer, client_options

        s = self.settings
        consumer = AIOKafkaConsumer(
            s.handoff,
            s.lifecycle,
            s.alerts,
            s.deadletter,
            **client_options(s),
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        async with Producer(s, client_id="leadflow-demo") as producer:
            await consumer.start()
            try:
                playing = asyncio.create_task(play_events(s, at_play_time(lines), rate))
                while not playing.done() or time.monotonic() - self.last_output < quiet_for:
                    batch = await consumer.getmany(timeout_ms=250)
                    for tp, records in batch.items():
                        for r in records:
                            self.show(tp.topic, r.value, producer)
                self.counts["events"] = await playing
                await asyncio.gather(*self.pending_sales)
            finally:
                await consumer.stop()

    def show(self, topic: str, value: bytes, producer: Producer) -> None:
        """Print one output record and count it; a handoff starts its simulated sales."""
        s = self.settings
        self.last_output = time.monotonic()
        if topic == s.handoff:
            self._handoff(MqlHandoff.model_validate_json(value), producer)
        elif topic == s.lifecycle:
            self._stage_change(LifecycleTransition.model_validate_json(value))
        elif topic == s.alerts:
            self._alert(SlaAlert.model_validate_json(value))
        elif topic == s.deadletter:
            self.counts["deadletters"] += 1

    def summary(self) -> str:
        """What happened, in numbers: played, handed off, qualified, breached, rejected."""
        c = self.counts
        missing = ", ".join(f"{k} {v}" for k, v in self.missing.most_common()) or "none"
        return (
            f"\n[bold]{c['events']}[/] events played, [bold green]{c['handoffs']}[/] leads handed "
            f"off to sales, {c['activities']} sales activities simulated.\n"
            f"[bold]{c['sql']}[/] SQL, [bold]{c['nurture']}[/] back to nurture "
            f"(missing BANT: {missing}), {c['disqualified']} disqualified; "
            f"[bold red]{c['alert_breach']}[/] SLA breaches; [bold yellow]{c['deadletters']}[/] "
            f"bad records on {self.settings.deadletter} (reason in headers)."
        )

    def _handoff(self, h: MqlHandoff, producer: Producer) -> None:
        self.counts["handoffs"] += 1
        print_handoff_line(h)
        plan = simulate_sales(h.lead_id, h.handoff_id, h.owner)
        self.pending_sales.append(asyncio.create_task(self._play_sales(producer, plan)))

    def _stage_change(self, t: LifecycleTransition) -> None:
        self.counts[t.to_stage] += 1
        self.missing.update(t.missing_bant)
        if t.to_stage != "mql":  # the handoff line already showed it
            why = f"  [dim]{escape(t.reason or '')}[/]" if t.reason else ""
            stage = t.to_stage.upper()
            move = f"{t.from_stage} -> {t.to_stage}"
            out.print(f"[bold cyan]{stage:>4}[/] {t.lead_id:<16} {move}{why}")

    def _alert(self, a: SlaAlert) -> None:
        self.counts[f"alert_{a.severity}"] += 1
        out.print(
            f"[bold red]SLA {a.severity.upper()}[/] {a.lead_id:<16} {a.kind} was due "
            f"{a.due_at:%H:%M:%S}, owner {a.owner or 'unassigned'}"
        )

    async def _play_sales(
        self, producer: Producer, plan: list[tuple[float, dict[str, object]]]
    ) -> None:
        started = time.monotonic()
        for delay, activity in plan:
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
            body = {**activity, "occurred_at": datetime.now(UTC).isoformat()}
            key = str(activity["lead_id"]).encode()
            await (await producer.send(self.settings.activity, orjson.dumps(body), key=key))
            self.counts["activities"] += 1
