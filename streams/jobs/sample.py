"""Synthetic but realistic engagement streams, for the demo, the tests and benchmarks.

Leads get a profile (industry, job title, seniority, company size, country) from a form or an
MA sync, then behave: most browse and open e-mails, some download material, a few look at
pricing and attend webinars. A share of records is deliberately broken or duplicated so the
dead-letter path and dedupe are exercised too. Deterministic for a given seed.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson

INDUSTRIES = ["manufacturing", "software", "it_services", "finance", "retail", "education"]
TITLES = [
    ("CEO", "c_level"),
    ("CTO", "c_level"),
    ("VP of Sales", "vp"),
    ("VP Engineering", "vp"),
    ("Director of Marketing", "director"),
    ("IT Director", "director"),
    ("Marketing Manager", "manager"),
    ("Sales Manager", "manager"),
    ("Engineer", "staff"),
    ("Analyst", "staff"),
    ("Intern", "staff"),
]
COUNTRIES = ["JP", "JP", "JP", "US", "DE", "SG"]
SIZES = [8, 25, 60, 150, 320, 800, 2400, 12000]
SOURCES = ["web-tracker", "marketo-export", "hubspot-export"]
# Campaigns tagged on most events (properties.campaign, or utm_campaign as a web tracker would),
# for attribution (docs/kpis.md); drawn from their own generator, so the rest of a seed's
# history is what it was before campaigns were added.
CAMPAIGNS = ["spring-webinar", "abm-manufacturing", "brand-search", "partner-newsletter"]
ASSETS = ["whitepaper-dx", "ebook-abm", "checklist-handoff", "case-study-acme", "pricing-guide"]

# (type, weight for a cold lead, weight for a hot lead)
BEHAVIOUR = [
    ("page_view", 30, 15),
    ("email_open", 30, 20),
    ("email_click", 10, 12),
    ("download", 5, 14),
    ("case_study_view", 3, 10),
    ("webinar_registered", 2, 5),
    ("webinar_attended", 1, 6),
    ("pricing_page_view", 1, 12),
    ("demo_request", 0.2, 3),
    ("opt_out", 1, 0.3),
]


@dataclass(frozen=True, slots=True)
class SampleRecord:
    key: bytes | None
    value: bytes
    valid: bool
    note: str = ""


def _profile(rng: random.Random) -> dict[str, str | int]:
    title, seniority = rng.choice(TITLES)
    return {
        "industry": rng.choice(INDUSTRIES),
        "job_title": title,
        "seniority": seniority,
        "company_size": rng.choice(SIZES),
        "country": rng.choice(COUNTRIES),
    }


def _broken(rng: random.Random, lead_id: str, n: int, when: datetime) -> SampleRecord:
    kind = n % 6
    good = {
        "event_id": f"bad-{n}",
        "lead_id": lead_id,
        "type": "email_open",
        "occurred_at": when.isoformat(),
    }
    key = lead_id.encode()
    if kind == 0:
        return SampleRecord(key, b'{"event_id": "x", "lead_id": ', False, "not_json")
    if kind == 1:
        return SampleRecord(
            key, orjson.dumps({**good, "occurred_at": "yesterday"}), False, "bad_time"
        )
    if kind == 2:
        body = {k: v for k, v in good.items() if k != "event_id"}
        return SampleRecord(key, orjson.dumps(body), False, "missing_event_id")
    if kind == 3:
        return SampleRecord(
            key, orjson.dumps({**good, "type": "tiktok_like"}), False, "unknown_type"
        )
    if kind == 4:
        return SampleRecord(b"", orjson.dumps({**good, "lead_id": "  "}), False, "empty_lead_id")
    blob = "x" * 70_000
    return SampleRecord(
        key, orjson.dumps({**good, "properties": {"blob": blob}}), False, "oversized"
    )


def generate(
    leads: int = 200,
    events: int = 2000,
    seed: int = 7,
    start: datetime | None = None,
    days: float = 14.0,
    invalid_every: int = 0,
    duplicate_every: int = 0,
    hot_share: float = 0.2,
) -> list[SampleRecord]:
    """Records in production order (time order across leads; per lead in event order).

    invalid_every=N inserts a broken record after every N valid ones; duplicate_every=N re-sends
    every Nth valid event a little later (same event_id), as trackers and MA syncs do.
    """
    rng = random.Random(seed)
    tagging = random.Random(seed + 1)  # campaigns (CAMPAIGNS)
    start = start or datetime(2026, 11, 2, 0, 0, tzinfo=UTC)
    span = timedelta(days=days)
    lead_ids = [f"lead-{seed}-{i:05d}" for i in range(leads)]
    hot = {lid for lid in lead_ids if rng.random() < hot_share}
    timeline: list[tuple[datetime, str, dict[str, object]]] = []
    # Every lead starts with a form fill carrying its profile; behaviour follows it.
    first_seen: dict[str, datetime] = {}
    for lid in lead_ids:
        first_seen[lid] = start + span * rng.random() * 0.3
        timeline.append(
            (first_seen[lid], lid, {"type": "form_submit", "attributes": _profile(rng)})
        )
    types = [t for t, _, _ in BEHAVIOUR]
    for _ in range(max(events - leads, 0)):
        lid = rng.choice(lead_ids)
        weights = [h if lid in hot else c for _, c, h in BEHAVIOUR]
        kind = rng.choices(types, weights)[0]
        payload: dict[str, object] = {"type": kind}
        if kind in ("download", "case_study_view"):
            payload["properties"] = {"asset": rng.choice(ASSETS)}
        elif rng.random() < 0.03:
            payload = {
                "type": "profile_updated",
                "attributes": {"seniority": rng.choice(TITLES)[1]},
            }
        when = first_seen[lid] + (start + span - first_seen[lid]) * rng.random()
        timeline.append((when, lid, payload))
    timeline.sort(key=lambda item: item[0])
    out: list[SampleRecord] = []
    for n, (when, lid, payload) in enumerate(timeline):
        valid = n + 1
        body = {
            "event_id": f"evt-{seed}-{n:07d}",
            "lead_id": lid,
            "occurred_at": when.isoformat(timespec="milliseconds"),
            "source": rng.choice(SOURCES),
            **payload,
        }
        tag = tagging.random()
        if tag < 0.7 and payload["type"] != "profile_updated":
            key = "campaign" if tag < 0.4 else "utm_campaign"
            properties = dict(payload.get("properties") or {})  # type: ignore[call-overload]
            body["properties"] = {**properties, key: tagging.choice(CAMPAIGNS)}
        record = SampleRecord(lid.encode(), orjson.dumps(body), True)
        out.append(record)
        if duplicate_every and valid % duplicate_every == 0:
            out.append(record)  # a redelivery: same event_id, counted once
        if invalid_every and valid % invalid_every == 0:
            out.append(_broken(rng, lid, valid // invalid_every, when))
    return out


def iter_ndjson(records: list[SampleRecord]) -> Iterator[bytes]:
    for r in records:
        yield r.value + b"\n"


def simulate_sales(
    lead_id: str, handoff_id: str, owner: str | None = None
) -> list[tuple[float, dict[str, object]]]:
    """What a (simulated) inside-sales team does with a handoff: (delay in seconds, activity).

    Deterministic per handoff: half become SQLs, three in ten go back to nurture with the
    missing BANT criteria, one in ten is disqualified and one in ten is never contacted, so its
    first-contact deadline is breached. Of the SQLs, two in five get an opportunity (1 or 3
    million JPY) and one of those is won, for attribution (`leadflow report --by source`).
    `occurred_at` is filled in when the activity is sent.
    The rep is the handoff's routed owner, or one of three when the rules do not route.
    """
    bucket = int(hashlib.sha256(handoff_id.encode()).hexdigest(), 16) % 10
    rep = owner or ["sato", "suzuki", "tanaka"][bucket % 3]

    def activity(step: str, kind: str, **extra: object) -> dict[str, object]:
        return {
            "activity_id": f"{handoff_id}-{step}",
            "lead_id": lead_id,
            "type": kind,
            "owner": rep,
            **extra,
        }

    if bucket == 9:
        return []
    plan: list[tuple[float, dict[str, object]]] = [(1.0, activity("contact", "contacted"))]
    if bucket <= 4:
        bant = {"budget": True, "authority": True, "need": True, "timeframe": bucket % 2 == 0}
        plan.append((2.0, activity("bant", "bant_assessed", bant=bant)))
        plan.append((4.0, activity("action", "sales_action", reason="demo booked")))
        if bucket in (0, 2):
            amount = (bucket + 1) * 1_000_000
            opportunity = activity("opp", "opportunity_created", amount=amount, currency="JPY")
            plan.append((5.0, opportunity))
        if bucket == 0:
            plan.append((6.0, activity("won", "won", reason="signed")))
    elif bucket <= 7:
        bant = {"budget": False, "authority": bucket == 5, "need": True, "timeframe": False}
        plan.append((2.0, activity("bant", "bant_assessed", bant=bant)))
    else:
        plan.append((2.0, activity("dq", "disqualified", reason="student, no buying role")))
    return plan
