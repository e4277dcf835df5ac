"""The worker scenarios' stream, played in segments, and its checks (the fault matrix).

The stream is played in segments with a disruption between segments (`play`):

- the engagement stream of `streams.jobs.sample.generate` (historical: November 2026, with
  duplicates), checked lead by lead against the pure core and the independent reference model;
- "live" leads that qualify now, with sales activity (contact, BANT pass/fail, disqualified,
  or nothing: the 5 s first-contact deadline passes), checked by their alerts and the KPIs.

`settle_and_check` then waits for every running worker and every input, and asserts what
docs/reliability.md "Fault matrix" lists: nothing lost, nothing counted twice, one handoff_id
per qualification, one alert per deadline, KPIs exact, workers healthy. Redis is read through
`open_store(settings)`, so the same checks hold on single Redis and on Redis Cluster
(LEADFLOW_REDIS_CLUSTER).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord, generate
from streams.settings import Settings
from tests.harness import (
    BANT_FAIL,
    BANT_PASS,
    WorkerProcess,
    activity,
    consumer_caught_up,
    eventually,
    produce,
    qualifying,
    read_topic,
    split_attribution,
    wait_for,
    wait_for_handoffs,
    whole_credits,
)
from tests.oracle import comparable, expected_outcome, reference_disagreements

LIVE_PER_SEGMENT = 5


def seed_of(name: str) -> int:
    seed = int(os.environ.get("LEADFLOW_CHAOS_SEED") or random.SystemRandom().randrange(10**6))
    print(f"{name}: seed={seed} (LEADFLOW_CHAOS_SEED={seed} replays the same choices and delays)")
    return seed


def first_contact(i: int, lead: str, qualified_at: datetime) -> list[tuple[bytes, bytes]]:
    """Live lead i is called 1 s after it qualifies (4 in 5; the 5th deadline passes). The call
    may reach the sales side before the handoff does; every 3rd is recorded twice."""
    if i % 5 == 4:
        return []
    call = activity(lead, "call", "contacted", qualified_at + timedelta(seconds=1), owner="sato")
    return [call, call] if i % 3 == 0 else [call]


def follow_up(i: int, lead: str, qualified_at: datetime) -> list[tuple[bytes, bytes]]:
    """After the handoff: SQL (2 in 5; the follow-up action is recorded first, as a CRM sync
    may deliver it), nurture (BANT fails), or disqualified. A BANT or a disqualification can
    only follow the handoff; sent before it, it would move the lead out of the funnel first.
    Never before the first contact (qualified_at + 1 s): a BANT is a contact too, and an
    earlier one would be the lead's first contact."""
    now = max(datetime.now(UTC), qualified_at + timedelta(seconds=2))
    kind = i % 5
    if kind in (0, 1):
        return [
            activity(lead, "act", "sales_action", now + timedelta(seconds=1)),
            activity(lead, "bant", "bant_assessed", now, bant=BANT_PASS),
        ]
    if kind == 2:
        return [activity(lead, "bant", "bant_assessed", now, bant=BANT_FAIL)]
    if kind == 3:
        return [activity(lead, "dq", "disqualified", now, reason="no budget")]
    return []


