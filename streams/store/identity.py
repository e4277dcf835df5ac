"""Anonymous visitors in Redis: one hash per anonymous id (its version and its state: the
claiming lead and the kept events), written by save_visitor.lua as a compare-and-set.

Keys: `<prefix>visitor:<anonymous_id>` (built by `Keys.visitor`). Each script touches one key,
so the store works the same on one Redis and on a cluster. Decisions are
streams/core/identity.py's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from importlib.resources import files
from typing import Any

import orjson

from schemas.anonymous import AnonymousEvent
from streams.core.identity import Visitor
from streams.store.redis_store import Keys


def encode_visitor(visitor: Visitor) -> bytes:
    return orjson.dumps(
        {
            "lead_id": visitor.lead_id,
            "claimed_by": visitor.claimed_by,
            "events": [e.model_dump(mode="json", exclude_none=True) for e in visitor.events],
        }
    )


def decode_visitor(anonymous_id: str, raw: bytes | str | None) -> Visitor:
    if not raw:
        return Visitor(anonymous_id)
    data = orjson.loads(raw)
    return Visitor(
        anonymous_id,
        data.get("lead_id"),
        data.get("claimed_by"),
        tuple(AnonymousEvent.model_validate(e) for e in data.get("events", ())),
    )


class VisitorStore:
    """Read a batch's visitors in one round trip; write each as a compare-and-set."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.redis = client
        self.keys = keys
        script = files("streams.store").joinpath("lua").joinpath("save_visitor.lua")
        self._save = client.register_script(script.read_text())

    def key(self, anonymous_id: str) -> str:
        return self.keys.visitor(anonymous_id)

    async def load(self, anonymous_ids: Sequence[str]) -> dict[str, tuple[str, Visitor]]:
        """anonymous id -> (version, state); version '0' for a visitor not known (yet)."""
        pipe = self.redis.pipeline(transaction=False)
        for anonymous_id in anonymous_ids:
            pipe.hmget(self.key(anonymous_id), ["v", "s"])
        found = await pipe.execute()
        out: dict[str, tuple[str, Visitor]] = {}
        for anonymous_id, (version, state) in zip(anonymous_ids, found, strict=True):
            v = version.decode() if isinstance(version, bytes) else (version or "0")
            out[anonymous_id] = (v, decode_visitor(anonymous_id, state))
        return out

    async def save(self, changes: Mapping[str, tuple[str, Visitor]], keep: timedelta) -> list[str]:
        """Write each visitor computed from `version`; the ids whose version had moved (their
        state was not written: read and fold them again)."""
        ids = list(changes)
        if not ids:
            return []
        ttl = max(1, int(keep.total_seconds() * 1000))
        moved: list[str] = []
        # One script call each (a cluster spreads visitors over slots); a batch holds few.
        for anonymous_id in ids:
            version, visitor = changes[anonymous_id]
            written = await self._save(
                keys=[self.key(anonymous_id)], args=[version, encode_visitor(visitor), ttl]
            )
            if not int(written):
                moved.append(anonymous_id)
        return moved

    async def read(self, anonymous_id: str) -> Visitor:
        return (await self.load([anonymous_id]))[anonymous_id][1]
