"""The stored form of a lead: exact round trips, the inline dedupe memory, the format-1 reader."""

from __future__ import annotations

import statistics
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone

import msgpack
import orjson
import pytest

from schemas.engagement import EngagementEvent
from streams.core.lead import LeadState, apply, replay
from streams.core.rules import load_rules
from streams.jobs.sample import generate
from streams.store.codec import (
    SEEN_ENTRY,
    decode_lead,
    decode_stored,
    encode_lead,
    lead_to_json,
    remember_seen,
    seen_digest,
    seen_digests,
)
from tests.harness import ROOT

pytestmark = pytest.mark.unit

RULES = load_rules(ROOT / "rules" / "example.yaml")


def history() -> dict[str, LeadState]:
    records = generate(leads=150, events=1500, seed=9)
    return replay([EngagementEvent.model_validate_json(r.value) for r in records], RULES).leads


def test_every_field_survives_the_round_trip() -> None:
    for state in history().values():
        restored = decode_lead(encode_lead(state), state.seen_event_ids)
        assert restored == state
        assert lead_to_json(restored) == lead_to_json(state)  # offsets kept, not just instants


def test_cap_shares_survive_the_round_trip_and_older_states_have_none() -> None:
    leads = [s for s in history().values() if any(s.cap_shares.values())]
    assert leads  # the example rules cap page views and e-mail opens
    for state in leads:
        restored = decode_lead(encode_lead(state), state.seen_event_ids)
        assert restored.cap_shares == state.cap_shares
        assert list(restored.cap_shares) == list(state.cap_shares)
        # Written before the cap shares were kept (28 fields): no times known, the rest intact.
        fields = msgpack.unpackb(encode_lead(state), raw=False, strict_map_key=False)
        assert len(fields) == 29
        older = decode_lead(msgpack.packb(fields[:28], use_bin_type=True), state.seen_event_ids)
        assert older.cap_shares == {}
        assert older == replace(state, cap_shares={})


def test_times_keep_their_utc_offset_and_microseconds() -> None:
    jst = timezone(timedelta(hours=9))
    at = datetime(2026, 3, 2, 18, 30, 15, 123456, tzinfo=jst)
    event = EngagementEvent(event_id="e1", lead_id="a", type="pricing_page_view", occurred_at=at)
    state, _ = apply(LeadState(lead_id="a"), event, RULES)
    restored = decode_lead(encode_lead(state))
    assert restored.last_event_at == at
    assert restored.last_event_at is not None
    assert restored.last_event_at.isoformat() == "2026-03-02T18:30:15.123456+09:00"


def test_a_lead_with_ten_events_takes_less_than_half_its_json_form() -> None:
    leads = history().values()
    packed = statistics.median(
        len(encode_lead(s, remember_seen(b"", s.seen_event_ids, None, 90))) for s in leads
    )
    as_json = statistics.median(
        len(orjson.dumps(lead_to_json(s))) + sum(len(x) + 8 for x in s.seen_event_ids)
        for s in leads
    )
    assert packed < as_json / 2


def test_the_dedupe_memory_finds_what_it_was_given_and_nothing_else() -> None:
    seen = remember_seen(b"", ["e1", "e2"], date(2026, 11, 1), 90)
    assert len(seen) == 2 * SEEN_ENTRY
    digests = seen_digests(seen)
    assert seen_digest("e1") in digests and seen_digest("e2") in digests
    assert seen_digest("e3") not in digests
    state, memory = decode_stored(encode_lead(LeadState(lead_id="a"), seen))
    assert memory == seen and state.seen_event_ids == frozenset()


def test_the_dedupe_memory_forgets_ids_older_than_the_dedupe_window() -> None:
    old = remember_seen(b"", ["e-old"], date(2026, 1, 1), 90)
    both = remember_seen(old, ["e-new"], date(2026, 3, 1), 90)  # 59 days later: kept
    assert seen_digests(both) == {seen_digest("e-old"), seen_digest("e-new")}
    later = remember_seen(both, ["e-later"], date(2026, 5, 15), 90)  # e-old 134 days: gone
    assert seen_digests(later) == {seen_digest("e-new"), seen_digest("e-later")}


def test_a_json_state_of_leadflow_0_1_is_still_read() -> None:
    state = next(iter(history().values()))
    restored, memory = decode_stored(orjson.dumps(lead_to_json(state)))
    assert lead_to_json(restored) == lead_to_json(state) and memory == b""


def test_utc_times_come_back_in_utc() -> None:
    at = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)
    state = LeadState(lead_id="a", last_event_at=at)
    restored = decode_lead(encode_lead(state))
    assert restored.last_event_at == at and restored.last_event_at.utcoffset() == timedelta(0)


def test_the_state_cache_keeps_the_most_recently_used_leads() -> None:
    from streams.store.cache import CachedLead, StateCache

    cache = StateCache(2)
    for lead in ("a", "b"):
        cache.put(0, lead, CachedLead(1, LeadState(lead_id=lead), b""))
    assert cache.get(0, "a") is not None  # a is now the most recent
    cache.put(0, "c", CachedLead(1, LeadState(lead_id="c"), b""))
    assert cache.get(0, "b") is None and cache.get(0, "a") is not None
    assert cache.get(1, "a") is None  # another generation is another key space
    cache.clear()
    assert len(cache) == 0
