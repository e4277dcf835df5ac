"""Which (target, delivery id) pairs `leadflow notify` has already settled (delivered, or
dead-lettered), so a record seen again after a restart or a rebalance is not POSTed twice.

One key per pair, `<prefix>notify:<target>:<id>` (SET NX with a TTL): single-key commands only,
so it works on Redis Cluster as on one Redis. The value says how it was settled.
"""

from __future__ import annotations

from typing import Any, Literal

Settled = Literal["delivered", "deadlettered"]


class DeliveryMarkers:
    def __init__(self, client: Any, prefix: str, ttl_seconds: int) -> None:
        self.redis = client
        self.prefix = prefix
        self.ttl_seconds = ttl_seconds

    def key(self, target: str, delivery_id: str) -> str:
        return f"{self.prefix}notify:{target}:{delivery_id}"

    async def settled(self, target: str, delivery_id: str) -> str | None:
        """How this pair was settled, or None when it was not (yet)."""
        value = await self.redis.get(self.key(target, delivery_id))
        return value.decode() if isinstance(value, bytes) else value

    async def settle(self, target: str, delivery_id: str, how: Settled) -> None:
        await self.redis.set(self.key(target, delivery_id), how, nx=True, ex=self.ttl_seconds)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def close(self) -> None:
        await self.redis.aclose()
