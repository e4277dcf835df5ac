"""`leadflow migrate` (issue 11 item 6): a namespace written in the key layout before 0.9 moves
into the current one, with every worker stopped, and the worker carries on as if nothing had
happened.

The old key space is made by hand from the old layout as docs/operations.md describes it ("Redis
key layout": `<prefix>lead:<id>`, `<prefix>offsets:<topic>`, `<prefix>outbox:<topic>:<p>`,
`<prefix>wakeups:<topic>:<p>`, `<prefix>kpi:<day>[:<series>]`, `<prefix>generation`), from
what a real worker wrote, so the test shares no code with the migration's key parsing.

On one Redis it migrates in place; in cluster mode (ops/test's second pass) the old keys sit on
the single Redis and move to the cluster with `--from-url`, the way a user moves to a cluster.
Either way: the worker refuses the old layout with one line naming `leadflow migrate`; after the
migration every lead, offset, undelivered output, reminder, KPI count and the generation record
are what they were; a second run has nothing to do; the worker resumes at the stored offsets
(nothing scored twice), delivers the output that was waiting, and its result equals the oracle.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord, generate
from streams.settings import Settings
from streams.store import OutboxEntry
from streams.store.redis_store import partition_of
from tests.harness import (
    TEST_RULES,
    WorkerProcess,
    activity,
    consumer_caught_up,
    eventually,
    leadflow_cli,
    namespace_keys,
    produce,
    qualifying,
    redis_client,
    wait_for,
)
from tests.oracle import comparable, expected_outcome

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SINGLE_REDIS = os.environ.get("LEADFLOW_TEST_SINGLE_REDIS_URL", "redis://127.0.0.1:6379/0")
SERIES = ("first_contact_seconds",)
LIVE = [f"mig-{i}" for i in range(6)]


def leadflow(args: list[str], settings: Settings, **env: str) -> subprocess.CompletedProcess[str]:
    return leadflow_cli(settings, *args, LEADFLOW_STARTUP_TIMEOUT="10", **env)


async def snapshot(settings: Settings) -> dict[str, Any]:
    """What the namespace holds, by meaning (not by key name)."""
    store = open_store(settings)
    sales = store.for_source(settings.handoff)
    parts = range(settings.topic_partitions)
    r = store.redis
    try:
        leads = {x: await r.hgetall(store.keys.lead(x)) for x in await store.live_lead_ids()}
        days = await store.kpi_days()
        counts, durations = await store.read_kpis(days, SERIES)
        reminders, outbox = set(), []
        for side in (store, sales):
            topic = side.source_topic
            for p in parts:
                due = await r.zrange(side.keys.reminders(topic, p), 0, -1, withscores=True)
                reminders |= {(topic, member, score) for member, score in due}
            outbox += [(e.topic, e.output_id, e.value) for e in await side.pending_outbox(parts)]
        return {
            "leads": leads,
            "offsets": await store.read_offsets(parts),
            "outbox": sorted(outbox),
            "reminders": reminders,
            "kpis": {d: c for d, c in counts.items() if c},
            "durations": {k: v for k, v in durations.items() if v},
            "generation": await store.active_generation(),
        }
    finally:
        await store.close()


async def write_old_layout(settings: Settings, old: aioredis.Redis) -> int:
    """Write the namespace into `old` in the layout before 0.9, from what the current layout
    holds (read key by key with the current key names); then empty the current namespace."""
    store = open_store(settings)
    keys, r, prefix = store.keys, store.redis, settings.redis_prefix
    parts = range(settings.topic_partitions)
    written = 0
    current = await namespace_keys(r, settings)
    try:
        for lead in await store.live_lead_ids():
            await old.hset(f"{prefix}lead:{lead}", mapping=await r.hgetall(keys.lead(lead)))
            written += 1
        offsets = await store.read_offsets(parts)
        stored = {str(p): o for p, o in offsets.items() if o is not None}
        await old.hset(f"{prefix}offsets:{settings.engagement}", mapping=stored)  # type: ignore[arg-type]
        for topic in (settings.engagement, settings.handoff):
            for p in parts:
                entries = await r.hgetall(keys.outbox(topic, p))
                if entries:
                    await old.hset(f"{prefix}outbox:{topic}:{p}", mapping=entries)
                due = await r.zrange(keys.reminders(topic, p), 0, -1, withscores=True)
                if due:
                    await old.zadd(f"{prefix}wakeups:{topic}:{p}", dict(due))
        for day in await store.kpi_days():
            totals: dict[bytes, int] = {}
            for p in parts:
                for name, n in (await r.hgetall(keys.kpi(day, p))).items():
                    totals[name] = totals.get(name, 0) + int(n)
                for series in SERIES:
                    samples = await r.zrange(
                        keys.kpi_samples(day, series, p), 0, -1, withscores=True
                    )
                    if samples:
                        await old.zadd(f"{prefix}kpi:{day.isoformat()}:{series}", dict(samples))
            await old.hset(f"{prefix}kpi:{day.isoformat()}", mapping=totals)  # type: ignore[arg-type]
        await old.hset(f"{prefix}generation", mapping=await r.hgetall(keys.generation_record(0)))
        await r.delete(*current)
    finally:
        await store.close()
    return written


@pytest.fixture
def slow_sla_settings(settings: Settings, tmp_path: Path) -> Settings:
    """The test rules with a first-contact deadline of an hour: reminders stay open."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        TEST_RULES.read_text().replace("mql_first_contact: 5s", "mql_first_contact: 1h"),
        encoding="utf-8",
    )
    return settings.model_copy(update={"rules": rules})


