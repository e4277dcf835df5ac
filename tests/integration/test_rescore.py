"""`leadflow rescore` on the real stack: same state as a fresh fold under the new rules,
no second handoff for leads already handed off, and the live worker switches over."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.bootstrap import open_store
from streams.core.lead import LeadState
from streams.core.rules import Rules, load_rules
from streams.jobs.sample import generate
from streams.settings import Settings
from streams.store.codec import lead_to_json
from tests.harness import (
    WorkerProcess,
    activity,
    consumer_caught_up,
    eventually,
    produce,
    qualifying,
    read_topic,
    wait_for,
)
from tests.oracle import expected_outcome

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SCORING = (
    "attributes",
    "engagement",
    "engagement_as_of",
    "daily_points",
    "events_counted",
    "last_event_at",
    "recent_events",
)


def scoring_part(state: LeadState) -> dict[str, object]:
    data = lead_to_json(state)
    return {k: data[k] for k in SCORING}


def with_threshold(rules: Rules, threshold: float, path: Path) -> Path:
    data = rules.model_dump(mode="json", by_alias=True)
    data["mql"]["threshold"] = threshold
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def handoffs(records: list) -> list[MqlHandoff]:  # type: ignore[type-arg]
    return [MqlHandoff.model_validate_json(r.value) for r in records]


async def test_rescore_rebuilds_under_new_rules_and_switches_the_live_worker(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    old_rules = load_rules(settings.rules)
    new_rules_path = with_threshold(old_rules, 80, tmp_path / "rules-80.yaml")
    new_rules = load_rules(new_rules_path)

    records = generate(leads=200, events=2000, seed=31, invalid_every=200)
    await produce(settings, [(r.key, r.value) for r in records])
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 120, "the backlog to be scored")

    before = handoffs(await read_topic(settings, settings.handoff))
    old = expected_outcome(records, old_rules, settings)
    assert {h.handoff_id for h in before} == set(old.handoffs)
    # Sales accepts one of them: its stage must survive the rescore.
    accepted = before[0].lead_id
    bant = {"budget": True, "authority": True, "need": True, "timeframe": True}
    await produce(
        settings,
        [activity(accepted, "bant", "bant_assessed", datetime.now(UTC), bant=bant)],
        topic=settings.activity,
    )
    await wait_for(
        settings,
        settings.lifecycle,
        lambda rs: any(
            LifecycleTransition.model_validate_json(r.value).to_stage == "sql" for r in rs
        ),
    )

    env = {
        **os.environ,
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(settings.rules),
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", "rescore", "--rules", str(new_rules_path), "--yes"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "key space 0 -> 1" in done.stdout

    new = expected_outcome(records, new_rules, settings)
    store = open_store(settings)
    try:
        generation = await store.active_generation()
        rebuilt = await store.at_generation(1).read_all_leads()
        previous_left = await store.read_all_leads()
    finally:
        await store.close()
    assert (generation.number, generation.rules_version) == (1, new_rules.version)
    assert previous_left == {}  # the old key space is gone
    # Same scores as a fresh fold of the same log under the new rules.
    assert set(rebuilt) == set(new.leads)
    assert [x for x in new.leads if scoring_part(rebuilt[x]) != scoring_part(new.leads[x])] == []
    # Sales' decisions and earlier handoffs are kept; newly qualifying leads are MQLs now.
    assert rebuilt[accepted].stage == "sql"
    handed_before = {h.lead_id for h in before}
    newly = {h.lead_id: h for h in new.handoffs.values() if h.lead_id not in handed_before}
    assert newly, "the lower threshold should qualify more leads"
    assert all(rebuilt[x].stage == "mql" for x in newly)

    # The held handoffs go out after the switch; nobody already handed off gets a second one.
    expected_ids = {h.handoff_id for h in before} | {h.handoff_id for h in newly.values()}
    after = handoffs(
        await wait_for(
            settings,
            settings.handoff,
            lambda rs: {h.handoff_id for h in handoffs(rs)} >= expected_ids,
            within=60,
        )
    )
    assert {h.handoff_id for h in after} == expected_ids
    assert all(h.rules_version == new_rules.version for h in after if h.lead_id in newly)

    # The live worker now scores with the new rules in the new key space.
    async def switched() -> bool:
        health = worker.health()
        return health is not None and health["rules_version"] == new_rules.version

    await eventually(switched, 10, "the worker to adopt the new rules")
    await produce(settings, qualifying("lead-after-switch", datetime.now(UTC))[:2])  # 85 points
    fresh = await wait_for(
        settings,
        settings.handoff,
        lambda rs: any(h.lead_id == "lead-after-switch" for h in handoffs(rs)),
        within=60,
    )
    (late,) = [h for h in handoffs(fresh) if h.lead_id == "lead-after-switch"]
    assert (late.threshold, late.rules_version) == (80, new_rules.version)


async def test_sales_changes_during_the_rescore_are_kept(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    """A lead that sales accepts while the rescore is building is an SQL after the switch."""
    from streams.jobs.rescore import Rescore

    records = generate(leads=60, events=600, seed=5, hot_share=1.0)
    await produce(settings, [(r.key, r.value) for r in records])
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    await eventually(lambda: consumer_caught_up(settings), 120, "the backlog to be scored")
    accepted = handoffs(await read_topic(settings, settings.handoff))[0].lead_id
    bant = {"budget": True, "authority": True, "need": True, "timeframe": True}

    class SalesActWhileBuilding(Rescore):
        acted = False

        async def _catch_up(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            if not self.acted:  # the build is done, the switch has not begun
                self.acted = True
                sale = activity(accepted, "bant", "bant_assessed", datetime.now(UTC), bant=bant)
                await produce(settings, [sale], topic=settings.activity)
                await wait_for(
                    settings,
                    settings.lifecycle,
                    lambda rs: any(
                        LifecycleTransition.model_validate_json(r.value).to_stage == "sql"
                        for r in rs
                    ),
                )
            return await super()._catch_up(*args, **kwargs)

    new_rules = load_rules(with_threshold(load_rules(settings.rules), 90, tmp_path / "r.yaml"))
    summary = await SalesActWhileBuilding(settings, new_rules).run()
    assert summary.leads_merged >= 1

    store = open_store(settings)
    try:
        state = await store.at_generation(1).read_lead(accepted)
    finally:
        await store.close()
    assert state is not None and state.stage == "sql"
    assert [c.kind for c in state.clocks if c.status == "open"] == ["sql_follow_up"]
