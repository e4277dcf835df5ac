"""The fault matrix's shared rig and phases (issue 10, item 2), for the Redis and the broker
scenarios (tests/chaos/test_matrix_redis.py, tests/chaos/test_matrix_broker.py).

A `Rig` is LEADFLOW_CHAOS_WORKERS real `leadflow worker` processes in one group, on a private
redis-server or the shared Redis (own namespace either way), and on a private broker or the
shared one, optionally behind a tests/faultproxy.py proxy. A scenario plays two phases with its
fault (a `Fault`) injected in each:

1. **Engagement stream**: `size.events` events for a tenth as many leads, with source
   duplicates and broken records, stamped 40-26 days ago (so their first-contact deadlines are
   past the backfill grace: recorded as expired, no alert). Two thirds are produced, the fault
   hits once a third is scored (so batches are in flight), the last third follows. Then: every
   lead in Redis equals the core's fold field for field (events counted, dedupe, caps, stage),
   scores, stages and handoffs equal the independent reference model, every expected
   `handoff_id` is on the topic and no other, every broken record is dead-lettered once, the
   outbox is empty.
2. **Sales activity and deadlines**: `size.sales_leads` fresh leads qualify now; sales contacts,
   BANTs (pass and fail), disqualifies or ignores them (harness.sales_plan); once the activity
   is applied the fault hits again while deadlines come due. Then: exactly one alert per missed
   deadline (a sentinel lead's later alert shows no duplicate is still on the way), none for
   the others; the KPI counters in Redis equal counts computed here from what was sent; the KPI
   gauges and the lifecycle topic agree.

Throughout, the workers must recover by themselves: the same processes at the end, /health 200,
no "Crashed reason" in their logs.

Sizes: LEADFLOW_CHAOS_EVENTS (3000), LEADFLOW_CHAOS_RUNS (1: each scenario is parametrized over
that many runs with different seeds, marked `matrix`), LEADFLOW_CHAOS_WORKERS (2). `runs()` adds
one `short` run (SHORT: a few hundred events) marked `chaos`, which the default suite selects.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord, generate
from streams.settings import Settings
from tests.faultproxy import FaultProxy
from tests.harness import (
    Consumed,
    WorkerProcess,
    consumer_caught_up,
    eventually,
    produce,
    qualifying,
    read_topic,
    sales_plan,
    split_attribution,
    wait_for,
    wait_for_handoffs,
    whole_credits,
)
from tests.oracle import comparable, expected_outcome, reference_disagreements
from tests.outages import PrivateKafka, PrivateRedis

EVENTS = int(os.environ.get("LEADFLOW_CHAOS_EVENTS", "3000"))
RUNS = int(os.environ.get("LEADFLOW_CHAOS_RUNS", "1"))
WORKERS = int(os.environ.get("LEADFLOW_CHAOS_WORKERS", "2"))


@dataclass(frozen=True)
class Size:
    """One run's size and seed."""

    events: int
    sales_leads: int
    seed: int


def runs(base_seed: int, short: bool = False) -> list[Any]:
    """The parametrization of a scenario: LEADFLOW_CHAOS_RUNS runs of LEADFLOW_CHAOS_EVENTS
    marked `matrix` (ops/chaos matrix), and with `short` one run of 300 events and 10 sales
    leads marked `chaos`, so the default suite plays the same scenario small."""
    params = [
        pytest.param(Size(EVENTS, 40, base_seed + i), id=f"run{i}", marks=pytest.mark.matrix)
        for i in range(RUNS)
    ]
    if short:
        params.append(
            pytest.param(Size(300, 10, base_seed + 999), id="short", marks=pytest.mark.chaos)
        )
    return params


@dataclass
class Rig:
    direct: Settings  # this test's own reads and writes: Redis and Kafka themselves
    via: Settings  # what the workers get (through the proxy in the proxy scenarios)
    tmp: Path
    redis: PrivateRedis | None = None  # None: the shared Redis
    kafka: PrivateKafka | None = None  # None: the shared broker
    proxy: FaultProxy | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    stats: dict[str, float | int] = field(default_factory=dict)


MakeRig = Callable[..., Awaitable[Rig]]  # the make_rig fixture (tests/chaos/conftest.py)

# A fault: (the rig, what to do while it lasts or right after it) -> once it is over.
Fault = Callable[[Rig, Callable[[], Awaitable[None]]], Awaitable[None]]


async def nothing() -> None:
    return None


# -- observing the workers ------------------------------------------------------------------


def metric_sum(worker: WorkerProcess, name: str) -> float:
    """A counter summed over its labels (0 when the worker does not answer)."""
    try:
        text = worker.metrics()
    except OSError:
        return 0.0
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


