"""After the handoff, on the real broker and Redis: SLA alerts, BANT, nurture and re-MQL.

The test rules give a 5 s first-contact window and an 8 s follow-up window, so deadlines pass
while the test watches.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.settings import Settings
from tests.harness import (
    Consumed,
    WorkerProcess,
    activity,
    produce,
    qualifying,
    read_topic,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]


def alerts_of(records: list[Consumed]) -> list[SlaAlert]:
    return [SlaAlert.model_validate_json(r.value) for r in records]


def handoffs_of(records: list[Consumed]) -> list[MqlHandoff]:
    return [MqlHandoff.model_validate_json(r.value) for r in records]


def transitions_of(records: list[Consumed]) -> list[LifecycleTransition]:
    return [LifecycleTransition.model_validate_json(r.value) for r in records]


@pytest.fixture
async def worker(settings: Settings, workers: list[WorkerProcess], tmp_path: Path) -> WorkerProcess:
    w = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(w)
    await w.wait_ready()
    return w


async def lead_state(settings: Settings, lead: str):
    store = open_store(settings)
    try:
        return await store.read_lead(lead)
    finally:
        await store.close()


async def test_no_contact_gives_exactly_one_breach_alert_within_a_second_of_due(
    settings: Settings, worker: WorkerProcess
) -> None:
    t0 = datetime.now(UTC)
    await produce(settings, qualifying("lead-silent", t0))
    # A later lead, also never contacted: once its alert is out, a duplicate of the first
    # would have been sent already (the sweeper works through deadlines in due order).
    await produce(settings, qualifying("lead-sentinel", t0 + timedelta(seconds=1)))

    records = await wait_for(settings, settings.alerts, lambda rs: len(rs) >= 2)
    alerts = alerts_of(records)
    assert sorted(a.lead_id for a in alerts) == ["lead-sentinel", "lead-silent"]
    first = next(r for r, a in zip(records, alerts, strict=True) if a.lead_id == "lead-silent")
    alert = SlaAlert.model_validate_json(first.value)
    window = load_rules(settings.rules).sla.mql_first_contact
    assert (alert.kind, alert.severity) == ("mql_first_contact", "breach")
    assert alert.due_at == t0 + window
    # Fired promptly: on the topic within one second of the due time (Kafka's record time).
    delay = first.timestamp_ms / 1000 - alert.due_at.timestamp()
    assert 0 <= delay <= 1.0, f"alert landed {delay:.3f}s after due"
    (handoff,) = [
        h
        for h in handoffs_of(await read_topic(settings, settings.handoff))
        if h.lead_id == "lead-silent"
    ]
    assert alert.handoff_id == handoff.handoff_id
    assert (await lead_state(settings, "lead-silent")).clocks[0].status == "breached"


async def test_timely_contact_meets_the_deadline_and_raises_nothing(
    settings: Settings, worker: WorkerProcess
) -> None:
    t0 = datetime.now(UTC)
    await produce(settings, qualifying("lead-called", t0))
    await wait_for(settings, settings.handoff, lambda rs: len(rs) == 1)
    contacted_at = datetime.now(UTC)
    await produce(
        settings,
        [activity("lead-called", "call", "contacted", contacted_at, owner="sato")],
        topic=settings.activity,
    )
    await produce(settings, qualifying("lead-sentinel", t0 + timedelta(seconds=1)))

    alerts = alerts_of(await wait_for(settings, settings.alerts, lambda rs: len(rs) >= 1))
    assert [a.lead_id for a in alerts] == ["lead-sentinel"]
    state = await lead_state(settings, "lead-called")
    assert state is not None
    (clock,) = state.clocks
    assert (clock.status, clock.ended_at, state.owner) == ("met", contacted_at, "sato")


async def test_failed_bant_recycles_to_nurture_and_a_later_crossing_is_a_new_handoff(
    settings: Settings, worker: WorkerProcess
) -> None:
    t0 = datetime.now(UTC)
    await produce(settings, qualifying("lead-early", t0))
    first = handoffs_of(await wait_for(settings, settings.handoff, lambda rs: len(rs) == 1))[0]

    bant = {"budget": False, "authority": False, "need": True, "timeframe": False}
    await produce(
        settings,
        [activity("lead-early", "bant-1", "bant_assessed", datetime.now(UTC), bant=bant)],
        topic=settings.activity,
    )
    moves = transitions_of(await wait_for(settings, settings.lifecycle, lambda rs: len(rs) >= 2))
    assert [(t.from_stage, t.to_stage) for t in moves] == [("lead", "mql"), ("mql", "nurture")]
    assert moves[1].missing_bant == ["budget", "authority", "timeframe"]
    assert moves[1].handoff_id == first.handoff_id
    state = await lead_state(settings, "lead-early")
    assert state is not None and state.stage == "nurture"
    assert sum(t.points for t in state.engagement.values()) == 0  # engagement reset

    # Marketing keeps nurturing; the lead crosses again: a new handoff with a new id.
    await produce(settings, qualifying("lead-early", datetime.now(UTC), tag="q2"))
    handoffs = handoffs_of(await wait_for(settings, settings.handoff, lambda rs: len(rs) == 2))
    assert handoffs[1].handoff_id != first.handoff_id
    assert handoffs[1].score == 55 + 5 + 25 + 40
    moves = transitions_of(await wait_for(settings, settings.lifecycle, lambda rs: len(rs) >= 3))
    assert (moves[2].from_stage, moves[2].to_stage, moves[2].handoff_id) == (
        "nurture",
        "mql",
        handoffs[1].handoff_id,
    )


async def test_sql_without_sales_action_breaches_the_follow_up_clock(
    settings: Settings, worker: WorkerProcess
) -> None:
    t0 = datetime.now(UTC)
    await produce(settings, qualifying("lead-sql", t0))
    await wait_for(settings, settings.handoff, lambda rs: len(rs) == 1)
    assessed_at = datetime.now(UTC)
    bant = {"budget": True, "authority": True, "need": True, "timeframe": False}
    await produce(
        settings,
        [activity("lead-sql", "bant", "bant_assessed", assessed_at, bant=bant, owner="suzuki")],
        topic=settings.activity,
    )
    moves = transitions_of(await wait_for(settings, settings.lifecycle, lambda rs: len(rs) >= 2))
    assert (moves[1].from_stage, moves[1].to_stage, moves[1].missing_bant) == (
        "mql",
        "sql",
        [],
    )
    alerts = alerts_of(await wait_for(settings, settings.alerts, lambda rs: len(rs) >= 1))
    follow_up = load_rules(settings.rules).sla.sql_follow_up
    assert [(a.kind, a.owner, a.due_at) for a in alerts] == [
        ("sql_follow_up", "suzuki", assessed_at + follow_up)
    ]  # the first-contact clock was met by the BANT call itself
