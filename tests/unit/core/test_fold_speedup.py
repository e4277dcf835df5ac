"""`apply_all` and `replay` fold in mutable locals for speed; `apply` is the reference.

Both must give exactly what folding `apply` one event at a time gives: the same LeadState (every
field, floats bit for bit, the same datetime objects, dicts in the same order, the same fit
cache) and the same handoffs in the same order. The histories below go after the places where a
fast fold could drift: duplicates (also re-sent with other content), late events, events at the
same instant in other zones, daily caps and the forgetting of old cap buckets, decay, attribute
updates by event time, opt-outs, requalification from nurture, states that come back from
storage, stale fit caches and short history limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from unittest.mock import patch
from zoneinfo import ZoneInfo

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.core import lead as lead_module
from streams.core.clocks import Clock
from streams.core.history import Contribution, JourneyStep
from streams.core.lead import LeadState, Replay, apply, apply_all, fold_batch, replay
from streams.core.rules import Rules
from streams.core.sales import recycled_cap_shares, recycled_engagement
from streams.store.codec import lead_from_json, lead_to_json
from tests.unit.core.test_properties import DECAYING, FULL, PLAIN, T0, TYPES, attributes, rules_from

pytestmark = pytest.mark.unit

EXAMPLES = settings(max_examples=300, deadline=None)

# Every kind of rule the fold treats differently: decay or not, caps, min_fit / min_engagement or
# neither, short histories (trimming) and requalification of disqualified leads.
ENGAGEMENT = {name: rule.points for name, rule in PLAIN.engagement.items()}
CAPPED = {
    **ENGAGEMENT,
    "email_open": {"points": 5, "cap_per_day": 10},
    "pricing_page_view": {"points": 25, "cap_per_day": 40},
    "page_view": {"points": 1, "cap_per_day": 2},
}
RULESETS: list[Rules] = [
    PLAIN,
    DECAYING,
    FULL,
    rules_from(
        mql={"threshold": 60, "min_engagement": 30},
        engagement=CAPPED,
        decay={"half_life": "2d"},
        history_limit=3,
        reasons_limit=2,
        recycle={"disqualified_can_requalify": True, "engagement_factor": 0.5},
    ),
    rules_from(mql={"threshold": 40}, engagement=CAPPED, decay={"half_life": "90m"}),
    rules_from(mql={"threshold": 30}, history_limit=1),
]

NEW_YORK = ZoneInfo("America/New_York")  # one shared object: wall-time arithmetic across DST
ZONES: list[Any] = [UTC, timezone(timedelta(hours=9)), timezone(timedelta(hours=-5)), NEW_YORK]
# Milliseconds from T0 over ~100 days (beyond the 35 days cap buckets are kept), with a few
# fixed instants drawn often so that ties and same-day events are common.
WINDOW_MS = 100 * 24 * 3600 * 1000
offsets = st.one_of(
    st.integers(0, WINDOW_MS),
    st.sampled_from([0, 1, 3600_000, 86_399_999, 86_400_000, 36 * 86_400_000]),
)


@st.composite
def events(
    draw: st.DrawFn, leads: Sequence[str] = ("lead-a",), max_size: int = 25
) -> list[EngagementEvent]:
    """Events in arrival order: late ones, re-sent ones (same id, maybe other content) and ids
    shared between leads; times in several zones, some parsed from text (pydantic's TzInfo)."""
    out: list[EngagementEvent] = []
    for _ in range(draw(st.integers(0, max_size))):
        if out and draw(st.integers(0, 5)) == 0:
            again = draw(st.sampled_from(out))
            if draw(st.booleans()):
                out.append(again)
                continue
            event_id = again.event_id  # a re-send with other content is still the same event
        else:
            event_id = f"evt-{draw(st.integers(0, 60))}"
        zone = draw(st.sampled_from(ZONES))
        at = (T0 + timedelta(milliseconds=draw(offsets))).astimezone(zone)
        out.append(
            EngagementEvent.model_validate(
                {
                    "event_id": event_id,
                    "lead_id": draw(st.sampled_from(leads)),
                    "type": draw(st.sampled_from(TYPES)),
                    "occurred_at": at.isoformat() if draw(st.booleans()) else at,
                    "attributes": draw(attributes),
                }
            )
        )
    return out


def fold_one_at_a_time(
    state: LeadState, history: Sequence[EngagementEvent], rules: Rules
) -> tuple[LeadState, list[MqlHandoff]]:
    handoffs: list[MqlHandoff] = []
    for event in history:
        state, out = apply(state, event, rules)
        handoffs.extend(out)
    return state, handoffs


def replay_one_at_a_time(history: Sequence[EngagementEvent], rules: Rules) -> Replay:
    """`replay` as it was: one `apply` per event, leads in order of first appearance."""
    leads: dict[str, LeadState] = {}
    handoffs: list[MqlHandoff] = []
    for event in history:
        state = leads.get(event.lead_id) or LeadState(lead_id=event.lead_id)
        leads[event.lead_id], out = apply(state, event, rules)
        handoffs.extend(out)
    return Replay(leads, handoffs)


def stored(state: LeadState) -> bytes:
    """Everything the store writes for a lead (floats exactly, datetimes with their offsets)."""
    return orjson.dumps(lead_to_json(state))


def assert_same(got: LeadState, want: LeadState) -> None:
    assert got == want
    assert stored(got) == stored(want)
    assert got.seen_event_ids == want.seen_event_ids
    # Dict order matters for what is stored and for the order floats are summed in.
    assert list(got.engagement) == list(want.engagement)
    assert list(got.attributes) == list(want.attributes)
    assert list(got.daily_points) == list(want.daily_points)
    assert list(got.cap_shares) == list(want.cap_shares)
    # The fit cache is not compared by ==, but it decides the fit the next event starts from.
    if want.fit_cache is None:
        assert got.fit_cache is None
    else:
        assert got.fit_cache is not None
        assert got.fit_cache[0] is want.fit_cache[0]
        assert repr(got.fit_cache[1]) == repr(want.fit_cache[1])


def assert_same_handoffs(got: list[MqlHandoff], want: list[MqlHandoff]) -> None:
    assert got == want
    assert [h.model_dump_json() for h in got] == [h.model_dump_json() for h in want]


@st.composite
def starting_states(draw: st.DrawFn, rules: Rules) -> LeadState:
    """A fresh lead, or one with a past: scored (maybe an MQL), then perhaps sent back to
    nurture or disqualified by sales, with sales fields set, a stale fit cache, or read back
    from storage."""
    if draw(st.booleans()):
        return LeadState(lead_id="lead-a")
    past_rules = draw(st.sampled_from(RULESETS))  # may keep a longer history than `rules`
    state, _ = fold_one_at_a_time(
        LeadState(lead_id="lead-a"), draw(events(max_size=12)), past_rules
    )
    stage = draw(st.sampled_from(["as is", "nurture", "disqualified", "sql"]))
    if stage != "as is":
        at = T0 + timedelta(days=draw(st.integers(0, 60)))
        state = replace(
            state,
            stage=stage,
            engagement=recycled_engagement(state.engagement, rules)
            if stage == "nurture"
            else state.engagement,
            cap_shares=recycled_cap_shares(state.cap_shares, rules)
            if stage == "nurture"
            else state.cap_shares,
            missing_bant=("budget", "need"),
            owner="rep-7",
            last_contact_at=at,
            contact_times=(at,),
            last_sales_action_at=at,
            sql_at=at if stage == "sql" else None,
            clocks=(Clock("mql_first_contact", "ho-old", at, at + timedelta(hours=24)),),
            journey=(
                *state.journey,
                JourneyStep(at, "mql", stage, state.handoff_id, "sales said so"),
            ),
        )
    cache = draw(st.sampled_from(["kept", "none", "stale", "other rules"]))
    if cache == "none":
        state = replace(state, fit_cache=None)
    elif cache == "stale":
        state = replace(state, fit_cache=(rules, 999.0))  # `apply` trusts it: so must the fold
    elif cache == "other rules":
        state = replace(state, fit_cache=(PLAIN.model_copy(), 999.0))
    if draw(st.booleans()):
        state = lead_from_json(orjson.loads(stored(state)), sorted(state.seen_event_ids))
    return state


@EXAMPLES
@given(st.data())
def test_apply_all_equals_apply_one_event_at_a_time(data: st.DataObject) -> None:
    rules = data.draw(st.sampled_from(RULESETS))
    start = data.draw(starting_states(rules))
    history = data.draw(events())
    # Some events the start state has already seen come round again.
    history += [e for e in data.draw(events(max_size=5)) if e.event_id in start.seen_event_ids]

    got, handoffs = apply_all(start, history, rules)
    want, expected = fold_one_at_a_time(start, history, rules)

    assert_same(got, want)
    assert_same_handoffs(handoffs, expected)


@EXAMPLES
@given(st.data())
def test_apply_all_in_batches_through_storage_equals_apply(data: st.DataObject) -> None:
    """The worker's way: one `apply_all` per batch, the state stored and read back between."""
    rules = data.draw(st.sampled_from(RULESETS))
    start = data.draw(starting_states(rules))
    history = data.draw(events(max_size=40))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(history)), max_size=8)))
    batches = [history[a:b] for a, b in zip([0, *cuts], [*cuts, len(history)], strict=True)]

    state, handoffs = start, []
    want, expected = start, []
    for batch in batches:
        if data.draw(st.booleans()):  # read back from storage (the fit cache is not stored)
            state = lead_from_json(orjson.loads(stored(state)), sorted(state.seen_event_ids))
            want = lead_from_json(orjson.loads(stored(want)), sorted(want.seen_event_ids))
        state, out = apply_all(state, batch, rules)
        handoffs.extend(out)
        want, out = fold_one_at_a_time(want, batch, rules)
        expected.extend(out)
        assert_same(state, want)
    assert_same_handoffs(handoffs, expected)