def record_counters(rig: Rig) -> None:
    """What the workers went through, summed over workers (for the report)."""
    for key, name in (
        ("retries", "leadflow_retries_total"),
        ("resyncs", "leadflow_offset_resyncs_total"),
        ("skipped_ticks", "leadflow_background_failures_total"),
    ):
        rig.stats[key] = int(sum(metric_sum(w, name) for w in rig.workers))


def status(worker: WorkerProcess) -> int | None:
    """/health's HTTP status (503 included); None when the worker does not answer."""
    try:
        with urllib.request.urlopen(f"{worker.url}/health", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def assert_alive(rig: Rig) -> None:
    for w in rig.workers:
        assert w.proc is not None
        if w.proc.poll() is not None:
            raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.tail(60)}")


async def all_workers(rig: Rig, want: int, within: float, what: str) -> None:
    """Every worker alive and answering /health with `want`."""

    async def check() -> bool:
        assert_alive(rig)
        got = await asyncio.gather(*(asyncio.to_thread(status, w) for w in rig.workers))
        return all(g == want for g in got)

    await eventually(check, within, what)


async def start_workers(rig: Rig) -> None:
    env = {"LEADFLOW_BATCH_MAX": "25", "LEADFLOW_REDIS_RETRY_MAX_SECONDS": "2"}
    rig.workers = [
        WorkerProcess(rig.via, rig.tmp / f"worker{i}.log", dict(env)).start()
        for i in range(WORKERS)
    ]
    for w in rig.workers:
        await w.wait_ready()

    async def all_assigned() -> bool:
        bodies = await asyncio.gather(*(asyncio.to_thread(w.health) for w in rig.workers))
        return all(b and b["assigned_partitions"] for b in bodies)

    await eventually(all_assigned, 90, "every worker to own partitions")
    rig.pids = [w.proc.pid for w in rig.workers if w.proc is not None]


def show_logs(rig: Rig) -> None:
    """After a failed scenario: what the workers and the private services said last."""
    for i, w in enumerate(rig.workers):
        print(f"--- worker {i} log ---\n{w.tail(80)}")
    if rig.redis is not None:
        print(f"--- redis log ---\n{rig.redis.tail()}")
    if rig.kafka is not None:
        print(f"--- kafka log ---\n{rig.kafka.tail()}")


# -- a fault through the proxy --------------------------------------------------------------


def cut_connections(dependency: str, refuse_for: float = 0.0) -> Fault:
    """Every connection through the proxy dropped at once, then again once the workers score
    again, then new connections refused until every worker reports `dependency` down (and at
    least `refuse_for` seconds: a service restarting behind a load balancer)."""

    async def fault(rig: Rig, during: Callable[[], Awaitable[None]]) -> None:
        proxy = rig.proxy
        assert proxy is not None
        cut = proxy.cut()
        await during()
        before = sum(w.scored() for w in rig.workers)

        async def progressed() -> bool:
            assert_alive(rig)
            if sum(w.scored() for w in rig.workers) > before:
                return True
            return await consumer_caught_up(rig.direct)  # nothing left to score (sales phase)

        await eventually(progressed, 90, "scoring to resume after the first cut")
        cut += proxy.cut()
        proxy.refuse = True
        cut += proxy.cut()
        refused = time.monotonic()
        try:
            await all_workers(rig, 503, 30, f"every worker to report {dependency} unreachable")
            await asyncio.sleep(max(0.0, refuse_for - (time.monotonic() - refused)))  # the fault
        finally:
            proxy.refuse = False
        rig.stats["connections_cut"] = rig.stats.get("connections_cut", 0) + cut
        assert cut > 0

    return fault


# -- phase 1: the engagement stream ---------------------------------------------------------


