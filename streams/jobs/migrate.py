"""`leadflow migrate`: move a namespace's Redis keys into the current key layout.

Two moves, both with every worker stopped:

- **From the layout before 0.9** (no hash tags: `<prefix>lead:<id>`, one generation record
  `<prefix>generation`), on this Redis or on another one (`--from-url`: a single Redis whose
  keys go to a Redis Cluster, say).
- **From another partition count** (`--from-partitions N`), after partitions were added to the
  input topics: each lead, and each of its deadline reminders, moves to the partition Kafka's
  default partitioner now gives its id.

What moves (the live generation only: a rescore's leftovers are not live):
lead states (version and state, dedupe memory included), the input offsets of each partition,
undelivered outputs (outbox) of each partition, the deadline reminders, the KPI counters and
samples, and the generation record (live generation and its rules). Then the layout record is
written and, unless kept, the old keys are deleted. Values are copied byte for byte.

Running it again after an interruption is safe: every write is a plain set of the old value.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import redis.asyncio as aioredis

from streams.bootstrap import open_store
from streams.settings import Settings
from streams.store import LeadStore
from streams.store.redis_store import Keys, partition_of

CHUNK = 500
_TOPIC = r"[A-Za-z0-9._-]+"
_DAY = r"\d{4}-\d{2}-\d{2}"


class MigrateError(RuntimeError):
    """The migration cannot start; nothing was written. The message says why and what to do."""


class AlreadyMigrated(MigrateError):
    """The namespace is in the current layout already: nothing to do (a second run)."""


@dataclass(frozen=True, slots=True)
class OldKey:
    """One key of the layout being moved from, parsed."""

    kind: str  # generation, lead, offsets, outbox, wakeups, kpi, kpi-samples, or "other"
    raw: bytes
    generation: int = 0
    lead_id: str = ""
    topic: str = ""
    partition: int = 0
    day: str = ""
    series: str = ""


def parse_old_key(rest: str, raw: bytes, partition: int = 0) -> OldKey:
    """A key after its prefix (the legacy layout) or after its `{...}:` tag (another partition
    count, `partition` from the tag): what it holds."""
    generation = 0
    if m := re.fullmatch(r"g(\d+):(.*)", rest, re.S):
        generation, rest = int(m[1]), m[2]
    if rest == "generation":
        return OldKey("generation", raw, partition=partition)
    if rest.startswith("lead:"):
        return OldKey("lead", raw, generation, lead_id=rest[5:], partition=partition)
    if m := re.fullmatch(rf"offsets:({_TOPIC})", rest):
        return OldKey("offsets", raw, generation, topic=m[1], partition=partition)
    for kind, name in (("outbox", "outbox"), ("wakeups", "wakeups")):
        if m := re.fullmatch(rf"{name}:({_TOPIC})(?::(\d+))?", rest):
            p = partition if m[2] is None else int(m[2])
            return OldKey(kind, raw, topic=m[1], partition=p)
    if m := re.fullmatch(rf"kpi:({_DAY})(?::(.+))?", rest):
        if m[2] is None:
            return OldKey("kpi", raw, day=m[1], partition=partition)
        return OldKey("kpi-samples", raw, day=m[1], series=m[2], partition=partition)
    return OldKey("other", raw, generation)


@dataclass
class MigrateSummary:
    source: str = ""  # "layout before 0.9" or "8 partitions"
    partitions: int = 0
    generation: int = 0
    leads: int = 0
    offsets: int = 0
    outbox: int = 0
    reminders: int = 0
    kpi_days: int = 0
    deleted: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # kind -> keys not moved


Progress = Callable[[int, int], None]  # (keys done, keys in total)


class Migration:
    """Copies one namespace from `source` (a client of the Redis holding the old keys) into
    `target` (leadflow's store on the configured Redis, which may be a cluster)."""

    def __init__(
        self,
        settings: Settings,
        source: aioredis.Redis,
        target: LeadStore,
        from_partitions: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.target = target
        self.prefix = settings.redis_prefix
        self.from_partitions = from_partitions
        self.progress = progress or (lambda done, total: None)
        self.summary = MigrateSummary(partitions=settings.topic_partitions)
        self.same_redis = False

    # -- what is there ------------------------------------------------------------------------

    async def _scan(self, pattern: str) -> AsyncIterator[bytes]:
        async for key in self.source.scan_iter(match=pattern, count=1000):
            yield key

    async def old_keys(self) -> list[OldKey]:
        """The keys to move, parsed; raises MigrateError when there is nothing to move."""
        if self.from_partitions is None:
            if not await self.source.exists(f"{self.prefix}generation"):
                raise MigrateError(
                    f"no leadflow data in the layout before 0.9 under '{self.prefix}' "
                    "(no generation record); nothing to migrate. For another partition count, "
                    "use --from-partitions N"
                )
            self.summary.source = "layout before 0.9"
            start = len(self.prefix)
            legacy = [
                parse_old_key(key.decode(errors="replace")[start:], key)
                async for key in self._scan(f"{self.prefix}*")
                if not key.decode(errors="replace").startswith(Keys(self.prefix, 1).layout_record())
            ]
            return legacy
        layout = await self.target.read_layout() if self.same_redis else {}
        if layout and int(layout.get("partitions", 0)) != self.from_partitions:
            raise MigrateError(
                f"Redis says this namespace is laid out for {layout['partitions']} partitions, "
                f"not {self.from_partitions}; check --from-partitions"
            )
        self.summary.source = f"{self.from_partitions} partitions"
        tag = re.compile(rf"\{{{re.escape(self.prefix)}p(\d+)\}}:(.*)", re.S)
        found = []
        async for key in self._scan(f"{{{self.prefix}p*"):
            if m := tag.fullmatch(key.decode(errors="replace")):
                found.append(parse_old_key(m[2], key, int(m[1])))
        return found

    async def _generation(self, keys: list[OldKey]) -> dict[bytes, bytes]:
        records = [k for k in keys if k.kind == "generation"]
        if not records:
            raise MigrateError("no generation record found; nothing to migrate")
        record: dict[bytes, bytes] = await self._read_hash(records[0].raw)
        if record.get(b"state", b"active") != b"active":
            raise MigrateError(
                "a rescore is switching key spaces; let it finish (or abort it) and run "
                "`leadflow migrate` again"
            )
        return record

    # -- the move -----------------------------------------------------------------------------

    async def run(self, keep: bool = False) -> MigrateSummary:
        keys = await self.old_keys()
        record = await self._generation(keys)
        live = int(record.get(b"active", b"0"))
        self.summary.generation = live
        self.new = self.target.at_generation(live).keys
        self.writes = _Writes(self.target.redis)
        self.moved: list[bytes] = []
        # Reminders that leave a key the new layout keeps (same Redis, another partition count).
        self.leaving: dict[bytes, list[bytes]] = defaultdict(list)
        self.kpis: dict[tuple[date, int], dict[bytes, int]] = defaultdict(dict)
        done = 0

        leads = [k for k in keys if k.kind == "lead" and k.generation == live]
        for i in range(0, len(leads), CHUNK):
            await self._move_leads(leads[i : i + CHUNK])
            done += len(leads[i : i + CHUNK])
            self.progress(done, len(keys))
        movers = {
            "generation": self._move_generation,
            "offsets": self._move_offsets,
            "outbox": self._move_outbox,
            "wakeups": self._move_reminders,
            "kpi": self._move_kpi,
            "kpi-samples": self._move_kpi_samples,
        }
        for k in keys:
            if k.kind == "lead" and k.generation == live:
                continue
            mover = movers.get(k.kind)
            if mover is None or (k.kind == "offsets" and k.generation != live):
                what = "leads of other generations" if k.kind == "lead" else k.kind
                self.summary.skipped[what] = self.summary.skipped.get(what, 0) + 1
            else:
                await mover(k)
                self.moved.append(k.raw)
            done += 1
            self.progress(done, len(keys))
        await self._finish(record)
        if not keep:
            await self._delete_moved()
        return self.summary

    async def _move_leads(self, chunk: list[OldKey]) -> None:
        """HGETALL each lead, HSET it under its new key (version and state, byte for byte)."""
        read = self.source.pipeline(transaction=False)
        for k in chunk:
            read.hgetall(k.raw)
        pipe = self.target.redis.pipeline(transaction=False)
        for k, value in zip(chunk, await read.execute(), strict=True):
            if value:
                pipe.hset(self.writes.name(self.new.lead(k.lead_id)), mapping=value)
        await pipe.execute()
        self.moved += [k.raw for k in chunk]
        self.summary.leads += len(chunk)

    async def _read_hash(self, key: bytes) -> dict[bytes, bytes]:
        found: Any = await self.source.hgetall(key)
        return dict(found)

    async def _read_zset(self, key: bytes) -> list[tuple[bytes, float]]:
        found: Any = await self.source.zrange(key, 0, -1, withscores=True)
        return list(found)

    async def _move_generation(self, k: OldKey) -> None:
        pass  # written to every partition at the end (`_finish`)

    async def _move_offsets(self, k: OldKey) -> None:
        for p, offset in (await self._read_hash(k.raw)).items():
            await self.writes.hset(self.new.offsets(k.topic, int(p)), {p: offset})
            self.summary.offsets += 1

    async def _move_outbox(self, k: OldKey) -> None:
        entries = await self._read_hash(k.raw)
        if entries:
            await self.writes.hset(self.new.outbox(k.topic, k.partition), entries)
        self.summary.outbox += len(entries)

    async def _move_reminders(self, k: OldKey) -> None:
        """Each reminder goes to its lead's partition (the sweeper writes the lead with it)."""
        for member, at in await self._read_zset(k.raw):
            lead_id = member.decode(errors="replace").split("\x1f", 1)[0]
            home = self.new.reminders(k.topic, partition_of(lead_id, self.new.partitions))
            await self.target.redis.zadd(self.writes.name(home), {member: at})
            if home.encode() != k.raw:
                self.leaving[k.raw].append(member)
            self.summary.reminders += 1

    async def _move_kpi(self, k: OldKey) -> None:
        into = self.kpis[(date.fromisoformat(k.day), self._kpi_partition(k))]
        for name, count in (await self._read_hash(k.raw)).items():
            into[name] = into.get(name, 0) + int(count)

    async def _move_kpi_samples(self, k: OldKey) -> None:
        samples = await self._read_zset(k.raw)
        day = date.fromisoformat(k.day)
        place = self.writes.name(self.new.kpi_samples(day, k.series, self._kpi_partition(k)))
        if samples:
            await self.target.redis.zadd(place, dict(samples))

    def _kpi_partition(self, k: OldKey) -> int:
        """KPI counts are summed over the partitions when read: any partition may hold them."""
        return k.partition if k.partition < self.settings.topic_partitions else 0

    async def _finish(self, record: dict[bytes, bytes]) -> None:
        """The KPI counts, the generation record on every partition, then the layout record:
        from here on the workers start on the new layout."""
        for (day, p), counts in self.kpis.items():
            if counts:
                await self.writes.hset(self.new.kpi(day, p), counts)
        self.summary.kpi_days = len({day for day, _ in self.kpis})
        for p in range(self.new.partitions):
            await self.writes.hset(self.new.generation_record(p), record)
        await self.target.write_layout()

    async def _delete_moved(self) -> None:
        """Delete the old keys (not one the new layout wrote under the same name) and, in a
        kept reminder index, the reminders that moved to another partition."""
        written = self.writes.written
        gone = [k for k in self.moved if not (self.same_redis and k.decode() in written)]
        for i in range(0, len(gone), CHUNK):
            self.summary.deleted += int(await self.source.delete(*gone[i : i + CHUNK]))
        for key, members in self.leaving.items():
            if self.same_redis and key.decode() in written:
                await self.source.zrem(key, *members)


class _Writes:
    """The target's keys written so far (an old key with the same name is not deleted)."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.client = client
        self.written: set[str] = set()

    def name(self, key: str) -> str:
        self.written.add(key)
        return key

    async def hset(self, key: str, mapping: Mapping[bytes, Any]) -> None:
        await self.client.hset(self.name(key), mapping=dict(mapping))  # type: ignore[arg-type]


async def migrate(
    settings: Settings,
    from_url: str | None = None,
    from_cluster: bool = False,
    from_partitions: int | None = None,
    keep: bool = False,
    progress: Progress | None = None,
) -> MigrateSummary:
    """Move the namespace's keys into the layout of `settings` (see the module docstring)."""
    target = open_store(settings)
    if from_url is None:
        source_store = target
    else:
        source_store = LeadStore.from_url(
            from_url,
            settings.redis_prefix,
            settings.engagement,
            3600,
            partitions=from_partitions or settings.topic_partitions,
            cluster=from_cluster,
        )
    migration = Migration(settings, source_store.redis, target, from_partitions, progress)
    migration.same_redis = from_url is None
    try:
        if from_partitions is None and await target.read_layout():
            if from_url is None:
                raise AlreadyMigrated(
                    "this namespace is already in the current layout "
                    f"({settings.topic_partitions} partitions); nothing to migrate"
                )
            raise MigrateError(
                "the target Redis already holds this namespace in the current layout; "
                "migrate into an empty namespace"
            )
        return await migration.run(keep)
    finally:
        if source_store is not target:
            await source_store.close()
        await target.close()


def run_migrate(settings: Settings, **options: object) -> MigrateSummary:
    return asyncio.run(migrate(settings, **options))  # type: ignore[arg-type]
