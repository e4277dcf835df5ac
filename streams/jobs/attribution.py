"""`leadflow report --by source|campaign`: credited conversions and amounts per value, read
from the daily counters (streams/core/attribution.py), with the costs of a CSV file beside them.

The costs file has the columns `dimension,value,period,cost,currency`. A period is a day
(2026-11-05), an ISO week (2026-W45), a month (2026-11) or a range (2026-11-01..2026-11-15).
A cost counts for the days of its period inside the report's range, pro rata by days.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any, cast

import typer

from schemas.money import check_amount, from_minor_units
from streams.core.attribution import DIMENSIONS, MODELS, Dimension, Model, ValueFigures, figures
from streams.core.funnel import Counts, days_between, period_of

COST_COLUMNS = ("dimension", "value", "period", "cost", "currency")
DEFAULT_MODEL: Model = "position_based"


class CostsError(ValueError):
    """A costs file that cannot be read; the message names the file, the line and the column."""


def check_choice(value: str, choices: tuple[str, ...], option: str) -> str:
    if value not in choices:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}", param_hint=option)
    return value


def check_dimension(value: str) -> Dimension:
    return cast(Dimension, check_choice(value, DIMENSIONS, "'--by'"))


def check_model(value: str) -> Model:
    return cast(Model, check_choice(value, MODELS, "'--model'"))


# -- costs -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    dimension: str
    value: str
    first: date
    last: date
    cost: Decimal
    currency: str

    def within(self, start: date, end: date) -> Decimal:
        """The part of the cost that falls on the days from start to end (pro rata by days)."""
        first, last = max(self.first, start), min(self.last, end)
        if first > last:
            return Decimal(0)
        inside = (last - first).days + 1
        whole = (self.last - self.first).days + 1
        return self.cost * inside / whole


def parse_period(text: str) -> tuple[date, date]:
    """A day, an ISO week (2026-W45), a month (2026-11) or `first..last`; both ends included."""
    text = text.strip()
    try:
        if ".." in text:
            a, b = text.split("..", 1)
            first, last = date.fromisoformat(a.strip()), date.fromisoformat(b.strip())
            if last < first:
                raise ValueError(f"{text!r} ends before it starts")
            return first, last
        if "-W" in text:
            year, week = text.split("-W", 1)
            monday = date.fromisocalendar(int(year), int(week), 1)
            return monday, monday + timedelta(days=6)
        if len(text) == 7:
            _, first, last = period_of(date.fromisoformat(f"{text}-01"), "month")
            return first, last
        day = date.fromisoformat(text)
        return day, day
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not a day (2026-11-05), ISO week (2026-W45), month (2026-11) or "
            f"range (2026-11-01..2026-11-15): {exc}"
        ) from None


def read_costs(path: Path) -> list[Cost]:
    """Every row of a costs file, checked; a bad one fails naming the line and the column."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in COST_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise CostsError(
                    f"{path}: missing column(s) {', '.join(missing)}; the header must be "
                    f"{','.join(COST_COLUMNS)}"
                )
            return [_cost(path, reader.line_num, row) for row in reader]
    except OSError as exc:
        raise CostsError(f"{path}: cannot read the costs file ({exc.strerror})") from None


def _cost(path: Path, line: int, row: dict[str, Any]) -> Cost:
    def bad(column: str, why: str) -> CostsError:
        return CostsError(f"{path}:{line}: {column}: {why}")

    dimension = (row["dimension"] or "").strip()
    if dimension not in DIMENSIONS:
        raise bad("dimension", f"{dimension!r} is not one of {', '.join(DIMENSIONS)}")
    value = (row["value"] or "").strip()
    if not value:
        raise bad("value", "empty")
    try:
        first, last = parse_period(row["period"] or "")
    except ValueError as exc:
        raise bad("period", str(exc)) from None
    try:
        cost = Decimal((row["cost"] or "").strip())
    except InvalidOperation:
        raise bad("cost", f"{row['cost']!r} is not a number") from None
    if not cost.is_finite() or cost < 0:
        raise bad("cost", f"{row['cost']!r} is not an amount of 0 or more")
    currency = (row["currency"] or "").strip().upper()
    problem = check_amount(cost, currency)
    if problem:
        column, _, why = problem.partition(": ")
        raise bad("cost" if column == "amount" else "currency", why)
    return Cost(dimension, value, first, last, cost, currency)


