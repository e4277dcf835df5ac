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
from schemas.money import minor_units
from streams.core.attribution import Deal
from streams.core.calendar import add_time
from streams.core.clocks import Clock, ClockKind, Severity
from streams.core.history import JourneyStep, remember
from streams.core.lead import CapShare, LeadState, Tally
from streams.core.routing import next_available
from streams.core.rules import RoutingQueue, Rules

BANT_CRITERIA: tuple[BantCriterion, ...] = ("budget", "authority", "need", "timeframe")
CLOSED_STAGES: frozenset[Stage] = frozenset({"won", "lost"})
CONTACT_TYPES = frozenset({"contacted", "bant_assessed", "sales_action", "opportunity_created"})
# Activities that meet the SQL follow-up clock ("no sales action within 48 h of SQL").
ACTION_TYPES = frozenset({"sales_action", "opportunity_created"})


def _stable_id(prefix: str, *parts: str) -> str:
    return f"{prefix}-{hashlib.sha256(chr(31).join(parts).encode()).hexdigest()[:24]}"


def transition_id_for(lead_id: str, cause_id: str, to_stage: str) -> str:
    return _stable_id("tr", lead_id, cause_id, to_stage)


def alert_id_for(handoff_id: str, kind: str, severity: str, round: int = 0) -> str:
    """One id per (handoff, clock, severity); `round` tells apart a later clock of the same
    handoff and kind (an SQL again, or a first contact reassigned after a breach)."""
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
    kind: ClockKind,
    handoff_id: str,
    start: datetime,
    rules: Rules,
    owner: str | None,
    queue: str | None = None,
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
        queue=queue,
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
    if handoff.queue is not None:
        # The queue whose escalate_to hears of breaches, and whose members a breach may pass
        # the lead on to (docs/routing.md, "Escalation ladder").
        state = replace(state, queue=handoff.queue)
    clock = _new_clock(
        "mql_first_contact",
        handoff.handoff_id,
        handoff.qualified_at,
        rules,
        state.owner,
        state.queue,
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
        if t.kind != "stage_change":
            continue  # the journey lists stage changes; a reassignment is not one
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
    state = replace(state, seen_event_ids=state.seen_event_ids | {mark})
    if activity.type == "reassigned":
        return _reassigned_by_hand(state, activity)
    state = _record_contact(state, activity, rules)
    if state.stage in CLOSED_STAGES:
        return state, []  # won and lost are final; later activities are only recorded
    if activity.type == "bant_assessed":
        return _assessed(state, activity, rules, now)
    if activity.type == "opportunity_created":
        # The qualification's first opportunity counts (attribution, docs/kpis.md); a later
        # one (a second deal, an amount changed) is recorded as a sales action only.
        if state.opportunity is None:
            state = replace(state, opportunity=_deal(activity, None))
        return state, []
    if activity.type in ("disqualified", "won", "lost"):
        to_stage: Stage = activity.type
        if state.stage == to_stage:
            return state, []
        at = activity.occurred_at
        moved = _transition(state, to_stage, activity.activity_id, at, activity.reason)
        state = replace(state, stage=to_stage, clocks=_close_open(state.clocks, at))
        if to_stage == "won":
            state = replace(state, won_deal=_deal(activity, state.opportunity))
        return state, [moved]
    return state, []


def _deal(activity: SalesActivity, opportunity: Deal | None) -> Deal:
    """The activity's deal; a win without an amount is worth its opportunity's amount."""
    if activity.amount is not None and activity.currency is not None:
        minor = minor_units(activity.amount, activity.currency)
        return Deal(activity.occurred_at, minor, activity.currency)
    if opportunity is not None:
        return Deal(activity.occurred_at, opportunity.amount, opportunity.currency)
    return Deal(activity.occurred_at)


def _reassigned_by_hand(
    state: LeadState, activity: SalesActivity
) -> tuple[LeadState, list[LifecycleTransition]]:
    """The CRM moved the lead to another owner: the owner changes, open clocks are the new
    owner's with the deadlines they had (a manual move does not reset the SLA), and one
    `reassigned` event is emitted. Any stage, won and lost included: no stage moves."""
    new_owner = activity.owner
    assert new_owner  # the schema requires it for reassigned
    if new_owner == state.owner:
        return state, []
    moved = reassignment(
        state, new_owner, activity.activity_id, activity.occurred_at, activity.reason or "manual"
    )
    clocks = tuple(replace(c, owner=new_owner) if c.status == "open" else c for c in state.clocks)
    return replace(state, owner=new_owner, clocks=clocks), [moved]


def reassignment(
    state: LeadState,
    to_owner: str,
    cause_id: str,
    at: datetime,
    reason: str,
    handoff_id: str | None = None,
) -> LifecycleTransition:
    """The lifecycle event of an owner change: the stage stays (from_stage == to_stage)."""
    return LifecycleTransition(
        transition_id=transition_id_for(state.lead_id, cause_id, "reassigned"),
        lead_id=state.lead_id,
        kind="reassigned",
        from_stage=state.stage,
        to_stage=state.stage,
        occurred_at=at,
        handoff_id=handoff_id or state.handoff_id,
        reason=reason,
        from_owner=state.owner,
        to_owner=to_owner,
    )


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
    if activity.type in ACTION_TYPES:
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
    clock = _new_clock("sql_follow_up", handoff_id, at, rules, state.owner, state.queue)
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


def recycled_cap_shares(
    shares: Mapping[str, tuple[CapShare, ...]], rules: Rules
) -> dict[str, tuple[CapShare, ...]]:
    """The cap shares of a lead sent back to nurture: the points each share still counts for
    are its own points times the same factor (a later-arriving earlier event that takes a share
    takes it at that weight)."""
    factor = rules.recycle.engagement_factor
    return {b: tuple((t, p, w * factor) for t, p, w in s) for b, s in shares.items()}


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
        cap_shares=recycled_cap_shares(state.cap_shares, rules),
        missing_bant=missing,
        clocks=_close_open(state.clocks, activity.occurred_at),
    )
    return recycled, [moved]


