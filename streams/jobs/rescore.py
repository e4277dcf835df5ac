"""`leadflow rescore`: rebuild every lead under new rules from the retained engagement log, in a
fresh key space, and switch the live workers over to it in one atomic step.

1. Build: read the engagement topic from the beginning to its current end, one partition at a
   time, and rebuild each lead with the pure core (streams/core/rescore.py) into key space N+1,
   keeping what sales did from the live state. Handoffs for leads that qualify only under the
   new rules are held back in N+1.
2. Catch up with what arrived meanwhile (the live workers keep running on N).
3. Switch, begin: workers' writes are fenced (they wait); catch up once more to the end.
4. Switch, finish (one Lua step): N+1 becomes live with the new rules, the held handoffs move to
   the outbox (the workers deliver them), held KPI counts are added. Workers reload and go on.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from schemas.engagement import EngagementEvent
from schemas.handoff import MqlHandoff
from streams.bootstrap import check_layout, open_store
from streams.core.kpi import KpiCount
from streams.core.lead import LeadState, apply_all
from streams.core.rescore import rescore_lead, take_sales_side
from streams.core.rules import Rules
from streams.kafka import client_options, topic_partitions
from streams.pipeline.batch import BatchChanges
from streams.pipeline.intake import RecordLocation, parse_engagement
from streams.settings import Settings
from streams.store import LeadStore, OutboxEntry, StoredLead

CHUNK = 500


class RescoreError(RuntimeError):
    """The rescore cannot start or had to stop; the live key space is unchanged."""


@dataclass
class RescoreSummary:
    live_generation: int = 0
    new_generation: int = 0
    old_rules_version: str | None = None
    new_rules_version: str = ""
    records: int = 0
    invalid: int = 0
    leads_rebuilt: int = 0
    leads_kept: int = 0
    leads_merged: int = 0
    new_handoffs: int = 0
    catch_up_records: int = 0
    seconds: float = 0.0
    positions: dict[int, int] = field(default_factory=dict)


Progress = Callable[[int, int], None]  # (records done, records in total)


class Rescore:
    def __init__(self, settings: Settings, rules: Rules, progress: Progress | None = None) -> None:
        self.settings = settings
        self.rules = rules
        self.progress = progress or (lambda done, total: None)
        self.live = open_store(settings)
        self.summary = RescoreSummary(new_rules_version=rules.version)
        # Live version of each lead when the rescore read it: what sales changed afterwards is
        # merged in while the workers are held at the switch.
        self.read_versions: dict[str, int] = {}

    async def run(self, keep_previous: bool = False) -> RescoreSummary:
        started = time.monotonic()
        s = self.summary
        try:
            await check_layout(self.live, self.settings)
            generation = await self.live.active_generation()
            if generation.state != "active":
                raise RescoreError(
                    "another rescore is switching key spaces; wait for it or check its log"
                )
            s.live_generation, s.new_generation = generation.number, generation.number + 1
            s.old_rules_version = generation.rules_version
            live = self.live.at_generation(s.live_generation)
            target = self.live.at_generation(s.new_generation)
            await target.drop_space()  # leftovers of an interrupted rescore
            consumer = AIOKafkaConsumer(**client_options(self.settings), enable_auto_commit=False)
            await consumer.start()
            try:
                parts = await topic_partitions(self.settings, self.settings.engagement)
                if not parts:
                    raise RescoreError(f"topic {self.settings.engagement} not found")
                consumer.assign(parts)
                await consumer.seek_to_beginning(*parts)
                begin = {tp: await consumer.position(tp) for tp in parts}
                ends = await consumer.end_offsets(parts)
                total = sum(ends[tp] - begin[tp] for tp in parts)
                rebuilt: set[str] = set()
                for tp in parts:
                    rebuilt |= await self._build_partition(
                        consumer, tp, ends[tp], live, target, total
                    )
                    s.positions[tp.partition] = ends[tp]
                await self._keep_unlogged(live, target, rebuilt)
                for _ in range(3):  # catch up while the workers still run
                    if await self._catch_up(consumer, parts, target) < 1000:
                        break
                await self.live.switch("begin", s.live_generation, s.new_generation)
                try:
                    await self._catch_up(consumer, parts, target)
                    await self._merge_sales_changes(live, target)
                    # The new generation's states reflect the log up to these offsets: workers
                    # resume there after the switch (offsets live with the state).
                    await target.write_offsets(s.positions)
                    await self.live.switch(
                        "finish",
                        s.live_generation,
                        s.new_generation,
                        self.rules.version,
                        self.rules.model_dump(mode="json", by_alias=True),
                    )
                except BaseException:
                    await self.live.switch("abort", s.live_generation, s.new_generation)
                    raise
            finally:
                await consumer.stop()
            if not keep_previous:
                await self._drop_previous(live)
        finally:
            await self.live.close()
        s.seconds = time.monotonic() - started
        return s

    async def _read(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int
    ) -> list[EngagementEvent]:
        events: list[EngagementEvent] = []
        types = self.rules.event_types
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
            for record in batch.get(tp, []):
                if record.offset >= end:
                    break
                self.summary.records += 1
                where = RecordLocation(tp.topic, tp.partition, record.offset)
                parsed = parse_engagement(
                    record.key, record.value, where, types, self.settings.max_event_bytes
                )
                if isinstance(parsed, EngagementEvent):
                    events.append(parsed)
                else:
                    self.summary.invalid += 1
        return events

    async def _build_partition(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        end: int,
        live: LeadStore,
        target: LeadStore,
        total: int,
    ) -> set[str]:
        events = await self._read(consumer, tp, end)
        self.progress(self.summary.records, total)
        by_lead: dict[str, list[EngagementEvent]] = defaultdict(list)
        for e in events:
            by_lead[e.lead_id].append(e)
        leads = list(by_lead)
        for i in range(0, len(leads), CHUNK):
            chunk = leads[i : i + CHUNK]
            # Versions first: a change after this read is merged at the switch.
            self.read_versions.update(await live.versions(chunk))
            current = await live.read_live(chunk)
            states: list[LeadState] = []
            held: list[OutboxEntry] = []
            counts: list[tuple[int, KpiCount]] = []
            for lead_id in chunk:
                state, _ = current[lead_id]
                new, handoffs = rescore_lead(state, by_lead[lead_id], self.rules)
                states.append(new)
                self._hold(tp.partition, state, new, handoffs, held, counts)
            # The live dedupe memory is kept: sales markers, and events no longer in the log.
            carry = {lead_id: seen for lead_id, (_, seen) in current.items()}
            await target.write_rebuilt(states, held, counts, carry)
            self.summary.leads_rebuilt += len(chunk)
        return set(leads)

    def _hold(
        self,
        partition: int,
        before: LeadState | None,
        after: LeadState,
        handoffs: list[MqlHandoff],
        held: list[OutboxEntry],
        counts: list[tuple[int, KpiCount]],
    ) -> None:
        """Handoffs of leads that qualify under the new rules, delivered after the switch: the
        same outputs and KPI counts a worker's batch would write, held back until then."""
        if not handoffs:
            return
        base = StoredLead(0, before or LeadState(lead_id=after.lead_id))
        changes = BatchChanges()
        changes.hand_off(partition, base, after, handoffs, self.rules, self.settings)
        held += changes.outbox
        counts += [(partition, c) for c in changes.counts]
        self.summary.new_handoffs += len(handoffs)

    async def _merge_sales_changes(self, live: LeadStore, target: LeadStore) -> None:
        """Leads that sales (or anything else) changed in the live key space after the rescore
        read them: take their sales side from the live state. Runs while workers are held."""
        ids = await live.live_lead_ids()
        now = await live.versions(ids)
        changed = [x for x in ids if now[x] != self.read_versions.get(x)]
        for i in range(0, len(changed), CHUNK):
            chunk = changed[i : i + CHUNK]
            current = await live.read_live(chunk)
            rebuilt = await target.read_live(chunk)
            merged = []
            carry: dict[str, bytes] = {}
            for lead_id in chunk:
                state, seen = current[lead_id]
                if state is None:
                    continue
                mine, my_seen = rebuilt[lead_id]
                merged.append(state if mine is None else take_sales_side(mine, state, frozenset()))
                carry[lead_id] = my_seen + seen  # both memories: an id seen by either counts once
            await target.write_rebuilt(merged, carry=carry)
            self.summary.leads_merged += len(merged)

    async def _keep_unlogged(self, live: LeadStore, target: LeadStore, rebuilt: set[str]) -> None:
        """Leads the log no longer has events for (sales-only leads) are carried over as is."""
        others = [x for x in await live.live_lead_ids() if x not in rebuilt]
        for i in range(0, len(others), CHUNK):
            chunk = others[i : i + CHUNK]
            self.read_versions.update(await live.versions(chunk))
            current = await live.read_live(chunk)
            states = [state for state, _ in current.values() if state is not None]
            carry = {lead_id: seen for lead_id, (_, seen) in current.items()}
            await target.write_rebuilt(states, carry=carry)
            self.summary.leads_kept += len(states)

    async def _catch_up(
        self, consumer: AIOKafkaConsumer, parts: list[TopicPartition], target: LeadStore
    ) -> int:
        """Apply records that arrived since the last read to the new key space."""
        ends = await consumer.end_offsets(parts)
        applied = 0
        for tp in parts:
            start = self.summary.positions.get(tp.partition, 0)
            if ends[tp] <= start:
                continue
            consumer.seek(tp, start)
            events = await self._read(consumer, tp, ends[tp])
            self.summary.positions[tp.partition] = ends[tp]
            applied += ends[tp] - start
            by_lead: dict[str, list[EngagementEvent]] = defaultdict(list)
            for e in events:
                by_lead[e.lead_id].append(e)
            wanted = {lead: [e.event_id for e in items] for lead, items in by_lead.items()}
            stored = await target.load(wanted)
            states: list[LeadState] = []
            held: list[OutboxEntry] = []
            counts: list[tuple[int, KpiCount]] = []
            for lead_id, items in by_lead.items():
                before = stored[lead_id].state
                after, handoffs = apply_all(before, items, self.rules)
                if after is before:
                    continue
                states.append(after)
                self._hold(tp.partition, before, after, handoffs, held, counts)
            await target.write_rebuilt(states, held, counts)
        self.summary.catch_up_records += applied
        return applied

    async def _drop_previous(self, live: LeadStore) -> None:
        if live.keys.generation:
            await live.drop_space()
        else:
            await live.drop_leads(await live.live_lead_ids())


def run_rescore(
    settings: Settings, rules: Rules, progress: Progress | None = None, keep_previous: bool = False
) -> RescoreSummary:
    return asyncio.run(Rescore(settings, rules, progress).run(keep_previous))
