"""What the pipeline must produce for a given input, by two oracles.

The pure core (`streams.core`, the same code the worker runs) gives states that must match
Redis field for field. The independent reference model (`tests/reference`, written from the
docs without `streams.core`) gives scores, stages and handoffs that must match too, so a rule
the core misreads does not pass just because the worker misreads it the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import yaml

from schemas.deadletter import DeadLetterKind
from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core.lead import LeadState, replay, score
from streams.core.rules import Rules, load_rules
from streams.jobs.sample import SampleRecord
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import Settings
from streams.store.codec import lead_to_json
from tests.reference import Reference, RefRules, event_from


@dataclass
class Expected:
    leads: dict[str, LeadState]
    handoffs: dict[str, MqlHandoff]
    valid: list[EngagementEvent]
    invalid: list[SampleRecord]
    deadletter_kinds: Counter[DeadLetterKind]
    reference: Reference  # the same valid events through the reference model


def expected_outcome(records: list[SampleRecord], rules: Rules, settings: Settings) -> Expected:
    """Parse every record with the same edge function and fold the valid ones with the core."""
    valid: list[EngagementEvent] = []
    invalid: list[SampleRecord] = []
    kinds: Counter[DeadLetterKind] = Counter()
    nowhere = RecordLocation("oracle", 0, 0)
    for record in records:
        parsed = parse_engagement(
            record.key, record.value, nowhere, rules.event_types, settings.max_event_bytes
        )
        if isinstance(parsed, DeadLetter):
            invalid.append(record)
            kinds[parsed.headers.error_kind] += 1
        else:
            valid.append(parsed)
    result = replay(valid, rules)
    return Expected(
        leads=result.leads,
        handoffs={h.handoff_id: h for h in result.handoffs},
        valid=valid,
        invalid=invalid,
        deadletter_kinds=kinds,
        reference=Reference(RefRules.from_dict(_rules_data(rules, settings))).run(
            event_from(e) for e in valid
        ),
    )


def _rules_data(rules: Rules, settings: Settings) -> Mapping[str, Any]:
    """The rules as the reference reads them: the YAML file itself when `rules` came from it."""
    path = Path(settings.rules)
    if path.is_file() and load_rules(path) == rules:
        data: Mapping[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
        return data
    return rules.model_dump(mode="json", by_alias=True, exclude_none=True)


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0, abs_tol=1.5e-6)


def reference_disagreements(
    stored: Mapping[str, LeadState],
    on_topic: Iterable[MqlHandoff],
    expected: Expected,
    rules: Rules,
) -> list[str]:
    """Where the pipeline's leads (as stored in Redis) and handoffs (as on the topic) differ
    from the reference model: scores at 6 decimals, stages, which event qualified which lead,
    handoff scores and first-contact due times. Empty when they agree."""
    ref = expected.reference
    problems: list[str] = []
    if set(stored) != set(ref.leads):
        problems.append(f"leads: {len(stored)} stored, {len(ref.leads)} in the reference")
    for lead_id in sorted(set(stored) & set(ref.leads)):
        state, mine = stored[lead_id], ref.leads[lead_id]
        now = score(state, rules)
        want = (mine.stage, mine.fit(ref.rules), mine.engagement(ref.rules))
        if state.stage != want[0] or not (
            _close(now.fit, want[1]) and _close(now.engagement, want[2])
        ):
            problems.append(f"{lead_id}: {(state.stage, now.fit, now.engagement)} != {want}")
    handoffs = {(h.lead_id, h.triggering_event_id): h for h in on_topic}
    wanted = {(h.lead_id, h.triggering_event_id): h for h in ref.handoffs}
    for key in sorted(set(handoffs) ^ set(wanted)):
        problems.append(f"handoff {key}: {'extra' if key in handoffs else 'missing'}")
    for key in sorted(set(handoffs) & set(wanted)):
        got, want_h = handoffs[key], wanted[key]
        if not (
            _close(got.score, want_h.score)
            and _close(got.fit_score, want_h.fit_score)
            and _close(got.engagement_score, want_h.engagement_score)
            and got.qualified_at.astimezone(UTC) == want_h.qualified_at.astimezone(UTC)
            and got.first_contact_due_at.astimezone(UTC)
            == want_h.first_contact_due_at.astimezone(UTC)
        ):
            problems.append(f"handoff {key}: {got!r} != {want_h!r}")
    return problems[:20]


# Written by the sales side (clocks depend on processing time); the scoring oracle leaves them.
SALES_FIELDS = (
    "clocks",
    "last_contact_at",
    "contact_times",
    "last_sales_action_at",
    "owner",
    "missing_bant",
    "sql_at",
)


def comparable(state: LeadState) -> dict[str, object]:
    """A lead's scoring state as stored (dedupe markers live in a separate Redis set)."""
    return {k: v for k, v in lead_to_json(state).items() if k not in SALES_FIELDS}


async def stored_leads_equal(settings: Settings, expected: Expected) -> bool:
    """Redis holds exactly the expected leads, each equal to the fold field for field (for
    waiting until a replay has caught up)."""
    from streams.bootstrap import open_store

    store = open_store(settings)
    try:
        stored = await store.read_all_leads()
    finally:
        await store.close()
    return set(stored) == set(expected.leads) and all(
        comparable(stored[lead]) == comparable(state) for lead, state in expected.leads.items()
    )
