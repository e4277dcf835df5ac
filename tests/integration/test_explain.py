"""Why this score on the real stack: the worker's HTTP page and `leadflow explain`.

A known sequence of events for one lead goes through a real worker; the explanation read over
HTTP and by the command (straight from Redis) must both say what the core says for the same
events: score, reasons (rule names and points), recent events and the stage history.
"""

from __future__ import annotations

import asyncio
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas.activity import SalesActivity
from schemas.engagement import EngagementEvent
from schemas.explain import LeadExplanation
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.bootstrap import open_store
from streams.core.explain import explain
from streams.core.lead import LeadState, apply
from streams.core.rules import load_rules
from streams.core.sales import apply_activity, open_first_contact_clock
from streams.settings import Settings
from tests.harness import (
    WorkerProcess,
    activity,
    engagement,
    eventually,
    leadflow_cli,
    produce,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

LEAD = "lead-explain"
PROFILE = {"industry": "software", "seniority": "vp", "company_size": 500}  # fit 20 + 20 + 15


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(orjson.loads(resp.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(orjson.loads(exc.read()))


def explain_url(worker: WorkerProcess, lead_id: str) -> str:
    return f"{worker.url}/leads/{urllib.parse.quote(lead_id, safe='')}/explain"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return leadflow_cli(settings, *args, timeout=60)


async def read_lead(settings: Settings, lead_id: str) -> LeadState | None:
    store = open_store(settings)
    try:
        return await store.read_lead(lead_id)
    finally:
        await store.close()


@pytest.fixture
async def worker(settings: Settings, workers: list[WorkerProcess], tmp_path: Path) -> WorkerProcess:
    w = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(w)
    await w.wait_ready()
    return w


def the_same_explanation(got: dict[str, Any], expected: LeadExplanation) -> None:
    """Score, reasons, recent events and journey as the core computes them."""
    e = LeadExplanation.model_validate(got)
    assert (e.lead_id, e.stage) == (expected.lead_id, expected.stage)
    assert e.score == pytest.approx(expected.score)
    assert e.fit_score == pytest.approx(expected.fit_score)
    assert e.engagement_score == pytest.approx(expected.engagement_score)
    assert e.points_to_mql == expected.points_to_mql
    assert e.rules_version == expected.rules_version
    assert e.engagement_as_of == expected.engagement_as_of
    assert [(r.kind, r.rule, r.events) for r in e.reasons] == [
        (r.kind, r.rule, r.events) for r in expected.reasons
    ]
    assert [r.points for r in e.reasons] == pytest.approx([r.points for r in expected.reasons])
    assert e.recent_events == expected.recent_events
    assert e.attributes == expected.attributes
    assert e.journey == expected.journey
    assert e.handoff_id == expected.handoff_id
    assert e.qualified_at == expected.qualified_at


async def test_explain_over_http_and_the_command_say_what_the_core_says(
    settings: Settings, worker: WorkerProcess
) -> None:
    rules = load_rules(settings.rules)
    t0 = datetime.now(UTC).replace(microsecond=0)
    # 55 (fit) + 5 (form) + 2 x 5 (opens) + 25 (pricing) = 95; the download (15) makes 110.
    records: list[tuple[bytes | None, bytes]] = [
        engagement(LEAD, "form", "form_submit", t0, attributes=PROFILE),
        engagement(LEAD, "open-1", "email_open", t0),
        engagement(LEAD, "profile", "profile_updated", t0, attributes={"country": "JP"}),
        engagement(LEAD, "open-2", "email_open", t0),
        engagement(LEAD, "pricing", "pricing_page_view", t0),
        engagement(LEAD, "download", "download", t0),
    ]
    await produce(settings, records)
    handoffs = await wait_for(settings, settings.handoff, lambda rs: len(rs) >= 1)
    handoff = MqlHandoff.model_validate_json(handoffs[0].value or b"")
    assert handoff.triggering_event_id == f"{LEAD}-download"

    # The sales side has seen the handoff (its first-contact clock is on the lead)...
    async def clock_started() -> bool:
        state = await read_lead(settings, LEAD)
        return state is not None and any(c.kind == "mql_first_contact" for c in state.clocks)

    await eventually(clock_started, 30, "the first-contact clock of the handoff")
    # ... and a BANT call makes the lead an SQL.
    bant_at = datetime.now(UTC).replace(microsecond=0)
    bant = activity(
        LEAD,
        "bant",
        "bant_assessed",
        bant_at,
        owner="rep-1",
        bant={"budget": True, "authority": True, "need": True, "timeframe": True},
        reason="budget approved",
    )
    await produce(settings, [bant], topic=settings.activity)
    await wait_for(
        settings,
        settings.lifecycle,
        lambda rs: any(
            LifecycleTransition.model_validate_json(r.value or b"").to_stage == "sql" for r in rs
        ),
    )

    # What the core says for the same events, the same handoff and the same BANT call.
    state = LeadState(lead_id=LEAD)
    for _, value in records:
        state, _ = apply(state, EngagementEvent.model_validate_json(value), rules)
    scored = explain(state, rules, datetime.now(UTC))
    state = open_first_contact_clock(state, handoff, rules, bant_at)
    state, _ = apply_activity(state, SalesActivity.model_validate_json(bant[1]), rules, bant_at)
    expected = explain(state, rules, datetime.now(UTC))
    assert (expected.score, expected.reasons) == (scored.score, scored.reasons)
    assert expected.score == 110
    assert [(r.rule, r.points) for r in expected.reasons] == [
        ("pricing_page_view", 25),
        ("Decision maker", 20),
        ("Target industry", 20),
        ("download", 15),  # a tie: engagement before fit, then by name (as on the handoff)
        ("Company size 100-5000", 15),
        ("email_open", 10),
        ("form_submit", 5),
    ]
    assert (expected.stage, expected.points_to_mql) == ("sql", None)
    assert [(j.from_stage, j.to_stage, j.handoff_id) for j in expected.journey] == [
        ("lead", "mql", handoff.handoff_id),
        ("mql", "sql", handoff.handoff_id),
    ]
    assert expected.journey[0].at == t0 and expected.journey[1].at == bant_at
    assert expected.journey[1].reason == "budget approved"
    assert [ev.event_id for ev in expected.recent_events] == [
        f"{LEAD}-{n}" for n in ("form", "open-1", "open-2", "pricing", "download")
    ]

    # (a) over real HTTP from the worker
    status, body = await asyncio.to_thread(http_get, explain_url(worker, LEAD))
    assert status == 200, body
    the_same_explanation(body, expected)
    over_http = LeadExplanation.model_validate(body)
    assert over_http.reasons[: rules.reasons_limit] == handoff.reasons  # the handoff's words
    assert over_http.owner == "rep-1"
    clocks = {c.kind: c for c in over_http.clocks}
    assert clocks["mql_first_contact"].handoff_id == handoff.handoff_id
    assert clocks["mql_first_contact"].due_at == handoff.first_contact_due_at
    assert clocks["sql_follow_up"].due_at == bant_at + rules.sla.sql_follow_up
    for d in over_http.open_deadlines:  # whatever the sweeper has done by now
        assert d.overdue == (over_http.now >= d.due_at)

    # (b) `leadflow explain --json`, straight from Redis, with the same LEADFLOW_* settings
    done = await asyncio.to_thread(cli, settings, "explain", LEAD, "--json")
    assert done.returncode == 0, done.stderr
    the_same_explanation(orjson.loads(done.stdout), expected)

    # The follow-up deadline passes without a sales action: the sweeper breaches it, and the
    # explanation shows the clock's verdict instead of an open deadline.
    async def follow_up_breached() -> bool:
        _, body = await asyncio.to_thread(http_get, explain_url(worker, LEAD))
        e = LeadExplanation.model_validate(body)
        return any(c.kind == "sql_follow_up" and c.status == "breached" for c in e.clocks) and all(
            d.kind != "sql_follow_up" for d in e.open_deadlines
        )

    await eventually(follow_up_breached, 30, "the follow-up clock to be breached")

    # The rich view names the stage, the score and the rules.
    shown = await asyncio.to_thread(cli, settings, "explain", LEAD)
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.replace("│", " ").replace("┃", " ").split())
    assert f"{LEAD} stage sql score 110 vs threshold 100" in text
    for rule in ("pricing_page_view", "Decision maker", "Company size 100-5000", "email_open"):
        assert rule in text
    assert f"{LEAD}-pricing" in text
    assert "mql sql budget approved" in text


async def test_an_unknown_lead_is_a_404_and_exit_code_1_naming_it(
    settings: Settings, worker: WorkerProcess
) -> None:
    status, body = await asyncio.to_thread(http_get, explain_url(worker, "nobody-here"))
    assert status == 404
    assert body["error"] == "unknown lead"
    assert body["lead_id"] == "nobody-here"

    done = await asyncio.to_thread(cli, settings, "explain", "nobody-here", "--json")
    assert done.returncode == 1
    assert done.stdout == ""
    message = " ".join(done.stderr.split())
    assert "'nobody-here' is not known in namespace" in message
    assert settings.namespace in message
    assert "LEADFLOW_NAMESPACE" in message


async def test_bad_lead_ids_are_a_400_and_odd_ones_work(
    settings: Settings, worker: WorkerProcess
) -> None:
    status, body = await asyncio.to_thread(http_get, f"{worker.url}/leads//explain")
    assert (status, body) == (400, {"error": "lead id is empty"})
    status, body = await asyncio.to_thread(http_get, explain_url(worker, "x" * 257))
    assert status == 400
    assert "257" in body["error"]

    # A slash, a space and non-ASCII in a lead id: quoted in the URL, found as stored.
    odd = "acme/lead 1-ü"
    now = datetime.now(UTC)
    await produce(settings, [engagement(odd, "1", "download", now)])

    async def known() -> bool:
        return await read_lead(settings, odd) is not None

    await eventually(known, 30, "the odd lead to be stored")
    status, body = await asyncio.to_thread(http_get, explain_url(worker, odd))
    assert status == 200, body
    assert body["lead_id"] == odd
    assert [(r["rule"], r["points"]) for r in body["reasons"]] == [("download", 15)]


async def test_after_a_rescore_both_explain_the_live_key_space_under_its_rules(
    settings: Settings, worker: WorkerProcess, tmp_path: Path
) -> None:
    old_rules = load_rules(settings.rules)
    lead = "lead-rescored"
    now = datetime.now(UTC)
    # 55 (fit) + 5 (form) + 15 (download) = 75: short of 100, an MQL at a threshold of 60.
    await produce(
        settings,
        [
            engagement(lead, "form", "form_submit", now, attributes=PROFILE),
            engagement(lead, "download", "download", now),
        ],
    )

    async def scored() -> bool:
        state = await read_lead(settings, lead)
        return state is not None and state.events_counted == 2

    await eventually(scored, 30, "the lead to be scored")
    status, body = await asyncio.to_thread(http_get, explain_url(worker, lead))
    assert status == 200, body
    assert (body["stage"], body["score"], body["points_to_mql"]) == ("lead", 75, 25)

    data = old_rules.model_dump(mode="json", by_alias=True)
    data["mql"]["threshold"] = 60
    new_path = tmp_path / "rules-60.yaml"
    new_path.write_text(yaml.safe_dump(data), encoding="utf-8")
    new_rules = load_rules(new_path)
    done = await asyncio.to_thread(cli, settings, "rescore", "--rules", str(new_path), "--yes")
    assert done.returncode == 0, done.stderr[-3000:]

    # The worker was started with the old rules file; the live key space has the new rules.
    status, body = await asyncio.to_thread(http_get, explain_url(worker, lead))
    assert status == 200, body
    over_http = LeadExplanation.model_validate(body)
    assert (over_http.rules_version, over_http.threshold) == (new_rules.version, 60)
    assert (over_http.stage, over_http.score, over_http.points_to_mql) == ("mql", 75, None)
    assert over_http.journey[-1].to_stage == "mql"

    # The held handoff goes out after the switch and the sales side starts its clock.
    async def clock_started() -> bool:
        _, body = await asyncio.to_thread(http_get, explain_url(worker, lead))
        return bool(body["clocks"])

    await eventually(clock_started, 30, "the first-contact clock of the held handoff")
    _, body = await asyncio.to_thread(http_get, explain_url(worker, lead))
    over_http = LeadExplanation.model_validate(body)

    # The command, still configured with the old rules file, says which rules it used.
    shown = await asyncio.to_thread(cli, settings, "explain", lead, "--json")
    assert shown.returncode == 0, shown.stderr
    from_cli = LeadExplanation.model_validate_json(shown.stdout)
    moving = {"now", "open_deadlines", "clocks"}  # the 5 s deadline may pass between the reads
    assert from_cli.model_dump(exclude=moving) == over_http.model_dump(exclude=moving)
    assert f"explained under the live rules {new_rules.version}" in " ".join(shown.stderr.split())
