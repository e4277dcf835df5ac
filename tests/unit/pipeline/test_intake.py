"""Parsing at the edge: raw Kafka records become events or dead letters that say why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.deadletter import DEADLETTER_HEADERS, DeadLetterHeaders, DeadLetterKind
from schemas.engagement import KNOWN_EVENT_TYPES, EngagementEvent
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement

pytestmark = pytest.mark.unit

WHERE = RecordLocation(topic="ns.leads.engagement", partition=5, offset=123_456)
KNOWN = KNOWN_EVENT_TYPES | {"trade_show_visit"}
MAX_BYTES = 4096

GOOD: dict[str, Any] = {
    "event_id": "evt-1",
    "lead_id": "lead-42",
    "type": "email_open",
    "occurred_at": "2026-03-02T09:15:00+09:00",
}


def body(**changes: Any) -> bytes:
    """GOOD with fields changed; a value of `...` removes the field."""
    data = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in data.items() if v is not ...})


def parse(value: bytes | None, key: bytes | None = b"lead-42") -> EngagementEvent | DeadLetter:
    return parse_engagement(key, value, WHERE, KNOWN, MAX_BYTES)


def dead(value: bytes | None, key: bytes | None = b"lead-42") -> DeadLetter:
    result = parse(value, key)
    assert isinstance(result, DeadLetter), f"expected a dead letter, got {result!r}"
    return result


DEAD_LETTER_CASES = [
    # (value, key, kind, words the message must contain)
    pytest.param(b'{"event_id": "x", "lead_id": ', b"lead-42", DeadLetterKind.NOT_JSON,
                 ["not valid UTF-8 JSON"], id="truncated-json"),
    pytest.param(b"\xff\xfe{}", b"lead-42", DeadLetterKind.NOT_JSON, ["JSON"], id="not-utf8"),
    pytest.param(b"", b"lead-42", DeadLetterKind.NOT_JSON, ["JSON"], id="empty-bytes"),
    pytest.param(None, b"lead-42", DeadLetterKind.INVALID_EVENT, ["empty record"],
                 id="none-value"),
    pytest.param(b"[1, 2]", b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["expected a JSON object", "list"], id="json-array"),
    pytest.param(b'"email_open"', b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["expected a JSON object", "str"], id="json-string"),
    pytest.param(b"null", b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["expected a JSON object"], id="json-null"),
    pytest.param(body(event_id=...), b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["event_id", "required"], id="missing-event-id"),
    pytest.param(body(occurred_at=...), b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["occurred_at", "required"], id="missing-occurred-at"),
    pytest.param(body(occurred_at="yesterday"), b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["occurred_at"], id="occurred-at-not-a-time"),
    pytest.param(body(occurred_at="2026-03-02T09:15:00"), b"lead-42",
                 DeadLetterKind.INVALID_EVENT, ["occurred_at", "timezone"], id="naive-time"),
    pytest.param(body(event_id=17), b"lead-42", DeadLetterKind.INVALID_EVENT,
                 ["event_id"], id="event-id-wrong-type"),
    pytest.param(body(attributes={"industry": {"name": "software"}}), b"lead-42",
                 DeadLetterKind.INVALID_EVENT, ["attributes.industry"], id="nested-attribute"),
    pytest.param(body(attributes=["software"]), b"lead-42",
                 DeadLetterKind.INVALID_EVENT, ["attributes"], id="attributes-not-object"),
    pytest.param(body(lead_id="  "), b"", DeadLetterKind.INVALID_EVENT, ["lead_id"],
                 id="blank-lead-id"),
    pytest.param(body(lead_id=None), b"lead-42", DeadLetterKind.INVALID_EVENT, ["lead_id"],
                 id="null-lead-id"),
    pytest.param(body(type="tiktok_like"), b"lead-42", DeadLetterKind.UNKNOWN_TYPE,
                 ["type", "'tiktok_like'"], id="unknown-type"),
    pytest.param(body(properties={"blob": "x" * MAX_BYTES}), b"lead-42",
                 DeadLetterKind.OVERSIZED, [str(MAX_BYTES), "max_event_bytes"], id="oversized"),
    pytest.param(body(), b"lead-7", DeadLetterKind.KEY_MISMATCH,
                 ["'lead-7'", "'lead-42'", "key"], id="key-mismatch"),
    pytest.param(body(), b"", DeadLetterKind.KEY_MISMATCH, ["''", "'lead-42'"],
                 id="empty-key"),
]  # fmt: skip


@pytest.mark.parametrize(("value", "key", "kind", "words"), DEAD_LETTER_CASES)
def test_dead_letters(
    value: bytes | None, key: bytes, kind: DeadLetterKind, words: list[str]
) -> None:
    letter = dead(value, key)
    headers = letter.headers
    assert headers.error_kind is kind
    for word in words:
        assert word in headers.error_message
    # Where it came from is kept...
    assert (headers.source_topic, headers.source_partition, headers.source_offset) == (
        WHERE.topic,
        WHERE.partition,
        WHERE.offset,
    )
    # ...and the original bytes are passed on untouched.
    assert letter.key is key
    assert letter.value is value


def test_missing_field_messages_name_every_field() -> None:
    letter = dead(orjson.dumps({"type": "email_open"}))
    for field in ("event_id", "lead_id", "occurred_at"):
        assert field in letter.headers.error_message


def test_oversized_is_checked_before_parsing() -> None:
    # A huge record is rejected as oversized even when it is also not JSON.
    letter = dead(b"{" * (MAX_BYTES + 1))
    assert letter.headers.error_kind is DeadLetterKind.OVERSIZED
    assert str(MAX_BYTES + 1) in letter.headers.error_message


def test_a_record_of_exactly_the_limit_is_accepted() -> None:
    base = body(properties={"pad": ""})
    value = body(properties={"pad": "x" * (MAX_BYTES - len(base))})
    assert len(value) == MAX_BYTES
    assert isinstance(parse(value), EngagementEvent)


@pytest.mark.parametrize("key", [b"lead-42", None], ids=["with-key", "without-key"])
def test_valid_event_parses(key: bytes | None) -> None:
    value = body(
        source="web-tracker",
        properties={"url": "https://example.com/pricing"},
        attributes={"industry": "software", "company_size": 300, "is_customer": False},
        unknown_extra_field="ignored",
    )
    event = parse(value, key)
    assert isinstance(event, EngagementEvent)
    assert event.event_id == GOOD["event_id"]
    assert event.lead_id == GOOD["lead_id"]
    assert event.type == GOOD["type"]
    assert event.occurred_at == datetime(2026, 3, 2, 0, 15, tzinfo=UTC)
    assert event.source == "web-tracker"
    assert event.attributes == {"industry": "software", "company_size": 300, "is_customer": False}


def test_identifiers_are_trimmed() -> None:
    event = parse(body(event_id=" evt-1 ", lead_id="lead-42 ", type=" download"), key=None)
    assert isinstance(event, EngagementEvent)
    assert (event.event_id, event.lead_id, event.type) == ("evt-1", "lead-42", "download")


def test_types_added_by_the_rules_are_accepted() -> None:
    event = parse(body(type="trade_show_visit"))
    assert isinstance(event, EngagementEvent)
    assert event.type == "trade_show_visit"
    letter = parse_engagement(b"lead-42", body(type="trade_show_visit"), WHERE,
                              KNOWN_EVENT_TYPES, MAX_BYTES)  # fmt: skip
    assert isinstance(letter, DeadLetter)
    assert letter.headers.error_kind is DeadLetterKind.UNKNOWN_TYPE


# --- dead-letter headers on the wire --------------------------------------------------------------


@pytest.mark.parametrize(("value", "key", "kind", "words"), DEAD_LETTER_CASES)
def test_dead_letter_headers_round_trip_through_kafka(
    value: bytes | None, key: bytes, kind: DeadLetterKind, words: list[str]
) -> None:
    headers = dead(value, key).headers
    wire = headers.to_kafka()
    assert [name for name, _ in wire] == list(DEADLETTER_HEADERS.values())
    assert all(isinstance(raw, bytes) for _, raw in wire)
    decoded = DeadLetterHeaders.from_kafka(wire)
    assert decoded == headers
    assert decoded.error_kind is kind
    assert all(word in decoded.error_message for word in words)


def test_headers_on_the_wire_are_plain_utf8_strings() -> None:
    headers = DeadLetterHeaders(
        error_kind=DeadLetterKind.UNKNOWN_TYPE,
        error_message="type: unknown event type 'ページ閲覧'",
        source_topic="leads.engagement",
        source_partition=3,
        source_offset=99,
    )
    wire = dict(headers.to_kafka())
    assert wire[DEADLETTER_HEADERS["error_kind"]] == b"unknown_type"
    assert wire[DEADLETTER_HEADERS["source_partition"]] == b"3"
    assert wire[DEADLETTER_HEADERS["source_offset"]] == b"99"
    assert wire[DEADLETTER_HEADERS["error_message"]].decode("utf-8") == headers.error_message
    # Headers of other producers, in any order, do not get in the way.
    shuffled = [("traceparent", b"00-abc"), *reversed(headers.to_kafka())]
    assert DeadLetterHeaders.from_kafka(shuffled) == headers


# --- found by fuzzing (tests/fuzz) ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("occurred_at", "words"),
    [
        # A JSON number was read as a Unix time: seconds, or milliseconds when large enough, so
        # 253402300800 (year 9999 in seconds) became 1978-01-11.
        (1772410500, ["occurred_at", "RFC 3339", "int"]),
        (253402300800, ["occurred_at", "RFC 3339"]),
        (1.7e9, ["occurred_at", "RFC 3339", "float"]),
        ("1772410500", ["occurred_at", "RFC 3339", "'1772410500'"]),
        # Accepted, then the batch crashed in the core (date arithmetic past year 9999 or before
        # year 1: "year 10000 is out of range", "date value out of range"), batch after batch.
        ("9999-12-31T23:59:59-01:00", ["occurred_at", "2999"]),
        ("9999-12-31T23:59:59Z", ["occurred_at", "2999"]),
        ("0001-01-01T00:00:00+01:00", ["occurred_at", "1900"]),
        ("1899-12-31T23:59:59Z", ["occurred_at", "1900"]),
        ("3000-01-01T00:00:00+14:00", ["occurred_at", "2999"]),
    ],
)
def test_occurred_at_is_an_rfc3339_string_in_a_bounded_range(
    occurred_at: Any, words: list[str]
) -> None:
    letter = dead(body(occurred_at=occurred_at))
    assert letter.headers.error_kind is DeadLetterKind.INVALID_EVENT
    for word in words:
        assert word in letter.headers.error_message


@pytest.mark.parametrize(
    "occurred_at", ["1900-01-01T00:00:00Z", "2999-12-31T23:59:59-12:00", "2026-03-02 09:15:00z"]
)
def test_occurred_at_at_the_edges_of_the_range_is_accepted(occurred_at: str) -> None:
    assert isinstance(parse(body(occurred_at=occurred_at)), EngagementEvent)


def test_a_huge_key_is_not_repeated_in_the_reason() -> None:
    # The reason is a header beside the original key: a 100 KB key made a 200 KB dead letter.
    letter = dead(body(), key=b"x" * 100_000)
    assert letter.headers.error_kind is DeadLetterKind.KEY_MISMATCH
    assert "'lead-42'" in letter.headers.error_message
    assert len(letter.headers.error_message) < 300


def test_a_reason_is_at_most_1000_characters() -> None:
    # Five errors, each naming an attribute by its (long) name.
    attributes = {("a" * 400) + str(i): [i] for i in range(5)}
    letter = dead(body(attributes=attributes))
    assert letter.headers.error_message.startswith("attributes.aaa")
    assert len(letter.headers.error_message) <= 1000
