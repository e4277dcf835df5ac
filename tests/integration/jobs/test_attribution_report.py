"""`leadflow report --by source|campaign --json` after a real run, against figures this test
works out itself from the touches it sent and the attribution rules as documented
(docs/kpis.md, "Attribution"), not from leadflow's code.

Three leads qualify (fit 55 from the profile, threshold 100); sales makes two of them SQLs,
opens an opportunity for each (1,200.50 USD and 500,000 JPY), wins both (the first with its
own amount, 1,000 USD; the second at its opportunity's amount) and sends the third to nurture.
"""

from __future__ import annotations

import asyncio
import subprocess
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from schemas.lifecycle import LifecycleTransition
from streams.core.rules import load_rules
from streams.settings import Settings
from tests.harness import (
    BANT_FAIL,
    BANT_PASS,
    PROFILE,
    Consumed,
    WorkerProcess,
    activity,
    engagement,
    eventually,
    leadflow_cli,
    produce,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

SECOND = timedelta(seconds=1)


def touches_sent(t0: datetime) -> dict[str, list[tuple[str, str, dict[str, Any]]]]:
    """Per lead, (event type, source, extra fields) in event-time order; the last one makes
    the lead an MQL."""
    return {
        "lead-a": [  # 5 + 25 + 5 + fit 55 = 90, then + 40
            ("email_open", "newsletter", {"properties": {"campaign": "spring"}}),
            ("pricing_page_view", "website", {"properties": {"utm_source": "google",
                                                             "utm_campaign": "brand"}}),
            ("form_submit", "website", {"attributes": PROFILE}),
            ("demo_request", "linkedin", {"properties": {"campaign": "abm"}}),
        ],
        "lead-b": [  # 5 + fit 55 + 5 + 8 = 73, then + 40
            ("form_submit", "google", {"attributes": PROFILE, "properties": {"campaign": "brand"}}),
            ("email_open", "google", {"properties": {"utm_campaign": "brand"}}),
            ("email_click", "newsletter", {"properties": {"campaign": "spring"}}),
            ("demo_request", "newsletter", {"properties": {"campaign": "spring"}}),
        ],
        "lead-c": [  # 5 + fit 55 + 8 = 68, then + 40 (decay takes a hair off the first ones)
            ("form_submit", "website", {"attributes": PROFILE}),
            ("email_click", "website", {"properties": {"campaign": "expo"}}),
            ("demo_request", "events", {"properties": {"campaign": "expo"}}),
        ],
    }  # fmt: skip


# -- the oracle: the documented models, written out here --------------------------------------


def share(model: str, i: int, n: int) -> Fraction:
    """Touch i's share of one conversion among n touches (the MQL-triggering one is last)."""
    if model == "first_touch":
        return Fraction(int(i == 0))
    if model == "last_touch":
        return Fraction(int(i == n - 1))
    if model == "linear" or n <= 2:
        return Fraction(1, n)
    return Fraction(2, 5) if i in (0, n - 1) else Fraction(1, 5) / (n - 2)


def expected(
    touches: dict[str, list[tuple[str, str]]],
    conversions: dict[str, list[tuple[str, Decimal | None, str | None]]],
    model: str,
) -> dict[str, dict[str, Any]]:
    """Per value: credited conversions (exact) and amounts (Decimal) per currency."""
    table: dict[str, dict[str, Any]] = {}
    for lead, values in touches.items():
        for i, value in enumerate(values):
            weight = share(model, i, len(values))
            row = table.setdefault(
                value, {"mql": 0, "sql": 0, "opportunity": 0, "won": 0, "pipeline": {}, "won$": {}}
            )
            for kind, amount, currency in conversions[lead]:
                row[kind] += weight
                if amount is not None and currency is not None:
                    bucket = row["pipeline" if kind == "opportunity" else "won$"]
                    bucket[currency] = bucket.get(currency, Decimal(0)) + amount * Decimal(
                        weight.numerator
                    ) / Decimal(weight.denominator)
    return {v: r for v, r in table.items() if any(r[k] for k in ("mql", "sql", "won"))}


def run_report(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return leadflow_cli(settings, "report", *args, COLUMNS="220")


async def test_report_by_source_and_campaign_equals_the_documented_credits(
    settings: Settings, workers: list[WorkerProcess], tmp_path: Path
) -> None:
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    workers.append(worker)
    await worker.wait_ready()
    zone = ZoneInfo(load_rules(settings.rules).reporting.timezone)

    t0 = datetime.now(UTC) - 10 * SECOND
    sent = touches_sent(t0)
    records = []
    for lead, events in sent.items():
        for n, (kind, source, extra) in enumerate(events):
            at = t0 + n * SECOND
            records.append(engagement(lead, f"t{n}", kind, at, source=source, **extra))
    await produce(settings, records)
    await wait_for(settings, settings.handoff, lambda rs: len(rs) == 3)

    now = datetime.now(UTC)
    await produce(
        settings,
        [
            activity("lead-a", "bant", "bant_assessed", now, bant=BANT_PASS, owner="sato"),
            activity("lead-b", "bant", "bant_assessed", now, bant=BANT_PASS, owner="sato"),
            activity("lead-c", "bant", "bant_assessed", now, bant=BANT_FAIL, owner="sato"),
            activity(
                "lead-a",
                "opp",
                "opportunity_created",
                now + SECOND,
                amount="1200.50",
                currency="USD",
            ),
            activity(
                "lead-b",
                "opp",
                "opportunity_created",
                now + SECOND,
                amount=500000,
                currency="JPY",
            ),
            activity("lead-a", "won", "won", now + 2 * SECOND, amount="1000", currency="USD"),
            activity("lead-b", "won", "won", now + 2 * SECOND),
        ],
        topic=settings.activity,
    )

    def settled(records: list[Consumed]) -> bool:
        moved = [LifecycleTransition.model_validate_json(r.value or b"") for r in records]
        done = {(t.lead_id, t.to_stage) for t in moved}
        return {("lead-a", "won"), ("lead-b", "won"), ("lead-c", "nurture")} <= done

    await wait_for(settings, settings.lifecycle, settled, within=60)

    # What each lead converted to; the campaign of a touch without one is "(none)".
    conversions: dict[str, list[tuple[str, Decimal | None, str | None]]] = {
        "lead-a": [
            ("mql", None, None),
            ("sql", None, None),
            ("opportunity", Decimal("1200.50"), "USD"),
            ("won", Decimal("1000"), "USD"),
        ],
        "lead-b": [
            ("mql", None, None),
            ("sql", None, None),
            ("opportunity", Decimal(500000), "JPY"),
            ("won", Decimal(500000), "JPY"),  # no amount of its own: the opportunity's
        ],
        "lead-c": [("mql", None, None)],
    }
    by_source = {lead: [utm(e) for e in events] for lead, events in sent.items()}
    by_campaign = {lead: [campaign(e) for e in events] for lead, events in sent.items()}

    today = datetime.now(zone).date()
    costs = tmp_path / "costs.csv"
    costs.write_text(
        "dimension,value,period,cost,currency\n"
        f"source,google,{today},350.00,USD\n"
        f"source,newsletter,{today:%Y-%m},8000.00,USD\n"
        f"campaign,brand,{today},1.00,USD\n"
        f"source,tradeshow,{today},99.00,USD\n"
    )
    for dimension, touches, model, extra in (
        ("source", by_source, "position_based", ["--costs", str(costs)]),
        ("campaign", by_campaign, "first_touch", []),
        ("source", by_source, "linear", []),
    ):
        done = run_report(
            settings, "--by", dimension, "--model", model, "--days", "2", "--json", *extra
        )
        assert done.returncode == 0, done.stderr
        got = orjson.loads(done.stdout)
        assert (got["by"], got["model"]) == (dimension, model)
        rows = {r["value"]: r for r in got["rows"]}
        want = expected(touches, conversions, model)
        credited = {v for v in rows if dimension != "source" or v != "tradeshow"}
        assert credited == set(want), (dimension, model)
        for value, w in want.items():
            row = rows[value]
            for key, name in (
                ("mql", "mqls"), ("sql", "sqls"), ("opportunity", "opportunities"), ("won", "won")
            ):  # fmt: skip
                assert row[name] == pytest.approx(float(w[key]), abs=1e-6), (value, name)
            for key, name in (("pipeline", "pipeline_amount"), ("won$", "won_amount")):
                wanted = {cur: amount for cur, amount in w[key].items() if amount}
                got_amounts = {cur: Decimal(a) for cur, a in row[name].items()}
                assert set(got_amounts) == set(wanted), (value, name)
                for cur, amount in wanted.items():
                    # split into whole minor units: off by less than one unit per lead
                    assert abs(got_amounts[cur] - amount) <= Decimal("0.02"), (value, name, cur)
        if extra:
            google, newsletter = rows["google"], rows["newsletter"]
            spent = Decimal("350.00")
            mqls = want["google"]["mql"]
            per_mql = spent * mqls.denominator / mqls.numerator
            assert Decimal(google["cost"]["USD"]) == spent
            assert Decimal(google["cost_per_mql"]["USD"]) == per_mql.quantize(Decimal("0.01"))
            roi = (want["google"]["won$"]["USD"] - spent) / spent
            assert Decimal(google["roi"]["USD"]) == roi.quantize(Decimal("0.0001"))
            # the month's 8,000 USD, pro rata: only the 2 days of the range count
            days_in_month = _days_in_month(today)
            part = Decimal("8000.00") * 2 / days_in_month
            if today.day == 1:
                part = Decimal("8000.00") / days_in_month  # yesterday was last month
            assert Decimal(newsletter["cost"]["USD"]) == part.quantize(Decimal("0.01"))
            assert rows["tradeshow"]["mqls"] == 0 and rows["tradeshow"]["cost"] == {"USD": "99.00"}

    # Totals are conserved: every conversion's credits add up to one conversion.
    done = run_report(settings, "--by", "campaign", "--model", "linear", "--days", "2", "--json")
    rows = orjson.loads(done.stdout)["rows"]
    assert sum(r["mqls"] for r in rows) == pytest.approx(3, abs=1e-6)
    assert sum(r["sqls"] for r in rows) == pytest.approx(2, abs=1e-6)
    assert sum(Decimal(r["won_amount"].get("USD", "0")) for r in rows) == Decimal("1000.00")
    assert sum(Decimal(r["won_amount"].get("JPY", "0")) for r in rows) == Decimal(500000)

    # The live view: /metrics carries the same credits per source (7-day window, refreshed
    # every second in tests), amounts in major units.
    want = expected(by_source, conversions, "position_based")

    async def gauges_agree() -> bool:
        def read() -> dict[str, tuple[float | None, float | None]]:
            return {
                value: (
                    worker.metric(
                        "leadflow_attribution_conversions",
                        source=value, conversion="sql", model="position_based", window="7d",
                    ),
                    worker.metric(
                        "leadflow_attribution_won_amount",
                        source=value, currency="USD", model="position_based", window="7d",
                    ),
                )
                for value in want
            }  # fmt: skip

        got = await asyncio.to_thread(read)
        return all(
            got[v][0] == pytest.approx(float(w["sql"]))
            and (got[v][1] or 0.0) == pytest.approx(float(w["won$"].get("USD", 0)))
            for v, w in want.items()
        )

    await eventually(gauges_agree, 30, "the attribution gauges on /metrics")

    # The chart and the table, for people.
    done = run_report(settings, "--by", "source", "--days", "2", "--charts", str(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "attribution by source" in done.stdout and "google" in done.stdout
    png = tmp_path / "attribution-source.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def utm(event: tuple[str, str, dict[str, Any]]) -> str:
    _, source, extra = event
    return extra.get("properties", {}).get("utm_source", source)


def campaign(event: tuple[str, str, dict[str, Any]]) -> str:
    props = event[2].get("properties", {})
    return props.get("campaign") or props.get("utm_campaign") or "(none)"


def _days_in_month(day: Any) -> int:
    following = (day.replace(day=28) + timedelta(days=4)).replace(day=1)
    return (following - day.replace(day=1)).days
