"""Two workers in one group, one killed mid-run: still exactly one alert per missed deadline."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from schemas.alert import SlaAlert
from streams.settings import Settings
from tests.harness import WorkerProcess, activity, produce, qualifying, read_topic, wait_for

pytestmark = pytest.mark.chaos

LEADS = 120


async def test_one_alert_per_deadline_with_two_workers_and_a_kill(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    first = WorkerProcess(settings, tmp_path / "a.log").start()
    second = WorkerProcess(settings, tmp_path / "b.log").start()
    workers += [first, second]
    await first.wait_ready()
    await second.wait_ready()

    async def both_assigned() -> bool:
        a, b = first.health(), second.health()
        return bool(a and b and a["assigned_partitions"] and b["assigned_partitions"])

    from tests.harness import eventually

    await eventually(both_assigned, 60, "both workers to own partitions")

    # 120 leads qualify 40 ms apart (deadlines spread over ~5 s); every even lead is contacted
    # in time, some of those contacts arrive before the sales side has seen the handoff.
    t0 = datetime.now(UTC) + timedelta(seconds=1)
    engagement, activities = [], []
    for i in range(LEADS):
        lead, at = f"lead-{i:03d}", t0 + timedelta(milliseconds=40 * i)
        engagement += qualifying(lead, at)
        if i % 2 == 0:
            activities.append(activity(lead, "call", "contacted", at + timedelta(seconds=1)))
    await produce(settings, activities, topic=settings.activity)
    await produce(settings, engagement)

    # Kill one worker while deadlines are coming due.
    await wait_for(settings, settings.alerts, lambda rs: len(rs) >= 5, within=60)
    first.kill()

    missed = {f"lead-{i:03d}" for i in range(LEADS) if i % 2 == 1}
    records = await wait_for(
        settings,
        settings.alerts,
        lambda rs: len({SlaAlert.model_validate_json(r.value).lead_id for r in rs}) >= len(missed),
        within=120,
    )
    # A later deadline as a sentinel: once its alert is out, any duplicate would be out too.
    sentinel_at = datetime.now(UTC)
    await produce(settings, qualifying("lead-sentinel", sentinel_at))
    records = await wait_for(
        settings,
        settings.alerts,
        lambda rs: any(
            SlaAlert.model_validate_json(r.value).lead_id == "lead-sentinel" for r in rs
        ),
        within=60,
    )
    alerts = [SlaAlert.model_validate_json(r.value) for r in records]
    per_lead = Counter(a.lead_id for a in alerts if a.lead_id != "lead-sentinel")
    assert set(per_lead) == missed  # none for the leads that were contacted in time
    assert Counter(per_lead.values()) == Counter({1: len(missed)})  # exactly one each
    assert len({a.alert_id for a in alerts}) == len(alerts)
    assert await read_topic(settings, settings.deadletter) == []
