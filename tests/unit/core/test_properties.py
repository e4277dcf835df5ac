"""Properties of the scoring fold that must hold for any history (hypothesis)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.engagement import AttributeValue, EngagementEvent
from streams.core.lead import LeadState, apply_all, replay, score
from streams.core.rules import Rules, parse_rules
from streams.store.codec import lead_from_json, lead_to_json
from tests.reference import Reference, event_from

pytestmark = pytest.mark.unit

EXAMPLES = settings(max_examples=200, deadline=None)

T0 = datetime(2026, 1, 5, tzinfo=UTC)
WINDOW_MS = 60 * 24 * 3600 * 1000  # timestamps fall within 60 days (millisecond resolution)
LEADS = ["lead-a", "lead-b", "lead-c"]

FIT = [
    {"field": "industry", "in": ["software", "manufacturing"], "points": 20},
    {"field": "seniority", "equals": "vp", "points": 20},
    {"field": "company_size", "between": [100, 5000], "points": 15},
    {"field": "company_size", "between": [5001, None], "points": 10},
    {"field": "job_title", "contains": ["director"], "points": 10},
    {"field": "country", "in": ["JP"], "points": -5},
]
ATTRIBUTE_VALUES: dict[str, list[AttributeValue]] = {
    "industry": ["software", "Manufacturing", "retail", None],
    "seniority": ["vp", "staff", None],
    "company_size": [50, 300, "1,200", 9000, 5000.5, None],
    "job_title": ["IT Director", "Engineer", True],
    "country": ["JP", "US"],
}


def rules_from(**changes: Any) -> Rules:
    data: dict[str, Any] = {
        "mql": {"threshold": 100, "min_fit": 15},
        "engagement": {
            "email_open": 5,
            "email_click": 8,
            "download": 15,
            "pricing_page_view": 25,
            "demo_request": 40,
            "opt_out": -50,
            "trade_show_visit": 30,  # a type the rules add to the contract's
        },
        "fit": FIT,
        "sla": {"mql_first_contact": "24h"},
    }
    data.update(changes)
    return parse_rules(data)


PLAIN = rules_from()  # no decay, no caps
DECAYING = rules_from(decay={"half_life": "7d"})
FULL = rules_from(
    decay={"half_life": "7d"},
    engagement={
        **{name: rule.points for name, rule in PLAIN.engagement.items()},
        "email_open": {"points": 5, "cap_per_day": 10},
        "pricing_page_view": {"points": 25, "cap_per_day": 40},
    },
)

# Scored types plus contract types the rules do not score (they count for nothing).
TYPES = [*sorted(PLAIN.engagement), "page_view", "profile_updated", "form_submit"]

attributes = st.none() | st.fixed_dictionaries(
    {}, optional={name: st.sampled_from(values) for name, values in ATTRIBUTE_VALUES.items()}
)


@st.composite
def histories(
    draw: st.DrawFn, leads: Sequence[str] = LEADS, max_size: int = 30
) -> list[EngagementEvent]:
    """Distinct events (unique ids and, per history, unique times) in arbitrary arrival order."""
    size = draw(st.integers(0, max_size))
    offsets = draw(st.lists(st.integers(0, WINDOW_MS), min_size=size, max_size=size, unique=True))
    events = []
    for n, offset in enumerate(offsets):
        events.append(
            EngagementEvent(
                event_id=f"evt-{n}",
                lead_id=draw(st.sampled_from(leads)),
                type=draw(st.sampled_from(TYPES)),
                occurred_at=T0 + timedelta(milliseconds=offset),
                attributes=draw(attributes),
            )
        )
    return events


@st.composite
def with_duplicates(draw: st.DrawFn, events: list[EngagementEvent]) -> list[EngagementEvent]:
    """The same history with re-sent events inserted anywhere after their original."""
    out = list(events)
    if not events:
        return out
    for _ in range(draw(st.integers(0, 10))):
        original = draw(st.sampled_from(events))
        after = out.index(original) + 1
        out.insert(draw(st.integers(after, len(out))), original)
    return out


def final_attributes(events: Sequence[EngagementEvent]) -> dict[str, AttributeValue]:
    latest: dict[str, tuple[datetime, AttributeValue]] = {}
    for e in events:
        for name, value in (e.attributes or {}).items():
            if name not in latest or e.occurred_at > latest[name][0]:
                latest[name] = (e.occurred_at, value)
    return {name: value for name, (_, value) in latest.items()}


def by_lead(events: Sequence[EngagementEvent]) -> dict[str, list[EngagementEvent]]:
    out: dict[str, list[EngagementEvent]] = {}
    for e in events:
        out.setdefault(e.lead_id, []).append(e)
    return out


@EXAMPLES
@given(st.data())
def test_score_is_fit_on_final_attributes_plus_points_of_distinct_events(
    data: st.DataObject,
) -> None:
    events = data.draw(histories())
    resent = data.draw(with_duplicates(events))
    result = replay(resent, PLAIN)
    assert set(result.leads) == {e.lead_id for e in events}
    for lead_id, own in by_lead(events).items():
        attrs = final_attributes(own)
        fit = sum(
            rule.points
            for rule in PLAIN.fit
            if rule.field in attrs and rule.matches(attrs[rule.field])
        )
        distinct = {e.event_id: e.type for e in own}
        engagement = sum(
            rule.points
            for rule in (PLAIN.points_for(t) for t in distinct.values())
            if rule is not None
        )
        current = score(result.leads[lead_id], PLAIN)
        assert current.fit == pytest.approx(fit)
        assert current.engagement == pytest.approx(engagement)
        assert current.total == pytest.approx(fit + engagement)
        assert result.leads[lead_id].events_counted == len(distinct)


@EXAMPLES
@given(st.data())
def test_duplicates_never_change_the_result(data: st.DataObject) -> None:
    rules = data.draw(st.sampled_from([PLAIN, DECAYING, FULL]))
    events = data.draw(histories())
    resent = data.draw(with_duplicates(events))
    clean = replay(events, rules)
    noisy = replay(resent, rules)
    assert noisy.handoffs == clean.handoffs
    assert set(noisy.leads) == set(clean.leads)
    for lead_id, state in clean.leads.items():
        again = noisy.leads[lead_id]
        assert score(again, rules).total == score(state, rules).total
        assert again.events_counted == state.events_counted
        assert again == state


def round_trip(state: LeadState) -> LeadState:
    """What the Redis adapter does between batches: JSON state, seen ids kept apart."""
    stored = orjson.dumps(lead_to_json(state))
    return lead_from_json(orjson.loads(stored), sorted(state.seen_event_ids))


@EXAMPLES
@given(st.data())
def test_batched_fold_through_storage_equals_replay(data: st.DataObject) -> None:
    rules = data.draw(st.sampled_from([PLAIN, DECAYING, FULL]))
    events = data.draw(with_duplicates(data.draw(histories(leads=["lead-a"]))))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(events)), max_size=6)))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]

    state = LeadState(lead_id="lead-a")
    handoffs = []
    for batch in batches:
        state, out = apply_all(round_trip(state), batch, rules)
        handoffs.extend(out)

    oracle = replay(events, rules)
    assert handoffs == oracle.handoffs
    assert state == oracle.leads.get("lead-a", LeadState(lead_id="lead-a"))


@EXAMPLES
@given(st.data())
def test_decayed_engagement_does_not_depend_on_event_order(data: st.DataObject) -> None:
    events = data.draw(histories(leads=["lead-a"], max_size=20))
    shuffled = data.draw(st.permutations(events))
    assert DECAYING.decay is not None
    half_life = DECAYING.decay.half_life
    clock = max((e.occurred_at for e in events), default=T0)
    expected = sum(
        rule.points * 0.5 ** ((clock - e.occurred_at) / half_life)
        for e in events
        if (rule := DECAYING.points_for(e.type)) is not None
    )
    totals = []
    for order in (events, shuffled):
        state = replay(order, DECAYING).leads.get("lead-a", LeadState(lead_id="lead-a"))
        totals.append(sum(t.points for t in state.engagement.values()))
    # abs_tol: opt_out's negative points can cancel the rest out to about zero.
    for total in totals:
        assert math.isclose(total, expected, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(totals[0], totals[1], rel_tol=1e-9, abs_tol=1e-9)


@EXAMPLES
@given(st.data())
def test_capped_decayed_engagement_is_the_reference_models_in_any_order(
    data: st.DataObject,
) -> None:
    """Caps with decay: a day's cap goes to its earliest events in event time (the reference
    model, recomputed from all events), whatever order they arrive in. Within the 35-day cap
    memory the arrival order does not change the score at all."""
    events = data.draw(histories(leads=["lead-a"], max_size=20))
    shuffled = data.draw(st.permutations(events))
    reference_rules = FULL.model_dump(mode="json", by_alias=True, exclude_none=True)

    def engagement(order: Sequence[EngagementEvent]) -> float:
        state = replay(order, FULL).leads.get("lead-a", LeadState(lead_id="lead-a"))
        return score(state, FULL).engagement

    for order in (events, shuffled):
        reference = Reference(reference_rules).run(event_from(e) for e in order)
        lead = reference.leads.get("lead-a")
        want = 0.0 if lead is None else lead.engagement(reference.rules)
        assert math.isclose(engagement(order), want, rel_tol=0, abs_tol=1.5e-6)
    recent = [e for e in events if e.occurred_at < T0 + timedelta(days=30)]
    in_time = sorted(recent, key=lambda e: e.occurred_at)
    assert math.isclose(
        engagement(data.draw(st.permutations(recent))),
        engagement(in_time),
        rel_tol=0,
        abs_tol=1.5e-6,
    )


@EXAMPLES
@given(st.data())
def test_at_most_one_handoff_per_lead(data: st.DataObject) -> None:
    rules = data.draw(st.sampled_from([PLAIN, DECAYING, FULL]))
    events = data.draw(with_duplicates(data.draw(histories(max_size=40))))
    result = replay(events, rules)
    per_lead = Counter(h.lead_id for h in result.handoffs)
    assert all(n == 1 for n in per_lead.values())
    for h in result.handoffs:
        state = result.leads[h.lead_id]
        assert state.stage == "mql"
        assert state.handoff_id == h.handoff_id
        assert h.score >= rules.mql.threshold
        assert rules.mql.min_fit is not None and h.fit_score >= rules.mql.min_fit
    for lead_id, state in result.leads.items():
        assert (state.stage == "mql") == (lead_id in per_lead)