def history(size: Size) -> list[SampleRecord]:
    return generate(
        leads=max(size.events // 10, 20),
        events=size.events,
        seed=size.seed,
        start=datetime.now(UTC) - timedelta(days=40),
        days=14,
        invalid_every=500,
        duplicate_every=40,
        hot_share=0.5,
    )


async def a_third_scored(rig: Rig, records: list[SampleRecord]) -> None:
    async def check() -> bool:
        assert_alive(rig)
        return sum(w.scored() for w in rig.workers) >= len(records) // 3

    await eventually(check, 180, "a third of the stream to be scored")


async def engagement_phase(rig: Rig, fault: Fault, size: Size) -> int:
    """Play the stream with the fault mid-way; check it against both oracles. The number of
    handoffs expected."""
    s = rig.direct
    records = history(size)
    two_thirds = len(records) * 2 // 3
    await produce(s, [(r.key, r.value) for r in records[:two_thirds]])
    await a_third_scored(rig, records)
    assert not await consumer_caught_up(s), "the fault would not land mid-stream"

    async def rest() -> None:
        await produce(s, [(r.key, r.value) for r in records[two_thirds:]])

    t0 = time.monotonic()
    await fault(rig, rest)
    await all_workers(rig, 200, 90, "every worker healthy after the fault")
    await eventually(lambda: consumer_caught_up(s), 300, "the stream to be scored")
    rig.stats["recovered_and_caught_up_s"] = round(time.monotonic() - t0, 1)
    return await assert_scoring_exact(rig, records)


async def assert_scoring_exact(rig: Rig, records: list[SampleRecord]) -> int:
    s = rig.direct
    rules = load_rules(s.rules)
    expected = expected_outcome(records, rules, s)
    await wait_for_handoffs(s, set(expected.handoffs), within=120)
    store = open_store(s)
    try:
        stored = await store.read_all_leads()

        async def outbox_empty() -> bool:
            return await store.pending_outbox(range(s.topic_partitions)) == []

        await eventually(outbox_empty, 60, "the outbox to drain")
    finally:
        await store.close()

    # Nothing lost, nothing counted twice: every lead field for field (events counted, dedupe).
    assert set(stored) == set(expected.leads)
    wrong = [
        lead for lead, st in expected.leads.items() if comparable(stored[lead]) != comparable(st)
    ]
    assert wrong == [], f"{len(wrong)} leads differ from the fold, e.g. {wrong[:5]}"
    # One handoff_id per qualification; a re-sent one has the same id and content.
    on_topic = [MqlHandoff.model_validate_json(r.value) for r in await read_topic(s, s.handoff)]
    ids = Counter(h.handoff_id for h in on_topic)
    assert set(ids) == set(expected.handoffs)
    assert all(h == expected.handoffs[h.handoff_id] for h in on_topic)
    per_qualification = Counter(
        (h.lead_id, h.triggering_event_id) for h in expected.handoffs.values()
    )
    assert set(per_qualification.values()) <= {1}
    assert reference_disagreements(stored, on_topic, expected, rules) == []
    # Every broken record dead-lettered (at least once, the same id when re-sent).
    letters = await read_topic(s, s.deadletter)
    sources = {
        (
            dict(r.headers).get("leadflow.source.partition"),
            dict(r.headers).get("leadflow.source.offset"),
        )
        for r in letters
    }
    assert len(sources) == len(expected.invalid)
    rig.stats.update(
        events=len(records),
        valid=len(expected.valid),
        leads=len(expected.leads),
        handoffs=len(expected.handoffs),
        handoffs_resent=sum(ids.values()) - len(ids),
        deadletters=len(expected.invalid),
    )
    return len(expected.handoffs)


# -- phase 2: sales activity and deadlines --------------------------------------------------


async def sales_phase(rig: Rig, fault: Fault, historic_handoffs: int, size: Size) -> None:
    s = rig.direct
    t0 = datetime.now(UTC)
    n = size.sales_leads
    leads = {f"sales-{i:03d}": t0 + timedelta(milliseconds=20 * i) for i in range(n)}
    await produce(s, [r for lead, at in leads.items() for r in qualifying(lead, at)])

    def handed_off(rs: list[Consumed]) -> bool:
        return {orjson.loads(r.value)["lead_id"] for r in rs} >= set(leads)

    await wait_for(s, s.handoff, handed_off, within=90)
    activities = [r for i, (lead, at) in enumerate(leads.items()) for r in sales_plan(i, lead, at)]
    await produce(s, activities, topic=s.activity)
    inputs = (s.engagement, s.handoff, s.activity)
    await eventually(lambda: consumer_caught_up(s, inputs), 90, "the sales activity applied")

    # The fault while the missed deadlines come due and their alerts leave.
    await fault(rig, nothing)
    await all_workers(rig, 200, 90, "every worker healthy after the second fault")

    missed = {lead for i, lead in enumerate(leads) if i % 5 == 4}

    def alerted(rs: list[Consumed]) -> bool:
        return {SlaAlert.model_validate_json(r.value).lead_id for r in rs} >= missed

    await wait_for(s, s.alerts, alerted, within=120)
    # A later deadline: once its alert is out, a duplicate of the earlier ones would be too.
    await produce(s, qualifying("sentinel", datetime.now(UTC)))
    records = await wait_for(
        s,
        s.alerts,
        lambda rs: any(SlaAlert.model_validate_json(r.value).lead_id == "sentinel" for r in rs),
        within=90,
    )
    await eventually(lambda: consumer_caught_up(s, inputs), 90, "every input committed")
    alerts = [SlaAlert.model_validate_json(r.value) for r in records]
    distinct = {a.alert_id: a for a in alerts}
    per_deadline = Counter((a.handoff_id, a.kind) for a in distinct.values())
    assert set(per_deadline.values()) == {1}, per_deadline
    assert sorted(a.lead_id for a in distinct.values()) == sorted(missed | {"sentinel"})
    rig.stats.update(alerts=len(distinct), alerts_resent=len(alerts) - len(distinct))
    await assert_kpis_exact(rig, t0, historic_handoffs, n)


async def assert_kpis_exact(rig: Rig, t0: datetime, historic_handoffs: int, n: int) -> None:
    """The KPI counters in Redis equal counts computed from what was sent; the gauges of every
    worker and the lifecycle topic agree."""
    s = rig.direct
    kinds = Counter(i % 5 for i in range(n))
    sqls, breaches = kinds[0] + kinds[1], kinds[4] + 1
    mqls = n + 1
    expected = {
        "mql": historic_handoffs + mqls,
        "clock:mql_first_contact:expired": historic_handoffs,
        "sql": sqls,
        "cohort_sql": sqls,
        "nurture": kinds[2],
        "nurture_missing:budget": kinds[2],
        "nurture_missing:authority": kinds[2],
        "nurture_missing:timeframe": kinds[2],
        "disqualified": kinds[3],
        "clock:mql_first_contact:met": n - kinds[4],
        "clock:mql_first_contact:breached": breaches,
        "clock:sql_follow_up:met": sqls,
        "breach_owner:-": breaches,
        # Per owner: sato's contacts (each 1 s after the handoff), nobody's breaches.
        "owner_first_contact:sato:met": n - kinds[4],
        "owner_first_contact:-:breached": breaches,
        "owner_contacted:sato": n - kinds[4],
        "owner_contact_seconds:sato": (n - kinds[4]) * 1,
    }
    store = open_store(s)
    try:
        today = t0.date()
        days = [today - timedelta(days=d) for d in range(-1, 45)]
        counts, durations = await store.read_kpis(days, ["first_contact_seconds"])
    finally:
        await store.close()
    totals: Counter[str] = Counter()
    for per_day in counts.values():
        totals.update(per_day)
    funnel, credited = split_attribution(totals)
    assert funnel == expected
    # Every conversion credited exactly once, under every model (nothing lost or doubled).
    assert credited == whole_credits(mql=historic_handoffs + mqls, sql=sqls)
    contact = [x for day in days for x in durations[(day, "first_contact_seconds")]]
    assert sorted(contact) == [1.0] * (n - kinds[4])

    # The gauges of every worker, as Prometheus scrapes them (refreshed every second).
    want = {
        ("leadflow_kpi_stage_count", (("stage", "mql"), ("window", "7d"))): mqls,
        ("leadflow_kpi_mql_to_sql_ratio", (("window", "7d"),)): sqls / mqls,
        ("leadflow_kpi_breaches_by_owner", (("owner", "-"), ("window", "7d"))): breaches,
        ("leadflow_kpi_time_to_contact_seconds", (("quantile", "0.5"), ("window", "7d"))): 1.0,
    }

    def gauges(w: WorkerProcess) -> dict[str, float | None]:
        return {name: w.metric(name, **dict(labels)) for name, labels in want}

    for w in rig.workers:

        async def caught_up(w: WorkerProcess = w) -> bool:
            assert_alive(rig)
            got = await asyncio.to_thread(gauges, w)
            return got == pytest.approx({name: v for (name, _), v in want.items()})

        await eventually(caught_up, 30, "the KPI gauges to show the run")

    # One lifecycle event per stage change.
    moves = [
        LifecycleTransition.model_validate_json(r.value) for r in await read_topic(s, s.lifecycle)
    ]
    stages = Counter({t.transition_id: t.to_stage for t in moves}.values())
    assert stages == {st: expected[st] for st in ("mql", "sql", "nurture", "disqualified")}


def assert_recovered_by_themselves(rig: Rig) -> None:
    """The same processes as at the start, none of which ever crashed."""
    assert_alive(rig)
    assert [w.proc.pid for w in rig.workers if w.proc is not None] == rig.pids
    for w in rig.workers:
        assert "Crashed reason" not in w.log_path.read_text(errors="replace")


async def run_scenario(rig: Rig, fault: Fault, size: Size) -> None:
    started = time.monotonic()
    await start_workers(rig)
    handoffs = await engagement_phase(rig, fault, size)
    await sales_phase(rig, fault, handoffs, size)
    assert_recovered_by_themselves(rig)
    await all_workers(rig, 200, 30, "every worker healthy at the end")
    record_counters(rig)
    rig.stats["seconds"] = round(time.monotonic() - started, 1)
