"""Routing at handoff: which queue takes an MQL and which of its members gets it.

Pure: the queue's rotation state (`QueueLedger`) and the time are passed in, and the new state
comes back; the shell (streams/store/routing_ledger.py) keeps it in Redis, one decision per
handoff id, so a batch folded again, a restart or a second worker never rotates twice.

The rotation is smooth weighted round robin (the one nginx uses): each available member's
credit grows by its weight, the member with the most credit gets the lead and pays the total
weight of the members that were available. With weights 2:1:1 that gives a, b, c, a, ...: after
n leads every member is within one lead of its share, and a member skipped while away or at
capacity is not owed the leads it missed (its credit does not grow while it is skipped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from schemas.engagement import AttributeValue
from streams.core.rules import RoutingMember, RoutingQueue, RoutingRule

RoutingReason = Literal["round_robin", "no_capacity", "no_queue"]
# Days of per-member counts kept in a ledger (capacity is per day; older days are history).
DAYS_KEPT = 3


@dataclass(frozen=True)
class QueueLedger:
    """One queue's rotation: each member's credit, and leads given per member per day."""

    credit: Mapping[str, int] = field(default_factory=dict)
    given: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # ISO day -> owner -> n

    def given_on(self, day: date, owner: str) -> int:
        return self.given.get(day.isoformat(), {}).get(owner, 0)


@dataclass(frozen=True)
class Routing:
    """Who got the lead and why; `passed_over` names members skipped (away, at capacity)."""

    owner: str | None
    queue: str | None
    reason: RoutingReason
    passed_over: tuple[str, ...] = ()


def queue_for(
    routing: RoutingRule, attributes: Mapping[str, AttributeValue]
) -> RoutingQueue | None:
    """The first queue whose `when` matches the lead's attributes."""
    return next((q for q in routing.queues if q.matches(attributes)), None)


def routing_day(at: datetime, timezone: str) -> date:
    """The day a handoff counts against capacity: its qualified_at in the reporting zone."""
    return at.astimezone(ZoneInfo(timezone)).date()


def unavailable(
    queue: RoutingQueue, routing: RoutingRule, ledger: QueueLedger, at: datetime, day: date
) -> dict[str, str]:
    """Members who cannot take a lead at `at`, with why: `away` or `at_capacity`."""
    out: dict[str, str] = {}
    for m in queue.members:
        if any(w.owner == m.owner and w.covers(at) for w in routing.away):
            out[m.owner] = "away"
        elif m.capacity_per_day is not None and ledger.given_on(day, m.owner) >= m.capacity_per_day:
            out[m.owner] = "at_capacity"
    return out


def route(
    routing: RoutingRule,
    queue: RoutingQueue | None,
    ledger: QueueLedger,
    at: datetime,
    day: date,
) -> tuple[Routing, QueueLedger]:
    """Give one lead to a member of `queue` (from queue_for); the ledger after it."""
    if queue is None:
        return Routing(None, None, "no_queue"), ledger
    skipped = unavailable(queue, routing, ledger, at, day)
    members = [m for m in queue.members if m.owner not in skipped]
    passed = tuple(sorted(skipped))
    if not members:
        return Routing(queue.escalate_to, queue.name, "no_capacity", passed), ledger
    chosen, credit = _rotate(members, ledger.credit)
    # Members no longer in the queue (the rules changed) are forgotten.
    credit = {m.owner: credit.get(m.owner, 0) for m in queue.members}
    return Routing(chosen, queue.name, "round_robin", passed), replace(
        ledger, credit=credit, given=_count(ledger.given, day, chosen)
    )


def next_available(
    routing: RoutingRule,
    queue: RoutingQueue,
    after: str | None,
    at: datetime,
    *,
    skip: frozenset[str] = frozenset(),
    ledger: QueueLedger | None = None,
    day: date | None = None,
) -> str | None:
    """Who takes a lead off `after` (a breach's reassignment, docs/routing.md "Escalation
    ladder"): the next member after `after` in the queue's member order, wrapping round,
    skipping `after` itself, `skip` (members who already missed this lead's deadline), members
    away at `at`, and, when a ledger and day are given, members at capacity. None: nobody.

    Deterministic, not the weighted rotation: the sales side, which reassigns, does not hold the
    rotation (it lives in the routing ledger, written only at handoff), and a reassignment does
    not take anybody's turn."""
    names = [m.owner for m in queue.members]
    out = unavailable(queue, routing, ledger or QueueLedger(), at, day or at.date())
    start = names.index(after) + 1 if after in names else 0
    for owner in names[start:] + names[:start]:
        if owner != after and owner not in skip and owner not in out:
            return owner
    return None


def _rotate(members: list[RoutingMember], credit: Mapping[str, int]) -> tuple[str, dict[str, int]]:
    grown = {m.owner: credit.get(m.owner, 0) + m.weight for m in members}
    total = sum(m.weight for m in members)
    # The most credit wins; a tie goes to the member listed first.
    chosen = max(members, key=lambda m: grown[m.owner]).owner
    out = dict(credit)
    out.update(grown)
    out[chosen] -= total
    return chosen, out


def _count(
    given: Mapping[str, Mapping[str, int]], day: date, owner: str
) -> dict[str, dict[str, int]]:
    key = day.isoformat()
    days = {d: dict(n) for d, n in given.items()}
    today = days.setdefault(key, {})
    today[owner] = today.get(owner, 0) + 1
    return {d: days[d] for d in sorted(days)[-DAYS_KEPT:]}
