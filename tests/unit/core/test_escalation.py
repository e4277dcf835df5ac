"""The escalation ladder (docs/routing.md, "Escalation ladder"): warning to the owner, breach to
the owner and the queue's escalate_to, reassignment after a missed first contact.

Expected times are worked out by hand from the rules as documented (docs/calendar.md), never by
asking the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from schemas.activity import SalesActivity
from schemas.handoff import MqlHandoff
from schemas.lifecycle import LifecycleTransition
from streams.core.clocks import Clock, Reminder, reminders
from streams.core.kpi import kpi_changes
from streams.core.lead import LeadState
from streams.core.routing import QueueLedger, next_available
from streams.core.rules import Rules, parse_rules
from streams.core.sales import (
    Escalation,
    alert_id_for,
    apply_activity,
    escalate,
    open_first_contact_clock,
    transition_id_for,
)
from streams.store.codec import decode_lead, encode_lead, lead_from_json, lead_to_json

pytestmark = pytest.mark.unit

JST = timezone(timedelta(hours=9))
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)
LEAD = "lead-1"
HANDOFF = "ho-1"
QUEUE = "inside-sales"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)  # a Monday
DUE = T0 + 24 * HOUR  # no calendar: 24h of wall-clock time
WARN = T0 + 18 * HOUR  # 75 % of 24h


def make_rules(
    *,
    reassign: bool = True,
    members: tuple[str, ...] = ("ana", "ben", "cho"),
    escalate_to: str | None = "maria",
    away: list[dict[str, Any]] | None = None,
    calendar: dict[str, Any] | None = None,
) -> Rules:
    queue: dict[str, Any] = {"name": QUEUE, "members": [{"owner": m} for m in members]}
    if escalate_to is not None:
        queue["escalate_to"] = escalate_to
    sla: dict[str, Any] = {"mql_first_contact": "24h", "early_warning": 0.75}
    if calendar is not None:
        sla["calendar"] = calendar
    return parse_rules(
        {
            "mql": {"threshold": 100},
            "engagement": {"demo_request": 100},
            "sla": sla,
            "routing": {
                "queues": [queue],
                "away": away or [],
                "reassign_after_breach": reassign,
            },
        }
    )


RULES = make_rules()


def handoff(at: datetime = T0, owner: str | None = "ana", queue: str | None = QUEUE) -> MqlHandoff:
    return MqlHandoff(
        handoff_id=HANDOFF,
        lead_id=LEAD,
        qualified_at=at,
        score=100,
        fit_score=0,
        engagement_score=100,
        threshold=100,
        rules_version="test",
        triggering_event_id="evt-1",
        reasons=[],
        first_contact_due_at=at + 24 * HOUR,
        owner=owner,
        queue=queue,
        routing_reason="round_robin",
    )


def opened(rules: Rules = RULES, at: datetime = T0, owner: str | None = "ana") -> LeadState:
    return open_first_contact_clock(LeadState(lead_id=LEAD), handoff(at, owner), rules, at)


def clock(state: LeadState, round: int = 0) -> Clock:
    (found,) = [c for c in state.clocks if c.kind == "mql_first_contact" and c.round == round]
    return found


def activity(type_: str, at: datetime, owner: str | None = None, **more: Any) -> SalesActivity:
    return SalesActivity.model_validate(
        {
            "activity_id": more.pop("id", f"act-{type_}-{at.isoformat()}"),
            "lead_id": LEAD,
            "type": type_,
            "occurred_at": at,
            "owner": owner,
            **more,
        }
    )


# --- rung 1 and 2: who hears of it ----------------------------------------------------------


def test_handoff_stores_the_queue_on_the_lead_and_its_clock() -> None:
    state = opened()
    assert (state.owner, state.queue) == ("ana", QUEUE)
    assert (clock(state).owner, clock(state).queue) == ("ana", QUEUE)


def test_warning_goes_to_the_owner_only() -> None:
    state = opened()
    step = escalate(state, f"{HANDOFF}:mql_first_contact", "warning", WARN, RULES)
    (alert,) = step.alerts
    assert (alert.severity, alert.owner, alert.escalated_to, alert.queue) == (
        "warning",
        "ana",
        None,
        QUEUE,
    )
    assert step.moved == []
    assert step.state.owner == "ana"
    assert clock(step.state).status == "open"


def test_breach_goes_to_the_owner_and_the_queues_escalate_to() -> None:
    rules = make_rules(reassign=False)
    step = escalate(opened(rules), f"{HANDOFF}:mql_first_contact", "breach", DUE, rules)
    (alert,) = step.alerts
    assert (alert.severity, alert.owner, alert.escalated_to, alert.queue) == (
        "breach",
        "ana",
        "maria",
        QUEUE,
    )
    assert alert.alert_id == alert_id_for(HANDOFF, "mql_first_contact", "breach")
    assert step.moved == []  # reassign_after_breach is off
    assert [c.status for c in step.state.clocks] == ["breached"]


def test_breach_without_an_escalate_to_names_the_owner_only() -> None:
    rules = make_rules(reassign=False, escalate_to=None)
    (alert,) = escalate(opened(rules), f"{HANDOFF}:mql_first_contact", "breach", DUE, rules).alerts
    assert (alert.owner, alert.escalated_to) == ("ana", None)


def test_breach_of_a_lead_owned_by_the_escalation_contact_is_not_sent_twice() -> None:
    # Everybody was away at handoff: routing gave the lead to escalate_to (no_capacity).
    rules = make_rules(reassign=False)
    state = opened(rules, owner="maria")
    (alert,) = escalate(state, f"{HANDOFF}:mql_first_contact", "breach", DUE, rules).alerts
    assert (alert.owner, alert.escalated_to) == ("maria", None)


def test_breach_of_an_unrouted_lead_escalates_to_nobody() -> None:
    state = open_first_contact_clock(
        LeadState(lead_id=LEAD), handoff(owner=None, queue=None), RULES, T0
    )
    step = escalate(state, f"{HANDOFF}:mql_first_contact", "breach", DUE, RULES)
    (alert,) = step.alerts
    assert (alert.owner, alert.escalated_to, alert.queue) == (None, None, None)
    assert step.moved == []  # no queue: nobody to pass it to


# --- rung 3: reassignment after a missed first contact ---------------------------------------

TOKYO = {"timezone": "Asia/Tokyo", "working_days": ["mon", "tue", "wed", "thu", "fri"]}
TOKYO_HOURS = {**TOKYO, "hours": ["09:00", "18:00"]}
FRIDAY_5PM = datetime(2026, 3, 6, 17, 0, tzinfo=JST)


def test_reassignment_on_a_business_calendar() -> None:
    rules = make_rules(calendar=TOKYO_HOURS)
    state = opened(rules, at=FRIDAY_5PM)
    first = clock(state)
    # By hand, 24 working hours from Friday 6 March 17:00 JST (Mon-Fri 09-18):
    # Fri 17-18 (1h) + Mon 9 (10h) + Tue 9 (19h) + Wed 09-14 (24h).
    wednesday_2pm = datetime(2026, 3, 11, 14, 0, tzinfo=JST)
    assert first.due_at == wednesday_2pm
    # Nothing is due 24 wall-clock hours later (Saturday).
    nothing = escalate(state, first.clock_id, "breach", FRIDAY_5PM + 24 * HOUR, rules)
    assert nothing == Escalation(state, [], [])

    # The sweeper notices 3 minutes late; the breach time is still the deadline.
    step = escalate(state, first.clock_id, "breach", wednesday_2pm + 180 * SECOND, rules)
    (breach,) = step.alerts
    assert (breach.owner, breach.escalated_to, breach.due_at) == ("ana", "maria", wednesday_2pm)
    (moved,) = step.moved
    assert moved == LifecycleTransition(
        transition_id=transition_id_for(LEAD, f"{HANDOFF}:mql_first_contact:1", "reassigned"),
        lead_id=LEAD,
        kind="reassigned",
        from_stage="mql",
        to_stage="mql",  # a reassignment moves no stage
        occurred_at=wednesday_2pm,
        handoff_id=HANDOFF,
        reason="sla_breach",
        from_owner="ana",
        to_owner="ben",  # the member after ana
    )
    assert step.state.owner == "ben"
    assert step.state.stage == "mql"

    second = clock(step.state, round=1)
    assert second.clock_id == f"{HANDOFF}:mql_first_contact:1"
    assert (second.owner, second.queue, second.status) == ("ben", QUEUE, "open")
    assert second.started_at == wednesday_2pm
    # 24 working hours from Wednesday 14:00: Wed 14-18 (4h) + Thu 12 (13h) + Fri 13 (22h)
    # + Mon 16 March 09-11 (24h).
    assert second.due_at == datetime(2026, 3, 16, 11, 0, tzinfo=JST)
    # The warning at 75 % (18h): Wed 4h + Thu 9h (13h) + Fri 09-14 (18h).
    assert second.warn_at == datetime(2026, 3, 13, 14, 0, tzinfo=JST)
    assert sorted(reminders(step.state), key=lambda r: r.at) == [
        Reminder(second.clock_id, "warning", datetime(2026, 3, 13, 14, 0, tzinfo=JST)),
        Reminder(second.clock_id, "breach", datetime(2026, 3, 16, 11, 0, tzinfo=JST)),
    ]
    # The first clock stays breached: its verdict is kept.
    assert clock(step.state).status == "breached"


def test_the_new_clock_has_its_own_warning_and_breach_with_their_own_ids() -> None:
    step = escalate(opened(), f"{HANDOFF}:mql_first_contact", "breach", DUE, RULES)
    second_id = f"{HANDOFF}:mql_first_contact:1"
    second_due = DUE + 24 * HOUR  # started at the first deadline (no calendar)
    warned = escalate(step.state, second_id, "warning", DUE + 18 * HOUR, RULES)
    (warning,) = warned.alerts
    assert (warning.owner, warning.escalated_to, warning.due_at) == ("ben", None, second_due)
    assert warning.alert_id == alert_id_for(HANDOFF, "mql_first_contact", "warning", 1)
    assert warning.alert_id != alert_id_for(HANDOFF, "mql_first_contact", "warning")

    breached = escalate(warned.state, second_id, "breach", second_due, RULES)
    (breach,) = breached.alerts
    assert (breach.owner, breach.escalated_to) == ("ben", "maria")
    assert breach.alert_id == alert_id_for(HANDOFF, "mql_first_contact", "breach", 1)
    assert breach.alert_id != step.alerts[0].alert_id
    # ana and ben both missed it: cho is next.
    (moved,) = breached.moved
    assert (moved.from_owner, moved.to_owner, moved.occurred_at) == ("ben", "cho", second_due)
    third = clock(breached.state, round=2)
    assert (third.owner, third.started_at, third.due_at) == ("cho", second_due, DUE + 48 * HOUR)

    # cho misses too: everybody in the queue has missed it, so nobody else gets it.
    last = escalate(breached.state, third.clock_id, "breach", DUE + 48 * HOUR, RULES)
    (alert,) = last.alerts
    assert (alert.owner, alert.escalated_to) == ("cho", "maria")
    assert last.moved == []
    assert last.state.owner == "cho"
    assert reminders(last.state) == []


def test_one_alert_per_handoff_clock_and_step_and_ids_are_stable() -> None:
    first_id = f"{HANDOFF}:mql_first_contact"
    step = escalate(opened(), first_id, "breach", DUE, RULES)
    # The sweeper (or a second worker) firing again gets nothing, and no second reassignment.
    assert escalate(step.state, first_id, "breach", DUE + HOUR, RULES) == Escalation(
        step.state, [], []
    )
    assert escalate(step.state, first_id, "warning", DUE + HOUR, RULES).alerts == []
    # Replayed (a batch folded again after a conflict, noticed later): the same ids.
    again = escalate(opened(), first_id, "breach", DUE + 2 * HOUR, RULES)
    assert [a.alert_id for a in again.alerts] == [a.alert_id for a in step.alerts]
    assert [t.transition_id for t in again.moved] == [t.transition_id for t in step.moved]
    assert [c.clock_id for c in again.state.clocks] == [c.clock_id for c in step.state.clocks]
    ids = {
        alert_id_for(HANDOFF, "mql_first_contact", severity, round)
        for severity in ("warning", "breach")
        for round in (0, 1, 2)
    }
    assert len(ids) == 6


def test_contact_after_the_reassignment_meets_the_new_clock() -> None:
    step = escalate(opened(), f"{HANDOFF}:mql_first_contact", "breach", DUE, RULES)
    called = DUE + 3 * HOUR
    state, moved = apply_activity(step.state, activity("contacted", called), RULES, called)
    assert moved == []
    new = clock(state, round=1)
    assert (new.status, new.ended_at) == ("met", called)
    old = clock(state)
    assert (old.status, old.late_action_at) == ("breached", called)  # the first deadline missed
    assert escalate(state, new.clock_id, "breach", DUE + 24 * HOUR, RULES).alerts == []


def test_contact_in_time_leaves_nothing_to_escalate() -> None:
    state, _ = apply_activity(opened(), activity("contacted", DUE - HOUR), RULES, DUE - HOUR)
    assert escalate(state, f"{HANDOFF}:mql_first_contact", "breach", DUE, RULES).alerts == []


def test_no_reassignment_when_nobody_else_is_available() -> None:
    away = [{"owner": "ben", "from": "2026-03-03T00:00:00+00:00", "until": "2026-03-04T00:00:00Z"}]
    rules = make_rules(members=("ana", "ben"), away=away)
    step = escalate(opened(rules), f"{HANDOFF}:mql_first_contact", "breach", DUE, rules)
    (alert,) = step.alerts
    assert (alert.owner, alert.escalated_to) == ("ana", "maria")  # the breach still escalates
    assert step.moved == []
    assert step.state.owner == "ana"
    assert [c.clock_id for c in step.state.clocks] == [f"{HANDOFF}:mql_first_contact"]

    # Back before the breach (the window ends at DUE - 1s, exclusive): ben takes it.
    back = [{"owner": "ben", "from": "2026-03-02T00:00:00Z", "until": "2026-03-03T08:59:59Z"}]
    rules = make_rules(members=("ana", "ben"), away=back)
    step = escalate(opened(rules), f"{HANDOFF}:mql_first_contact", "breach", DUE, rules)
    assert [(t.from_owner, t.to_owner) for t in step.moved] == [("ana", "ben")]


def test_a_queue_of_one_never_reassigns() -> None:
    rules = make_rules(members=("ana",))
    step = escalate(opened(rules), f"{HANDOFF}:mql_first_contact", "breach", DUE, rules)
    assert [a.escalated_to for a in step.alerts] == ["maria"]
    assert step.moved == []


def test_a_lead_owned_by_a_non_member_goes_to_the_first_available_member() -> None:
    step = escalate(opened(owner="maria"), f"{HANDOFF}:mql_first_contact", "breach", DUE, RULES)
    assert [(t.from_owner, t.to_owner) for t in step.moved] == [("maria", "ana")]


def test_a_missed_follow_up_escalates_but_is_not_reassigned() -> None:
    at = T0 + HOUR
    sql, _ = apply_activity(
        opened(),
        activity(
            "bant_assessed",
            at,
            bant={"budget": True, "authority": True, "need": True, "timeframe": True},
        ),
        RULES,
        at,
    )
    follow_up = next(c for c in sql.clocks if c.kind == "sql_follow_up")
    assert follow_up.queue == QUEUE
    step = escalate(sql, follow_up.clock_id, "breach", follow_up.due_at, RULES)
    assert [(a.kind, a.owner, a.escalated_to) for a in step.alerts] == [
        ("sql_follow_up", "ana", "maria")
    ]
    assert step.moved == []


def test_next_available_skips_members_at_capacity_when_given_a_ledger() -> None:
    rules = parse_rules(
        {
            "mql": {"threshold": 1},
            "routing": {
                "queues": [
                    {
                        "name": QUEUE,
                        "members": [
                            {"owner": "ana"},
                            {"owner": "ben", "capacity_per_day": 1},
                            {"owner": "cho"},
                        ],
                    }
                ]
            },
        }
    )
    assert rules.routing is not None
    queue = rules.routing.queues[0]
    day = T0.date()
    full = QueueLedger(given={day.isoformat(): {"ben": 1}})
    assert next_available(rules.routing, queue, "ana", T0) == "ben"
    assert next_available(rules.routing, queue, "ana", T0, ledger=full, day=day) == "cho"
    assert next_available(rules.routing, queue, "cho", T0) == "ana"  # wraps round
    assert next_available(rules.routing, queue, "ana", T0, skip=frozenset({"ben", "cho"})) is None


# --- a manual move in the CRM ---------------------------------------------------------------


def test_manual_reassignment_changes_the_owner_and_keeps_the_deadline() -> None:
    state = opened()
    moved_at = T0 + 2 * HOUR
    move = activity("reassigned", moved_at, owner="dan", id="act-move")
    after, moved = apply_activity(state, move, RULES, moved_at)
    assert moved == [
        LifecycleTransition(
            transition_id=transition_id_for(LEAD, "act-move", "reassigned"),
            lead_id=LEAD,
            kind="reassigned",
            from_stage="mql",
            to_stage="mql",
            occurred_at=moved_at,
            handoff_id=HANDOFF,
            reason="manual",
            from_owner="ana",
            to_owner="dan",
        )
    ]
    assert after.owner == "dan"
    assert after.stage == "mql"
    assert after.journey == state.journey  # the journey lists stage changes only
    c = clock(after)
    assert (c.status, c.started_at, c.due_at, c.owner) == ("open", T0, DUE, "dan")  # no reset
    assert after.contact_times == ()  # a move is not a contact
    # The breach goes to the new owner.
    step = escalate(after, c.clock_id, "breach", DUE, RULES)
    assert [(a.owner, a.escalated_to) for a in step.alerts] == [("dan", "maria")]
    assert [(t.from_owner, t.to_owner) for t in step.moved] == [("dan", "ana")]

    # The same activity again changes nothing; a move to the current owner emits nothing.
    assert apply_activity(after, move, RULES, moved_at) == (after, [])
    same, none = apply_activity(after, activity("reassigned", moved_at, owner="dan"), RULES, T0)
    assert none == [] and same.owner == "dan"


def test_manual_reassignment_keeps_the_reason_the_crm_gave() -> None:
    move = activity("reassigned", T0 + HOUR, owner="dan", reason="territory change")
    _, moved = apply_activity(opened(), move, RULES, T0 + HOUR)
    assert [(t.kind, t.reason) for t in moved] == [("reassigned", "territory change")]


def test_reassigned_needs_the_new_owner() -> None:
    with pytest.raises(ValueError, match="owner: required when type is reassigned"):
        activity("reassigned", T0)


def test_a_reassignment_is_not_counted_as_a_stage_change() -> None:
    state = opened()
    after, moved = apply_activity(state, activity("reassigned", T0, owner="dan"), RULES, T0)
    counts, samples = kpi_changes(state, after, moved, RULES)
    # No stage count: only the owner it left and its queue count a reassignment.
    assert sorted(c.field for c in counts) == [
        f"owner_reassigned_away:{state.owner}",
        f"queue_reassigned:{QUEUE}",
    ]
    assert samples == []


def test_the_queue_is_stored_and_read_back() -> None:
    step = escalate(opened(), f"{HANDOFF}:mql_first_contact", "breach", DUE, RULES)
    state = step.state
    seen = state.seen_event_ids
    assert decode_lead(encode_lead(state), seen) == state
    assert lead_from_json(lead_to_json(state), seen) == state
    assert [c.queue for c in decode_lead(encode_lead(state)).clocks] == [QUEUE, QUEUE]
