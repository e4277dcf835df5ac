"""The escalation ladder with a real worker: a routed lead nobody contacts is escalated, passed
to the next member of its queue, and escalated again for the new owner.

Expected values come from the rules as documented (docs/routing.md, "Escalation ladder"): the
queue lists sato then suzuki with equal weights, so the rotation gives the first lead to sato
(a tie goes to the member listed first); the first-contact window is 5 s, so the first deadline
is qualified_at + 5 s and the reassigned clock, which starts at that deadline, is due 5 s later.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from schemas.alert import SlaAlert
from schemas.lifecycle import LifecycleTransition
from streams.settings import Settings
from tests.harness import TEST_RULES, WorkerProcess, produce, qualifying, read_topic, wait_for

pytestmark = pytest.mark.integration

WINDOW = timedelta(seconds=5)  # sla.mql_first_contact in tests/data/rules.yaml


def escalating_settings(settings: Settings, tmp_path: Path) -> Settings:
    rules = yaml.safe_load(TEST_RULES.read_text())
    assert rules["sla"]["mql_first_contact"] == "5s"
    rules["routing"] = {
        "queues": [
            {
                "name": "inside-sales",
                "members": [{"owner": "sato"}, {"owner": "suzuki"}],
                "escalate_to": "manager",
            }
        ],
        "reassign_after_breach": True,
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return settings.model_copy(update={"rules": path})


async def test_a_missed_first_contact_escalates_and_moves_to_the_next_member(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    s = escalating_settings(settings, tmp_path)
    worker = WorkerProcess(s, tmp_path / "worker.log")
    workers.append(worker.start())
    await worker.wait_ready()

    t0 = datetime.now(UTC).replace(microsecond=0)
    await produce(s, qualifying("lead-ignored", t0))

    records = await wait_for(s, s.alerts, lambda rs: len(rs) >= 2, within=60)
    first, second = sorted(
        (SlaAlert.model_validate_json(r.value) for r in records), key=lambda a: a.due_at
    )
    assert (first.kind, first.severity, first.lead_id) == (
        "mql_first_contact",
        "breach",
        "lead-ignored",
    )
    assert (first.owner, first.escalated_to, first.queue) == ("sato", "manager", "inside-sales")
    assert first.due_at == t0 + WINDOW

    lifecycle = [
        LifecycleTransition.model_validate_json(r.value) for r in await read_topic(s, s.lifecycle)
    ]
    (moved,) = [t for t in lifecycle if t.kind == "reassigned"]
    assert (moved.from_owner, moved.to_owner, moved.reason) == ("sato", "suzuki", "sla_breach")
    assert (moved.from_stage, moved.to_stage) == ("mql", "mql")
    assert moved.occurred_at == t0 + WINDOW
    assert moved.handoff_id == first.handoff_id

    assert (second.kind, second.severity, second.handoff_id) == (
        "mql_first_contact",
        "breach",
        first.handoff_id,
    )
    assert (second.owner, second.escalated_to) == ("suzuki", "manager")
    assert second.due_at == t0 + 2 * WINDOW
    assert second.alert_id != first.alert_id

    # Both members have missed it: no third owner, and no alert sent twice.
    await asyncio.sleep(2 * WINDOW.total_seconds())  # a third deadline would have passed
    alerts = [SlaAlert.model_validate_json(r.value) for r in await read_topic(s, s.alerts)]
    assert len({a.alert_id for a in alerts}) == len(alerts) == 2
    lifecycle = [
        LifecycleTransition.model_validate_json(r.value) for r in await read_topic(s, s.lifecycle)
    ]
    assert [t.kind for t in lifecycle].count("reassigned") == 1
