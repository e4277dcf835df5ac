"""`leadflow report` after a small real run: the figures equal what this test sent.

The test rules give a 5 s first-contact window and an 8 s follow-up window. Five leads
qualify now; sales passes one through BANT (SQL, a sales action, won), fails one (nurture),
calls one in time, calls one only after its breach alert (late) and never calls the fifth.
The expectations below are worked out from those inputs, not read from the report.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from schemas.alert import SlaAlert
from schemas.lifecycle import LifecycleTransition
from streams.bootstrap import open_store
from streams.core.rules import load_rules
from streams.settings import Settings
from tests.harness import (
    ROOT,
    Consumed,
    WorkerProcess,
    activity,
    eventually,
    produce,
    qualifying,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PASS = {"budget": True, "authority": True, "need": True, "timeframe": False}
FAIL = {"budget": False, "authority": False, "need": True, "timeframe": False}


def report(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "LEADFLOW_NAMESPACE": settings.namespace,
        "LEADFLOW_RULES": str(settings.rules),
        "LEADFLOW_REDIS_URL": settings.redis_url.get_secret_value(),
        "LEADFLOW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "COLUMNS": "200",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "report", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def body_of(record: Consumed) -> bytes:
    assert record.value is not None
    return record.value


def quantiles(samples: list[float]) -> tuple[float, float]:
    """Median and p90, linear between closest ranks, worked out independently of the report."""
    if len(samples) == 1:
        return samples[0], samples[0]
    cuts = statistics.quantiles(samples, n=10, method="inclusive")
    return statistics.median(samples), cuts[8]


async def test_report_figures_equal_the_inputs_of_a_real_run(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    rules = load_rules(settings.rules)
    zone = ZoneInfo(rules.reporting.timezone)

    leads = ["lead-pass", "lead-fail", "lead-called", "lead-late", "lead-silent"]
    t0 = datetime.now(UTC)
    await produce(settings, [r for lead in leads for r in qualifying(lead, t0)])
    await wait_for(settings, settings.handoff, lambda rs: len(rs) == len(leads))

    # In time: a call, BANT passed (SQL) and failed (nurture); each well inside 5 s.
    contact: dict[str, datetime] = {}
    contact["lead-called"] = datetime.now(UTC)
    contact["lead-pass"] = datetime.now(UTC)
    contact["lead-fail"] = datetime.now(UTC)
    await produce(
        settings,
        [
            activity("lead-called", "call", "contacted", contact["lead-called"], owner="sato"),
            activity("lead-pass", "call", "contacted", contact["lead-pass"], owner="sato"),
            activity("lead-fail", "bant", "bant_assessed", contact["lead-fail"], bant=FAIL),
        ],
        topic=settings.activity,
    )
    sql_at = datetime.now(UTC)
    await produce(
        settings,
        [activity("lead-pass", "bant", "bant_assessed", sql_at, bant=PASS, owner="sato")],
        topic=settings.activity,
    )

    def moved(to: str, lead: str) -> Callable[[list[Consumed]], bool]:
        def done(records: list[Consumed]) -> bool:
            ts = [LifecycleTransition.model_validate_json(body_of(r)) for r in records]
            return any(t.to_stage == to and t.lead_id == lead for t in ts)

        return done

    await wait_for(settings, settings.lifecycle, moved("sql", "lead-pass"))
    acted_at = datetime.now(UTC)
    await produce(
        settings,
        [
            activity("lead-pass", "act", "sales_action", acted_at),
            activity("lead-pass", "won", "won", datetime.now(UTC), reason="signed"),
        ],
        topic=settings.activity,
    )
    await wait_for(settings, settings.lifecycle, moved("won", "lead-pass"))
    await wait_for(settings, settings.lifecycle, moved("nurture", "lead-fail"))

    # Nobody calls lead-late and lead-silent: both breach; then lead-late gets a late call.
    def breached(records: list[Consumed]) -> bool:
        alerts = [SlaAlert.model_validate_json(body_of(r)) for r in records]
        return {a.lead_id for a in alerts if a.severity == "breach"} >= {"lead-late", "lead-silent"}

    await wait_for(settings, settings.alerts, breached, within=30)
    contact["lead-late"] = datetime.now(UTC)
    await produce(
        settings,
        [activity("lead-late", "call", "contacted", contact["lead-late"], owner="abe")],
        topic=settings.activity,
    )
    store = open_store(settings)
    try:

        async def late_call_recorded() -> bool:
            state = await store.read_lead("lead-late")
            return state is not None and state.clocks[0].late_action_at is not None

        await eventually(late_call_recorded, 30, "the late call on lead-late")
    finally:
        await store.close()

    # What this test did, counted from its own inputs.
    contacted_in_time = ["lead-pass", "lead-fail", "lead-called"]
    never_in_time = ["lead-late", "lead-silent"]
    first_contact = [(contact[lead] - t0).total_seconds() for lead in contact]
    contact_p50, contact_p90 = quantiles(first_contact)
    expected_total = {
        "mqls": len(leads),
        "sqls": 1,
        "nurture": 1,
        "disqualified": 0,
        "won": 1,
        "lost": 0,
        "missing_bant": {c: int(not ok) for c, ok in FAIL.items()},
        "cohort": {"sql": 1, "won": 1, "lost": 0},
        "mql_to_sql": 1 / len(leads),
        "sql_to_won": 1.0,
        "sql_to_lost": 0.0,
        "sla": {
            "mql_first_contact": {
                "met": len(contacted_in_time),
                "breached": len(never_in_time),
                "expired": 0,
                "closed": 0,
                "late": 1,
                "compliance": len(contacted_in_time) / len(leads),
            },
            "sql_follow_up": {
                "met": 1,
                "breached": 0,
                "expired": 0,
                "closed": 0,
                "late": 0,
                "compliance": 1.0,
            },
        },
        # Nobody owned the two leads when their clocks breached (owners come with the calls).
        "breaches_by_owner": {"-": len(never_in_time)},
    }

    # --days N: the days from the run's start to today in the reporting time zone (1 unless
    # the run crossed midnight there).
    days = (datetime.now(zone).date() - t0.astimezone(zone).date()).days + 1
    result = report(settings, "--days", str(days), "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["namespace"] == settings.namespace and body["has_data"] is True
    total = body["total"]
    assert {k: total[k] for k in expected_total} == expected_total
    assert total["time_to_first_contact"]["samples"] == len(first_contact)
    assert total["time_to_first_contact"]["median_seconds"] == pytest.approx(contact_p50)
    assert total["time_to_first_contact"]["p90_seconds"] == pytest.approx(contact_p90)
    assert total["time_to_sales_action"] == {
        "samples": 1,
        "median_seconds": pytest.approx((acted_at - sql_at).total_seconds()),
        "p90_seconds": pytest.approx((acted_at - sql_at).total_seconds()),
    }
    assert sum(p["mqls"] for p in body["periods"]) == len(leads)

    # The table says the same, and the charts are drawn.
    charts = tmp_path / "charts"
    shown = report(settings, "--days", str(days), "--period", "day", "--charts", str(charts))
    assert shown.returncode == 0, shown.stderr
    # In a pipe the tables are TSV: one row per line, tab-separated.
    total_rows = [ln for ln in shown.stdout.splitlines() if ln.startswith("total\t")]
    assert len(total_rows) == 2, shown.stdout
    assert total_rows[0].split("\t") == [
        "total",
        str(len(leads)),
        "1",
        "1",
        "0",
        "1",
        "0",
        f"{100 / len(leads):.1f}%",
        "100.0%",
    ]
    assert f"{100 * 3 / 5:.1f}% (3/5)" in total_rows[1]
    for name in ("funnel.png", "trend.png"):
        data = (charts / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


async def test_report_without_data_says_what_to_run(settings: Settings) -> None:
    result = report(settings, "--days", "7")
    assert result.returncode == 0, result.stderr
    assert "No KPI data yet" in result.stderr and "leadflow worker" in result.stderr
    assert result.stdout == ""