@EXAMPLES
@given(st.data())
def test_fold_batch_with_the_dedupe_memory_kept_apart_equals_apply(data: st.DataObject) -> None:
    """The worker's fold: the store keeps the seen ids apart and hands each batch only those of
    its events the lead has seen (`known`); the fold returns just the ids it counted, which the
    store adds to its memory. Batch after batch, that is `apply` one event at a time."""
    rules = data.draw(st.sampled_from(RULESETS))
    start = data.draw(starting_states(rules))
    history = data.draw(events(max_size=40))
    history += [e for e in data.draw(events(max_size=5)) if e.event_id in start.seen_event_ids]
    cuts = sorted(data.draw(st.sets(st.integers(0, len(history)), max_size=8)))
    batches = [history[a:b] for a, b in zip([0, *cuts], [*cuts, len(history)], strict=True)]

    memory = set(start.seen_event_ids)  # the store's dedupe memory
    state = replace(start, seen_event_ids=frozenset())
    handoffs: list[MqlHandoff] = []
    want, expected = start, []
    for batch in batches:
        if data.draw(st.booleans()):  # read back from storage, as a cache miss is
            state = lead_from_json(orjson.loads(stored(state)))
            want = lead_from_json(orjson.loads(stored(want)), sorted(want.seen_event_ids))
        known = frozenset(e.event_id for e in batch) & memory
        after, out = fold_batch(state, batch, rules, known)
        want, wanted_out = fold_one_at_a_time(want, batch, rules)
        counted = want.seen_event_ids - memory
        if counted:
            assert after.seen_event_ids == counted
        else:
            assert after is state  # nothing to write
        memory |= counted
        state = after
        handoffs.extend(out)
        expected.extend(wanted_out)
        assert_same(replace(after, seen_event_ids=want.seen_event_ids), want)
    assert_same_handoffs(handoffs, expected)


