"""Human durations in the rules file: '24h', '90s', '1h30m', '1.5d', '2w'."""

from __future__ import annotations

from datetime import timedelta

import pytest

from streams.core.durations import format_duration, parse_duration

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24h", timedelta(hours=24)),
        ("48h", timedelta(hours=48)),
        ("90s", timedelta(seconds=90)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5d", timedelta(days=1, hours=12)),
        ("2w", timedelta(weeks=2)),
        ("30d", timedelta(days=30)),
        (" 1H 30M ", timedelta(hours=1, minutes=30)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("24x", "invalid duration '24x'"),
        ("h", "invalid duration 'h'"),
        ("24", "invalid duration '24'"),
        ("1h 30", "invalid duration '1h 30'"),
        ("-5m", "invalid duration '-5m'"),
        ("0s", "must be longer than zero"),
        ("0h0m", "must be longer than zero"),
    ],
)
def test_parse_duration_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_duration(text)
    if "invalid" in message:
        # A malformed duration is answered with what a valid one looks like.
        assert "24h" in str(info.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (timedelta(hours=24), "1d"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=1, hours=12), "1d12h"),
        (timedelta(weeks=2), "14d"),
        (timedelta(milliseconds=1500), "1.5s"),
    ],
)
def test_format_duration(value: timedelta, expected: str) -> None:
    assert format_duration(value) == expected


@pytest.mark.parametrize("text", ["24h", "48h", "90s", "1h30m", "1.5d", "2w", "0.5s", "1d1h1m1s"])
def test_format_duration_round_trips(text: str) -> None:
    value = parse_duration(text)
    formatted = format_duration(value)
    assert parse_duration(formatted) == value
    # The canonical form is a fixed point.
    assert format_duration(parse_duration(formatted)) == formatted
