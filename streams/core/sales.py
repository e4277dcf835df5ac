"""After the handoff: SLA clocks, BANT qualification, recycling to nurture, closing.

Pure functions over LeadState. `now` (processing time) is passed in by the caller: production
passes the wall clock, tests and replay pass whatever they need. Event times decide whether
an action met a deadline; `now` decides only when an alert fires and what counts as a backfill.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from schemas.activity import SalesActivity
from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from schemas.lifecycle import BantCriterion, LifecycleTransition, Stage
from streams.core.calendar import add_time
from streams.core.clocks import Clock, ClockKind, Severity
from streams.core.history import JourneyStep, remember
from streams.core.lead import LeadState, Tally
from streams.core.rules import Rules

BANT_CRITERIA: tuple[BantCriterion, ...] = ("budget", "authority", "need", "timeframe")
CLOSED_STAGES: frozenset[Stage] = frozenset({"won", "lost"})
CONTACT_TYPES = frozenset({"contacted", "bant_assessed", "sales_action"})


def _stable_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-{hashlib.sha256(chr(31).join(parts).encode()).hexdigest()[:24]}"


def transition_id_for(lead_id: str, cause_id: str, to_stage: str) -> str:
    return _stable_id("tr", lead_id, cause_id, to_stage)


def alert_id_for(handoff_id: str, kind: str, severity: str, round: int = 0) -> str:
    if round:
        return _stable_id("al", handoff_id, kind, severity, str(round))
    return _stable_id("al", handoff_id, kind, severity)


@dataclass(frozen=True, slots=True)
class BantVerdict:
    qualified: bool
    missing: tuple[BantCriterion, ...]


def judge_bant(activity: SalesActivity, rules: Rules) -> BantVerdict:
    """SQL when at least `bant.required` criteria hold and every mandatory one does."""
    assert activity.bant is not None  # the schema requires it for bant_assessed
    held = {c for c in BANT_CRITERIA if getattr(activity.bant, c)}
    missing = tuple(c for c in BANT_CRITERIA if c not in held)
    qualified = len(held) >= rules.bant.required and all(c in held for c in rules.bant.mandatory)
    return BantVerdict(qualified, missing)


def _transition(
    state: LeadState,
    to_stage: Stage,
    cause_id: str,
    at: datetime,
    reason: str | None = None,
    missing: tuple[BantCriterion, ...] = (),
) -> LifecycleTransition:
    return LifecycleTransition(
        transition_id=transition_id_for(state.lead_id, cause_id, to_stage),
        lead_id=state.lead_id,
        from_stage=state.stage,
        to_stage=to_stage,
        occurred_at=at,
        handoff_id=state.handoff_id,
        reason=reason,
        missing_bant=list(missing),
    )


def mql_transition(previous: Stage, handoff: MqlHandoff) -> LifecycleTransition:
    """The lifecycle event for a score crossing (the scoring side knows the previous stage)."""
    return LifecycleTransition(
        transition_id=transition_id_for(handoff.lead_id, handoff.handoff_id, "mql"),
        lead_id=handoff.lead_id,
        from_stage=previous,
        to_stage="mql",
        occurred_at=handoff.qualified_at,
        handoff_id=handoff.handoff_id,
        reason=f"score {handoff.score:g} reached {handoff.threshold:g}",
    )


def _new_clock(
    kind: ClockKind, handoff_id: str, start: datetime, rules: Rules, owner: str | None
) -> Clock:
    window = rules.sla.mql_first_contact if kind == "mql_first_contact" else rules.sla.sql_follow_up
    calendar = rules.sla.calendar
    warn_at = None
    if rules.sla.early_warning is not None:
        warn_at = add_time(calendar, start, window * rules.sla.early_warning)
    return Clock(
        kind=kind,
        handoff_id=handoff_id,
        started_at=start,
        due_at=add_time(calendar, start, window),
        warn_at=warn_at,
        owner=owner,
    )


def _settle_on_open(
    clock: Clock, actions: Sequence[datetime], now: datetime, rules: Rules
) -> Clock:
    """A clock seen late may already be decided: by an action we saw first, or by age.

    The earliest action at or after the clock's start decides, as if it had arrived in order.
    """
    action_at = min((t for t in actions if t >= clock.started_at), default=None)
    if action_at is not None:
        if action_at <= clock.due_at:
            return replace(clock, status="met", ended_at=action_at)
        # Late, as if it had arrived after the clock opened (see _meet): a late action.
        return replace(clock, status="breached", ended_at=action_at, late_action_at=action_at)
    if now - clock.due_at > rules.sla.backfill_grace:
        return replace(clock, status="expired", ended_at=now)
    return clock


def _replace_clock(state: LeadState, clock: Clock) -> tuple[Clock, ...]:
    others = tuple(c for c in state.clocks if c.clock_id != clock.clock_id)
    # Keep the history bounded: the newest clocks only (open ones are always recent).
    return (*others, clock)[-MAX_CLOCKS:]


MAX_CLOCKS = 20


# Sales inputs are deduplicated with markers kept beside the lead's seen event ids.
HANDOFF_MARK = "handoff:"
ACTIVITY_MARK = "activity:"
SALES_MARKS = (HANDOFF_MARK, ACTIVITY_MARK)


def sales_marks(seen: frozenset[str]) -> frozenset[str]:
    """The dedupe markers of sales inputs among a lead's seen ids."""
    return frozenset(m for m in seen if m.startswith(SALES_MARKS))


