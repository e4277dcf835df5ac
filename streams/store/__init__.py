"""The Redis adapter: lead states with their input offsets, dedupe markers, the outbox of
outputs, SLA reminders, KPI counters and the generation record. No rules in here."""

from streams.store.redis_store import (
    Conflict,
    Fenced,
    Generation,
    LeadStore,
    OffsetAdvance,
    OffsetsMoved,
    OutboxEntry,
    ReminderEntry,
    StoredLead,
)

__all__ = [
    "Conflict",
    "Fenced",
    "Generation",
    "LeadStore",
    "OffsetAdvance",
    "OffsetsMoved",
    "OutboxEntry",
    "ReminderEntry",
    "StoredLead",
]
