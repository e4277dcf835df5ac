"""Properties of the sales fold that must hold for any activity history (hypothesis).

A scenario is one handoff, then sales activities (any type, any event time, re-sent copies)
interleaved with sweeper calls to `alert_if_due` at arbitrary processing times.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, get_args

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from schemas.activity import ActivityType, Bant, SalesActivity
from schemas.alert import SlaAlert
from schemas.handoff import MqlHandoff
from streams.core.clocks import Severity, ended_clocks
from streams.core.lead import LeadState
from streams.core.rules import Rules, parse_rules
from streams.core.sales import alert_if_due, apply_activity, open_first_contact_clock

pytestmark = pytest.mark.unit

EXAMPLES = settings(max_examples=300, deadline=None)

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LEAD = "lead-1"
HANDOFF = "ho-1"
MQL_CLOCK = f"{HANDOFF}:mql_first_contact"
CONTACT_TYPES = {"contacted", "bant_assessed", "sales_action", "opportunity_created"}
TYPES: tuple[ActivityType, ...] = get_args(ActivityType)
# Drawn more often than the three that end a lead's story, so clocks live long enough to matter.
WEIGHTED_TYPES: list[ActivityType] = [
    *[t for t in TYPES if t in CONTACT_TYPES] * 3,
    *[t for t in TYPES if t not in CONTACT_TYPES],
]


def rules_from(**changes: Any) -> Rules:
    data: dict[str, Any] = {
        "mql": {"threshold": 100},
        "sla": {"mql_first_contact": "24h", "sql_follow_up": "48h", "backfill_grace": "1h"},
    }
    data.update(changes)
    return parse_rules(data)


PLAIN = rules_from()
WARNED = rules_from(sla={"mql_first_contact": "24h", "sql_follow_up": "48h", "early_warning": 0.5})
STRICT = rules_from(
    sla={"mql_first_contact": "24h", "sql_follow_up": "48h", "early_warning": 0.75},
    bant={"required": 2, "mandatory": ["need"]},
)
RULESETS = [PLAIN, WARNED, STRICT]
DUE = T0 + PLAIN.sla.mql_first_contact  # the same in every ruleset above
assert all(r.sla.mql_first_contact == PLAIN.sla.mql_first_contact for r in RULESETS)

HANDOFF_EVENT = MqlHandoff(
    handoff_id=HANDOFF,
    lead_id=LEAD,
    qualified_at=T0,
    score=100,
    fit_score=0,
    engagement_score=100,
    threshold=100,
    rules_version=PLAIN.version,
    triggering_event_id="evt-1",
    reasons=[],
    first_contact_due_at=DUE,
)

# Minutes from T0: anywhere from 6h before the handoff to 4 days after, with the MQL deadline
# and its neighbours drawn often.
DUE_MIN = int(PLAIN.sla.mql_first_contact / timedelta(minutes=1))
minutes = st.one_of(
    st.integers(-6 * 60, 4 * 24 * 60),
    st.sampled_from([0, DUE_MIN - 1, DUE_MIN, DUE_MIN + 1, DUE_MIN // 2]),
)


def at(offset: int) -> datetime:
    return T0 + timedelta(minutes=offset)


@dataclass(frozen=True)
class Act:
    activity: SalesActivity


@dataclass(frozen=True)
class Fire:
    pick: int  # which clock: an index into the lead's clock ids (sorted), one past = unknown
    severity: Severity
    now: datetime


Step = Act | Fire


@dataclass(frozen=True)
class Scenario:
    rules: Rules
    handoff_now: datetime
    steps: tuple[Step, ...]


@st.composite
def activity_lists(draw: st.DrawFn, max_size: int = 10) -> list[SalesActivity]:
    out = []
    for n in range(draw(st.integers(0, max_size))):
        type_ = draw(st.sampled_from(WEIGHTED_TYPES))
        bant = None
        if type_ == "bant_assessed":
            bant = Bant(
                **{c: draw(st.booleans()) for c in ("budget", "authority", "need", "timeframe")}
            )
        out.append(
            SalesActivity(
                activity_id=f"act-{n}",
                lead_id=LEAD,
                type=type_,
                occurred_at=at(draw(minutes)),
                # A reassignment names the new owner (the schema requires it).
                owner=draw(
                    st.sampled_from(
                        ["rep-a", "rep-b"] if type_ == "reassigned" else [None, "rep-a", "rep-b"]
                    )
                ),
                bant=bant,
            )
        )
    return out


@st.composite
def with_duplicates(draw: st.DrawFn, originals: Sequence[Step]) -> list[Step]:
    """Re-sent copies of activities inserted anywhere after their original."""
    out = list(originals)
    acts = [s for s in originals if isinstance(s, Act)]
    for _ in range(draw(st.integers(0, 4)) if acts else 0):
        original = draw(st.sampled_from(acts))
        out.insert(draw(st.integers(out.index(original) + 1, len(out))), original)
    return out


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    steps: list[Step] = [Act(a) for a in draw(activity_lists())]
    steps = draw(with_duplicates(steps))
    for _ in range(draw(st.integers(0, 8))):
        call = Fire(
            draw(st.integers(0, 3)), draw(st.sampled_from(["warning", "breach"])), at(draw(minutes))
        )
        # Often before every activity: a sweeper that gets there first.
        steps.insert(draw(st.sampled_from([0, len(steps)]) | st.integers(0, len(steps))), call)
    # Mostly seen at once; sometimes late, up to well beyond the backfill grace.
    late = [30, DUE_MIN + 30, DUE_MIN + 61, 3 * DUE_MIN]
    handoff_now = at(draw(st.sampled_from([0] * 8 + late)))
    return Scenario(draw(st.sampled_from(RULESETS)), handoff_now, tuple(steps))


def passes_bant(bant: Bant | None, rules: Rules) -> bool:
    assert bant is not None
    held = {c for c in ("budget", "authority", "need", "timeframe") if getattr(bant, c)}
    return len(held) >= rules.bant.required and set(rules.bant.mandatory) <= held


@dataclass(frozen=True)
class Record:
    before: LeadState
    step: Step
    after: LeadState
    alerts: list[SlaAlert]
    fired_clock: str | None


def play(scenario: Scenario) -> tuple[LeadState, list[Record]]:
    """Run a scenario; returns the state after the handoff and one record per step run."""
    rules = scenario.rules
    start = open_first_contact_clock(
        LeadState(lead_id=LEAD), HANDOFF_EVENT, rules, scenario.handoff_now
    )
    state, records = start, []
    for step in scenario.steps:
        if isinstance(step, Act):
            after, _ = apply_activity(state, step.activity, rules, step.activity.occurred_at)
            records.append(Record(state, step, after, [], None))
        else:
            ids = [*sorted(c.clock_id for c in state.clocks), "ho-unknown:sql_follow_up"]
            clock_id = ids[step.pick % len(ids)]
            after, alerts = alert_if_due(state, clock_id, step.severity, step.now)
            records.append(Record(state, step, after, alerts, clock_id))
        state = after
    return start, records


@EXAMPLES
@given(scenarios())
def test_every_clock_ends_at_most_once_and_alerts_at_most_once(scenario: Scenario) -> None:
    start, records = play(scenario)
    ended = Counter(c.clock_id for c in ended_clocks(LeadState(lead_id=LEAD), start))
    alerts = Counter[tuple[str, str]]()
    for r in records:
        now_by_id = {c.clock_id: c for c in r.after.clocks}
        for old in r.before.clocks:
            new = now_by_id[old.clock_id]
            if old.status != "open":  # decided: the verdict and its time never change again
                assert (new.status, new.ended_at) == (old.status, old.ended_at)
            if old.late_action_at is not None:
                assert new.late_action_at == old.late_action_at
            if old.warned:
                assert new.warned
        ended.update(c.clock_id for c in ended_clocks(r.before, r.after))
        for alert in r.alerts:
            assert alert.alert_id.startswith("al-")
            alerts[(f"{alert.handoff_id}:{alert.kind}", alert.severity)] += 1
    assert all(n == 1 for n in ended.values()), ended
    assert all(n == 1 for n in alerts.values()), alerts
    final = records[-1].after if records else start
    assert set(ended) == {c.clock_id for c in final.clocks if c.status != "open"}
    # One alert id per (clock, severity): the ids themselves never repeat either.
    ids = [a.alert_id for r in records for a in r.alerts]
    assert len(ids) == len(set(ids))


@EXAMPLES
@given(st.data())
def test_applying_an_activity_twice_equals_applying_it_once(data: st.DataObject) -> None:
    rules = data.draw(st.sampled_from(RULESETS))
    originals = data.draw(activity_lists())
    start = open_first_contact_clock(LeadState(lead_id=LEAD), HANDOFF_EVENT, rules, T0)

    def fold(activities: Sequence[SalesActivity]) -> tuple[LeadState, list[Any]]:
        state, moved = start, []
        for a in activities:
            state, out = apply_activity(state, a, rules, a.occurred_at)
            moved.extend(out)
        return state, moved

    clean = fold(originals)
    # Right after itself: the very same state back, nothing emitted.
    if originals:
        a = data.draw(st.sampled_from(originals))
        prefix = originals[: originals.index(a)]
        once, _ = apply_activity(fold(prefix)[0], a, rules, a.occurred_at)
        twice, moved = apply_activity(once, a, rules, a.occurred_at + timedelta(days=9))
        assert twice is once
        assert moved == []
    # Anywhere later in the history: the same final state and the same transitions.
    noisy = data.draw(with_duplicates([Act(a) for a in originals]))
    assert fold([s.activity for s in noisy if isinstance(s, Act)]) == clean


@EXAMPLES
@given(scenarios())
def test_first_contact_clock_has_exactly_one_outcome(scenario: Scenario) -> None:
    start, records = play(scenario)
    final = records[-1].after if records else start
    (c,) = [c for c in final.clocks if c.clock_id == MQL_CLOCK]
    breaches = [
        a
        for r in records
        for a in r.alerts
        if a.kind == "mql_first_contact" and a.severity == "breach"
    ]
    outcomes = {
        "breach alert": len(breaches) == 1
        and c.status == "breached"
        and c.ended_at == breaches[0].detected_at
        and breaches[0].detected_at >= c.due_at,
        "met, closed or expired": not breaches and c.status in ("met", "closed", "expired"),
        "still open": not breaches and c.status == "open",
        # A late contact before the sweeper fired: breached, but nobody was paged.
        "late contact, no alert": not breaches
        and c.status == "breached"
        and c.late_action_at is not None
        and c.late_action_at == c.ended_at
        and c.ended_at > c.due_at,
        # The lead left the stage after the deadline, before the sweeper fired: a breach.
        # (a late contact may still be recorded after it)
        "closed after due, no alert": not breaches
        and c.status == "breached"
        and c.late_action_at != c.ended_at
        and c.ended_at is not None
        and c.ended_at > c.due_at,
    }
    assert sum(outcomes.values()) == 1, (outcomes, c)
    event(f"outcome: {c.status}, alerted: {bool(breaches)}")

    contacts = [
        r.step.activity.occurred_at
        for r in records
        if isinstance(r.step, Act)
        and r.after is not r.before  # not a duplicate
        and r.step.activity.type in CONTACT_TYPES
    ]
    if c.status == "met":
        assert c.ended_at in contacts
        assert c.started_at <= c.ended_at <= c.due_at
    if c.status == "open":
        assert all(t < c.started_at for t in contacts)

    # A contact in time, seen before the sweeper came for this clock, means no page.
    for r in records:
        if isinstance(r.step, Fire):
            if r.fired_clock == MQL_CLOCK and r.step.severity == "breach" and r.step.now >= DUE:
                break
        elif (
            r.after is not r.before
            and r.step.activity.type in CONTACT_TYPES
            and T0 <= r.step.activity.occurred_at <= DUE
        ):
            assert breaches == []
            break
