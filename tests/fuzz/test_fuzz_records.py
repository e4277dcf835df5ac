"""Fuzzing the record parsers of the two input topics: `leads.engagement`
(streams.pipeline.intake.parse_engagement) and `sales.activity` (parse_record with SalesActivity,
as streams.pipeline.sales does).

Properties, for any bytes as key and value:
- the parser never raises;
- a valid record (built from the contract's fields) is accepted, with its fields as sent (ids and
  type trimmed);
- a hostile record (a valid one with one named mutation) is dead-lettered with the expected kind
  and a reason naming the field or the problem; random bytes are dead-lettered;
- whatever is accepted satisfies the contract, checked by an independent oracle (the JSON Schema
  in schemas/json/ plus the rules it cannot state);
- every dead letter carries the original key and value (the same objects, so byte for byte), the
  source topic/partition/offset, a bounded reason, and headers that survive Kafka's encoding.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.activity import SalesActivity
from schemas.deadletter import DeadLetterHeaders, DeadLetterKind
from schemas.engagement import EngagementEvent
from streams.core.rules import load_rules
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement, parse_record
from tests.fuzz.payloads import (
    ACTIVITY,
    ANY,
    DEAD,
    ENGAGEMENT,
    MAX_BYTES,
    REPO,
    Contract,
    Drawn,
    Record,
    accepted_by_contract,
    fuzz_settings,
    hostile,
    valid,
)

pytestmark = [pytest.mark.unit, pytest.mark.fuzz]

KNOWN = load_rules(REPO / "rules" / "example.yaml").event_types
WHERE = {
    ENGAGEMENT.name: RecordLocation("fz.leads.engagement", 5, 123_456),
    ACTIVITY.name: RecordLocation("fz.sales.activity", 2, 98_765),
}
CONTRACTS = pytest.mark.parametrize(
    "contract", [ENGAGEMENT, ACTIVITY], ids=[ENGAGEMENT.name, ACTIVITY.name]
)
REASON_MAX = 1000  # characters: a reason never grows with the input (it travels in a header)


def parse(contract: Contract, key: bytes | None, value: bytes | None) -> object:
    where = WHERE[contract.name]
    if contract is ENGAGEMENT:
        return parse_engagement(key, value, where, KNOWN, MAX_BYTES)
    return parse_record(SalesActivity, key, value, where, MAX_BYTES)


def check_dead_letter(contract: Contract, letter: DeadLetter, rec: Record) -> None:
    """What every dead letter must carry, whatever went wrong."""
    assert letter.key is rec.key and letter.value is rec.value  # untouched: byte for byte
    h = letter.headers
    where = WHERE[contract.name]
    assert (h.source_topic, h.source_partition, h.source_offset) == (
        where.topic,
        where.partition,
        where.offset,
    )
    assert h.error_message.strip(), "a dead letter without a reason"
    assert len(h.error_message) <= REASON_MAX, h.error_message[:200]
    assert DeadLetterHeaders.from_kafka(h.to_kafka()) == h


def check_verdict(contract: Contract, rec: Record, out: object) -> None:
    if isinstance(out, DeadLetter):
        check_dead_letter(contract, out, rec)
        if rec.kind is None:
            pytest.fail(f"valid record dead-lettered ({rec.mutation}): {out.headers}")
        if isinstance(rec.kind, DeadLetterKind):
            assert out.headers.error_kind is rec.kind, (rec.mutation, out.headers)
            for word in rec.words:
                assert word in out.headers.error_message, (rec.mutation, word, out.headers)
        return
    assert rec.kind in (None, ANY), f"{rec.mutation} accepted: {out!r}"
    problem = accepted_by_contract(contract, rec.key, rec.value, KNOWN)
    assert problem is None, f"accepted against the contract ({rec.mutation}): {problem}"


@CONTRACTS
@fuzz_settings(100, share=0.2)
@given(data=st.data())
def test_a_valid_record_is_accepted_as_sent(contract: Contract, data: st.DataObject) -> None:
    rec = valid(Drawn(data), contract, sorted(KNOWN))
    out = parse(contract, rec.key, rec.value)
    check_verdict(contract, rec, out)
    model = EngagementEvent if contract is ENGAGEMENT else SalesActivity
    assert isinstance(out, model)
    for name in contract.ids:
        assert getattr(out, name) == rec.fields[name].strip()
    assert out.type == rec.fields["type"].strip()
    assert out.occurred_at == rec.at and out.occurred_at.utcoffset() == rec.at.utcoffset()  # type: ignore[union-attr]
    for name in contract.texts:
        assert getattr(out, name) == rec.fields.get(name)


@CONTRACTS
@fuzz_settings(200)
@given(data=st.data())
def test_a_hostile_record_is_dead_lettered_with_its_reason(
    contract: Contract, data: st.DataObject
) -> None:
    rec = hostile(Drawn(data), contract, sorted(KNOWN))
    out = parse(contract, rec.key, rec.value)  # never raises
    check_verdict(contract, rec, out)
    if rec.kind == DEAD:
        assert isinstance(out, DeadLetter)


@CONTRACTS
@fuzz_settings(100, share=0.2)
@given(key=st.none() | st.binary(max_size=64), value=st.none() | st.binary(max_size=2048))
def test_any_bytes_are_parsed_or_dead_lettered(
    contract: Contract, key: bytes | None, value: bytes | None
) -> None:
    rec = Record(key, value, ANY, mutation="bytes")
    check_verdict(contract, rec, parse(contract, key, value))
