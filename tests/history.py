"""Synthetic engagement histories with planted ground truth, for the backtest tests and docs.

Every lead fills in a form (its profile), then behaves according to a hidden persona; whether
it converts (an opportunity is created) is then drawn from what it actually did:

* viewed the pricing page twice within 7 days  -> converts with `signal.pricing_twice`
  (the planted signal: far above everything else);
* attended a webinar (and no pricing signal)    -> `signal.webinar` (somewhat above the base);
* only ever opened or clicked e-mails           -> `signal.email_only` (rarely);
* anything else                                 -> `signal.base`;

a lead in a target industry converts `signal.industry_factor` times as often (a mild fit
signal). Noise on top: single pricing views, pricing views weeks apart, profile updates,
opt-outs, duplicates, late-arriving lines, a few broken lines, outcomes for leads the history
never saw, and after-the-fact engagement of converted leads (sales sends case studies during
the sales cycle) that a leaky lift measure would credit.

Deterministic for a given seed. `python -m tests.history --out-dir DIR` writes
events.ndjson and outcomes.csv.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson

from schemas.engagement import KNOWN_EVENT_TYPES, EngagementEvent
from streams.core.backtest import OUTCOME_KINDS, Outcome
from streams.pipeline.intake import RecordLocation, parse_engagement

START = datetime(2026, 1, 5, tzinfo=UTC)
DAY = timedelta(days=1)
ARRIVAL_DAYS = 150  # leads first appear over this many days
ACTIVE_DAYS = 60  # and are active for up to this long
EXPORT_AT = START + timedelta(days=ARRIVAL_DAYS + ACTIVE_DAYS + 30)  # when outcomes were pulled

INDUSTRIES = ["manufacturing", "software", "it_services", "finance", "retail", "education"]
TARGET_INDUSTRIES = frozenset({"manufacturing", "software", "it_services"})
SENIORITY = ["c_level", "vp", "director", "manager", "manager", "staff", "staff", "staff"]
SIZES = [8, 25, 60, 150, 320, 800, 2400, 12000]
COUNTRIES = ["JP", "JP", "JP", "US", "DE", "SG"]
SOURCES = ["web-tracker", "marketo-export", "hubspot-export"]

# persona -> (share of leads, (event type, weight) of its behaviour, events per lead)
PERSONAS: dict[str, tuple[float, list[tuple[str, float]], tuple[int, int]]] = {
    "email_only": (0.30, [("email_open", 8), ("email_click", 2)], (2, 14)),
    "browser": (
        0.33,
        [
            ("page_view", 10),
            ("email_open", 8),
            ("email_click", 3),
            ("download", 2),
            ("case_study_view", 1),
            ("pricing_page_view", 0.35),
            ("webinar_registered", 0.4),
            ("opt_out", 0.15),
        ],
        (3, 18),
    ),
    "learner": (
        0.25,
        [
            ("page_view", 6),
            ("email_open", 6),
            ("email_click", 3),
            ("download", 4),
            ("case_study_view", 2),
            ("webinar_registered", 2.5),
            ("webinar_attended", 2),
            ("pricing_page_view", 0.35),
        ],
        (4, 20),
    ),
    # Buyers in an evaluation: short, focused visits (plus their pricing views, see below).
    "evaluator": (
        0.12,
        [
            ("page_view", 6),
            ("email_open", 2),
            ("download", 1),
            ("case_study_view", 0.5),
            ("demo_request", 0.1),
        ],
        (1, 5),
    ),
}
EMAIL_TYPES = frozenset({"email_open", "email_click"})


@dataclass(frozen=True, slots=True)
class Signal:
    """Conversion probabilities of the planted ground truth."""

    pricing_twice: float = 0.45
    webinar: float = 0.14
    email_only: float = 0.01
    base: float = 0.04
    industry_factor: float = 1.4


@dataclass
class History:
    lines: list[bytes]  # NDJSON, one record each, in arrival order (not quite event time)
    outcomes: list[dict[str, str]]  # rows of the outcomes CSV
    feature: dict[str, str]  # lead_id -> planted feature (pricing_twice, webinar, ...)
    converted: dict[str, datetime]  # lead_id -> when its opportunity was created
    invalid_lines: int = 0
    duplicate_lines: int = 0
    unknown_outcome_leads: list[str] = field(default_factory=list)

    @property
    def ndjson(self) -> bytes:
        return b"".join(line + b"\n" for line in self.lines)

    @property
    def outcomes_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(
            buffer, fieldnames=["lead_id", "outcome", "occurred_at"], lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(self.outcomes)
        return buffer.getvalue()

    def events(self, known_types: frozenset[str] = KNOWN_EVENT_TYPES) -> list[EngagementEvent]:
        """The valid lines, validated as the worker validates them (broken lines dropped)."""
        out = []
        for n, line in enumerate(self.lines):
            parsed = parse_engagement(
                None, line, RecordLocation("history", 0, n), known_types, 65_536
            )
            if isinstance(parsed, EngagementEvent):
                out.append(parsed)
        return out

    def outcome_records(self) -> list[Outcome]:
        out = []
        for row in self.outcomes:
            kind = next(k for k in OUTCOME_KINDS if k == row["outcome"])
            at = datetime.fromisoformat(row["occurred_at"]) if row["occurred_at"] else None
            out.append(Outcome(row["lead_id"], kind, at))
        return out

    def write(self, directory: Path) -> tuple[Path, Path]:
        directory.mkdir(parents=True, exist_ok=True)
        events, outcomes = directory / "events.ndjson", directory / "outcomes.csv"
        events.write_bytes(self.ndjson)
        outcomes.write_text(self.outcomes_csv, encoding="utf-8")
        return events, outcomes


def _pricing_twice(times: Sequence[datetime]) -> datetime | None:
    """The second of the first two pricing views no more than 7 days apart."""
    ordered = sorted(times)
    for a, b in pairwise(ordered):
        if b - a <= timedelta(days=7):
            return b
    return None


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds").replace("+00:00", "Z")


def generate(
    leads: int = 3000,
    seed: int = 1,
    signal: Signal | None = None,
    invalid_share: float = 0.003,
    duplicate_share: float = 0.01,
) -> History:
    signal = signal or Signal()
    rng = random.Random(seed)
    shares = [(name, spec[0]) for name, spec in PERSONAS.items()]
    events: list[tuple[datetime, dict[str, object]]] = []
    feature: dict[str, str] = {}
    converted: dict[str, datetime] = {}
    outcomes: list[dict[str, str]] = []
    for i in range(leads):
        lead = f"L{seed}-{i:05d}"
        persona = rng.choices([n for n, _ in shares], [w for _, w in shares])[0]
        _, behaviour, (lo, hi) = PERSONAS[persona]
        first = START + DAY * rng.uniform(0, ARRIVAL_DAYS)
        active = DAY * rng.uniform(10, ACTIVE_DAYS)
        profile = {
            "industry": rng.choice(INDUSTRIES),
            "seniority": rng.choice(SENIORITY),
            "company_size": rng.choice(SIZES),
            "country": rng.choice(COUNTRIES),
        }
        mine: list[tuple[datetime, dict[str, object]]] = []
        # Most leads fill in a form; the rest come from a list import, profile by MA sync.
        entry = "form_submit" if rng.random() < 0.7 else "profile_updated"
        mine.append((first, {"type": entry, "attributes": profile}))
        for _ in range(rng.randint(lo, hi)):
            kind = rng.choices([t for t, _ in behaviour], [w for _, w in behaviour])[0]
            mine.append((first + active * rng.random(), {"type": kind}))
        if persona == "evaluator":
            # Evaluators look at pricing: mostly twice or more within a few days.
            visit = first + active * rng.random()
            for _ in range(rng.choice([1, 2, 2, 2, 3])):
                mine.append((visit, {"type": "pricing_page_view"}))
                visit += DAY * rng.uniform(0.1, 5)
        if rng.random() < 0.04:
            seniority = rng.choice(SENIORITY)
            when = first + active * rng.random()
            mine.append((when, {"type": "profile_updated", "attributes": {"seniority": seniority}}))
        mine.sort(key=lambda item: item[0])
        types = {str(p["type"]) for _, p in mine}
        pricing = _pricing_twice([t for t, p in mine if p["type"] == "pricing_page_view"])
        webinar = [t for t, p in mine if p["type"] == "webinar_attended"]
        if pricing is not None:
            feature[lead], p, after = "pricing_twice", signal.pricing_twice, pricing
        elif webinar:
            feature[lead], p, after = "webinar", signal.webinar, webinar[0]
        elif types - {"form_submit", "profile_updated"} <= EMAIL_TYPES:
            feature[lead], p, after = "email_only", signal.email_only, first
        else:
            feature[lead], p, after = "other", signal.base, first + active * rng.random()
        if profile["industry"] in TARGET_INDUSTRIES:
            p = min(1.0, p * signal.industry_factor)
        if rng.random() < p:
            at = after + DAY * rng.uniform(0.5, 21)
            converted[lead] = at
            outcomes.append({"lead_id": lead, "outcome": "opportunity", "occurred_at": _iso(at)})
            closed = at + DAY * rng.uniform(15, 60)
            if closed < EXPORT_AT and rng.random() < 0.7:
                result = "won" if rng.random() < 0.35 else "lost"
                outcomes.append({"lead_id": lead, "outcome": result, "occurred_at": _iso(closed)})
            for _ in range(rng.choice([0, 0, 1, 2])):
                # The sales cycle: case studies sent by the rep, after the opportunity.
                mine.append((at + DAY * rng.uniform(1, 14), {"type": "case_study_view"}))
        elif rng.random() < 0.4:
            outcomes.append({"lead_id": lead, "outcome": "none", "occurred_at": ""})
        events.extend((when, {"lead_id": lead, **payload}) for when, payload in mine)
    unknown = [f"X{seed}-{i:03d}" for i in range(max(1, leads // 500))]
    for lead in unknown:  # opportunities from channels the trackers never saw
        when = START + DAY * rng.uniform(0, ARRIVAL_DAYS)
        outcomes.append({"lead_id": lead, "outcome": "opportunity", "occurred_at": _iso(when)})
    rng.shuffle(outcomes)
    events.sort(key=lambda item: item[0])
    lines: list[bytes] = []
    invalid = duplicates = 0
    late: list[tuple[int, bytes]] = []
    for n, (when, payload) in enumerate(events):
        body = {
            "event_id": f"e{seed}-{n:07d}",
            "occurred_at": _iso(when),
            "source": rng.choice(SOURCES),
            **payload,
        }
        line = orjson.dumps(body)
        if rng.random() < 0.02:
            late.append((len(lines) + rng.randint(5, 500), line))  # arrives a little late
        else:
            lines.append(line)
        if rng.random() < duplicate_share:
            lines.append(line)  # redelivered: same event_id
            duplicates += 1
        if rng.random() < invalid_share:
            lines.append(
                rng.choice(
                    [
                        b'{"event_id": "broken", "lead_id": ',
                        orjson.dumps({**body, "event_id": f"bad-{n}", "occurred_at": "yesterday"}),
                        orjson.dumps({**body, "event_id": f"bad-{n}", "type": "tiktok_like"}),
                    ]
                )
            )
            invalid += 1
    for position, line in sorted(late, key=lambda item: item[0], reverse=True):
        lines.insert(min(position, len(lines)), line)
    return History(
        lines=lines,
        outcomes=outcomes,
        feature=feature,
        converted=converted,
        invalid_lines=invalid,
        duplicate_lines=duplicates,
        unknown_outcome_leads=unknown,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--leads", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    history = generate(args.leads, args.seed)
    events, outcomes = history.write(args.out_dir)
    print(f"wrote {len(history.lines)} lines to {events}, {len(history.outcomes)} to {outcomes}")


if __name__ == "__main__":
    main()
