"""The collector's decisions, without I/O: body parsing, validation, tokens, rate, CORS."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from schemas.deadletter import DeadLetterKind
from schemas.engagement import KNOWN_EVENT_TYPES
from streams import collector as c
from streams.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit

TYPES = KNOWN_EVENT_TYPES
MAX = 65_536


def event(n: int = 1, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_id": f"e-{n}",
        "lead_id": f"L{n}",
        "type": "download",
        "occurred_at": "2025-03-01T10:00:00+00:00",
    }
    return {**body, **extra}


def items(body: bytes, fmt: c.BodyFormat = "json") -> tuple[c.Item, ...]:
    parsed = c.parse_body(body, fmt)
    assert isinstance(parsed, c.Body), parsed
    return parsed.items


def check_all(body: bytes, fmt: c.BodyFormat = "json", source: str = "web") -> list[c.Checked]:
    return [c.check_event(i, source, TYPES, MAX) for i in items(body, fmt)]


# -- body parsing ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", "json"),
        ("application/json; charset=utf-8", "json"),
        ("text/plain;charset=UTF-8", "json"),
        ("application/vnd.leadflow+json", "json"),
        (None, "json"),
        ("application/x-ndjson", "ndjson"),
        ("Application/X-NDJSON; charset=utf-8", "ndjson"),
        ("application/jsonl", "ndjson"),
        ("application/x-www-form-urlencoded", None),
        ("multipart/form-data; boundary=x", None),
    ],
)
def test_body_format_from_content_type(content_type: str | None, expected: str | None) -> None:
    assert c.body_format(content_type) == expected


def test_one_object_is_a_single_event_kept_as_sent() -> None:
    raw = b'{"event_id": "e-1", "lead_id": "L1"}\n'
    parsed = c.parse_body(raw, "json")
    assert isinstance(parsed, c.Body)
    assert parsed.single
    (item,) = parsed.items
    assert item.value == {"event_id": "e-1", "lead_id": "L1"}
    assert item.raw == raw.strip()


def test_array_is_a_batch_of_re_encoded_items() -> None:
    parsed = c.parse_body(orjson.dumps([event(1), event(2), 7]), "json")
    assert isinstance(parsed, c.Body)
    assert not parsed.single
    assert [i.index for i in parsed.items] == [0, 1, 2]
    assert orjson.loads(parsed.items[1].raw) == event(2)
    assert parsed.items[2].value == 7
    assert all(i.line is None for i in parsed.items)


def test_ndjson_is_a_batch_with_line_numbers_and_blank_lines_skipped() -> None:
    body = orjson.dumps(event(1)) + b"\r\n\n" + orjson.dumps(event(2)) + b"\n"
    parsed = c.parse_body(body, "ndjson")
    assert isinstance(parsed, c.Body)
    assert not parsed.single
    assert [(i.index, i.line) for i in parsed.items] == [(0, 1), (1, 3)]
    assert parsed.items[0].raw == orjson.dumps(event(1))


def test_bad_json_body_names_line_and_column() -> None:
    parsed = c.parse_body(b'{\n  "event_id": "e-1",\n  "lead_id": L1\n}', "json")
    assert isinstance(parsed, c.BodyError)
    assert parsed.status == 400
    assert parsed.reason == "not_json"
    assert "line 3 column" in parsed.error


def test_bad_ndjson_line_is_rejected_alone_naming_its_line() -> None:
    body = orjson.dumps(event(1)) + b"\n{not json}\n" + orjson.dumps(event(3))
    checked = check_all(body, "ndjson")
    assert [x.accepted for x in checked] == [True, False, True]
    bad = checked[1]
    assert bad.line == 2
    assert bad.reason == "not_json"
    assert bad.error is not None
    assert bad.error.startswith("line 2: not valid JSON")


@pytest.mark.parametrize(
    ("body", "fmt", "reason"),
    [
        (b"", "json", "empty_body"),
        (b"  \n", "json", "empty_body"),
        (b"[]", "json", "empty_body"),
        (b"\n\n", "ndjson", "empty_body"),
        (b"42", "json", "invalid_body"),
        (b'"event"', "json", "invalid_body"),
    ],
)
def test_bodies_without_events(body: bytes, fmt: c.BodyFormat, reason: str) -> None:
    parsed = c.parse_body(body, fmt)
    assert isinstance(parsed, c.BodyError)
    assert parsed.reason == reason


# -- per-event validation and results --------------------------------------------------------


def test_valid_event_is_accepted_keyed_by_lead_id_and_stamped_with_the_source() -> None:
    (checked,) = check_all(orjson.dumps(event(1, lead_id="  L1 ")), source="website")
    assert checked.accepted
    assert checked.event_id == "e-1"
    assert checked.key == b"L1"
    assert checked.value is not None
    assert orjson.loads(checked.value)["source"] == "website"


def test_an_event_that_names_its_source_keeps_it_byte_for_byte() -> None:
    raw = orjson.dumps(event(1, source="hubspot"))
    (checked,) = check_all(raw, source="website")
    assert checked.accepted
    assert checked.value == raw


@pytest.mark.parametrize("blank", [None, "", "  "])
def test_null_or_blank_source_is_stamped(blank: str | None) -> None:
    (checked,) = check_all(orjson.dumps(event(1, source=blank)), source="website")
    assert checked.value is not None
    assert orjson.loads(checked.value)["source"] == "website"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"occurred_at": "2025-03-01T10:00:00"}, "occurred_at", "invalid_event"),
        ({"occurred_at": None}, "occurred_at", "invalid_event"),
        ({"lead_id": ""}, "lead_id", "invalid_event"),
        ({"type": "emial_open"}, "type", "unknown_type"),
        ({"event_id": 5}, "event_id", "invalid_event"),
    ],
)
def test_invalid_event_names_the_field(change: dict[str, Any], field: str, reason: str) -> None:
    (checked,) = check_all(orjson.dumps(event(1, **change)))
    assert not checked.accepted
    assert checked.field == field
    assert checked.reason == reason
    assert checked.error is not None
    assert checked.error.startswith(f"{field}: ")


def test_missing_field_is_named() -> None:
    body = event(1)
    del body["occurred_at"]
    (checked,) = check_all(orjson.dumps(body))
    assert checked.field == "occurred_at"
    assert checked.error == "occurred_at: Field required"
    assert checked.event_id == "e-1"


def test_not_an_object_is_rejected_without_a_field() -> None:
    (checked,) = check_all(b"[3]")
    assert not checked.accepted
    assert checked.field is None
    assert checked.error == "expected a JSON object, got int"


def test_oversized_event_counts_the_bytes_produced() -> None:
    big = event(1, properties={"blob": "x" * 400})
    raw = orjson.dumps(big)
    item = c.Item(0, big, raw)
    assert c.check_event(item, None, TYPES, len(raw)).accepted
    # Stamping `source` makes the produced bytes bigger than the limit: rejected, as the worker
    # would dead-letter it.
    stamped = c.check_event(item, "a-long-source-name", TYPES, len(raw))
    assert stamped.reason == "oversized"
    assert stamped.field is None


def test_the_rules_event_types_are_accepted() -> None:
    item = items(orjson.dumps(event(1, type="trade_show_visit")))[0]
    assert not c.check_event(item, "web", TYPES, MAX).accepted
    assert c.check_event(item, "web", TYPES | {"trade_show_visit"}, MAX).accepted


def test_single_event_responses() -> None:
    assert c.summarize(check_all(orjson.dumps(event(1))), single=True) == (
        202,
        {"accepted": 1, "event_id": "e-1"},
    )
    status, body = c.summarize(check_all(orjson.dumps(event(1, occurred_at="soon"))), True)
    assert status == 400
    assert body["field"] == "occurred_at"
    assert body["reason"] == "invalid_event"
    assert body["event_id"] == "e-1"
    assert body["error"].startswith("occurred_at: ")


def test_batch_responses_all_mixed_none() -> None:
    good = [event(1), event(2)]
    status, body = c.summarize(check_all(orjson.dumps(good)), single=False)
    assert status == 202
    assert body["accepted"] == 2
    assert body["rejected"] == 0
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted"]

    mixed = [event(1), event(2, type="nope"), event(3)]
    status, body = c.summarize(check_all(orjson.dumps(mixed)), single=False)
    assert status == 202
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][0] == {"index": 0, "status": "accepted", "event_id": "e-1"}
    rejected = body["results"][1]
    assert rejected["index"] == 1
    assert rejected["status"] == "rejected"
    assert rejected["field"] == "type"
    assert rejected["reason"] == "unknown_type"
    assert rejected["event_id"] == "e-2"
    assert "unknown event type 'nope'" in rejected["error"]

    none = [event(1, lead_id=""), {"hello": 1}]
    status, body = c.summarize(check_all(orjson.dumps(none)), single=False)
    assert status == 400
    assert (body["accepted"], body["rejected"]) == (0, 2)
    assert "error" in body
    assert "event_id" not in body["results"][1]


def test_ndjson_results_carry_the_line() -> None:
    body = b"\n" + orjson.dumps(event(1)) + b"\n" + orjson.dumps(event(2, type="x"))
    _, out = c.summarize(check_all(body, "ndjson"), single=False)
    assert [(r["index"], r["line"], r["status"]) for r in out["results"]] == [
        (0, 2, "accepted"),
        (1, 3, "rejected"),
    ]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("occurred_at: Input should have timezone info", "occurred_at"),
        ("attributes.industry: Input should be a valid string; x: y", "attributes.industry"),
        ("expected a JSON object, got list", None),
        ("(record): something", None),
    ],
)
def test_field_of_invalid_event_messages(message: str, field: str | None) -> None:
    assert c.field_of(DeadLetterKind.INVALID_EVENT, message) == field
    assert c.field_of(DeadLetterKind.OVERSIZED, message) is None


# -- tokens ----------------------------------------------------------------------------------

TOKENS = {
    "website": SecretStr("website-token-0123456789"),
    "hubspot": SecretStr("hubspot-token-0123456789"),
    "webinars": SecretStr("webinar-token-0123456789"),
}


@pytest.mark.parametrize(
    ("authorization", "x_token", "expected"),
    [
        ("Bearer abc", None, "abc"),
        ("bearer   abc  ", None, "abc"),
        (None, "abc", "abc"),
        ("Bearer abc", "other", "abc"),
        ("Basic dXNlcjpwYXNz", None, None),
        ("Basic dXNlcjpwYXNz", "abc", "abc"),
        ("Bearer ", None, None),
        (None, "  ", None),
        (None, None, None),
    ],
)
def test_presented_token(authorization: str | None, x_token: str | None, expected: str) -> None:
    assert c.presented_token(authorization, x_token) == expected


def test_right_token_names_its_source_wrong_token_none() -> None:
    digests = c.token_digests(TOKENS)
    assert c.authenticate("hubspot-token-0123456789", digests) == "hubspot"
    assert c.authenticate("website-token-0123456789", digests) == "website"
    assert c.authenticate("website-token-012345678", digests) is None
    assert c.authenticate("", digests) is None
    assert c.authenticate("anything", {}) is None


def test_every_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    digests = c.token_digests(TOKENS)
    # A match on the first token still compares all of them (no early exit).
    assert c.authenticate("website-token-0123456789", digests) == "website"
    assert len(calls) == len(TOKENS)
    # Digests of equal length: the comparison does not leak the token's length either.
    assert {len(a) for a, _ in calls} == {len(b) for _, b in calls} == {32}
    calls.clear()
    assert c.authenticate("wrong", digests) is None
    assert len(calls) == len(TOKENS)


# -- token bucket ----------------------------------------------------------------------------


def test_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = c.TokenBucket(rate=10, burst=20)
    assert bucket.take(20, now=100.0) == 0.0
    wait = bucket.take(1, now=100.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take(1, now=100.05) == pytest.approx(0.05)
    assert bucket.take(1, now=100.1) == 0.0
    # A second later ten more tokens, not more.
    assert bucket.take(10, now=101.1) == 0.0
    assert bucket.take(1, now=101.1) > 0


def test_bucket_refills_only_up_to_the_burst() -> None:
    bucket = c.TokenBucket(rate=10, burst=5)
    assert bucket.take(5, now=0.0) == 0.0
    assert bucket.take(6, now=3600.0) == 0.0  # full bucket: a bigger batch goes through...
    assert bucket.take(1, now=3600.0) == pytest.approx(0.2)  # ...and its debt is paid first


def test_refused_request_takes_nothing() -> None:
    bucket = c.TokenBucket(rate=1, burst=3)
    assert bucket.take(3, now=0.0) == 0.0
    assert bucket.take(2, now=1.0) == pytest.approx(1.0)
    assert bucket.take(2, now=2.0) == 0.0


def test_clock_going_backwards_does_not_mint_tokens() -> None:
    bucket = c.TokenBucket(rate=1, burst=2)
    assert bucket.take(2, now=10.0) == 0.0
    assert bucket.take(1, now=5.0) > 0
    assert bucket.take(1, now=10.5) > 0
    assert bucket.take(1, now=11.0) == 0.0


def test_limiter_keeps_one_bucket_per_source() -> None:
    limiter = c.RateLimiter(rate=1, burst=2)
    assert limiter.take("a", 2, now=0.0) == 0.0
    assert limiter.take("a", 1, now=0.0) > 0
    assert limiter.take("b", 2, now=0.0) == 0.0


@pytest.mark.parametrize(("seconds", "header"), [(0.01, "1"), (1.0, "1"), (1.2, "2"), (30, "30")])
def test_retry_after_is_whole_seconds_at_least_one(seconds: float, header: str) -> None:
    assert c.retry_after(seconds) == header


# -- CORS ------------------------------------------------------------------------------------


def test_cors_off_by_default() -> None:
    assert c.cors_headers("https://shop.example", (), preflight=True) == {}


def test_cors_allowed_origin_preflight_and_response() -> None:
    allowed = ("https://shop.example", "https://www.example/")
    pre = c.cors_headers("https://www.example", allowed, preflight=True)
    assert pre["Access-Control-Allow-Origin"] == "https://www.example"
    assert "POST" in pre["Access-Control-Allow-Methods"]
    assert "Authorization" in pre["Access-Control-Allow-Headers"]
    assert "X-Leadflow-Token" in pre["Access-Control-Allow-Headers"]
    assert pre["Vary"] == "Origin"
    actual = c.cors_headers("https://shop.example", allowed, preflight=False)
    assert actual["Access-Control-Allow-Origin"] == "https://shop.example"
    assert actual["Access-Control-Expose-Headers"] == "Retry-After"
    assert c.cors_headers("https://evil.example", allowed, preflight=True) == {}
    assert c.cors_headers(None, allowed, preflight=False) == {}


def test_cors_wildcard_echoes_the_origin() -> None:
    headers = c.cors_headers("https://any.example", ("*",), preflight=False)
    assert headers["Access-Control-Allow-Origin"] == "https://any.example"


# -- settings --------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.upper().startswith("LEADFLOW_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_collector_settings_defaults(clean_env: pytest.MonkeyPatch) -> None:
    s = load_settings()
    assert (s.collector_host, s.collector_port) == ("127.0.0.1", 8080)
    assert s.collector_tokens == {}
    assert s.collector_max_body_bytes == 1_048_576
    assert s.collector_max_batch_events == 500
    assert (s.collector_rate_per_second, s.collector_burst) == (200, 1000)
    assert s.collector_ack_timeout == 10
    assert s.collector_cors_origins == []
    with pytest.raises(SettingsError, match="LEADFLOW_COLLECTOR_TOKENS"):
        c.check_collector_settings(s)


def test_collector_settings_from_the_environment(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("LEADFLOW_COLLECTOR_TOKENS", '{"website": "0123456789abcdef"}')
    clean_env.setenv("LEADFLOW_COLLECTOR_CORS_ORIGINS", "https://a.example, https://b.example/")
    s = load_settings()
    assert s.collector_tokens["website"].get_secret_value() == "0123456789abcdef"
    assert "0123456789abcdef" not in repr(s)
    assert s.collector_cors_origins == ["https://a.example", "https://b.example"]
    c.check_collector_settings(s)
    clean_env.setenv("LEADFLOW_COLLECTOR_CORS_ORIGINS", '["https://c.example"]')
    assert load_settings().collector_cors_origins == ["https://c.example"]


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('{"website": "0123456789abcdef"', "invalid JSON"),
        ('["0123456789abcdef"]', "JSON object"),
        ('{"website": "short"}', "shorter than 16"),
        ('{"a": "0123456789abcdef", "b": "0123456789abcdef"}', "reuses"),
        ('{"website": 1234567890123456789}', "must be a string"),
    ],
)
def test_bad_tokens_name_the_variable_but_never_the_token(
    clean_env: pytest.MonkeyPatch, value: str, problem: str
) -> None:
    clean_env.setenv("LEADFLOW_COLLECTOR_TOKENS", value)
    with pytest.raises(SettingsError, match="LEADFLOW_COLLECTOR_TOKENS") as info:
        load_settings()
    assert problem in str(info.value)
    assert "0123456789abcdef" not in str(info.value)


def test_collector_command_refuses_to_start_without_tokens(clean_env: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from streams.cli import app

    result = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"}).invoke(app, ["collector"])
    assert result.exit_code == 2
    assert "LEADFLOW_COLLECTOR_TOKENS" in " ".join(result.output.split())


# -- found by fuzzing (tests/fuzz) ----------------------------------------------------------------


def deep(depth: int) -> bytes:
    """JSON nested `depth` levels: orjson reads up to 1024 levels but writes at most 254."""
    return b'{"n":' * depth + b"1" + b"}" * depth


def with_deep_properties(depth: int, **extra: Any) -> bytes:
    return orjson.dumps(event(1, properties="@@", **extra)).replace(b'"@@"', deep(depth))


def test_an_array_item_too_deep_to_re_encode_is_rejected_not_a_crash() -> None:
    # Raised TypeError("Recursion limit reached") from parse_body: the request got a 500.
    body = b"[" + with_deep_properties(300, source="web") + b"," + orjson.dumps(event(2)) + b"]"
    first, second = check_all(body)
    assert not first.accepted and first.reason == "invalid_event"
    assert first.error is not None and "nested more than 254 levels" in first.error
    assert first.event_id == "e-1"
    assert second.accepted


def test_an_event_without_source_too_deep_to_re_encode_is_rejected_not_a_crash() -> None:
    # Adding `source` re-encodes the event: raised TypeError from check_event (a 500).
    (checked,) = check_all(with_deep_properties(300))
    assert not checked.accepted and checked.reason == "invalid_event"
    assert checked.error is not None and "nested more than 254 levels" in checked.error
    status, answer = c.summarize([checked], single=True)
    assert status == 400 and answer["reason"] == "invalid_event"


def test_a_deep_event_with_its_source_is_produced_as_sent() -> None:
    # Nothing to re-encode: the worker reads it (up to orjson's 1024 levels), so it is accepted.
    raw = with_deep_properties(300, source="web")
    (checked,) = check_all(raw)
    assert checked.accepted and checked.value == raw
