"""The pure core as the test oracle: what the pipeline must produce for a given input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from schemas.deadletter import DeadLetterKind
from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core.lead import LeadState, replay
from streams.core.rules import Rules
from streams.jobs.sample import SampleRecord
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import Settings
from streams.store.codec import lead_to_json


@dataclass
class Expected:
    leads: dict[str, LeadState]
    handoffs: dict[str, MqlHandoff]
    valid: list[EngagementEvent]
    invalid: list[SampleRecord]
    deadletter_kinds: Counter[DeadLetterKind]


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
    )


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
