"""The Redis-backed e-mail identity map: e-mail address -> lead id, saved by an import of a
contact export (`leadflow import contacts.csv --profile hubspot-contacts --save-identity`) and
read by a later import that names leads by address (`--identity redis`).

One hash per namespace, `<prefix>identity:email` (built like the untagged records of
`redis_store.Keys`, so `Keys.namespace_patterns` covers it and deleting a namespace deletes
it): field = normalised address, value = lead id. HSET/HSCAN only, single key, so it works on
Redis Cluster as on one Redis. Kept apart from the tracker's anonymous-id stitching on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

SAVE_CHUNK = 1000


def email_identity_key(prefix: str) -> str:
    """The namespace's identity hash (prefix: `Settings.redis_prefix`, e.g. `ns:lf:`)."""
    return f"{prefix}identity:email"


class EmailIdentityStore:
    def __init__(self, client: Any, prefix: str) -> None:
        self.redis = client
        self.key = email_identity_key(prefix)

    async def save(self, pairs: Iterable[tuple[str, str]]) -> int:
        """Store (address, lead id) pairs (a later export's lead for an address wins); returns
        how many pairs were written."""
        written = 0
        chunk: dict[str, str] = {}
        for address, lead_id in pairs:
            chunk[address] = lead_id
            if len(chunk) >= SAVE_CHUNK:
                written += await self._write(chunk)
                chunk = {}
        if chunk:
            written += await self._write(chunk)
        return written

    async def _write(self, chunk: dict[str, str]) -> int:
        await self.redis.hset(self.key, mapping=chunk)
        return len(chunk)

    async def load(self) -> dict[str, str]:
        """The whole map (HSCAN in pages, so Redis is never blocked by one huge reply)."""
        leads: dict[str, str] = {}
        async for field, value in self.redis.hscan_iter(self.key, count=1000):
            leads[_text(field)] = _text(value)
        return leads

    async def close(self) -> None:
        await self.redis.aclose()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
