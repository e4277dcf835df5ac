"""The routing ledger in Redis: each queue's rotation, and each handoff's routing decision.

Every key carries the hash tag `{<prefix>routing}` (one Redis Cluster slot), so a decision and
the rotation it advances are written by one script, as a compare-and-set on the rotation: two
workers routing at once cannot both take the same turn, and a handoff routed before (a batch
folded again after a conflict, a crash before its write, a rebalance) gets the decision it got
the first time, never a second turn. The decision is made by the pure core
(streams/core/routing.py); this module only keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from importlib.resources import files
from typing import Any

import orjson

from streams.core.routing import QueueLedger, Routing

# Decisions are looked up again only by a batch folded again or replayed soon after; a month
# covers any outage the outbox would still be catching up on.
DECISIONS_KEPT_SECONDS = 35 * 24 * 3600


def encode_ledger(ledger: QueueLedger) -> str:
    if not ledger.credit and not ledger.given:
        return ""
    return orjson.dumps({"credit": ledger.credit, "given": ledger.given}).decode()


def decode_ledger(raw: bytes | str | None) -> QueueLedger:
    if not raw:
        return QueueLedger()
    data = orjson.loads(raw)
    return QueueLedger(credit=data.get("credit", {}), given=data.get("given", {}))


def encode_routing(routing: Routing) -> str:
    return orjson.dumps(
        {
            "owner": routing.owner,
            "queue": routing.queue,
            "reason": routing.reason,
            "passed_over": list(routing.passed_over),
        }
    ).decode()


def decode_routing(raw: bytes | str) -> Routing:
    data = orjson.loads(raw)
    return Routing(data["owner"], data["queue"], data["reason"], tuple(data["passed_over"]))


class RoutingLedger:
    def __init__(self, client: Any, prefix: str) -> None:
        self.redis = client
        self.tag = f"{{{prefix}routing}}:"
        script = files("streams.store").joinpath("lua").joinpath("record_routing.lua")
        self._record = client.register_script(script.read_text())

    def queue_key(self, queue: str) -> str:
        return f"{self.tag}queue:{queue}"

    def decisions_key(self, day: date) -> str:
        return f"{self.tag}decided:{day.isoformat()}"

    async def decide(
        self,
        handoff_id: str,
        queue: str,
        day: date,
        choose: Callable[[QueueLedger], tuple[Routing, QueueLedger]],
    ) -> Routing:
        """The routing of one handoff: the one recorded before, or `choose`'s on the queue's
        current rotation, recorded with the rotation it leaves (computed again if another
        worker moved the rotation in between)."""
        keys = [self.queue_key(queue), self.decisions_key(day)]
        while True:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(keys[0])
            pipe.hget(keys[1], handoff_id)
            raw_ledger, prior = await pipe.execute()
            if prior is not None:
                return decode_routing(prior)
            ledger = decode_ledger(raw_ledger)
            routing, after = choose(ledger)
            args = [
                handoff_id,
                raw_ledger.decode() if isinstance(raw_ledger, bytes) else (raw_ledger or ""),
                encode_ledger(after),
                encode_routing(routing),
                DECISIONS_KEPT_SECONDS,
            ]
            outcome = await self._record(keys=keys, args=args)
            status = outcome[0].decode() if isinstance(outcome[0], bytes) else outcome[0]
            if status == "ok":
                return routing
            if status == "decided":
                return decode_routing(outcome[1])
            # 'conflict': the rotation moved under us; read it again.

    async def recorded(self, handoff_id: str, day: date) -> Routing | None:
        """The decision recorded for a handoff routed on `day` (None: none, or expired)."""
        raw = await self.redis.hget(self.decisions_key(day), handoff_id)
        return decode_routing(raw) if raw is not None else None

    async def read_queue(self, queue: str) -> QueueLedger:
        return decode_ledger(await self.redis.get(self.queue_key(queue)))
