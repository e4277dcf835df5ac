"""SLA clocks: one deadline of one handoff (first contact after MQL, sales action after SQL),
the reminders the sweeper wakes up for, and which clocks ended between two lead states."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

Severity = Literal["warning", "breach"]
ClockKind = Literal["mql_first_contact", "sql_follow_up"]
# open -> met (action in time) | breached (alert sent, or action late) | expired (already long
# past when first seen: a backfill, no alert) | closed (the lead left the stage: no verdict)
ClockStatus = Literal["open", "met", "breached", "expired", "closed"]


class HasClocks(Protocol):
    """A lead state, as far as its clocks go."""

    @property
    def clocks(self) -> Sequence[Clock]: ...


@dataclass(frozen=True, slots=True)
class Clock:
    """One SLA deadline of one handoff: first contact after MQL, or sales action after SQL."""

    kind: ClockKind
    handoff_id: str
    started_at: datetime
    due_at: datetime
    warn_at: datetime | None = None
    status: ClockStatus = "open"
    warned: bool = False
    ended_at: datetime | None = None  # event time that met it, or detection time of a breach
    late_action_at: datetime | None = None  # the action that came after a breach
    owner: str | None = None
    # A new clock of the same handoff and kind: sql_follow_up when the lead becomes an SQL
    # again under the same handoff; mql_first_contact when a breach reassigned the lead.
    round: int = 0
    queue: str | None = None  # the lead's routing queue (from the handoff): who escalations reach

    @property
    def clock_id(self) -> str:
        base = f"{self.handoff_id}:{self.kind}"
        return f"{base}:{self.round}" if self.round else base


@dataclass(frozen=True, slots=True)
class Reminder:
    """A moment at which a clock needs looking at: its warning or its due time."""

    clock_id: str
    severity: Severity
    at: datetime


def reminders(state: HasClocks) -> list[Reminder]:
    """What the sweeper must wake up for: every open clock's due time (and warning)."""
    out = []
    for c in state.clocks:
        if c.status != "open":
            continue
        out.append(Reminder(c.clock_id, "breach", c.due_at))
        if c.warn_at is not None and not c.warned:
            out.append(Reminder(c.clock_id, "warning", c.warn_at))
    return out


def ended_clocks(before: HasClocks, after: HasClocks) -> list[Clock]:
    """Clocks that reached a verdict between two states (for metrics and KPIs)."""
    was = {c.clock_id: c.status for c in before.clocks}
    return [c for c in after.clocks if c.status != "open" and was.get(c.clock_id, "open") == "open"]


def late_actions(before: HasClocks, after: HasClocks) -> list[Clock]:
    """Breached clocks whose (late) action arrived between two states."""
    was = {c.clock_id: c.late_action_at for c in before.clocks}
    return [c for c in after.clocks if c.late_action_at is not None and was.get(c.clock_id) is None]