def handoff_mark(handoff: MqlHandoff) -> str:
    """The dedupe marker of a handoff seen by the sales side."""
    return f"{HANDOFF_MARK}{handoff.handoff_id}"


def open_first_contact_clock(
    state: LeadState, handoff: MqlHandoff, rules: Rules, now: datetime
) -> LeadState:
    """Start the first-contact clock of a handoff (once; a redelivered handoff is a no-op)."""
    mark = handoff_mark(handoff)
    if mark in state.seen_event_ids:
        return state
    state = replace(state, seen_event_ids=state.seen_event_ids | {mark})
    if any(
        c.handoff_id == handoff.handoff_id and c.kind == "mql_first_contact" for c in state.clocks
    ):
        return state
    if state.handoff_id is None:
        # The handoff came from elsewhere (or before any engagement): adopt it. A stage sales
        # already moved the lead to (its activity arrived first) is kept, not reset to mql.
        state = replace(
            state,
            stage="mql" if state.stage == "lead" else state.stage,
            handoff_id=handoff.handoff_id,
            qualified_at=handoff.qualified_at,
            qualifications=max(state.qualifications, 1),
        )
    if state.owner is None and handoff.owner is not None:
        # Routed at handoff (docs/routing.md): the owner is known before sales says anything.
        state = replace(state, owner=handoff.owner)
    clock = _new_clock(
        "mql_first_contact", handoff.handoff_id, handoff.qualified_at, rules, state.owner
    )
    settled = _settle_on_open(clock, state.contact_times, now, rules)
    # A lead that left the funnel before this handoff reached us: a contact seen first still
    # decides (met, or breached if late), as if everything had arrived in order; without one,
    # the stage closed the clock.
    left = state.stage in CLOSED_STAGES or state.stage == "disqualified"
    if left and settled.status not in ("met", "breached"):
        settled = replace(clock, status="closed", ended_at=now)
    return replace(state, clocks=_replace_clock(state, settled))


def _meet(state: LeadState, kind: ClockKind, at: datetime) -> tuple[Clock, ...]:
    clocks = []
    for c in state.clocks:
        if c.kind == kind and c.started_at <= at:
            if c.status == "open":
                c = replace(c, status="met" if at <= c.due_at else "breached", ended_at=at)
                if c.status == "breached":
                    c = replace(c, late_action_at=at)
            elif c.status == "breached" and c.late_action_at is None and at > c.due_at:
                # A late contact after the verdict is recorded; an in-time one that arrives
                # after the verdict changes nothing (each deadline ends once).
                c = replace(c, late_action_at=at)
        clocks.append(c)
    return tuple(clocks)


def _close_open(clocks: tuple[Clock, ...], at: datetime) -> tuple[Clock, ...]:
    """The lead left the stage: an open clock ends without a verdict, unless its deadline had
    already passed by then (the sweeper just had not got to it): that is a breach."""
    return tuple(
        replace(c, status="breached" if at > c.due_at else "closed", ended_at=at)
        if c.status == "open"
        else c
        for c in clocks
    )


def remember_time(times: tuple[datetime, ...], at: datetime, rules: Rules) -> tuple[datetime, ...]:
    """Contact times, newest `history_limit` kept (in time order): a clock that opens late is
    judged by the earliest contact after its start."""
    return tuple(sorted({*times, at}))[-rules.history_limit :]


def _latest(current: datetime | None, at: datetime) -> datetime:
    return at if current is None or at > current else current


def activity_mark(activity: SalesActivity) -> str:
    """The dedupe marker of an activity, kept with the lead's seen event ids."""
    return f"{ACTIVITY_MARK}{activity.activity_id}"


def apply_activity(
    state: LeadState, activity: SalesActivity, rules: Rules, now: datetime
) -> tuple[LeadState, list[LifecycleTransition]]:
    """Fold one sales activity into the lead; return the stage changes it caused.

    A repeated activity_id changes nothing.
    """
    state, moved = _apply_activity(state, activity, rules, now)
    for t in moved:
        step = JourneyStep(t.occurred_at, t.from_stage, t.to_stage, t.handoff_id, t.reason)
        state = replace(state, journey=remember(state.journey, step, rules))
        if t.to_stage == "sql":
            state = replace(state, sql_at=t.occurred_at)
    return state, moved


