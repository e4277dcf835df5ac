"""Fuzzing the collector's request bodies (streams/collector/body.py, and POST /v1/events through
the aiohttp app with an in-memory Kafka gate).

Properties, for any body and content type:
- nothing raises, and the HTTP answer is never a 500;
- a body of valid events (one object, an array, NDJSON) has every event accepted once, produced
  as sent (only `source` added when missing), keyed by lead_id, and the worker's parser accepts
  exactly those bytes;
- a hostile event is rejected with the reason the worker would have dead-lettered it with, and
  the error names the field or the problem; a body that is not JSON is one 400 naming the place;
- whatever is accepted satisfies the contract (the independent oracle of tests/fuzz/payloads.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from schemas.deadletter import DeadLetterKind
from schemas.engagement import EngagementEvent
from streams.collector import Checked, Collector, body_format, check_event, parse_body, summarize
from streams.core.rules import load_rules
from streams.pipeline.intake import DeadLetter, RecordLocation, parse_engagement
from streams.settings import load_settings
from tests.fuzz.payloads import (
    ENGAGEMENT,
    MAX_BYTES,
    REPO,
    Drawn,
    Pick,
    Record,
    accepted_by_contract,
    fuzz_settings,
    hostile,
    valid,
)

pytestmark = [pytest.mark.unit, pytest.mark.fuzz]

KNOWN = load_rules(REPO / "rules" / "example.yaml").event_types
TYPES = sorted(KNOWN)
SOURCE = "website"
TOKEN = "fuzz-token-0123456789abcdef"
EVENT_REASONS = {"not_json", "invalid_event", "unknown_type", "oversized"}
BODY_REASONS = {"not_json", "empty_body", "invalid_body"}
CONTENT_TYPES = ("application/json", "application/x-ndjson", "text/plain", "application/ld+json")


def check_body(body: bytes, fmt: Any) -> tuple[list[Checked], int, dict[str, Any]] | None:
    """What post_events decides for a body, without the I/O; None for a 400 on the body."""
    parsed = parse_body(body, fmt)
    if not hasattr(parsed, "items"):
        assert parsed.status == 400 and parsed.reason in BODY_REASONS, parsed  # type: ignore[union-attr]
        assert parsed.error.strip()  # type: ignore[union-attr]
        return None
    checked = [check_event(i, SOURCE, KNOWN, MAX_BYTES) for i in parsed.items]
    status, answer = summarize(checked, parsed.single)
    for c in checked:
        check_one(c)
    accepted = sum(c.accepted for c in checked)
    assert status == (202 if accepted else 400)
    if not parsed.single:
        assert answer["accepted"] == accepted
        assert len(answer["results"]) == len(checked)
    orjson.dumps(answer)  # the answer can be written
    return checked, status, answer


def check_one(c: Checked) -> None:
    if not c.accepted:
        assert c.reason in EVENT_REASONS, c
        assert c.error and c.error.strip()
        assert c.field is None or c.field in c.error
        return
    assert c.key is not None and c.value is not None
    # Exactly what the worker reads from Kafka: accepted with the same fields.
    again = parse_engagement(c.key, c.value, RecordLocation("t", 0, 0), KNOWN, MAX_BYTES)
    assert not isinstance(again, DeadLetter), again.headers
    assert again == c.event
    assert accepted_by_contract(ENGAGEMENT, c.key, c.value, KNOWN) is None
    assert again.source is not None and again.source.strip()


def shape(p: Pick, values: Sequence[bytes]) -> tuple[bytes, str]:
    """One body from event JSON texts: one object, an array, or NDJSON (blank lines, CRLF)."""
    if len(values) == 1 and p.integer(0, 2) == 0:
        return p.one([b"", b" ", b"\n"]) + values[0] + p.one([b"", b"\n", b"\r\n"]), "json"
    if p.integer(0, 1):
        return b"[" + b",".join(values) + b"]", "json"
    sep = p.one([b"\n", b"\r\n", b"\n\n"])
    return sep.join(values) + p.one([b"", b"\n"]), "ndjson"


def one_line(rec: Record) -> bytes:
    assert rec.value is not None
    return orjson.dumps(orjson.loads(rec.value)) if b"\n" in rec.value else rec.value


@fuzz_settings(60, share=0.2)
@given(data=st.data())
def test_valid_events_are_all_accepted_as_sent(data: st.DataObject) -> None:
    p = Drawn(data)
    recs = [valid(p, ENGAGEMENT, TYPES) for _ in range(p.integer(1, 6))]
    values = [one_line(r) for r in recs]
    body, fmt = shape(p, values)
    result = check_body(body, fmt)
    assert result is not None
    checked, status, _ = result
    assert status == 202 and all(c.accepted for c in checked)
    assert [c.event_id for c in checked] == [r.fields["event_id"].strip() for r in recs]
    for c, rec, value in zip(checked, recs, values, strict=True):
        assert c.key == rec.fields["lead_id"].strip().encode()
        source = rec.fields.get("source")
        if source is None or not source.strip():
            assert c.event is not None and c.event.source == SOURCE
        elif fmt == "ndjson" or (len(recs) == 1 and body.lstrip()[:1] == b"{"):
            assert c.value == value  # produced as sent, byte for byte


@fuzz_settings(150)
@given(data=st.data())
def test_a_hostile_event_is_rejected_with_the_workers_reason(data: st.DataObject) -> None:
    p = Drawn(data)
    rec = hostile(p, ENGAGEMENT, TYPES)
    if rec.value is None:
        return
    decoded = _object(rec.value)
    result = check_body(rec.value, p.one(["json", "ndjson"]))
    if result is None or decoded is None or b"\n" in rec.value:
        return
    (c,) = result[0]
    # The collector ignores Kafka keys; it adds `source` (and so may grow the record).
    if rec.kind in (DeadLetterKind.INVALID_EVENT, DeadLetterKind.UNKNOWN_TYPE):
        if len(rec.value) < MAX_BYTES - 100:
            assert c.reason == rec.kind.value, (rec.mutation, c)
            for word in rec.words:
                assert c.error is not None and word in c.error, (rec.mutation, word, c)
    elif rec.kind is None:
        assert c.accepted, (rec.mutation, c)


def _object(value: bytes) -> dict[str, Any] | None:
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return decoded if isinstance(decoded, dict) else None


def deep_event(p: Pick) -> bytes:
    """A valid event without `source` whose properties nest 200-900 levels: orjson reads up to
    1024 levels but writes at most 254, and the collector re-encodes it to add `source`."""
    event = valid(p, ENGAGEMENT, TYPES).fields
    event.pop("source", None)
    depth = p.integer(200, 900)
    nested = b'{"n":' * depth + b"1" + b"}" * depth
    return orjson.dumps({**event, "properties": "@@"}).replace(b'"@@"', nested)


@fuzz_settings(100, share=0.2)
@given(data=st.data())
def test_a_hostile_body_never_raises(data: st.DataObject) -> None:
    p = Drawn(data)
    parts: list[bytes] = []
    for _ in range(p.integer(1, 5)):
        rec = hostile(p, ENGAGEMENT, TYPES) if p.integer(0, 3) else valid(p, ENGAGEMENT, TYPES)
        parts.append(p.one([rec.value or b"null", p.binary(60), b"{}", b"[]", b"42"]))
    if p.integer(0, 3) == 0:
        parts.append(deep_event(p))
    body, fmt = shape(p, parts)
    if p.integer(0, 4) == 0:
        body = p.binary(500)
    check_body(body, p.one([fmt, "json", "ndjson"]))


@fuzz_settings(200, share=0.1)
@given(content_type=st.none() | st.text(max_size=60))
def test_any_content_type_is_json_ndjson_or_refused(content_type: str | None) -> None:
    assert body_format(content_type) in ("json", "ndjson", None)


# -- the whole request, through the aiohttp app ---------------------------------------------------


class MemoryGate:
    """The Kafka gate, in memory: every produced (key, value) is kept."""

    def __init__(self) -> None:
        self.produced: list[tuple[bytes, bytes]] = []

    def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def produce(self, records: Sequence[tuple[str, bytes, bytes]], within: float) -> None:
        self.produced.extend((key, value) for _topic, key, value in records)


@pytest.fixture(scope="module")
def http() -> Iterator[tuple[asyncio.AbstractEventLoop, TestClient[Any, Any], MemoryGate]]:
    settings = load_settings(
        collector_tokens={SOURCE: SecretStr(TOKEN)},
        collector_rate_per_second=1e9,
        collector_burst=10**9,
        collector_max_body_bytes=1 << 20,
    )
    gate = MemoryGate()
    collector = Collector(settings, KNOWN, gate=gate)  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    client: TestClient[Any, Any] = TestClient(TestServer(collector.app()), loop=loop)
    loop.run_until_complete(client.start_server())
    yield loop, client, gate
    loop.run_until_complete(client.close())
    loop.close()


@fuzz_settings(80, share=0.1)
@given(data=st.data())
def test_a_request_is_never_answered_500(
    http: tuple[asyncio.AbstractEventLoop, TestClient[Any, Any], MemoryGate], data: st.DataObject
) -> None:
    loop, client, gate = http
    p = Drawn(data)
    recs = [
        valid(p, ENGAGEMENT, TYPES) if p.integer(0, 1) else hostile(p, ENGAGEMENT, TYPES)
        for _ in range(p.integer(1, 4))
    ]
    parts = [one_line(r) if _object(r.value or b"") else r.value or b"" for r in recs]
    if p.integer(0, 3) == 0:
        parts.append(deep_event(p))
    body, fmt = shape(p, parts)
    if p.integer(0, 5) == 0:
        body = p.binary(300)
    content_type = p.one([*CONTENT_TYPES, "application/x-www-form-urlencoded", ""])
    if fmt == "ndjson" and content_type == "application/json":
        content_type = "application/x-ndjson"
    before = len(gate.produced)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": content_type}
    status, answer = loop.run_until_complete(_post(client, body, headers))
    assert status in (202, 400, 413, 415), (status, answer)
    accepted = answer.get("accepted", 0) if status in (202, 400) else 0
    assert len(gate.produced) - before == accepted  # each accepted event produced once
    for key, value in gate.produced[before:]:
        event = parse_engagement(key, value, RecordLocation("t", 0, 0), KNOWN, MAX_BYTES)
        assert isinstance(event, EngagementEvent), event
    assert answer.get("reason", "x") not in ("internal", "http")


async def _post(
    client: TestClient[Any, Any], body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with client.post("/v1/events", data=body, headers=headers) as response:
        return response.status, await response.json()
