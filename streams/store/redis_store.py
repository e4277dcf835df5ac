"""The Redis adapter. Keys are built here and only here.

A batch is one read round trip (load_batch.lua: states + which of the batch's event ids were
already seen) and one write round trip (commit_batch.lua: a compare-and-set over every lead).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date
from functools import lru_cache
from importlib.resources import files
from typing import Any

import msgpack
import orjson
import redis.asyncio as aioredis
from aiokafka.partitioner import murmur2
from pydantic import SecretStr
from redis.commands.core import AsyncScript

from streams.core.kpi import KpiCount, KpiSample
from streams.core.lead import LeadState
from streams.store.cache import CachedLead, StateCache
from streams.store.codec import (
    decode_lead,
    decode_stored,
    encode_lead,
    remember_seen,
    seen_digest,
    seen_digests,
)


@dataclass(frozen=True, slots=True)
class StoredLead:
    """A lead as read from Redis: its state and the version the write must still find."""

    version: int
    state: LeadState
    seen: bytes = b""  # the dedupe memory as stored (streams.store.codec)
    # With `load(..., seen_apart=True)`: the batch's ids found in the dedupe memory, which the
    # state's own seen_event_ids do not then carry (see streams.core.lead.fold_batch).
    known: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """An output written with the state that caused it, deleted once Kafka acknowledged it.

    `partition` is the input partition whose owner delivers it after a crash. Dead letters go
    through the outbox too, byte for byte: their key and value may be absent or not UTF-8.
    """

    partition: int
    output_id: str
    topic: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()

    def encode(self) -> bytes:
        record: dict[str, Any] = {"t": self.topic}
        for name, raw in (("k", self.key), ("v", self.value)):
            try:
                record[name] = None if raw is None else raw.decode()
            except UnicodeDecodeError:
                record[name + "64"] = base64.b64encode(raw).decode()  # type: ignore[arg-type]
        if self.headers:
            record["h"] = [[k, base64.b64encode(v).decode()] for k, v in self.headers]
        return orjson.dumps(record)

    @classmethod
    def decode(cls, partition: int, output_id: str, raw: bytes) -> OutboxEntry:
        data = orjson.loads(raw)

        def field(name: str) -> bytes | None:
            if name + "64" in data:
                return base64.b64decode(data[name + "64"])
            text = data.get(name)
            return None if text is None else str(text).encode()

        headers = tuple((k, base64.b64decode(v)) for k, v in data.get("h", ()))
        return cls(partition, output_id, data["t"], field("k"), field("v"), headers)


@dataclass(frozen=True, slots=True)
class OffsetAdvance:
    """A batch moves an input partition from `expected` (the next offset Redis must still hold;
    None: Redis has none yet) to `next`, in the same step as the states it computed."""

    partition: int
    expected: int | None
    next: int


class OffsetsMoved(Exception):
    """Redis holds other offsets than the batch started from (Redis restored or emptied, or
    another worker moved on): nothing was written; resume from `stored` (None: none)."""

    def __init__(self, stored: Mapping[int, int | None]) -> None:
        super().__init__(f"stored offsets differ from the batch's start: {dict(stored)}")
        self.stored = dict(stored)


@dataclass(frozen=True, slots=True)
class ReminderEntry:
    """A reminder in the sweeper's sorted set: look at this lead's clock at this time."""

    partition: int
    lead_id: str
    clock_id: str
    severity: str
    at_ms: int = 0

    @property
    def member(self) -> str:
        return f"{self.lead_id}\x1f{self.clock_id}\x1f{self.severity}"

    @classmethod
    def parse(cls, partition: int, member: bytes, at_ms: int = 0) -> ReminderEntry:
        lead_id, clock_id, severity = member.decode().split("\x1f")
        return cls(partition, lead_id, clock_id, severity, at_ms)


class Conflict(Exception):
    """Another writer changed these leads since the batch read them."""

    def __init__(self, lead_ids: Sequence[str]) -> None:
        super().__init__(f"{len(lead_ids)} lead(s) changed under the batch: {list(lead_ids)[:5]}")
        self.lead_ids = list(lead_ids)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Fenced(Exception):
    """The key space this worker writes to is no longer the active one (a rescore switched it)."""


@dataclass(frozen=True, slots=True)
class Generation:
    """Which key space of lead states is live, and the rules it was built with."""

    number: int
    state: str  # "active", or "switching" while a rescore hands over
    rules_version: str | None
    rules: dict[str, Any] | None


LAYOUT_VERSION = 2


@lru_cache(maxsize=1 << 18)
def partition_of(lead_id: str, partitions: int) -> int:
    """The input partition a lead's records land on: Kafka's default partitioner (murmur2 of
    the key, as the Java client, aiokafka and Kafka Connect compute it) over `partitions`.
    Cached: murmur2 in Python costs ~3.4 us, a lookup ~0.1 us, and hot leads recur."""
    return int(murmur2(lead_id.encode()) & 0x7FFFFFFF) % partitions


class Keys:
    """Every Redis key leadflow uses (layout 2, docs/operations.md "Redis key layout").

    Every key belongs to one input partition and carries its hash tag, `{<prefix>p<N>}`: all
    the keys one partition's batch touches (its leads' states, outbox, reminders, KPI counts,
    input offsets and the generation record) share one Redis Cluster hash slot, so a batch is
    one atomic script on one node. A lead's partition follows from its id alone
    (`partition_of`), so explain, the sales side and rescore find it without Kafka.

    Lead states live in a numbered key space (generation) so that `leadflow rescore` can build
    a new one beside the live one."""

    def __init__(self, prefix: str, partitions: int, generation: int = 0) -> None:
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        self.prefix = prefix
        self.partitions = partitions
        self.generation = generation
        self._tags = [f"{{{prefix}p{p}}}:" for p in range(partitions)]
        gen = f"g{generation}:" if generation else ""
        self._spaces = [tag + gen for tag in self._tags]

    def at(self, generation: int) -> Keys:
        return Keys(self.prefix, self.partitions, generation)

    def partition(self, lead_id: str) -> int:
        return partition_of(lead_id, self.partitions)

    def tag(self, partition: int) -> str:
        """The hash-tagged start of every key of one partition."""
        return self._tags[partition]

    def namespace_patterns(self) -> tuple[str, ...]:
        """SCAN patterns that together match every key of this namespace (and no other's):
        untagged records, the partitions' keys and the routing ledger's."""
        return f"{self.prefix}*", f"{{{self.prefix}p*", f"{{{self.prefix}routing}}:*"

    def layout_record(self) -> str:
        """Which layout and partition count this namespace's keys follow (read alone)."""
        return f"{self.prefix}layout"

    def generation_record(self, partition: int) -> str:
        """Which key space of lead states is live: one copy per partition, so that each
        partition's batch checks it in its own slot; a rescore switches every copy."""
        return f"{self._tags[partition]}generation"

    def lead(self, lead_id: str) -> str:
        return f"{self._spaces[self.partition(lead_id)]}lead:{lead_id}"

    def visitor(self, anonymous_id: str) -> str:
        """An anonymous website visitor (streams/store/identity.py): one key, read and written
        alone, outside the lead generations (a rescore does not rebuild visitors)."""
        return f"{self.prefix}visitor:{anonymous_id}"

    def held_outputs(self, source_topic: str, partition: int) -> str:
        """Outputs a rescore holds back in its key space until the switch."""
        return f"{self._spaces[partition]}held:{source_topic}"

    def held_kpis(self, partition: int) -> str:
        return f"{self._spaces[partition]}held-kpis"

    def space_pattern(self) -> str:
        """Every key of this key space (a rescored one: 'g<N>:' keys only)."""
        gen = f"g{self.generation}:" if self.generation else ""
        return f"{{{self.prefix}p*}}:{gen}*"

    def offsets(self, source_topic: str, partition: int) -> str:
        """Next offset to read of one input partition (field: the partition), kept with (and
        in the same key space as) the lead states computed from the records before it."""
        return f"{self._spaces[partition]}offsets:{source_topic}"

    def outbox(self, source_topic: str, partition: int) -> str:
        return f"{self._tags[partition]}outbox:{source_topic}"

    def reminders(self, source_topic: str, partition: int) -> str:
        return f"{self._tags[partition]}wakeups:{source_topic}"

    def kpi_prefix(self, partition: int) -> str:
        return f"{self._tags[partition]}kpi:"

    def kpi(self, day: date, partition: int) -> str:
        return f"{self._tags[partition]}kpi:{day.isoformat()}"

    def kpi_samples(self, day: date, series: str, partition: int) -> str:
        return f"{self._tags[partition]}kpi:{day.isoformat()}:{series}"

    def kpi_pattern(self) -> str:
        return f"{{{self.prefix}p*}}:kpi:*"

    def lead_pattern(self) -> str:
        gen = f"g{self.generation}:" if self.generation else ""
        return f"{{{self.prefix}p*}}:{gen}lead:*"

    def lead_id_of(self, key: bytes | str) -> str:
        """The lead id in a key `lead_pattern` matched."""
        text = _text(key)
        gen = f"g{self.generation}:" if self.generation else ""
        return text[text.index(f"}}:{gen}lead:") + len(gen) + 7 :]


def connect(
    url: str | SecretStr, options: Mapping[str, Any] | None = None, cluster: bool = False
) -> aioredis.Redis:
    """A redis-py client of one Redis, or (`cluster`) of the Redis Cluster `url` is a node of."""
    if isinstance(url, SecretStr):
        url = url.get_secret_value()
    if cluster:
        client: Any = aioredis.RedisCluster.from_url(url, socket_timeout=10, **dict(options or {}))
        return client  # type: ignore[no-any-return]
    return aioredis.Redis.from_url(
        url, socket_timeout=10, health_check_interval=30, **dict(options or {})
    )


def merge_counts(counts: Iterable[KpiCount]) -> list[KpiCount]:
    """A batch's KPI increments summed per day and field (many leads of one batch count the
    same fields: the stage counts, a source's credits), so the write carries each once."""
    merged: dict[tuple[date, str], int] = {}
    for c in counts:
        key = (c.day, c.field)
        merged[key] = merged.get(key, 0) + c.amount
    return [KpiCount(day, name, n) for (day, name), n in merged.items() if n]


class LeadStore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        source_topic: str,
        dedupe_ttl_seconds: int,
        cache_leads: int = 0,
        partitions: int = 8,
    ) -> None:
        self.redis = client
        # Shared by the copies at_generation / for_source make: one worker, one cache.
        self.cache = StateCache(cache_leads)
        self.keys = Keys(prefix, partitions)
        self.source_topic = source_topic
        self.dedupe_ttl_seconds = dedupe_ttl_seconds
        lua = files("streams.store").joinpath("lua")
        self._load: AsyncScript = client.register_script(lua.joinpath("load_batch.lua").read_text())
        self._commit: AsyncScript = client.register_script(
            lua.joinpath("commit_batch.lua").read_text()
        )
        self._switch: AsyncScript = client.register_script(
            lua.joinpath("switch_generation.lua").read_text()
        )

    def at_generation(self, generation: int) -> LeadStore:
        """The same store, reading and writing lead states in another key space."""
        other = copy.copy(self)
        other.keys = self.keys.at(generation)
        return other

    async def active_generation(self) -> Generation:
        """The live key space, as every partition's copy of the generation record says (mid-
        switch, or copies that disagree while a rescore finishes: "switching")."""
        pipe = self.redis.pipeline(transaction=False)
        for p in range(self.keys.partitions):
            pipe.hgetall(self.keys.generation_record(p))
        copies = [{_text(k): _text(v) for k, v in raw.items()} for raw in await pipe.execute()]
        if not any(copies):
            return Generation(0, "active", None, None)
        numbers = {int(c.get("active", 0)) for c in copies}
        switching = any(c.get("state", "active") != "active" for c in copies) or len(numbers) > 1
        record = max(copies, key=lambda c: int(c.get("active", 0)))
        rules = orjson.loads(record["rules"]) if record.get("rules") else None
        return Generation(
            int(record.get("active", 0)),
            "switching" if switching else "active",
            record.get("rules_version"),
            rules,
        )

    async def ensure_generation(self, rules_version: str, rules: dict[str, Any]) -> Generation:
        """Record the rules of the live key space the first time a worker starts on it."""
        fields = {"state": "active", "rules_version": rules_version, "rules": orjson.dumps(rules)}
        for p in range(self.keys.partitions):
            key = self.keys.generation_record(p)
            if await self.redis.hsetnx(key, "active", 0):
                await self.redis.hset(key, mapping=fields)  # type: ignore[arg-type]
        return await self.active_generation()

    async def read_layout(self) -> dict[str, str]:
        """The layout record ({} when this namespace has none yet)."""
        raw = await self.redis.hgetall(self.keys.layout_record())
        return {_text(k): _text(v) for k, v in raw.items()}

    async def write_layout(self) -> None:
        await self.redis.hset(
            self.keys.layout_record(),
            mapping={"version": LAYOUT_VERSION, "partitions": self.keys.partitions},
        )

    # -- rescore --------------------------------------------------------------------------------

    async def read_live(self, lead_ids: Sequence[str]) -> dict[str, tuple[LeadState | None, bytes]]:
        """Live states and their dedupe memory (event ids and sales markers), per lead."""
        pipe = self.redis.pipeline(transaction=False)
        for lead_id in lead_ids:
            pipe.hget(self.keys.lead(lead_id), "s")
        replies = await pipe.execute()
        out: dict[str, tuple[LeadState | None, bytes]] = {}
        for lead_id, raw in zip(lead_ids, replies, strict=True):
            out[lead_id] = (None, b"") if raw is None else decode_stored(raw)
        return out

    async def versions(self, lead_ids: Sequence[str]) -> dict[str, int]:
        """Each lead's current version (0 when it has no state)."""
        pipe = self.redis.pipeline(transaction=False)
        for lead_id in lead_ids:
            pipe.hget(self.keys.lead(lead_id), "v")
        replies = await pipe.execute()
        return {x: int(v or 0) for x, v in zip(lead_ids, replies, strict=True)}

    async def write_rebuilt(
        self,
        states: Sequence[LeadState],
        held: Iterable[OutboxEntry] = (),
        counts: Iterable[tuple[int, KpiCount]] = (),
        carry: Mapping[str, bytes] = {},
    ) -> None:
        """Write rebuilt leads into this (not yet live) key space, with held-back outputs.

        `carry` is the live dedupe memory per lead: kept, so that an input the live state had
        seen (an activity, a handoff, an event no longer in the log) still counts once."""
        pipe = self.redis.pipeline(transaction=False)
        for state in states:
            known = carry.get(state.lead_id, b"")
            digests = seen_digests(known)
            fresh = [x for x in state.seen_event_ids if seen_digest(x) not in digests]
            seen = self._remember(known, fresh, state)
            pipe.hincrby(self.keys.lead(state.lead_id), "v", 1)
            pipe.hset(self.keys.lead(state.lead_id), "s", encode_lead(state, seen))
        for e in held:
            pipe.hset(
                self.keys.held_outputs(self.source_topic, e.partition), e.output_id, e.encode()
            )
        for p, c in counts:
            pipe.hincrby(self.keys.held_kpis(p), f"{c.day.isoformat()}|{c.field}", c.amount)
        await pipe.execute()

    async def live_lead_ids(self) -> list[str]:
        return [
            self.keys.lead_id_of(key)
            async for key in self.redis.scan_iter(match=self.keys.lead_pattern(), count=1000)
        ]

    async def drop_space(self) -> int:
        """Delete every key of this key space (a rescored one only)."""
        if not self.keys.generation:
            raise ValueError("refusing to drop generation 0 as a whole; it shares its tags")
        dropped = 0
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=self.keys.space_pattern(), count=1000):
            batch.append(key)
            if len(batch) >= 500:
                dropped += await self.redis.delete(*batch)
                batch = []
        if batch:
            dropped += await self.redis.delete(*batch)
        return dropped

    async def drop_leads(self, lead_ids: Sequence[str]) -> None:
        """Delete lead states of this key space (generation 0 after a rescore)."""
        for i in range(0, len(lead_ids), 500):
            await self.redis.delete(*(self.keys.lead(x) for x in lead_ids[i : i + 500]))

    async def switch(
        self,
        mode: str,
        live: int,
        target: int,
        rules_version: str = "",
        rules: dict[str, Any] | None = None,
    ) -> None:
        """begin / finish / abort handing the live key space over to `target`: one Lua step
        per partition (each partition's copy of the generation record, its held outputs and
        KPI counts). A 'begin' that fails part-way is undone; from the first 'begin' on, the
        workers of a switching partition wait."""
        begun: list[int] = []
        try:
            for p in range(self.keys.partitions):
                await self._switch_partition(mode, p, live, target, rules_version, rules)
                begun.append(p)
        except BaseException:
            if mode == "begin":
                for p in begun:
                    await self._switch_partition("abort", p, live, target)
            raise

    async def _switch_partition(
        self,
        mode: str,
        partition: int,
        live: int,
        target: int,
        rules_version: str = "",
        rules: dict[str, Any] | None = None,
    ) -> None:
        keys = [self.keys.generation_record(partition)]
        args: list[str | bytes] = [mode, str(live), str(target)]
        if mode == "finish":
            space = self.keys.at(target)
            keys += [
                space.held_outputs(self.source_topic, partition),
                self.keys.outbox(self.source_topic, partition),
                space.held_kpis(partition),
            ]
            args += [rules_version, orjson.dumps(rules), self.keys.kpi_prefix(partition)]
        await self._switch(keys=keys, args=args)

    def for_source(self, source_topic: str) -> LeadStore:
        """The same Redis and lead keys, with outbox and reminders owned by another input."""
        other = copy.copy(self)
        other.source_topic = source_topic
        return other

    @classmethod
    def from_url(
        cls,
        url: str | SecretStr,
        prefix: str,
        source_topic: str,
        dedupe_ttl_seconds: int,
        cache_leads: int = 0,
        options: Mapping[str, Any] | None = None,
        partitions: int = 8,
        cluster: bool = False,
    ) -> LeadStore:
        """A store on the Redis at `url` (the settings' secret URL, or a plain string; with
        `cluster`, any node of a Redis Cluster); `options` are redis-py's connection options
        besides the URL (credentials, TLS files: `Settings.redis_options()`). `partitions` is
        the input topics' partition count, which the key layout follows."""
        client = connect(url, options, cluster)
        return cls(client, prefix, source_topic, dedupe_ttl_seconds, cache_leads, partitions)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    async def load(
        self, event_ids_by_lead: Mapping[str, Sequence[str]], seen_apart: bool = False
    ) -> dict[str, StoredLead]:
        """Read the batch's leads and which of its event ids each lead has already seen: as the
        state's seen_event_ids, or with `seen_apart` as `StoredLead.known` (the scoring fold's
        way, which saves a copy of every state; a state may then carry ids it saw before)."""
        leads = list(event_ids_by_lead)
        gen = self.keys.generation
        cached = [self.cache.get(gen, x) for x in leads]
        known = [-1 if c is None else c.version for c in cached]
        replies = await self._load(
            keys=[self.keys.lead(x) for x in leads], args=[msgpack.packb(known)]
        )
        out: dict[str, StoredLead] = {}
        for lead_id, entry, reply in zip(leads, cached, replies, strict=True):
            if len(reply) == 1 and entry is not None:
                state, seen, digests = entry.state, entry.seen, entry.digests
            elif reply[1] is None:
                out[lead_id] = StoredLead(0, LeadState(lead_id=lead_id))
                continue
            else:
                state, seen = decode_stored(reply[1])
                digests = None
            wanted = event_ids_by_lead[lead_id]
            if wanted and seen:
                if digests is None:
                    digests = seen_digests(seen)
                    if entry is not None and len(reply) == 1:
                        entry.digests = digests
                known_ids = frozenset(x for x in wanted if seen_digest(x) in digests)
            else:
                known_ids = frozenset()
            if seen_apart:
                out[lead_id] = StoredLead(int(reply[0]), state, seen, known_ids)
                continue
            if state.seen_event_ids != known_ids:
                state = replace(state, seen_event_ids=known_ids)
            out[lead_id] = StoredLead(int(reply[0]), state, seen)
        return out

    def _remember_new(self, old: StoredLead, new: LeadState) -> bytes:
        """The dedupe memory after a change: what was stored plus the ids the fold added."""
        return self._remember(old.seen, new.seen_event_ids - old.state.seen_event_ids, new)

    def _remember(self, seen: bytes, ids: Iterable[str], state: LeadState) -> bytes:
        day = state.last_event_at.date() if state.last_event_at else None
        return remember_seen(seen, ids, day, self.dedupe_ttl_seconds // 86400)

    async def commit(
        self,
        partition: int,
        changes: Sequence[tuple[StoredLead, LeadState]],
        outbox: Iterable[OutboxEntry] = (),
        schedule: Iterable[ReminderEntry] = (),
        unschedule: Iterable[ReminderEntry] = (),
        counts: Iterable[KpiCount] = (),
        samples: Iterable[KpiSample] = (),
        offsets: Iterable[OffsetAdvance] = (),
    ) -> None:
        """Write one input partition's new states (guarded by the versions read), outputs,
        reminders, KPIs and input offset (guarded by the offset the batch started from) at
        once. Every key is in `partition`'s hash slot (its leads' too, when the records were
        keyed by lead id with Kafka's default partitioner: on Redis Cluster they must be)."""
        entries, adds, removes = list(outbox), list(schedule), list(unschedule)
        kpis, measured = merge_counts(counts), list(samples)
        keys = [self.keys.lead(new.lead_id) for _, new in changes]
        keys += [self.keys.outbox(self.source_topic, e.partition) for e in entries]
        keys += [self.keys.reminders(self.source_topic, w.partition) for w in adds]
        keys += [self.keys.reminders(self.source_topic, w.partition) for w in removes]
        keys += [self.keys.kpi(c.day, partition) for c in kpis]
        keys += [self.keys.kpi_samples(m.day, m.series, partition) for m in measured]
        keys.append(self.keys.offsets(self.source_topic, partition))
        keys.append(self.keys.generation_record(partition))
        advances = list(offsets)
        memories = [self._remember_new(old, new) for old, new in changes]
        payload = {
            "gen": self.keys.generation,
            "leads": [
                {"v": old.version, "s": encode_lead(new, seen)}
                for (old, new), seen in zip(changes, memories, strict=True)
            ],
            "outbox": [{"id": e.output_id, "r": e.encode().decode()} for e in entries],
            "add": [{"m": w.member, "at": w.at_ms} for w in adds],
            "remove": [w.member for w in removes],
            "count": [{"f": c.field, "n": c.amount} for c in kpis],
            "sample": [{"m": m.member, "s": m.seconds} for m in measured],
            "offsets": [
                {"p": o.partition, "from": -1 if o.expected is None else o.expected, "to": o.next}
                for o in advances
            ],
        }
        # Redis's Lua cmsgpack knows MessagePack's raw strings, not its newer bin type.
        packed = msgpack.packb(payload, use_bin_type=False)
        conflicts = await self._commit(keys=keys, args=[packed])
        if conflicts and int(conflicts[0]) == -1:
            raise Fenced(f"key space {self.keys.generation} is no longer the active one")
        if conflicts and int(conflicts[0]) == -2:
            pairs = [int(x) for x in conflicts[1:]]
            raise OffsetsMoved(
                {
                    pairs[i]: None if pairs[i + 1] < 0 else pairs[i + 1]
                    for i in range(0, len(pairs), 2)
                }
            )
        if conflicts:
            raise Conflict([changes[int(i) - 1][1].lead_id for i in conflicts])
        gen = self.keys.generation
        for (old, new), seen in zip(changes, memories, strict=True):
            # Kept with the seen ids it has (all in `seen` now): `load` sets them per batch.
            self.cache.put(gen, new.lead_id, CachedLead(old.version + 1, new, seen))

    async def read_offsets(self, partitions: Iterable[int]) -> dict[int, int | None]:
        """The next offset to read per input partition, as of the lead states (None: none)."""
        parts = list(partitions)
        if not parts:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            pipe.hget(self.keys.offsets(self.source_topic, p), str(p))
        raw = await pipe.execute()
        return {p: None if v is None else int(v) for p, v in zip(parts, raw, strict=True)}

    async def write_offsets(self, positions: Mapping[int, int]) -> None:
        """Set the offsets of this (not yet live) key space: where a rescore read up to."""
        pipe = self.redis.pipeline(transaction=False)
        for p, offset in positions.items():
            pipe.hset(self.keys.offsets(self.source_topic, p), str(p), offset)
        await pipe.execute()

    async def pending_outbox(self, partitions: Iterable[int]) -> list[OutboxEntry]:
        parts = list(partitions)
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            pipe.hgetall(self.keys.outbox(self.source_topic, p))
        replies = await pipe.execute()
        return [
            OutboxEntry.decode(p, output_id.decode(), raw)
            for p, entries in zip(parts, replies, strict=True)
            for output_id, raw in entries.items()
        ]

    async def clear_outbox(self, entries: Iterable[OutboxEntry]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for e in entries:
            pipe.hdel(self.keys.outbox(self.source_topic, e.partition), e.output_id)
        await pipe.execute()

    async def due_wakeups(
        self, partitions: Iterable[int], now_ms: int, limit: int
    ) -> list[ReminderEntry]:
        """Reminders due at or before now, oldest first (an index range, never a scan)."""
        parts = list(partitions)
        pipe = self.redis.pipeline(transaction=False)
        for p in parts:
            pipe.zrangebyscore(
                self.keys.reminders(self.source_topic, p),
                "-inf",
                now_ms,
                start=0,
                num=limit,
                withscores=True,
            )
        replies = await pipe.execute()
        return [
            ReminderEntry.parse(p, member, int(score))
            for p, due in zip(parts, replies, strict=True)
            for member, score in due
        ]

    async def count_wakeups(self, partitions: Iterable[int]) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for p in partitions:
            pipe.zcard(self.keys.reminders(self.source_topic, p))
        return int(sum(await pipe.execute()))

    async def read_kpis(
        self, days: Iterable[date], series: Iterable[str] = ()
    ) -> tuple[dict[date, dict[str, int]], dict[tuple[date, str], list[float]]]:
        """KPI counters per day, and the measured durations per day and series, summed over
        the partitions (each partition counts in its own hash slot)."""
        wanted_days, wanted_series = list(days), list(series)
        parts = range(self.keys.partitions)
        pipe = self.redis.pipeline(transaction=False)
        for day in wanted_days:
            for p in parts:
                pipe.hgetall(self.keys.kpi(day, p))
        for day in wanted_days:
            for name in wanted_series:
                for p in parts:
                    pipe.zrange(self.keys.kpi_samples(day, name, p), 0, -1, withscores=True)
        replies = iter(await pipe.execute())
        counts: dict[date, dict[str, int]] = {}
        for day in wanted_days:
            total: dict[str, int] = {}
            for _ in parts:
                for k, v in next(replies).items():
                    total[k.decode()] = total.get(k.decode(), 0) + int(v)
            counts[day] = total
        durations = {
            (day, name): sorted(score for _ in parts for _, score in next(replies))
            for day in wanted_days
            for name in wanted_series
        }
        return counts, durations

    async def kpi_days(self) -> list[date]:
        """Every day that has KPI counters (SCAN; for the report when a range is empty)."""
        found = set()
        async for key in self.redis.scan_iter(match=self.keys.kpi_pattern(), count=1000):
            text = _text(key)
            day = text[text.index("}:kpi:") + 6 :]
            if len(day) == 10:  # "YYYY-MM-DD"; sample keys carry ":<series>" after it
                try:
                    found.add(date.fromisoformat(day))
                except ValueError:
                    continue
        return sorted(found)

    async def read_lead(self, lead_id: str) -> LeadState | None:
        raw = await self.redis.hget(self.keys.lead(lead_id), "s")
        return None if raw is None else decode_lead(raw)

    async def read_all_leads(self, count: int = 1000) -> dict[str, LeadState]:
        """Every lead in this namespace (SCAN; for tests, reports and tools, not the hot path)."""
        out: dict[str, LeadState] = {}
        async for key in self.redis.scan_iter(match=self.keys.lead_pattern(), count=count):
            raw = await self.redis.hget(key, "s")
            if raw is not None:
                state = decode_lead(raw)
                out[state.lead_id] = state
        return out
