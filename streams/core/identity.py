"""Identity stitching: an anonymous visitor's events, kept until the visitor is identified, then
counted for the lead (pure; `now` is passed in).

`observe(visitor, record, rule, now)` folds one record of `leads.anonymous` into a visitor's
state and says what to send to `leads.engagement`:

- an anonymous event of a visitor nobody claimed yet is kept (bounded: `rule.retention` back
  from `now`, the newest `rule.max_events` by occurred_at);
- an identify claims the visitor for its lead (the first claim read wins, see below) and
  re-emits every kept event under the lead;
- an anonymous event of a claimed visitor is kept too and forwarded at once.

Re-emitted events keep their `event_id` and `occurred_at`: the scoring side counts an event_id
once per lead, so sending one again (a repeated identify, a record read again after a crash or a
rebalance) never counts it twice, and the lead's score is the same whichever order the identify
and the events arrive in (decay and caps work on occurred_at). Nothing here is undone: an event
forwarded to a lead stays that lead's.

**A visitor claimed by a second lead**: the first identify read from the topic wins; an identify
naming another lead is refused (a `Conflict`, counted by the worker) and the visitor's events
stay with the first lead. Records of one visitor are read in the order they were written (one
partition, keyed by anonymous_id), so every replay decides the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime

from schemas.anonymous import AnonymousEvent, IdentifyEvent
from schemas.engagement import EngagementEvent
from streams.core.rules import IdentityRule


@dataclass(frozen=True, slots=True)
class Visitor:
    """What is known of one anonymous id: who claimed it (if anyone) and its kept events,
    oldest first."""

    anonymous_id: str
    lead_id: str | None = None
    claimed_by: str | None = None  # event_id of the identify that claimed it
    events: tuple[AnonymousEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Conflict:
    """An identify naming another lead than the one that claimed the visitor (refused)."""

    anonymous_id: str
    claimed_by_lead: str
    refused_lead: str
    event_id: str


@dataclass(frozen=True, slots=True)
class Observed:
    """What folding records into visitors decided: events for leads.engagement, in order, and
    the refused claims."""

    forward: list[EngagementEvent] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)


def as_lead_event(event: AnonymousEvent, lead_id: str) -> EngagementEvent:
    """The anonymous event as the lead's: the same event_id, type, time and details."""
    return EngagementEvent(
        event_id=event.event_id,
        lead_id=lead_id,
        type=event.type,
        occurred_at=event.occurred_at,
        source=event.source,
        properties=event.properties,
        attributes=event.attributes,
        anonymous_id=event.anonymous_id,
    )


def _order(event: AnonymousEvent) -> tuple[datetime, str]:
    return event.occurred_at, event.event_id


def kept(
    events: Iterable[AnonymousEvent], rule: IdentityRule, now: datetime
) -> tuple[AnonymousEvent, ...]:
    """The events a visitor keeps at `now`: one per event_id (the first seen), none older than
    the retention, the newest `max_events` by occurred_at, oldest first."""
    oldest = now - rule.retention
    unique: dict[str, AnonymousEvent] = {}
    for event in events:
        if event.event_id not in unique and event.occurred_at >= oldest:
            unique[event.event_id] = event
    ordered = sorted(unique.values(), key=_order)
    return tuple(ordered[-rule.max_events :])


def observe(
    visitor: Visitor,
    record: AnonymousEvent | IdentifyEvent,
    rule: IdentityRule,
    now: datetime,
) -> tuple[Visitor, Observed]:
    """Fold one record of leads.anonymous into its visitor's state."""
    if isinstance(record, IdentifyEvent):
        return _identify(visitor, record, rule, now)
    known = any(e.event_id == record.event_id for e in visitor.events)
    events = visitor.events if known else kept((*visitor.events, record), rule, now)
    after = replace(visitor, events=events)
    if visitor.lead_id is None:
        return after, Observed()
    # Claimed: forwarded at once, a duplicate too (the lead counts its event_id once; sending
    # it again covers a crash between keeping it and sending it).
    return after, Observed(forward=[as_lead_event(record, visitor.lead_id)])


def _identify(
    visitor: Visitor, record: IdentifyEvent, rule: IdentityRule, now: datetime
) -> tuple[Visitor, Observed]:
    if visitor.lead_id is not None and visitor.lead_id != record.lead_id:
        conflict = Conflict(visitor.anonymous_id, visitor.lead_id, record.lead_id, record.event_id)
        return visitor, Observed(conflicts=[conflict])
    claimed = replace(
        visitor,
        lead_id=record.lead_id,
        claimed_by=visitor.claimed_by or record.event_id,
        events=kept(visitor.events, rule, now),
    )
    # Every kept event, also when the visitor was already this lead's: a repeated identify (or
    # one read again) re-sends them, which counts nothing twice and makes a crash between
    # keeping the claim and sending the events harmless.
    return claimed, Observed(forward=[as_lead_event(e, record.lead_id) for e in claimed.events])


def observe_all(
    visitor: Visitor,
    records: Iterable[AnonymousEvent | IdentifyEvent],
    rule: IdentityRule,
    now: datetime,
) -> tuple[Visitor, Observed]:
    """`observe` over one visitor's records in the order they were read."""
    forward: list[EngagementEvent] = []
    conflicts: list[Conflict] = []
    for record in records:
        visitor, out = observe(visitor, record, rule, now)
        forward.extend(out.forward)
        conflicts.extend(out.conflicts)
    return visitor, Observed(forward, conflicts)