@EXAMPLES
@given(st.data())
def test_replay_equals_apply_one_event_at_a_time(data: st.DataObject) -> None:
    rules = data.draw(st.sampled_from(RULESETS))
    history = data.draw(events(leads=("lead-a", "lead-b", "lead-c"), max_size=60))
    # Small chunks too, so that leads carry over from one chunk to the next.
    chunk = data.draw(st.sampled_from([1, 2, 7, lead_module.REPLAY_CHUNK]))

    with patch.object(lead_module, "REPLAY_CHUNK", chunk):
        got = replay(iter(history), rules)
    want = replay_one_at_a_time(history, rules)

    assert list(got.leads) == list(want.leads)
    for lead_id, state in want.leads.items():
        assert_same(got.leads[lead_id], state)
    assert_same_handoffs(got.handoffs, want.handoffs)


def event(
    at: datetime, type_: str = "email_click", lead: str = "lead-a", **kwargs: Any
) -> EngagementEvent:
    return EngagementEvent(
        event_id=kwargs.pop("event_id", f"evt-{at.isoformat()}-{type_}"),
        lead_id=lead,
        type=type_,
        occurred_at=at,
        **kwargs,
    )


def test_only_duplicates_leave_the_state_object_as_it_was() -> None:
    first = event(T0)
    state, _ = apply_all(LeadState(lead_id="lead-a"), [first], DECAYING)
    resent = event(T0 + timedelta(days=1), "download", event_id=first.event_id)
    again, handoffs = apply_all(state, [first, resent], DECAYING)
    assert again is state
    assert handoffs == []


