"""Routing at handoff with real workers: fair across a restart and across two workers.

The expected shares are the weights' (2:1:1 of 400 is 200, 100, 100, worked out by hand), not
the rotation run a second time."""

from __future__ import annotations

import asyncio
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
import yaml

from streams.settings import Settings
from tests.harness import (
    TEST_RULES,
    WorkerProcess,
    eventually,
    leadflow_cli,
    produce,
    qualifying,
    wait_for,
)

pytestmark = pytest.mark.integration

WEIGHTS = {"sato": 2, "suzuki": 1, "tanaka": 1}
LEADS = 400


def get_json(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(orjson.loads(resp.read()))


def routed_settings(settings: Settings, tmp_path: Path) -> Settings:
    rules = yaml.safe_load(TEST_RULES.read_text())
    rules["routing"] = {
        "queues": [
            {
                "name": "inside-sales",
                "members": [{"owner": o, "weight": w} for o, w in WEIGHTS.items()],
                "escalate_to": "manager",
            }
        ]
    }
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    return settings.model_copy(update={"rules": path})


async def send_leads(settings: Settings, first: int, count: int) -> None:
    start = datetime.now(UTC) - timedelta(hours=1)
    records = [
        r
        for i in range(first, first + count)
        for r in qualifying(f"route-{i:04d}", start + timedelta(seconds=i))
    ]
    await produce(settings, records)


async def handoffs(settings: Settings, leads: int) -> dict[str, dict[str, object]]:
    """The handoff of each lead, once `leads` leads have one (a re-sent handoff must agree)."""
    records = await wait_for(
        settings,
        settings.handoff,
        lambda rs: len({orjson.loads(r.value)["lead_id"] for r in rs}) >= leads,
        within=120,
    )
    by_id: dict[str, dict[str, object]] = {}
    for r in records:
        body = orjson.loads(r.value)
        earlier = by_id.setdefault(body["handoff_id"], body)
        assert earlier["owner"] == body["owner"], "a handoff sent twice went to two owners"
    assert len({h["lead_id"] for h in by_id.values()}) == len(by_id)  # one handoff per lead
    return by_id


def assert_fair(by_id: dict[str, dict[str, object]]) -> None:
    total = sum(WEIGHTS.values())
    counts = Counter(h["owner"] for h in by_id.values())
    ideal = {o: LEADS * w / total for o, w in WEIGHTS.items()}
    assert set(counts) == set(WEIGHTS), counts
    assert all(abs(counts[o] - ideal[o]) <= 1 for o in WEIGHTS), (counts, ideal)
    assert {(h["queue"], h["routing_reason"]) for h in by_id.values()} == {
        ("inside-sales", "round_robin")
    }


async def test_weights_2_1_1_stay_fair_across_a_worker_restart(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    s = routed_settings(settings, tmp_path)
    first = WorkerProcess(s, tmp_path / "worker-1.log")
    workers.append(first.start())
    await first.wait_ready()
    await send_leads(s, 0, LEADS // 2)
    await handoffs(s, LEADS // 2)
    first.kill()  # kill -9: the rotation lives in Redis, not in the process
    second = WorkerProcess(s, tmp_path / "worker-2.log")
    workers.append(second.start())
    await second.wait_ready()
    await send_leads(s, LEADS // 2, LEADS // 2)
    by_id = await handoffs(s, LEADS)
    assert_fair(by_id)

    # The KPIs per owner and queue agree with the handoffs on the topic: in the report...
    on_topic = Counter(str(h["owner"]) for h in by_id.values())
    report = leadflow_cli(s, "report", "--json")
    assert report.returncode == 0, report.stderr
    kpis = orjson.loads(report.stdout)["total"]
    assert {o: v["handoffs"] for o, v in kpis["by_owner"].items()} == on_topic
    assert kpis["by_queue"] == {"inside-sales": {"handoffs": LEADS, "reassigned": 0}}

    # ... and on /metrics (the 7-day window, refreshed every second in tests).
    async def gauges_agree() -> bool:
        got = {
            o: await asyncio.to_thread(
                second.metric, "leadflow_kpi_owner_handoffs", owner=o, window="7d"
            )
            for o in WEIGHTS
        }
        return got == {o: float(n) for o, n in on_topic.items()}

    await eventually(gauges_agree, 30, "the per-owner handoff gauges")


async def test_weights_2_1_1_stay_fair_with_two_workers(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    s = routed_settings(settings, tmp_path)
    pair = [WorkerProcess(s, tmp_path / f"worker-{i}.log") for i in range(2)]
    for w in pair:
        workers.append(w.start())
    for w in pair:
        await w.wait_ready()

    async def both_assigned() -> bool:
        return all(bool((w.health() or {}).get("assigned_partitions")) for w in pair)

    await eventually(both_assigned, 60, "both workers to own partitions")
    await send_leads(s, 0, LEADS)
    by_id = await handoffs(s, LEADS)
    assert_fair(by_id)
    # Both workers routed: the rotation was shared, not two rotations side by side.
    routed = [w.metric("leadflow_handoffs_total") or 0 for w in pair]
    assert all(n > 0 for n in routed), routed


async def test_explain_names_the_routed_owner(
    settings: Settings, tmp_path: Path, workers: list[WorkerProcess]
) -> None:
    s = routed_settings(settings, tmp_path)
    worker = WorkerProcess(s, tmp_path / "worker.log")
    workers.append(worker.start())
    await worker.wait_ready()
    await send_leads(s, 0, 4)
    by_id = await handoffs(s, 4)
    owners = {h["lead_id"]: h["owner"] for h in by_id.values()}
    assert set(owners.values()) <= set(WEIGHTS)
    for lead, owner in owners.items():
        explained = await asyncio.to_thread(get_json, f"{worker.url}/leads/{lead}/explain")
        assert explained["owner"] == owner
        assert explained["routing"] == {
            "owner": owner,
            "queue": "inside-sales",
            "reason": "round_robin",
            "passed_over": [],
        }
    # The command says the same, in words.
    lead, owner = next(iter(owners.items()))
    shown = leadflow_cli(s, "explain", str(lead))
    assert shown.returncode == 0, shown.stderr
    assert (
        f"routed: queue inside-sales: {owner} (its turn in the weighted rotation)" in shown.stdout
    )