@dataclass
class Stream:
    """The stream in segments; live leads are made when their segment is produced."""

    history: list[SampleRecord]
    segments: int
    live: dict[str, tuple[int, datetime]] = field(default_factory=dict)
    live_records: list[SampleRecord] = field(default_factory=list)
    produced: int = 0
    followed: set[str] = field(default_factory=set)

    def chunk(self, k: int) -> list[SampleRecord]:
        size = -(-len(self.history) // self.segments)
        return self.history[k * size : (k + 1) * size]

    async def produce_segment(self, settings: Settings, k: int) -> None:
        # Live leads qualify about now; their first contact goes out first.
        at = datetime.now(UTC) + timedelta(seconds=1)
        engagement, activities = [], []
        for j in range(LIVE_PER_SEGMENT):
            i = len(self.live)
            lead, when = f"live-{i:04d}", at + timedelta(milliseconds=40 * j)
            self.live[lead] = (i, when)
            engagement += qualifying(lead, when)
            activities += first_contact(i, lead, when)
        self.live_records += [SampleRecord(key, value, True) for key, value in engagement]
        history = self.chunk(k)
        await produce(settings, activities, topic=settings.activity)
        await produce(settings, [(r.key, r.value) for r in history] + engagement)
        self.produced += len(history) + len(engagement)
        await self.follow_up(settings)

    async def follow_up(self, settings: Settings, every: bool = False) -> None:
        """The follow-up activity of the live leads whose handoff is on the topic (with
        every=True: wait until all of them are)."""
        pending = {lead for lead in self.live if lead not in self.followed}
        if every:
            await eventually(
                lambda: self._handed_off(settings, pending), 180, "every live lead's handoff"
            )
        handed = await self.handed_off(settings)
        ready = sorted(pending & handed)
        await produce(
            settings,
            [r for lead in ready for r in follow_up(self.live[lead][0], lead, self.live[lead][1])],
            topic=settings.activity,
        )
        self.followed |= set(ready)

    async def handed_off(self, settings: Settings) -> set[str]:
        records = await read_topic(settings, settings.handoff)
        return {MqlHandoff.model_validate_json(r.value).lead_id for r in records}

    async def _handed_off(self, settings: Settings, leads: set[str]) -> bool:
        return leads <= await self.handed_off(settings)


Disrupt = Callable[[int], Awaitable[str]]


async def play(
    settings: Settings, workers: list[WorkerProcess], stream: Stream, disrupt: Disrupt
) -> list[str]:
    """Produce the segments one after the other; disrupt(k) runs while segment k + 1 is being
    produced and scored (so disruptions land mid-stream). Returns what was done."""
    done = []
    for k in range(stream.segments):
        producing = asyncio.create_task(stream.produce_segment(settings, k))
        if k > 0:
            done.append(await disrupt(k - 1))
        await producing
    await stream.follow_up(settings, every=True)
    return done


async def settle_and_check(
    settings: Settings, workers: list[WorkerProcess], stream: Stream, started: float
) -> dict[str, object]:
    """Every live worker ready, every input committed, then every assertion of the matrix."""
    live_workers = [w for w in workers if w.proc is not None and w.proc.poll() is None]
    assert live_workers, "no worker left running"
    for w in live_workers:
        await w.wait_ready(within=120)
    inputs = (settings.engagement, settings.handoff, settings.activity)
    within = 240 + len(stream.history) / 200
    await eventually(lambda: consumer_caught_up(settings, inputs), within, "every input committed")

    rules = load_rules(settings.rules)
    history = expected_outcome(stream.history, rules, settings)
    live = expected_outcome(stream.live_records, rules, settings)
    wanted = set(history.handoffs) | set(live.handoffs)
    try:
        await wait_for_handoffs(settings, wanted, within=120)
    except AssertionError:
        seen = {
            MqlHandoff.model_validate_json(r.value).handoff_id
            for r in await read_topic(settings, settings.handoff)
        }
        missing = [h for i, h in (history.handoffs | live.handoffs).items() if i not in seen]
        raise AssertionError(f"{len(missing)} handoffs lost, e.g. {missing[:3]}") from None

    # One alert per passed deadline, none for a contacted lead: wait for the missed ones, then
    # a later deadline as a sentinel (once its alert is out, any duplicate would be out too).
    missed = {lead for lead, (i, _) in stream.live.items() if i % 5 == 4}
    await wait_for(
        settings,
        settings.alerts,
        lambda rs: {SlaAlert.model_validate_json(r.value).lead_id for r in rs} >= missed,
        within=120,
    )
    await produce(settings, qualifying("sentinel", datetime.now(UTC)))
    alert_records = await wait_for(
        settings,
        settings.alerts,
        lambda rs: any(SlaAlert.model_validate_json(r.value).lead_id == "sentinel" for r in rs),
        within=120,
    )
    alerts = [SlaAlert.model_validate_json(r.value) for r in alert_records]
    per_lead = Counter(a.lead_id for a in alerts if a.lead_id != "sentinel")
    assert set(per_lead) == missed, "alerts for contacted leads, or missing alerts"
    assert Counter(per_lead.values()) == Counter({1: len(missed)}), "a deadline alerted twice"
    assert len({a.alert_id for a in alerts}) == len(alerts)

    store = open_store(settings)
    try:
        stored = await store.read_all_leads()
        pending = await store.pending_outbox(range(settings.topic_partitions))
        today = datetime.now(UTC).date()
        days = [today - timedelta(days=1), today, today + timedelta(days=1)]
        counts, durations = await store.read_kpis(days, ["first_contact_seconds"])
    finally:
        await store.close()

    # Nothing lost, nothing counted twice: every historical lead equals the core's fold
    # (events_counted, seen ids, tallies) and the reference model (scores, stages, handoffs).
    historical = {lead: s for lead, s in stored.items() if lead in history.leads}
    assert set(historical) == set(history.leads), "leads lost"
    assert set(stored) == set(history.leads) | set(stream.live) | {"sentinel"}
    wrong = [lead for lead, s in history.leads.items() if comparable(stored[lead]) != comparable(s)]
    assert wrong == [], f"{len(wrong)} leads differ from the core's fold, e.g. {wrong[:5]}"
    on_topic = [
        MqlHandoff.model_validate_json(r.value)
        for r in await read_topic(settings, settings.handoff)
    ]
    ids = Counter(h.handoff_id for h in on_topic)
    assert set(ids) - {h.handoff_id for h in on_topic if h.lead_id == "sentinel"} == wanted
    predicted = history.handoffs | live.handoffs
    assert [h for h in on_topic if h.lead_id != "sentinel" and h != predicted[h.handoff_id]] == []
    # Exactly one handoff_id per qualification (a re-sent handoff carries its id).
    pairs = {((h.lead_id, h.triggering_event_id), h.handoff_id) for h in on_topic}
    assert set(Counter(q for q, _ in pairs).values()) == {1}
    mine = [h for h in on_topic if h.lead_id in history.leads]
    assert reference_disagreements(historical, mine, history, rules) == []
    assert pending == []

    # KPIs exact: the live leads are the only ones on these days (the history is in November).
    kinds = Counter(i % 5 for i, _ in stream.live.values())
    expected = {
        "mql": len(stream.live) + 1,  # and the sentinel
        "sql": kinds[0] + kinds[1],
        "cohort_sql": kinds[0] + kinds[1],
        "nurture": kinds[2],
        "nurture_missing:budget": kinds[2],
        "nurture_missing:authority": kinds[2],
        "nurture_missing:timeframe": kinds[2],
        "disqualified": kinds[3],
        "clock:mql_first_contact:met": len(stream.live) - kinds[4],
        "clock:mql_first_contact:breached": kinds[4] + 1,
        "clock:sql_follow_up:met": kinds[0] + kinds[1],
        "breach_owner:-": kinds[4] + 1,
        # Per owner: sato's contacts (each 1 s after the handoff), nobody's breaches.
        "owner_first_contact:sato:met": len(stream.live) - kinds[4],
        "owner_first_contact:-:breached": kinds[4] + 1,
        "owner_contacted:sato": len(stream.live) - kinds[4],
        "owner_contact_seconds:sato": (len(stream.live) - kinds[4]) * 1,
    }
    totals: Counter[str] = Counter()
    for per_day in counts.values():
        totals.update(per_day)
    funnel, credited = split_attribution(totals)
    assert funnel == expected
    # Every conversion credited exactly once, under every model (nothing lost or doubled).
    assert credited == whole_credits(mql=len(stream.live) + 1, sql=kinds[0] + kinds[1])
    contact = [s for day in days for s in durations[(day, "first_contact_seconds")]]
    assert sorted(contact) == [1.0] * (len(stream.live) - kinds[4])
    assert await read_topic(settings, settings.deadletter) == []

    # The workers recovered by themselves: every one still running is healthy.
    for w in live_workers:
        body = w.health()
        assert body is not None and body["status"] == "ok", (body, w.tail())
        assert body["stopped_partitions"] == {}
    report = {
        "events": stream.produced,
        "leads": len(stored),
        "handoffs": len(wanted),
        "handoff_resends": sum(ids.values()) - len(ids),
        "alerts": len(alerts),
        "lost": 0,
        "double_counted": 0,
        "seconds": round(time.monotonic() - started),
    }
    print(f"matrix result: {report}")
    return report


def history_for(seed: int, events: int) -> list[SampleRecord]:
    """The historical stream: `events` records for events / 10 leads (1 in 100 re-sent)."""
    return generate(
        leads=max(events // 10, 50),
        events=events,
        seed=seed,
        duplicate_every=100,
        hot_share=0.3,
    )