def test_wall_time_zones_fold_as_apply_does_across_a_dst_change() -> None:
    """Two datetimes sharing a ZoneInfo compare and subtract as wall times: 01:30 EDT looks
    later than 01:10 EST, which came 40 minutes after it. The fold must agree with `apply`."""
    edt = datetime(2026, 11, 1, 1, 30, tzinfo=NEW_YORK)
    est = datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=NEW_YORK)
    assert edt > est and edt.astimezone(UTC) < est.astimezone(UTC)
    rules = RULESETS[4]  # decay with a 90 minute half-life: any error in elapsed time shows
    history = [
        event(edt, "download"),
        event(est, "pricing_page_view"),
        event(est + timedelta(hours=2), "demo_request", attributes={"industry": "software"}),
        event(T0, "email_open"),
    ]
    got, handoffs = apply_all(LeadState(lead_id="lead-a"), history, rules)
    want, expected = fold_one_at_a_time(LeadState(lead_id="lead-a"), history, rules)
    assert_same(got, want)
    assert_same_handoffs(handoffs, expected)


def test_history_longer_than_the_limit_is_trimmed_only_when_an_entry_is_added() -> None:
    """`remember` trims when it appends; a fold must not trim a history it did not add to."""
    long = tuple(
        Contribution(f"old-{n}", "download", T0 - timedelta(days=n), 15.0) for n in range(5)
    )
    rules = RULESETS[3]  # history_limit=3
    start = LeadState(lead_id="lead-a", recent_events=long)
    unscored = event(T0, "profile_updated")
    assert rules.points_for(unscored.type) is None
    for history in ([unscored], [unscored, event(T0 + timedelta(hours=1), "download")]):
        got, _ = apply_all(start, history, rules)
        want, _ = fold_one_at_a_time(start, history, rules)
        assert_same(got, want)


def test_a_fold_sets_or_carries_every_lead_state_field() -> None:
    """The fold builds its LeadState field by field: a field added to LeadState later must be
    given a place there. Carried fields hold sentinels here, so one left out shows up."""
    folded = {
        "attributes", "fit_cache", "engagement", "engagement_as_of", "daily_points",
        "cap_shares", "seen_event_ids", "events_counted", "last_event_at", "recent_events", "stage",
        "handoff_id", "qualified_at", "qualifications", "missing_bant", "journey",
        "touches", "attribution", "opportunity",
    }  # fmt: skip
    carried = {
        "clocks", "last_contact_at", "contact_times", "last_sales_action_at", "owner", "sql_at",
        "queue", "won_deal",
    }  # fmt: skip
    assert {f.name for f in fields(LeadState)} == folded | carried | {"lead_id"}
    sentinels = {name: object() for name in carried}
    start = replace(LeadState(lead_id="lead-a", stage="nurture"), **sentinels)
    history = [event(T0, "form_submit", attributes={"industry": "software", "seniority": "vp"}),
               event(T0 + timedelta(hours=1), "demo_request"),
               event(T0 + timedelta(hours=2), "demo_request")]  # fmt: skip
    got, handoffs = apply_all(start, history, RULESETS[5])
    assert handoffs  # the folded fields were all worked out, qualification included
    assert got.lead_id == "lead-a"
    for name, sentinel in sentinels.items():
        assert getattr(got, name) is sentinel, name


def test_decay_factor_is_computed_as_apply_computes_it() -> None:
    """The fold divides time since a fixed epoch; `apply` divides datetime differences. Both are
    whole microseconds, so the quotient (and the factor) is the same float."""
    half_life = timedelta(days=7)
    a = datetime(2026, 1, 5, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=9)))
    b = datetime(2026, 2, 1, 0, 0, 0, 999, tzinfo=UTC)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert ((b - epoch) - (a - epoch)) / half_life == (b - a) / half_life


def test_replay_lists_handoffs_in_the_order_of_their_triggering_events() -> None:
    """`replay` folds lead by lead; the handoffs still come out in input order."""
    rules = RULESETS[5]  # threshold 30: one demo request qualifies
    history = [
        event(T0, "email_open", event_id="a-1"),
        event(T0 + timedelta(hours=1), "demo_request", lead="lead-b"),
        event(T0 + timedelta(hours=2), "demo_request", event_id="a-2"),
    ]
    got = replay(history, rules)
    want = replay_one_at_a_time(history, rules)
    assert [h.lead_id for h in got.handoffs] == ["lead-b", "lead-a"]
    assert_same_handoffs(got.handoffs, want.handoffs)
    assert list(got.leads) == ["lead-a", "lead-b"]
