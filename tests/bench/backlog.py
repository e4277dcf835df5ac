"""The data of `ops/bench compare`: one backlog, its oracle, and the namespace it lives in.

The backlog is `streams.jobs.sample.generate` with every 20th event re-sent (5 % redelivered:
the same event_id twice), keyed by lead_id, trimmed to exactly the number of records asked for.
The oracle is leadflow's pure core (`replay`) over the same records and rules: the set of leads
that must be handed off, once each.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from schemas.engagement import EngagementEvent
from streams.core.lead import replay
from streams.core.rules import load_rules
from streams.jobs.sample import SampleRecord, generate
from streams.kafka import create_topics
from streams.settings import Settings, load_settings
from tests.harness import produce

BENCH_RULES = Path(__file__).resolve().parent / "rules.yaml"
REDELIVER_EVERY = 20  # 5 %


def bench_settings(namespace: str | None = None) -> Settings:
    """leadflow's settings for a fresh namespace (`bench<hex>`) with the bench rules."""
    return load_settings(namespace=namespace or f"bench{uuid.uuid4().hex[:8]}", rules=BENCH_RULES)


def make_backlog(events: int, leads: int, seed: int = 11) -> list[SampleRecord]:
    """Exactly `events` records for `leads` leads, 1 in 20 of them a redelivery."""
    unique = events * REDELIVER_EVERY // (REDELIVER_EVERY + 1) + 1
    records = generate(leads=leads, events=unique, seed=seed, duplicate_every=REDELIVER_EVERY)
    return records[:events]


def oracle_handoffs(records: list[SampleRecord]) -> set[str]:
    """Lead ids leadflow's core hands off for these records under the bench rules."""
    rules = load_rules(BENCH_RULES)
    events = [EngagementEvent.model_validate_json(r.value) for r in records]
    result = replay(events, rules)
    assert len(result.handoffs) == len({h.lead_id for h in result.handoffs})
    return {h.lead_id for h in result.handoffs}


def lead_ids(records: list[SampleRecord]) -> list[str]:
    return sorted({r.key.decode() for r in records if r.key})


def sample_leads(records: list[SampleRecord], size: int, seed: int = 1) -> list[str]:
    ids = lead_ids(records)
    return random.Random(seed).sample(ids, min(size, len(ids)))


async def create_bench_topics(settings: Settings, extra: tuple[str, ...]) -> None:
    """leadflow's topics (`leadflow topics create`) plus the peers' output topics."""
    await create_topics(settings)
    if extra:
        await create_topics(settings, extra)


async def produce_backlog(
    settings: Settings, records: list[SampleRecord], console: Console, topic: str | None = None
) -> None:
    chunk = 20_000
    with Progress(console=console) as progress:
        task = progress.add_task("producing the backlog", total=len(records))
        for i in range(0, len(records), chunk):
            part = records[i : i + chunk]
            await produce(settings, [(r.key, r.value) for r in part], topic=topic)
            progress.advance(task, len(part))


@dataclass(frozen=True)
class Outcome:
    """A system's handoffs against the oracle."""

    count: int
    leads: int
    missing: int
    extra: int

    @property
    def matches(self) -> bool:
        return self.missing == 0 and self.extra == 0 and self.count == self.leads

    def describe(self) -> str:
        if self.matches:
            return "matches"
        duplicates = self.count - self.leads
        return f"differs: {self.missing} missing, {self.extra} extra, {duplicates} duplicates"


def judge(handed_off: list[str], oracle: set[str]) -> Outcome:
    got = set(handed_off)
    return Outcome(len(handed_off), len(got), len(oracle - got), len(got - oracle))