def costs_by_value(
    costs: list[Cost], dimension: str, start: date, end: date
) -> dict[str, dict[str, Decimal]]:
    """Per value and currency, the costs of `dimension` that fall inside the range."""
    found: dict[str, dict[str, Decimal]] = {}
    for c in costs:
        if c.dimension != dimension:
            continue
        part = c.within(start, end)
        if part:
            per = found.setdefault(c.value, {})
            per[c.currency] = per.get(c.currency, Decimal(0)) + part
    return found


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AttributionRow:
    figures: ValueFigures
    cost: dict[str, Decimal] = field(default_factory=dict)  # per currency, in the range

    @property
    def value(self) -> str:
        return self.figures.value

    def revenue(self, currency: str) -> Decimal:
        return from_minor_units(self.figures.revenue.get(currency, 0), currency)

    def cost_per(self, conversions: Fraction) -> dict[str, Decimal | None]:
        return {
            cur: (amount / _decimal(conversions) if conversions else None)
            for cur, amount in self.cost.items()
        }

    @property
    def roi(self) -> dict[str, Decimal | None]:
        """(won amount - cost) / cost, per currency of the cost."""
        return {
            cur: ((self.revenue(cur) - amount) / amount if amount else None)
            for cur, amount in self.cost.items()
        }


@dataclass(frozen=True, slots=True)
class AttributionReport:
    namespace: str
    timezone: str
    start: date
    end: date
    dimension: Dimension
    model: Model
    rows: list[AttributionRow]

    @property
    def has_data(self) -> bool:
        return any(r.figures.mqls or r.figures.won or r.figures.sqls for r in self.rows)


def build_attribution(
    counts: Counts,
    start: date,
    end: date,
    dimension: Dimension,
    model: Model,
    costs: Sequence[Cost] = (),
    timezone: str = "UTC",
    namespace: str = "",
) -> AttributionReport:
    table = figures(counts, days_between(start, end), model, dimension)
    spent = costs_by_value(list(costs), dimension, start, end)
    rows = [AttributionRow(f, spent.pop(f.value, {})) for f in table]
    # Values with a cost and no credit at all (a campaign that brought nothing) still show.
    for value, cost in sorted(spent.items()):
        empty = ValueFigures(value, Fraction(0), Fraction(0), Fraction(0), Fraction(0), {}, {})
        rows.append(AttributionRow(empty, cost))
    return AttributionReport(namespace, timezone, start, end, dimension, model, rows)


def _decimal(value: Fraction) -> Decimal:
    return Decimal(value.numerator) / Decimal(value.denominator)


def _count(value: Fraction) -> float:
    return round(float(value), 6)


def _money(per: dict[str, int]) -> dict[str, str]:
    return {cur: str(from_minor_units(n, cur)) for cur, n in per.items()}


def _ratio(value: Fraction | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _decimals(per: dict[str, Decimal | None], places: str = "0.01") -> dict[str, str | None]:
    return {cur: None if v is None else str(v.quantize(Decimal(places))) for cur, v in per.items()}


def attribution_to_json(report: AttributionReport) -> dict[str, Any]:
    """The figures of `leadflow report --by ... --json`: credited conversions as numbers (at
    most 6 decimals), amounts as decimal strings in their currency."""
    rows = []
    for r in report.rows:
        f = r.figures
        row: dict[str, Any] = {
            "value": f.value,
            "mqls": _count(f.mqls),
            "sqls": _count(f.sqls),
            "opportunities": _count(f.opportunities),
            "won": _count(f.won),
            "pipeline_amount": _money(f.pipeline),
            "won_amount": _money(f.revenue),
            "mql_to_sql": _ratio(f.mql_to_sql),
            "sql_to_won": _ratio(f.sql_to_won),
        }
        if r.cost:
            row["cost"] = {cur: str(v.quantize(Decimal("0.01"))) for cur, v in r.cost.items()}
            row["cost_per_mql"] = _decimals(r.cost_per(f.mqls))
            row["cost_per_sql"] = _decimals(r.cost_per(f.sqls))
            row["roi"] = _decimals(r.roi, "0.0001")
        rows.append(row)
    return {
        "namespace": report.namespace,
        "timezone": report.timezone,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "by": report.dimension,
        "model": report.model,
        "rows": rows,
    }
