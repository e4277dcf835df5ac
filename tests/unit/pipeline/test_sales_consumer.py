"""The sales consumer sweeps a partition only once it has read both topics up to where they
ended when it got the partition (docs/reliability.md). Fakes only: the consumer is Kafka's."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from aiokafka import TopicPartition

import streams.agents.sales as sales_agent
from streams.agents.sales import SalesConsumer
from streams.observability import Metrics
from streams.settings import load_settings

pytestmark = pytest.mark.unit


class FakeConsumer:
    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = dict(ends)

    def assignment(self) -> set[TopicPartition]:
        return set(self.ends)

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.ends[tp]

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp]


@pytest.fixture
def setup(monkeypatch: pytest.MonkeyPatch) -> tuple[SalesConsumer, FakeConsumer, dict[Any, int]]:
    settings = load_settings(namespace="t")
    handoff, activity = TopicPartition(settings.handoff, 0), TopicPartition(settings.activity, 0)
    fake = FakeConsumer({handoff: 5, activity: 3})
    positions: dict[Any, int] = {handoff: 2, activity: 3}
    monkeypatch.setattr(sales_agent, "known_position", lambda c, tp: positions.get(tp))
    consumer = SalesConsumer(settings, None, Metrics())  # type: ignore[arg-type]
    consumer.consumer = fake  # type: ignore[assignment]
    return consumer, fake, positions


async def test_a_partition_with_a_backlog_is_not_swept_until_it_is_read(setup: Any) -> None:
    consumer, fake, positions = setup
    handoff, activity = sorted(fake.ends, key=lambda tp: tp.topic != consumer.settings.handoff)
    await consumer._note_caught_up(fake)
    assert consumer.assigned() == [0] and consumer.sweepable() == []  # handoffs 2 of 5 read
    positions[handoff] = 4
    fake.ends[handoff] = 9  # more keeps arriving: the target stays where it was (5)
    await consumer._note_caught_up(fake)
    assert consumer.sweepable() == []
    positions[handoff] = 5
    await consumer._note_caught_up(fake)
    assert consumer.sweepable() == [0]
    # Losing the partition forgets it: the next owner (or this one again) catches up anew.
    await consumer.revoked([handoff, activity])
    positions[handoff] = 5
    await consumer._note_caught_up(fake)
    assert consumer.sweepable() == []  # handoffs now end at 9


async def test_known_position_never_waits() -> None:
    from aiokafka import AIOKafkaConsumer

    tp = TopicPartition("t.leads.handoff", 0)
    unstarted = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1")  # no subscription yet
    assert sales_agent.known_position(unstarted, tp) is None
    # An aiokafka without the state this reads: no gate rather than no sweep.
    assert sales_agent.known_position(object(), tp) == sys.maxsize  # type: ignore[arg-type]
