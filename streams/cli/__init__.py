"""The `leadflow` command: worker, topics, rules, sample data, demo and contract tools."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from schemas.alert import SlaAlert
from schemas.explain import LeadExplanation
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.cli.errors import user_errors
from streams.core.durations import format_duration
from streams.core.explain import explain as explain_lead
from streams.core.explain import lead_id_problem
from streams.core.rules import load_rules
from streams.jobs.backtest import backtest_command
from streams.jobs.sample import simulate_sales
from streams.settings import Settings, load_settings

app = typer.Typer(
    help="leadflow: real-time lead scoring, MQL handoff and sales SLA watching on Kafka + Redis.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
topics_app = typer.Typer(help="Manage leadflow's Kafka topics.", no_args_is_help=True)
rules_app = typer.Typer(help="Check and inspect rules files.", no_args_is_help=True)
schemas_app = typer.Typer(
    help="The wire contract: JSON Schema and AsyncAPI files.", no_args_is_help=True
)
sample_app = typer.Typer(help="Synthetic engagement data.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(rules_app, name="rules")
app.add_typer(schemas_app, name="schemas")
app.add_typer(sample_app, name="sample")

console = Console(stderr=True)
out = Console()

BUNDLED_SAMPLE = files("streams").joinpath("data/engagement-sample.ndjson")


def _settings(**overrides: object) -> Settings:
    settings = load_settings(**overrides)
    load_rules(settings.rules)  # fail fast, naming the bad field
    return settings


@app.command()
def worker() -> None:
    """Run a scoring worker (configured by LEADFLOW_* environment variables)."""
    import faust

    from streams.bootstrap import build_worker, live_generation
    from streams.observability import configure_logging, log

    with user_errors():
        settings = _settings()
        rules = load_rules(settings.rules)
    configure_logging(settings.log_level, settings.log_format)
    log.info(
        "starting worker",
        kafka=settings.kafka_bootstrap,
        namespace=settings.namespace,
        engagement_topic=settings.engagement,
        rules=str(settings.rules),
        rules_version=rules.version,
        web=f"http://{settings.web_host}:{settings.web_port}",
    )
    generation, rules = asyncio.run(live_generation(settings, rules))
    built = build_worker(settings, rules, generation)
    faust.Worker(
        built.app, loglevel="WARNING", quiet=True, redirect_stdouts=False
    ).execute_from_commandline()


@app.command()
def collector() -> None:
    """Run the HTTP collector: POST /v1/events into the engagement topic (LEADFLOW_COLLECTOR_*)."""
    from streams.collector import check_collector_settings, run_collector
    from streams.observability import configure_logging

    with user_errors():
        settings = _settings()
        event_types = load_rules(settings.rules).event_types
        check_collector_settings(settings)
    configure_logging(settings.log_level, settings.log_format)
    run_collector(settings, event_types)


@topics_app.command("create")
def topics_create() -> None:
    """Create all topics idempotently with the configured partition count (default 8)."""
    from streams.kafka import create_topics, wait_for_kafka

    with user_errors():
        settings = load_settings()
        asyncio.run(wait_for_kafka(settings, within=60))
        outcomes = asyncio.run(create_topics(settings))
    for o in outcomes:
        state = "created" if o.created else "exists"
        out.print(f"{o.topic}: {state}, {o.partitions} partitions {o.note}".rstrip())


@rules_app.command("check")
def rules_check(
    path: Annotated[
        Path | None, typer.Argument(help="Rules file (default: LEADFLOW_RULES)")
    ] = None,
) -> None:
    """Validate a rules file and show what it does."""
    with user_errors():
        rules = load_rules(path or load_settings().rules)
    table = Table(title=f"rules {rules.version}")
    table.add_column("rule")
    table.add_column("points", justify="right")
    for name, rule in rules.engagement.items():
        cap = f" (cap {rule.cap_per_day:g}/day)" if rule.cap_per_day else ""
        table.add_row(escape(f"engagement: {name}{cap}"), f"{rule.points:+g}")
    for fit in rules.fit:
        table.add_row(escape(f"fit: {fit.describe()}"), f"{fit.points:+g}")
    out.print(table)
    out.print(
        f"MQL at score >= {rules.mql.threshold:g}"
        + (f", fit >= {rules.mql.min_fit:g}" if rules.mql.min_fit is not None else "")
        + (f", engagement >= {rules.mql.min_engagement:g}" if rules.mql.min_engagement else "")
        + (
            f"; engagement half-life {format_duration(rules.decay.half_life)}"
            if rules.decay
            else "; no decay"
        )
        + f"; first contact due {format_duration(rules.sla.mql_first_contact)} after handoff"
    )


@schemas_app.command("generate")
def schemas_generate(
    check: Annotated[bool, typer.Option(help="Fail if a checked-in file is stale")] = False,
) -> None:
    """Write schemas/json/*.json and schemas/asyncapi.yaml from the pydantic models."""
    from schemas.generate import write_all

    stale = write_all(check=check)
    if check and stale:
        console.print(f"[red]stale:[/] {', '.join(stale)}; run `leadflow schemas generate`")
        raise typer.Exit(1)
    out.print("schemas are current" if check else "schemas written")


@sample_app.command("generate")
def sample_generate(
    output: Annotated[Path, typer.Option("--out", help="NDJSON file to write")],
    leads: int = 200,
    events: int = 2000,
    seed: int = 7,
    invalid_every: Annotated[int, typer.Option(help="A broken record after every N")] = 100,
    duplicate_every: Annotated[int, typer.Option(help="Re-send every Nth event")] = 50,
) -> None:
    """Write a deterministic, realistic engagement history (with some bad records)."""
    from streams.jobs.sample import generate

    records = generate(
        leads, events, seed, invalid_every=invalid_every, duplicate_every=duplicate_every
    )
    with output.open("wb") as fh:
        for r in records:
            fh.write(r.value + b"\n")
    out.print(f"wrote {len(records)} records for {leads} leads to {output}")


def _key_of(line: bytes) -> bytes | None:
    try:
        lead = orjson.loads(line).get("lead_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return lead.encode() if isinstance(lead, str) and lead.strip() else None


async def _produce(settings: Settings, lines: list[bytes], rate: float) -> int:
    from aiokafka import AIOKafkaProducer

    from streams.kafka import client_options

    producer = AIOKafkaProducer(**client_options(settings), acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        with Progress(console=console, transient=False) as progress:
            task = progress.add_task(f"producing to {settings.engagement}", total=len(lines))
            started = time.monotonic()
            pending = []
            for line in lines:
                pending.append(await producer.send(settings.engagement, line, key=_key_of(line)))
                sent += 1
                progress.advance(task)
                if rate > 0:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def _read_lines(path: Path) -> list[bytes]:
    return [ln for ln in path.read_bytes().splitlines() if ln.strip()]


@app.command()
def produce(
    path: Annotated[Path, typer.Argument(help="NDJSON file of engagement events")],
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible)")] = 0,
) -> None:
    """Play an NDJSON file into the engagement topic, keyed by lead_id (bad lines too)."""
    with user_errors():
        settings = load_settings()
        sent = asyncio.run(_produce(settings, _read_lines(path), rate))
    out.print(f"sent {sent} records to {settings.engagement}")


@app.command(name="import")
def import_command(
    path: Annotated[
        Path,
        typer.Argument(help="CSV or NDJSON export", exists=True, dir_okay=False, readable=True),
    ],
    profile: Annotated[
        str | None,
        typer.Option(help="marketo, hubspot or generic (the default with --mapping)"),
    ] = None,
    mapping: Annotated[
        Path | None,
        typer.Option(help="YAML mapping: a generic export's columns, or overrides for a profile"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Map and check every row; produce nothing")
    ] = False,
    timezone: Annotated[
        str | None,
        typer.Option(help="Time zone of times without an offset (default: the mapping's, or UTC)"),
    ] = None,
) -> None:
    """Stream a Marketo, HubSpot or other MA export into the engagement topic, keyed by lead.

    Rejected rows go to FILE.rejected.csv with the reason and line.
    Event ids are stable: importing the same activities again counts them once.
    See docs/importer.md.
    """
    from streams.importer import run_command

    with user_errors():
        settings = _settings()
        known_types = load_rules(settings.rules).event_types
    code = run_command(
        path,
        profile=profile,
        mapping=mapping,
        dry_run=dry_run,
        timezone=timezone,
        settings=settings,
        known_types=known_types,
        console=console,
        out=out,
    )
    raise typer.Exit(code)


def _print_handoff(h: MqlHandoff) -> None:
    reasons = escape("; ".join(f"{r.rule} {r.points:+.0f}" for r in h.reasons[:3]))
    out.print(
        f"[bold green]MQL[/] {h.lead_id:<16} score {h.score:6.1f} "
        f"(fit {h.fit_score:g} + engagement {h.engagement_score:.1f})  "
        f"contact by {h.first_contact_due_at:%Y-%m-%d %H:%M:%S}  [dim]{reasons}[/]"
    )


async def _watch(
    settings: Settings, topic: str, idle: float, limit: int, show: bool
) -> list[bytes]:
    from aiokafka import AIOKafkaConsumer

    from streams.kafka import client_options

    consumer = AIOKafkaConsumer(
        topic, **client_options(settings), auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[bytes] = []
    last = time.monotonic()
    try:
        while time.monotonic() - last < idle and (limit <= 0 or len(seen) < limit):
            batch = await consumer.getmany(timeout_ms=250)
            for records in batch.values():
                for r in records:
                    seen.append(r.value)
                    last = time.monotonic()
                    if show:
                        _print_handoff(MqlHandoff.model_validate_json(r.value))
    finally:
        await consumer.stop()
    return seen


@app.command()
def handoffs(
    idle: Annotated[
        float, typer.Option(help="Stop after this many seconds without a new one")
    ] = 5.0,
    limit: Annotated[int, typer.Option(help="Stop after this many (0 = no limit)")] = 0,
) -> None:
    """Show MQL handoffs on the handoff topic, from the beginning."""
    with user_errors():
        settings = load_settings()
        seen = asyncio.run(_watch(settings, settings.handoff, idle, limit, show=True))
    out.print(f"{len(seen)} handoffs on {settings.handoff}")


def _explain_points(value: float) -> str:
    return f"{value:+.2f}".rstrip("0").rstrip(".")


def _explain_time(at: datetime | None) -> str:
    return "-" if at is None else f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"


def _explain_span(start: datetime, end: datetime) -> str:
    return format_duration(end.replace(microsecond=0) - start.replace(microsecond=0))


def _explain_table(title: str, columns: list[str], rows: list[list[str]], empty: str) -> None:
    if not rows:
        out.print(f"[bold]{title}[/]: [dim]{empty}[/]")
        return
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="right" if column in ("points", "events") else "left")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _print_explanation(e: LeadExplanation) -> None:
    to_mql = "" if e.points_to_mql is None else f", {e.points_to_mql:g} points to MQL"
    blocked = f" [yellow]({escape('; '.join(e.mql_blockers))})[/]" if e.mql_blockers else ""
    out.print(
        f"[bold]{escape(e.lead_id)}[/]  stage [bold cyan]{e.stage}[/]  score [bold]{e.score:g}[/] "
        f"vs threshold {e.threshold:g}{to_mql}{blocked}"
    )
    out.print(
        f"[dim]fit {e.fit_score:g} + engagement {e.engagement_score:g} "
        f"(as of {_explain_time(e.engagement_as_of)}); rules {e.rules_version}; "
        f"handoff {e.handoff_id or '-'}; owner {escape(e.owner or '-')}"
        + (f"; missing BANT {', '.join(e.missing_bant)}" if e.missing_bant else "")
        + "[/]"
    )
    _explain_table(
        "reasons",
        ["kind", "rule", "points", "events"],
        [
            [
                r.kind,
                escape(r.rule),
                _explain_points(r.points),
                "" if r.events is None else str(r.events),
            ]
            for r in e.reasons
        ],
        "nothing scores yet",
    )
    _explain_table(
        "recent events (points as counted, before decay)",
        ["occurred_at", "type", "event_id", "points"],
        [
            [
                _explain_time(ev.occurred_at),
                escape(ev.type),
                escape(ev.event_id),
                _explain_points(ev.points),
            ]
            for ev in e.recent_events
        ],
        "none",
    )
    rows = []
    for d in e.open_deadlines:
        if d.overdue:
            state = f"[bold red]OVERDUE[/] by {_explain_span(d.due_at, e.now)}"
        else:
            state = f"open, due in {_explain_span(e.now, d.due_at)}"
        rows.append([d.kind, d.handoff_id, _explain_time(d.due_at), escape(d.owner or "-"), state])
    for c in e.clocks:
        if c.status == "open":
            continue
        state = f"{c.status} {_explain_time(c.ended_at)}"
        if c.late_action_at is not None:
            state += f", late action {_explain_time(c.late_action_at)}"
        rows.append([c.kind, c.handoff_id, _explain_time(c.due_at), escape(c.owner or "-"), state])
    _explain_table(
        f"deadlines at {_explain_time(e.now)} (open first)",
        ["kind", "handoff", "due", "owner", "status"],
        rows,
        "none",
    )
    _explain_table(
        "stage history",
        ["at", "from", "to", "reason"],
        [
            [_explain_time(j.at), j.from_stage, j.to_stage, escape(j.reason or "")]
            for j in e.journey
        ],
        "no stage changes yet",
    )


async def _explain_fetch(settings: Settings, lead_id: str) -> LeadExplanation | None:
    """Read the lead from the live key space; explain it under that key space's rules."""
    from streams.core.rules import parse_rules
    from streams.store import LeadStore

    rules = load_rules(settings.rules)
    store = LeadStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        source_topic=settings.engagement,
        dedupe_ttl_seconds=settings.dedupe_ttl_days * 86400,
    )
    try:
        live = await store.active_generation()
        state = await store.at_generation(live.number).read_lead(lead_id)
    finally:
        await store.close()
    if state is None:
        return None
    if live.rules is not None and live.rules_version not in (None, rules.version):
        console.print(
            f"[yellow]note:[/] explained under the live rules {live.rules_version}, "
            f"not the rules file {escape(str(settings.rules))} ({rules.version})"
        )
        rules = parse_rules(live.rules, origin="active generation")
    return explain_lead(state, rules, datetime.now(UTC))


@app.command("explain")
def explain_command(
    lead_id: Annotated[str, typer.Argument(help="The lead to explain")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the explanation as JSON")] = False,
) -> None:
    """Why a lead has its score: every contribution, recent events, deadlines, stage history.

    Reads the lead straight from Redis (LEADFLOW_REDIS_URL, LEADFLOW_NAMESPACE) and explains it
    under the rules of the live lead states (those of LEADFLOW_RULES unless a rescore changed
    them); no worker needs to run.
    """
    from redis.exceptions import RedisError

    with user_errors():
        settings = _settings()
    problem = lead_id_problem(lead_id)
    if problem is not None:
        console.print(f"[bold red]error:[/] {problem}")
        raise typer.Exit(2)
    lead_id = lead_id.strip()
    try:
        with user_errors():
            explanation = asyncio.run(_explain_fetch(settings, lead_id))
    except (RedisError, OSError) as exc:
        failure = f"cannot read Redis (LEADFLOW_REDIS_URL): {exc}"
        console.print(f"[bold red]error:[/] {escape(failure)}")
        raise typer.Exit(3) from None
    if explanation is None:
        namespace = settings.namespace or "(default, no namespace)"
        console.print(
            f"[bold red]error:[/] lead {escape(repr(lead_id))} is not known in namespace "
            f"{escape(namespace)}; set LEADFLOW_NAMESPACE to the namespace of the worker "
            "that scored it"
        )
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(explanation.model_dump_json(indent=2) + "\n")
    else:
        _print_explanation(explanation)


def _wait_http(url: str, within: float) -> dict[str, object]:
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


DEMO_RULES = Path(__file__).resolve().parents[2] / "rules" / "demo.yaml"


class DemoRun:
    """The demo's view of the pipeline: plays events, plays sales, prints what comes out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.counts: Counter[str] = Counter()
        self.missing: Counter[str] = Counter()
        self.last_output = time.monotonic()
        self.pending_sales: list[asyncio.Task[None]] = []

    def show(self, topic: str, value: bytes, producer: Any) -> None:
        s = self.settings
        self.last_output = time.monotonic()
        if topic == s.handoff:
            h = MqlHandoff.model_validate_json(value)
            self.counts["handoffs"] += 1
            _print_handoff(h)
            plan = simulate_sales(h.lead_id, h.handoff_id)
            self.pending_sales.append(asyncio.create_task(self._play_sales(producer, plan)))
        elif topic == s.lifecycle:
            t = LifecycleTransition.model_validate_json(value)
            self.counts[t.to_stage] += 1
            self.missing.update(t.missing_bant)
            if t.to_stage != "mql":
                why = f"  [dim]{escape(t.reason or '')}[/]" if t.reason else ""
                stage = t.to_stage.upper()
                move = f"{t.from_stage} -> {t.to_stage}"
                out.print(f"[bold cyan]{stage:>4}[/] {t.lead_id:<16} {move}{why}")
        elif topic == s.alerts:
            a = SlaAlert.model_validate_json(value)
            self.counts[f"alert_{a.severity}"] += 1
            out.print(
                f"[bold red]SLA {a.severity.upper()}[/] {a.lead_id:<16} {a.kind} was due "
                f"{a.due_at:%H:%M:%S}, owner {a.owner or 'unassigned'}"
            )
        elif topic == s.deadletter:
            self.counts["deadletters"] += 1

    async def _play_sales(self, producer: Any, plan: list[tuple[float, dict[str, object]]]) -> None:
        started = time.monotonic()
        for delay, activity in plan:
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))
            body = {**activity, "occurred_at": datetime.now(UTC).isoformat()}
            key = str(activity["lead_id"]).encode()
            await producer.send_and_wait(self.settings.activity, orjson.dumps(body), key=key)
            self.counts["activities"] += 1

    async def run(self, lines: list[bytes], rate: float, quiet_for: float) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from streams.kafka import client_options

        s = self.settings
        options = client_options(s)
        producer = AIOKafkaProducer(**options, acks="all", linger_ms=5)
        consumer = AIOKafkaConsumer(
            s.handoff,
            s.lifecycle,
            s.alerts,
            s.deadletter,
            **options,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await producer.start()
        await consumer.start()
        try:
            playing = asyncio.create_task(_produce(s, _at_play_time(lines), rate))
            while not playing.done() or time.monotonic() - self.last_output < quiet_for:
                batch = await consumer.getmany(timeout_ms=250)
                for tp, records in batch.items():
                    for r in records:
                        self.show(tp.topic, r.value, producer)
            self.counts["events"] = await playing
            await asyncio.gather(*self.pending_sales)
        finally:
            await consumer.stop()
            await producer.stop()


def _at_play_time(lines: list[bytes]) -> list[bytes]:
    """Stamp each sample event with the time it is played, so the SLA clocks run in real time."""
    now = datetime.now(UTC).isoformat()
    stamped = []
    for line in lines:
        try:
            body = orjson.loads(line)
        except orjson.JSONDecodeError:
            stamped.append(line)  # a deliberately broken sample record: play it as it is
            continue
        if (
            isinstance(body, dict)
            and "occurred_at" in body
            and isinstance(body["occurred_at"], str)
        ):
            try:
                datetime.fromisoformat(body["occurred_at"])
                body["occurred_at"] = now
            except ValueError:
                pass
        stamped.append(orjson.dumps(body))
    return stamped


@app.command()
def demo(
    sample: Annotated[Path | None, typer.Option(help="NDJSON events (default: bundled)")] = None,
    rate: Annotated[float, typer.Option(help="Events per second to play")] = 400.0,
) -> None:
    """Create topics, start a worker, play sample events and simulated sales, show what happens.

    Events are stamped with the time they are played and the demo rules (rules/demo.yaml, unless
    LEADFLOW_RULES is set) use SLA windows of seconds, so deadlines are met or breached while
    you watch.
    """
    from streams.kafka import create_topics, wait_for_kafka

    namespace = os.environ.get("LEADFLOW_NAMESPACE") or f"demo-{datetime.now(UTC):%Y%m%d%H%M%S}"
    rules_path = Path(os.environ.get("LEADFLOW_RULES") or DEMO_RULES)
    with user_errors():
        settings = _settings(namespace=namespace, rules=rules_path)
        rules = load_rules(settings.rules)
        asyncio.run(wait_for_kafka(settings, within=60))
        asyncio.run(create_topics(settings))
    lines = _read_lines(sample) if sample else BUNDLED_SAMPLE.read_bytes().splitlines()
    console.print(
        f"[bold]leadflow demo[/]: namespace [cyan]{namespace}[/], {len(lines)} sample events, "
        f"rules {settings.rules} (first contact due "
        f"{format_duration(rules.sla.mql_first_contact)} after handoff)"
    )
    env = {
        **os.environ,
        "LEADFLOW_NAMESPACE": namespace,
        "LEADFLOW_RULES": str(rules_path),
        "LEADFLOW_LOG_FORMAT": "console",
    }
    log_path = Path(os.environ.get("LEADFLOW_DEMO_LOG", f"/tmp/leadflow-{namespace}.log"))
    run = DemoRun(settings)
    quiet_for = rules.sla.mql_first_contact.total_seconds() + 8
    with log_path.open("wb") as worker_log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=env,
            stdout=worker_log,
            stderr=worker_log,
        )
        try:
            with user_errors():
                health = _wait_http(f"http://{settings.web_host}:{settings.web_port}/health", 90)
            console.print(
                f"worker ready (log: {log_path}), partitions {health['assigned_partitions']}"
            )
            asyncio.run(run.run(lines, rate, quiet_for))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    c = run.counts
    missing = ", ".join(f"{k} {v}" for k, v in run.missing.most_common()) or "none"
    out.print(
        f"\n[bold]{c['events']}[/] events played, [bold green]{c['handoffs']}[/] leads handed "
        f"off to sales, {c['activities']} sales activities simulated.\n"
        f"[bold]{c['sql']}[/] SQL, [bold]{c['nurture']}[/] back to nurture "
        f"(missing BANT: {missing}), {c['disqualified']} disqualified; "
        f"[bold red]{c['alert_breach']}[/] SLA breaches; [bold yellow]{c['deadletters']}[/] bad "
        f"records on {settings.deadletter} (reason in headers)."
    )


@app.command("report")
def report_command(
    days: Annotated[
        int | None, typer.Option(help="Days ending today (reporting time zone) \\[default: 28]")
    ] = None,
    since: Annotated[
        datetime | None, typer.Option(formats=["%Y-%m-%d"], help="First day, YYYY-MM-DD")
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], help="Last day, included \\[default: today]"),
    ] = None,
    period: Annotated[
        str, typer.Option(metavar="day|week|month", help="One row per day, ISO week or month")
    ] = "week",
    charts: Annotated[
        Path | None, typer.Option(help="Write funnel.png and trend.png to this directory")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary")] = (
        False
    ),
) -> None:
    """Funnel KPIs from Redis: conversion, SLA compliance, time to contact (docs/kpis.md)."""
    from streams.jobs.report import run_report

    with user_errors():
        settings = _settings()
        run_report(
            settings,
            load_rules(settings.rules),
            out=out,
            console=console,
            days=days,
            since=since.date() if since else None,
            until=until.date() if until else None,
            period=period,
            charts=charts,
            as_json=as_json,
        )


@app.command()
def rescore(
    rules_path: Annotated[Path, typer.Option("--rules", help="The new rules file")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation")] = False,
    keep_previous: Annotated[
        bool, typer.Option(help="Keep the previous key space in Redis (for inspection)")
    ] = False,
) -> None:
    """Rebuild every lead under new rules from the engagement log and switch over atomically.

    Workers keep running; they pause for the final catch-up, then continue on the new key space
    with the new rules. Leads already handed off keep their stage and handoff; leads that
    qualify only under the new rules are handed off after the switch.
    """
    from streams.jobs.rescore import RescoreError, run_rescore

    with user_errors():
        settings = load_settings()
        rules = load_rules(rules_path)
    if not yes:
        typer.confirm(
            f"Rebuild every lead in namespace '{settings.namespace}' under rules {rules.version} "
            f"from {settings.engagement} and switch the live workers to it?",
            abort=True,
        )
    with Progress(console=console) as progress:
        task = progress.add_task(f"replaying {settings.engagement}", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            summary = run_rescore(settings, rules, advance, keep_previous)
        except RescoreError as exc:
            console.print(f"[bold red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
    out.print(
        f"key space {summary.live_generation} -> {summary.new_generation}, rules "
        f"{summary.old_rules_version} -> {summary.new_rules_version}: {summary.records} records "
        f"replayed ({summary.invalid} invalid skipped, {summary.catch_up_records} caught up), "
        f"{summary.leads_rebuilt} leads rebuilt, {summary.leads_kept} kept as they were, "
        f"{summary.new_handoffs} new MQLs handed off, in {summary.seconds:.1f}s"
    )


app.command("backtest")(backtest_command)


def main() -> None:
    app()
