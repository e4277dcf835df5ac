"""The identity agent in a real `leadflow worker`, on the real broker and Redis: a visitor's
anonymous events count for the lead it turns out to be, once, whatever the order, across a
kill -9 and a replay of the whole anonymous topic.

The oracle is the reference model (tests/reference, no `streams` code) fed the lead's own
events and its visitors' events in event time.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from schemas.handoff import MqlHandoff
from streams.bootstrap import open_store
from streams.core.lead import score
from streams.core.rules import load_rules
from streams.settings import Settings
from tests.harness import WorkerProcess, eventually, produce, read_topic
from tests.reference import Reference, event_from

pytestmark = pytest.mark.integration

T = datetime.now(UTC).replace(microsecond=0) - timedelta(days=5)
PROFILE = {"industry": "software", "seniority": "vp", "company_size": 500}  # fit 55


def visit(n: int, visitor: str, kind: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": f"web-{n}",
        "anonymous_id": visitor,
        "type": kind,
        "occurred_at": at.isoformat(),
        "properties": {"path": "/pricing"},
    }


def identify(n: int, visitor: str, lead: str, at: datetime) -> dict[str, Any]:
    return {
        "event_id": f"idf-{n}",
        "anonymous_id": visitor,
        "lead_id": lead,
        "type": "identify",
        "occurred_at": at.isoformat(),
    }


def lead_event(n: int, lead: str, kind: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": f"crm-{n}",
        "lead_id": lead,
        "type": kind,
        "occurred_at": at.isoformat(),
        **extra,
    }


def records(values: list[dict[str, Any]], key: str) -> list[tuple[bytes | None, bytes]]:
    return [(str(v[key]).encode(), orjson.dumps(v)) for v in values]


# Two devices of one visitor-turned-lead; at most two pricing views per UTC day, so the daily
# cap (50) is reached but never cut into, and the score does not depend on arrival order.
BEFORE = [
    visit(1, "anon-phone", "pricing_page_view", T),
    visit(2, "anon-phone", "pricing_page_view", T + timedelta(hours=1)),
    visit(3, "anon-laptop", "case_study_view", T + timedelta(days=1)),
    visit(4, "anon-phone", "page_view", T + timedelta(days=1, hours=2)),
]
AFTER = [
    visit(5, "anon-laptop", "pricing_page_view", T + timedelta(days=3, hours=1)),
    visit(6, "anon-phone", "webinar_attended", T + timedelta(days=3, hours=2)),
]
OWN = [lead_event(1, "lead-1", "form_submit", T + timedelta(days=3), attributes=PROFILE)]
IDENTIFIES = [
    identify(1, "anon-phone", "lead-1", T + timedelta(days=3)),
    identify(2, "anon-laptop", "lead-1", T + timedelta(days=3, minutes=5)),
]
CONFLICT = identify(3, "anon-phone", "lead-2", T + timedelta(days=4))  # refused: lead-1's


def expected_score(rules_path: Path) -> tuple[float, float]:
    events = [{**v, "lead_id": "lead-1"} for v in [*BEFORE, *AFTER]] + OWN
    typed = [
        {**e, "occurred_at": datetime.fromisoformat(e["occurred_at"])}
        for e in sorted(events, key=lambda e: e["occurred_at"])
    ]
    reference = Reference(yaml.safe_load(rules_path.read_text()))
    reference.run(event_from(e) for e in typed)
    lead = reference.leads["lead-1"]
    return lead.fit(reference.rules), lead.engagement(reference.rules)


async def lead_score(settings: Settings) -> tuple[float, float] | None:
    store = open_store(settings)
    try:
        state = await store.read_lead("lead-1")
    finally:
        await store.close()
    if state is None:
        return None
    now = score(state, load_rules(settings.rules))
    return now.fit, now.engagement


async def test_anonymous_visits_count_once_for_the_lead_whatever_the_order_and_a_crash(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    want = expected_score(settings.rules)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    workers.append(worker.start())
    await worker.wait_ready()

    # Visits before anyone knows the visitor; the form (a lead event) and the identifies; visits
    # after (forwarded at once); a retried identify, a duplicate visit and a second lead's claim.
    await produce(settings, records(BEFORE, "anonymous_id"), settings.anonymous)
    await produce(settings, records(OWN, "lead_id"))
    await produce(settings, records(IDENTIFIES, "anonymous_id"), settings.anonymous)
    await produce(
        settings,
        records([*AFTER, IDENTIFIES[0], BEFORE[0], CONFLICT], "anonymous_id"),
        settings.anonymous,
    )

    async def scored_as_expected() -> bool:
        got = await lead_score(settings)
        return got is not None and all(
            math.isclose(g, w, abs_tol=1.5e-6) for g, w in zip(got, want, strict=True)
        )

    await eventually(scored_as_expected, 60, f"lead-1 to score {want}")

    async def conflict_counted() -> bool:
        return worker.metric("leadflow_identity_conflicts_total") == 1.0

    await eventually(conflict_counted, 20, "the refused claim on /metrics")
    # Bad records of leads.anonymous are dead-lettered with the reason, byte for byte.
    wrong_key = orjson.dumps(visit(90, "anon-x", "page_view", T))
    unknown = orjson.dumps(visit(91, "anon-x", "pricing_view", T))
    await produce(settings, [(b"anon-y", wrong_key), (b"anon-x", unknown)], settings.anonymous)

    async def dead_lettered() -> bool:
        return len(await read_topic(settings, settings.deadletter)) >= 2

    await eventually(dead_lettered, 30, "two dead letters")
    letters = {
        r.value: dict((k, v.decode()) for k, v in r.headers)
        for r in await read_topic(settings, settings.deadletter)
    }
    assert letters[wrong_key]["leadflow.error.kind"] == "key_mismatch"
    assert letters[unknown]["leadflow.error.kind"] == "unknown_type"
    assert letters[unknown]["leadflow.error.message"].startswith("type: ")
    assert letters[unknown]["leadflow.source.topic"] == settings.anonymous
    handoffs = [
        MqlHandoff.model_validate_json(r.value or b"")
        for r in await read_topic(settings, settings.handoff)
    ]
    assert [h.lead_id for h in handoffs] == ["lead-1"]
    reasons = {r.rule: r for r in handoffs[0].reasons if r.kind == "engagement"}
    # The pricing views the visitor made before the form are part of the MQL.
    assert reasons["pricing_page_view"].events is not None
    assert reasons["pricing_page_view"].events >= 2
    # Forwarded under their own ids, keyed by the lead.
    forwarded = [
        orjson.loads(r.value or b"")
        for r in await read_topic(settings, settings.engagement)
        if (r.value or b"").startswith(b'{"event_id":"web-')
    ]
    assert {f["event_id"] for f in forwarded} == {v["event_id"] for v in [*BEFORE, *AFTER]}
    assert {f["lead_id"] for f in forwarded} == {"lead-1"}

    # kill -9, then the whole anonymous topic again (a replay from the start): nothing counts
    # twice.
    worker.kill()
    again = WorkerProcess(settings, tmp_path / "worker-2.log")
    workers.append(again.start())
    await again.wait_ready()
    await produce(
        settings,
        records([*BEFORE, *IDENTIFIES, *AFTER, CONFLICT], "anonymous_id"),
        settings.anonymous,
    )

    async def replay_scored() -> bool:
        # The replay re-sends the 6 visits at least once (identifies re-send the kept ones,
        # visits of a claimed visitor are forwarded): the scoring side must see them all as
        # duplicates before the score is looked at again.
        duplicates = again.metric("leadflow_events_total", outcome="duplicate") or 0
        return duplicates >= 6 and (again.metric("leadflow_identity_conflicts_total") or 0) >= 1

    await eventually(replay_scored, 60, "the replayed visits to reach the lead as duplicates")
    assert await scored_as_expected(), await lead_score(settings)
    handoffs_after = [r for r in await read_topic(settings, settings.handoff)]
    assert (
        len({MqlHandoff.model_validate_json(r.value or b"").handoff_id for r in handoffs_after})
        == 1
    )
