"""The README's main job: `leadflow demo` shows the whole loop, and what it shows is true."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.settings import Settings
from tests.harness import free_port, read_topic

pytestmark = pytest.mark.integration

DEMO_RULES = Path(__file__).resolve().parents[2] / "rules" / "demo.yaml"


async def test_demo_shows_handoffs_sales_outcomes_and_a_breach(
    settings: Settings, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(DEMO_RULES),
        "LEADFLOW_WEB_PORT": str(free_port()),
        "LEADFLOW_DEMO_LOG": str(tmp_path / "worker.log"),
        "COLUMNS": "200",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "streams.cli", "demo", "--rate", "2000"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shown = done.stdout

    # Every handoff, stage change and alert printed is on its topic, and nothing is missing.
    handoffs = [
        MqlHandoff.model_validate_json(r.value)
        for r in await read_topic(settings, settings.handoff)
    ]
    moves = [
        LifecycleTransition.model_validate_json(r.value)
        for r in await read_topic(settings, settings.lifecycle)
    ]
    alerts = [
        SlaAlert.model_validate_json(r.value) for r in await read_topic(settings, settings.alerts)
    ]
    assert sorted(re.findall(r"^MQL (\S+)", shown, re.M)) == sorted(h.lead_id for h in handoffs)
    stages = Counter(t.to_stage for t in moves)
    assert stages["mql"] == len(handoffs)
    assert stages["sql"] > 0 and stages["nurture"] > 0  # the whole loop ran
    breaches = [a for a in alerts if a.severity == "breach"]
    assert len(breaches) >= 1
    # The demo rules route at handoff (rules/demo.yaml): every MQL has an owner from its queue
    # from the start, so no breach goes to "unassigned".
    members = {"enterprise": {"sato", "suzuki", "tanaka"}, "inside-sales": {"abe", "ito"}}
    assert all(h.owner in members.get(h.queue or "", set()) for h in handoffs), handoffs
    owner_of = {h.handoff_id: h.owner for h in handoffs}
    assert all(a.owner is not None and a.owner == owner_of[a.handoff_id] for a in breaches)
    assert "unassigned" not in shown
    assert sorted(re.findall(r"^SLA BREACH (\S+)", shown, re.M)) == sorted(
        a.lead_id for a in breaches
    )

    summary = re.search(
        r"(\d+) events played, (\d+) leads handed off.*?(\d+) SQL, (\d+) back to nurture.*?"
        r"(\d+) disqualified; (\d+) SLA breaches; (\d+) bad records",
        shown,
        re.S,
    )
    assert summary is not None, shown[-2000:]
    played, handed, sql, nurture, dq, breached, bad = map(int, summary.groups())
    assert (handed, sql, nurture, dq, breached) == (
        len(handoffs),
        stages["sql"],
        stages["nurture"],
        stages["disqualified"],
        len(breaches),
    )
    assert bad == len(await read_topic(settings, settings.deadletter)) > 0
    assert played > handed