async def play_first_part(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path, history: list[SampleRecord]
) -> set[str]:
    """A worker scores `history` and 6 live leads qualify now (3 contacted, 3 with an open
    reminder), then stops: the ids of the live leads' handoffs."""
    now = datetime.now(UTC)
    worker = WorkerProcess(settings, tmp_path / "before.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await produce(settings, [(r.key, r.value) for r in history])
    await produce(settings, [rec for lead in LIVE for rec in qualifying(lead, now)])
    handed = await wait_for(
        settings,
        settings.handoff,
        lambda rs: {MqlHandoff.model_validate_json(r.value).lead_id for r in rs} >= set(LIVE),
        within=60,
    )
    # Half the live leads are contacted (clock met, a KPI sample); the rest keep a reminder.
    contacts = [activity(lead, "c1", "contacted", now, owner="sato") for lead in LIVE[:3]]
    await produce(settings, contacts, topic=settings.activity)
    await eventually(lambda: consumer_caught_up(settings, INPUTS(settings)), 60, "a catch-up")
    worker.stop()
    return {
        h.handoff_id
        for h in (MqlHandoff.model_validate_json(r.value) for r in handed)
        if h.lead_id in LIVE
    }


def INPUTS(settings: Settings) -> tuple[str, ...]:
    return (settings.engagement, settings.handoff, settings.activity)


async def test_migrate_moves_the_old_layout_and_the_worker_carries_on(
    slow_sla_settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    settings = slow_sla_settings
    history = generate(leads=150, events=1500, seed=61, duplicate_every=30, invalid_every=300)
    first, second = history[:900], history[900:]
    live_ids = await play_first_part(settings, workers, tmp_path, first)
    inputs = INPUTS(settings)

    # An output written but not yet delivered when the workers were stopped.
    store = open_store(settings)
    waiting = OutboxEntry(3, "ho-waiting-1", settings.handoff, b"mig-x", b'{"waiting": 1}')
    await store.redis.hset(
        store.keys.outbox(settings.handoff, 3), waiting.output_id, waiting.encode()
    )
    await store.close()

    before = await snapshot(settings)
    assert len(before["leads"]) == 150 + len(LIVE)
    assert len(before["reminders"]) == 3 and before["kpis"] and before["durations"]

    old_url = SINGLE_REDIS if settings.redis_cluster else settings.redis_url.get_secret_value()
    old = aioredis.Redis.from_url(old_url)
    try:
        assert await write_old_layout(settings, old) == len(before["leads"])
        left = await namespace_keys(redis_client(settings), settings)
        assert [k for k in left if k.startswith(b"{")] == []  # only the old layout is there

        # The worker refuses the old layout with one line that says what to run.
        if not settings.redis_cluster:
            refused = leadflow(["worker"], settings)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert "leadflow migrate" in refused.stderr and "Traceback" not in refused.stderr

        extra = ["--from-url", SINGLE_REDIS] if settings.redis_cluster else []
        moved = leadflow(["migrate", "--yes", *extra], settings)
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert f"{len(before['leads'])} leads" in moved.stdout
        assert "3 reminders" in moved.stdout and "1 undelivered outputs" in moved.stdout
        # Every old key is gone (on one Redis, the layout record shares the old keys' prefix).
        left = [k async for k in old.scan_iter(match=f"{settings.redis_prefix}*")]
        layout = [] if settings.redis_cluster else [f"{settings.redis_prefix}layout".encode()]
        assert left == layout
    finally:
        await old.aclose()

    after = await snapshot(settings)
    assert after == before
    again = leadflow(["migrate", "--yes"], settings)
    assert again.returncode == 0 and "already in the current layout" in again.stdout

    # The worker resumes at the stored offsets: the rest of the history, nothing twice.
    resumed = WorkerProcess(settings, tmp_path / "after.log").start()
    workers.append(resumed)
    await resumed.wait_ready()
    await produce(settings, [(r.key, r.value) for r in second])
    await eventually(lambda: consumer_caught_up(settings, inputs), 90, "the rest to be scored")
    expected = expected_outcome(history, load_rules(settings.rules), settings)
    store = open_store(settings)
    try:
        stored = await store.read_all_leads()
    finally:
        await store.close()
    for lead, state in expected.leads.items():
        assert comparable(stored[lead]) == comparable(state), lead
    records = await wait_for(
        settings,
        settings.handoff,
        lambda rs: any(r.value == b'{"waiting": 1}' for r in rs),
        within=60,
    )
    # Every handoff once: the history's (the oracle's) and the live leads'; none re-sent.
    ids = [MqlHandoff.model_validate_json(r.value).handoff_id for r in records if r.key != b"mig-x"]
    assert sorted(ids) == sorted(set(expected.handoffs) | live_ids)


async def test_migrate_from_another_partition_count_moves_each_lead_to_its_new_partition(
    slow_sla_settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """Partitions were added to the topics (8 -> 12): each lead and each of its reminders now
    belongs to the partition Kafka's default partitioner gives its id among 12."""
    settings = slow_sla_settings
    history = generate(leads=120, events=800, seed=62, duplicate_every=30)
    await play_first_part(settings, workers, tmp_path, history)
    before = await snapshot(settings)
    wider = settings.model_copy(update={"topic_partitions": 12})

    refused = leadflow(["explain", "mig-0"], wider, LEADFLOW_TOPIC_PARTITIONS="12")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--from-partitions 8" in refused.stderr and "Traceback" not in refused.stderr
    moved = leadflow(
        ["migrate", "--yes", "--from-partitions", "8"], wider, LEADFLOW_TOPIC_PARTITIONS="12"
    )
    assert moved.returncode == 0, moved.stdout + moved.stderr

    after = await snapshot(wider)
    # Read with 12 partitions, every lead is where its id says, with the same bytes; reminders,
    # KPIs, outputs and the generation are the same; the 8 old offsets stay with their partitions.
    assert after["leads"] == before["leads"]
    for key in ("reminders", "kpis", "durations", "outbox", "generation"):
        assert after[key] == before[key], key
    assert after["offsets"] == {**before["offsets"], 8: None, 9: None, 10: None, 11: None}
    client = redis_client(wider)
    try:
        lead_keys = [k async for k in client.scan_iter(match=f"{{{wider.redis_prefix}p*}}:lead:*")]
    finally:
        await client.aclose()
    assert len(lead_keys) == len(before["leads"])  # none left behind under its old partition
    moved_leads = [x for x in before["leads"] if partition_of(x, 8) != partition_of(x, 12)]
    assert moved_leads  # the test moves some
