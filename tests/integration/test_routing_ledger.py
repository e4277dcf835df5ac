"""The routing ledger on the real Redis (and, in ops/test's cluster pass, on Redis Cluster):
workers routing at once share one rotation, and a handoff routed twice gets one decision."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, date, datetime

import pytest

from streams.core.routing import QueueLedger, Routing, route
from streams.core.rules import parse_rules
from streams.settings import Settings
from streams.store.routing_ledger import RoutingLedger
from tests.harness import redis_client

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

RULES = parse_rules(
    {
        "mql": {"threshold": 100},
        "routing": {
            "queues": [
                {
                    "name": "q",
                    "members": [{"owner": "a", "weight": 2}, {"owner": "b"}, {"owner": "c"}],
                }
            ]
        },
    }
)
AT = datetime(2026, 12, 1, 9, tzinfo=UTC)
DAY = date(2026, 12, 1)


def choose(ledger: QueueLedger) -> tuple[Routing, QueueLedger]:
    assert RULES.routing is not None
    return route(RULES.routing, RULES.routing.queues[0], ledger, AT, DAY)


async def test_concurrent_routing_shares_one_rotation_and_repeats_no_decision(
    settings: Settings,
) -> None:
    client = redis_client(settings)
    try:
        # Two ledgers on one Redis: two workers.
        ledgers = [RoutingLedger(client, settings.redis_prefix) for _ in range(2)]
        ids = [f"ho-{i}" for i in range(40)]
        first = await asyncio.gather(
            *(ledgers[i % 2].decide(h, "q", DAY, choose) for i, h in enumerate(ids))
        )
        # 40 leads at 2:1:1: 20, 10, 10 (a whole number of rotations: exact).
        assert Counter(d.owner for d in first) == {"a": 20, "b": 10, "c": 10}
        # The same handoffs again (a batch folded again, another worker): the same owners, and
        # the rotation does not move.
        before = await ledgers[0].read_queue("q")
        again = await asyncio.gather(*(ledgers[1].decide(h, "q", DAY, choose) for h in ids))
        assert [d.owner for d in again] == [d.owner for d in first]
        assert await ledgers[0].read_queue("q") == before
    finally:
        await client.aclose()
