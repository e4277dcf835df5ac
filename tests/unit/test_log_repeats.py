"""aiokafka logs an error on every retry of a dead broker (thousands of lines in a 30 s outage):
the worker lets one of each kind through, then one every 30 s with the count held back."""

from __future__ import annotations

import logging

import pytest

from streams.observability import RepeatFilter, quiet_repeats

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(msg: str, *args: object, level: int = logging.ERROR, name: str = "aiokafka.conn"):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_one_line_per_kind_then_one_every_period_with_the_count() -> None:
    clock = Clock()
    repeats = RepeatFilter(every=30.0, clock=clock)
    template = "Unable connect to node with id %s: %s"
    first = record(template, 1, "[Errno 111] Connect call failed")
    assert repeats.filter(first)
    assert first.getMessage() == "Unable connect to node with id 1: [Errno 111] Connect call failed"
    passed = 0
    for _ in range(2000):  # ~70 a second for 29 s
        clock.now += 0.0145
        passed += repeats.filter(record(template, 1, "[Errno 111] Connect call failed"))
    assert passed == 0
    # Another kind (another template, another logger or level) is not held back by the first.
    assert repeats.filter(record("Unable to update metadata from %s", [1]))
    assert repeats.filter(record(template, 1, "x", name="aiokafka.client"))
    assert repeats.filter(record(template, 1, "x", level=logging.WARNING))
    clock.now = 1030.0  # 30 s after the first line
    later = record(template, 1, "[Errno 111] Connect call failed")
    assert repeats.filter(later)
    assert later.getMessage() == (
        "Unable connect to node with id 1: [Errno 111] Connect call failed"
        " [2000 more like this in the last 30 s]"
    )
    clock.now += 1.0
    assert not repeats.filter(record(template, 1, "again"))


def test_info_and_debug_pass_untouched() -> None:
    repeats = RepeatFilter(every=30.0, clock=Clock())
    assert all(repeats.filter(record("joined group %s", "g", level=logging.INFO)) for _ in range(5))


def test_a_message_without_arguments_keeps_its_percent_signs() -> None:
    clock = Clock()
    repeats = RepeatFilter(every=30.0, clock=clock)
    assert repeats.filter(record("100% of nodes down"))
    assert not repeats.filter(record("100% of nodes down"))
    clock.now += 31
    again = record("100% of nodes down")
    assert repeats.filter(again)
    assert again.getMessage() == "100% of nodes down [1 more like this in the last 31 s]"


def test_installed_on_every_aiokafka_logger() -> None:
    import aiokafka.consumer.fetcher  # noqa: F401 - creates its logger

    repeats = quiet_repeats("aiokafka")
    try:
        for name in ("aiokafka", "aiokafka.conn", "aiokafka.consumer.fetcher"):
            assert repeats in logging.getLogger(name).filters
        assert repeats not in logging.getLogger("faust").filters
    finally:
        for name in [*logging.Logger.manager.loggerDict, "aiokafka"]:
            logging.getLogger(name).removeFilter(repeats)
