"""Fuzzing the worker's batch step: mixed good and hostile records through ScoringService and
SalesService (the in-memory store and publisher of tests/unit/pipeline), and a memory bound.

Properties:
- a batch never raises, whatever its records;
- every good record is counted once: counted = distinct (lead, id) among the good records, each
  lead's state counts its own, and a redelivery of the same records counts nothing;
- every bad record is one dead letter on the dead-letter topic, with its original bytes and the
  reason, and the rest of the batch still counts;
- memory stays bounded: 10,000+ fuzzed records (seeded, not hypothesis: its own bookkeeping
  would be measured too) through the parsers and the scoring service peak within a small factor
  of a short warm-up run's peak.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.activity import SalesActivity
from schemas.deadletter import DeadLetterHeaders
from streams.collector import check_event, parse_body
from streams.core.rules import load_rules
from streams.kafka import OutRecord
from streams.observability import Metrics
from streams.pipeline.batch import BatchWriter, InRecord
from streams.pipeline.intake import RecordLocation, parse_record
from streams.pipeline.sales import SalesService
from streams.pipeline.scoring import ScoringService
from streams.settings import load_settings
from tests.fuzz.payloads import (
    ACTIVITY,
    ENGAGEMENT,
    FUZZ_EXAMPLES,
    MAX_BYTES,
    REPO,
    Contract,
    Drawn,
    Pick,
    Record,
    Seeded,
    activity_fields,
    encode,
    engagement_fields,
    fuzz_settings,
    hostile,
)
from tests.unit.pipeline.test_scoring import MemoryStore, SlowPublisher

pytestmark = [pytest.mark.unit, pytest.mark.fuzz]

RULES_FILE = REPO / "rules" / "example.yaml"
RULES = load_rules(RULES_FILE)
KNOWN = RULES.event_types
LEADS = [f"lead-{i}" for i in range(8)]
IDS = [f"id-{i}" for i in range(40)]  # a small pool: duplicates within and across batches


def service(kind: type[BatchWriter]) -> tuple[Any, SlowPublisher]:
    settings = load_settings(rules=RULES_FILE, redis_retry_max_seconds=0.01)
    publisher = SlowPublisher()
    return kind(settings, RULES, MemoryStore(), publisher, Metrics()), publisher  # type: ignore[arg-type]


def good(p: Pick, contract: Contract) -> Record:
    data = (
        engagement_fields(p, sorted(KNOWN), LEADS, IDS)
        if contract is ENGAGEMENT
        else activity_fields(p, LEADS, IDS)
    )
    lead = data["lead_id"].strip()
    return Record(lead.encode(), encode(p, data), None, fields=data)


def mixed(p: Pick, contract: Contract, count: int) -> list[Record]:
    """Good records of a few leads (ids repeating), and hostile ones that must be dead letters."""
    out = []
    while len(out) < count:
        if p.integer(0, 2):
            out.append(good(p, contract))
            continue
        rec = hostile(p, contract, sorted(KNOWN))
        if rec.kind is not None and not isinstance(rec.kind, str):
            out.append(rec)  # a known dead letter (ANY/DEAD verdicts are the parser tests')
    return out


def as_input(records: Sequence[Record], topic: str, start: int) -> list[InRecord]:
    return [
        InRecord(r.key, r.value, topic, _partition(r), start + i) for i, r in enumerate(records)
    ]


def _partition(r: Record) -> int:
    return sum(r.key or b"") % 4  # a lead's records stay on one partition


def distinct(contract: Contract, records: Sequence[Record]) -> set[tuple[str, str]]:
    name = contract.ids[0]
    return {(r.fields["lead_id"].strip(), r.fields[name].strip()) for r in records if not r.kind}


async def run_batches(svc: Any, inputs: list[InRecord], cuts: list[int]) -> tuple[int, int, int]:
    counted = duplicates = dead = 0
    for lo, hi in zip([0, *cuts], [*cuts, len(inputs)], strict=True):
        if lo < hi:
            result = await svc.process(inputs[lo:hi])
            counted += result.counted
            duplicates += result.duplicates
            dead += len(result.deadletters)
    return counted, duplicates, dead


def check_dead_letters(sent: list[OutRecord], topic: str, inputs: list[InRecord]) -> None:
    by_offset = {r.offset: r for r in inputs}
    for out in sent:
        if out.topic != topic:
            continue
        h = DeadLetterHeaders.from_kafka(out.headers)
        original = by_offset[h.source_offset]
        assert (out.key, out.value) == (original.key, original.value)  # byte for byte
        assert (h.source_topic, h.source_partition) == (original.topic, original.partition)
        assert h.error_message.strip()


@pytest.mark.parametrize("contract", [ENGAGEMENT, ACTIVITY], ids=["scoring", "sales"])
@fuzz_settings(15, share=0.02)  # x ~15 records each
@given(data=st.data())
def test_every_good_record_counts_once_and_every_bad_one_is_a_dead_letter(
    contract: Contract, data: st.DataObject
) -> None:
    p = Drawn(data)
    records = mixed(p, contract, p.integer(1, 30))
    svc, publisher = service(ScoringService if contract is ENGAGEMENT else SalesService)
    topic = svc.settings.engagement if contract is ENGAGEMENT else svc.settings.activity
    inputs = as_input(records, topic, 0)
    cuts = sorted({p.integer(0, len(inputs)) for _ in range(p.integer(0, 3))})
    counted, duplicates, dead = asyncio.run(run_batches(svc, inputs, cuts))

    expected = distinct(contract, records)
    bad = sum(1 for r in records if r.kind)
    assert counted == len(expected)
    assert dead == bad
    assert counted + duplicates + dead == len(records)
    dead_letters = [r for r in publisher.sent if r.topic == svc.settings.deadletter]
    assert len(dead_letters) == bad
    check_dead_letters(publisher.sent, svc.settings.deadletter, inputs)
    if contract is ENGAGEMENT:  # each lead's state counts its own events
        store: MemoryStore = svc.store
        for lead in {lead for lead, _ in expected}:
            _, state = store.states[lead]
            assert state["events_counted"] == sum(1 for x, _ in expected if x == lead)

    # Redelivered (a rebalance, a restart before the offsets moved): nothing counts again.
    again = as_input(records, topic, len(records))
    recounted, _, dead_again = asyncio.run(run_batches(svc, again, []))
    assert recounted == 0
    assert dead_again == bad


# -- memory -----------------------------------------------------------------------------------

MEMORY_RECORDS = max(10_000, FUZZ_EXAMPLES)
WARM_UP = 1_000
BATCH = 200


def feed(count: int, seed: int) -> Callable[[], None]:
    """Parse `count` seeded records with every parser, and score them in batches."""
    p = Seeded(seed)
    svc, publisher = service(ScoringService)
    where = RecordLocation("fz", 0, 0)

    def run() -> None:
        batch: list[InRecord] = []
        for i in range(count):
            contract = ENGAGEMENT if i % 4 else ACTIVITY
            rec = good(p, contract) if i % 3 else hostile(p, contract, sorted(KNOWN))
            if rec.kind is None and i % 3 == 0:
                continue  # valid after all (deep properties): a new lead each, the store's growth
            if contract is ACTIVITY:
                parse_record(SalesActivity, rec.key, rec.value, where, MAX_BYTES)
                continue
            if i % 8 == 1:  # the collector's way in, for some
                body = parse_body(rec.value or b"", "ndjson")
                for item in getattr(body, "items", ()):
                    check_event(item, "web", KNOWN, MAX_BYTES)
            batch.append(InRecord(rec.key, rec.value, "fz.leads.engagement", 0, i))
            if len(batch) == BATCH:  # the scoring service parses with parse_engagement
                asyncio.run(svc.process(batch))
                batch.clear()
                publisher.sent.clear()  # what Kafka holds, not the worker
                svc.store.kpis.clear()  # per-day KPI counts: what Redis holds
        if batch:
            asyncio.run(svc.process(batch))

    return run


def measure(run: Callable[[], None]) -> tuple[int, int]:
    """(peak, kept): the most memory held at once during the run, and what it still holds after."""
    gc.collect()
    tracemalloc.reset_peak()
    start = tracemalloc.get_traced_memory()[0]
    run()
    peak = tracemalloc.get_traced_memory()[1] - start
    gc.collect()
    return peak, tracemalloc.get_traced_memory()[0] - start


def test_memory_stays_bounded_over_10000_fuzzed_records() -> None:
    """The leads and ids come from small pools and Kafka's and Redis's share is dropped, so what
    could grow with the records is the parsers' and the service's own memory. The limits derive
    from a warm-up run of a tenth of the records (which also pays for one-time caches)."""
    tracemalloc.start()
    try:
        warm_peak, warm_kept = measure(feed(WARM_UP, seed=1))
        full_peak, full_kept = measure(feed(MEMORY_RECORDS, seed=2))
    finally:
        tracemalloc.stop()
    mb = 1e6
    print(
        f"memory: warm-up ({WARM_UP} records) peak {warm_peak / mb:.2f} MB, kept "
        f"{warm_kept / mb:.2f} MB; {MEMORY_RECORDS} records peak {full_peak / mb:.2f} MB, kept "
        f"{full_kept / mb:.2f} MB"
    )
    # Nothing accumulates: 10x the records keep no more than the warm-up did (doubled for noise;
    # at least 1 MiB, the order of one batch's objects).
    assert full_kept <= max(2 * warm_kept, 1 << 20), (full_kept, warm_kept)
    # The peak is the largest few records in flight (oversized ones are ~100 KB as text and
    # bytes), not a function of how many went by.
    assert full_peak <= 3 * warm_peak, (full_peak, warm_peak)