def _apply_activity(
    state: LeadState, activity: SalesActivity, rules: Rules, now: datetime
) -> tuple[LeadState, list[LifecycleTransition]]:
    mark = activity_mark(activity)
    if mark in state.seen_event_ids:
        return state, []
    state = _record_contact(
        replace(state, seen_event_ids=state.seen_event_ids | {mark}), activity, rules
    )
    if state.stage in CLOSED_STAGES:
        return state, []  # won and lost are final; later activities are only recorded
    if activity.type == "bant_assessed":
        return _assessed(state, activity, rules, now)
    if activity.type in ("disqualified", "won", "lost"):
        to_stage: Stage = activity.type
        if state.stage == to_stage:
            return state, []
        at = activity.occurred_at
        moved = _transition(state, to_stage, activity.activity_id, at, activity.reason)
        return replace(state, stage=to_stage, clocks=_close_open(state.clocks, at)), [moved]
    return state, []


def _record_contact(state: LeadState, activity: SalesActivity, rules: Rules) -> LeadState:
    """Owner, contact and sales-action times, and the clocks they meet."""
    at = activity.occurred_at
    if activity.owner:
        state = replace(state, owner=activity.owner)
    if activity.type in CONTACT_TYPES:
        state = replace(
            state,
            last_contact_at=_latest(state.last_contact_at, at),
            contact_times=remember_time(state.contact_times, at, rules),
            clocks=_meet(state, "mql_first_contact", at),
        )
    if activity.type == "sales_action":
        state = replace(
            state,
            last_sales_action_at=_latest(state.last_sales_action_at, at),
            clocks=_meet(state, "sql_follow_up", at),
        )
    return state


def _assessed(
    state: LeadState, activity: SalesActivity, rules: Rules, now: datetime
) -> tuple[LeadState, list[LifecycleTransition]]:
    """A BANT assessment: SQL with a follow-up clock, or back to nurture with feedback."""
    verdict = judge_bant(activity, rules)
    if not verdict.qualified:
        if state.stage == "nurture":
            # Assessed again while in nurture: new feedback, no stage change, no second reset.
            return replace(state, missing_bant=verdict.missing), []
        return _recycle(state, activity, verdict.missing, rules)
    if state.stage == "sql":
        return state, []
    at = activity.occurred_at
    moved = _transition(state, "sql", activity.activity_id, at, activity.reason)
    handoff_id = state.handoff_id or activity.activity_id
    clock = _new_clock("sql_follow_up", handoff_id, at, rules, state.owner)
    # Back to SQL under the same handoff (after nurture, say): a new clock beside the decided
    # one, never over it.
    earlier = [c for c in state.clocks if c.kind == "sql_follow_up" and c.handoff_id == handoff_id]
    if earlier:
        clock = replace(clock, round=max(c.round for c in earlier) + 1)
    actions = [state.last_sales_action_at] if state.last_sales_action_at else []
    clock = _settle_on_open(clock, actions, now, rules)
    sql = replace(state, stage="sql", missing_bant=(), clocks=_replace_clock(state, clock))
    return sql, [moved]


def recycled_engagement(engagement: Mapping[str, Tally], rules: Rules) -> dict[str, Tally]:
    """What a lead keeps of its engagement when sales sends it back to nurture."""
    factor = rules.recycle.engagement_factor
    return {k: Tally(t.points * factor, t.events) for k, t in engagement.items()}


def _recycle(
    state: LeadState,
    activity: SalesActivity,
    missing: tuple[BantCriterion, ...],
    rules: Rules,
) -> tuple[LeadState, list[LifecycleTransition]]:
    """Back to nurture: MQL flag cleared, engagement reset by the rules, feedback kept."""
    reason = activity.reason or f"BANT not met: missing {', '.join(missing)}"
    moved = _transition(
        state, "nurture", activity.activity_id, activity.occurred_at, reason, missing
    )
    recycled = replace(
        state,
        stage="nurture",
        engagement=recycled_engagement(state.engagement, rules),
        missing_bant=missing,
        clocks=_close_open(state.clocks, activity.occurred_at),
    )
    return recycled, [moved]


def alert_if_due(
    state: LeadState, clock_id: str, severity: Severity, now: datetime
) -> tuple[LeadState, list[SlaAlert]]:
    """A reminder came due: alert if the clock is still open (exactly once per severity)."""
    clock = next((c for c in state.clocks if c.clock_id == clock_id), None)
    if clock is None or clock.status != "open":
        return state, []
    if severity == "breach":
        if now < clock.due_at:
            return state, []
        updated = replace(clock, status="breached", ended_at=now)
    else:
        if clock.warned or clock.warn_at is None or now < clock.warn_at:
            return state, []
        updated = replace(clock, warned=True)
        if now >= clock.due_at:
            # Too late to warn (the sweeper was behind): the breach alert says it all.
            clocks = tuple(updated if c.clock_id == clock_id else c for c in state.clocks)
            return replace(state, clocks=clocks), []
    alert = SlaAlert(
        alert_id=alert_id_for(clock.handoff_id, clock.kind, severity, clock.round),
        lead_id=state.lead_id,
        handoff_id=clock.handoff_id,
        kind=clock.kind,
        severity=severity,
        due_at=clock.due_at,
        detected_at=now,
        owner=clock.owner or state.owner,
    )
    clocks = tuple(updated if c.clock_id == clock_id else c for c in state.clocks)
    return replace(state, clocks=clocks), [alert]