def routing_queue(rules: Rules | None, name: str | None) -> RoutingQueue | None:
    """The rules' routing queue of this name (None without routing, or if it was removed)."""
    if rules is None or rules.routing is None or name is None:
        return None
    return next((q for q in rules.routing.queues if q.name == name), None)


def alert_if_due(
    state: LeadState,
    clock_id: str,
    severity: Severity,
    now: datetime,
    rules: Rules | None = None,
) -> tuple[LeadState, list[SlaAlert]]:
    """A reminder came due: alert if the clock is still open (exactly once per severity).

    The alert names the owner and the lead's queue; a breach also names the queue's
    `escalate_to` (from `rules`; not when that is the owner). This is one rung of the ladder:
    the sweeper calls `escalate`, which also reassigns the lead after a missed first contact.
    """
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
    owner = clock.owner or state.owner
    queue = clock.queue or state.queue
    escalated_to = None
    if severity == "breach":
        routed = routing_queue(rules, queue)
        escalated_to = routed.escalate_to if routed is not None else None
        if escalated_to == owner:
            escalated_to = None  # the owner hears of it anyway
    alert = SlaAlert(
        alert_id=alert_id_for(clock.handoff_id, clock.kind, severity, clock.round),
        lead_id=state.lead_id,
        handoff_id=clock.handoff_id,
        kind=clock.kind,
        severity=severity,
        due_at=clock.due_at,
        detected_at=now,
        owner=owner,
        escalated_to=escalated_to,
        queue=queue,
    )
    clocks = tuple(updated if c.clock_id == clock_id else c for c in state.clocks)
    return replace(state, clocks=clocks), [alert]


@dataclass(frozen=True, slots=True)
class Escalation:
    """What one due reminder caused: the lead after it, its alerts and lifecycle events."""

    state: LeadState
    alerts: list[SlaAlert]
    moved: list[LifecycleTransition]


def escalate(
    state: LeadState, clock_id: str, severity: Severity, now: datetime, rules: Rules
) -> Escalation:
    """The escalation ladder for one due reminder (docs/routing.md, "Escalation ladder"):

    1. warning (sla.early_warning): an alert to the owner only;
    2. breach: an alert to the owner and the queue's escalate_to;
    3. a breached first contact with `routing.reassign_after_breach`: the lead moves to the
       next available member of its queue (`reassign_after_breach`), with a `reassigned`
       lifecycle event and a new first-contact clock for the new owner.
    """
    state, alerts = alert_if_due(state, clock_id, severity, now, rules)
    if severity != "breach" or not alerts:
        return Escalation(state, alerts, [])
    state, moved = reassign_after_breach(state, clock_id, now, rules)
    return Escalation(state, alerts, moved)


def reassign_after_breach(
    state: LeadState, clock_id: str, now: datetime, rules: Rules
) -> tuple[LeadState, list[LifecycleTransition]]:
    """A first-contact clock was breached: with `routing.reassign_after_breach`, give the lead
    to the next available member of its queue (routing.next_available: after the current
    owner in member order, skipping members away at the breach time and members who already
    missed this handoff's first contact). The new owner gets a new first-contact clock (the
    next round) that starts at the breach time, the deadline, and is due one
    sla.mql_first_contact later (working time on a calendar). Nobody available: no change."""
    routing = rules.routing
    clock = next((c for c in state.clocks if c.clock_id == clock_id), None)
    if routing is None or not routing.reassign_after_breach or clock is None:
        return state, []
    if clock.kind != "mql_first_contact" or clock.status != "breached":
        return state, []
    queue = routing_queue(rules, clock.queue or state.queue)
    if queue is None:
        return state, []
    current = clock.owner or state.owner
    same = [
        c
        for c in state.clocks
        if c.handoff_id == clock.handoff_id and c.kind == "mql_first_contact"
    ]
    missed = frozenset(c.owner for c in same if c.status == "breached" and c.owner)
    breach_at = clock.due_at
    new_owner = next_available(routing, queue, current, breach_at, skip=missed)
    if new_owner is None:
        return state, []
    fresh = _new_clock(
        "mql_first_contact", clock.handoff_id, breach_at, rules, new_owner, queue.name
    )
    fresh = replace(fresh, round=max(c.round for c in same) + 1)
    fresh = _settle_on_open(fresh, state.contact_times, now, rules)
    moved = reassignment(
        state, new_owner, fresh.clock_id, breach_at, "sla_breach", handoff_id=clock.handoff_id
    )
    state = replace(state, owner=new_owner, clocks=_replace_clock(state, fresh))
    return state, [moved]
