"""Redis adapter: lead state, dedupe markers and the handoff outbox. No rules in here."""

from streams.store.redis_store import (
    Conflict,
    Fenced,
    Generation,
    LeadStore,
    OutboxEntry,
    ReminderEntry,
    StoredLead,
)

__all__ = [
    "Conflict",
    "Fenced",
    "Generation",
    "LeadStore",
    "OutboxEntry",
    "ReminderEntry",
    "StoredLead",
]
