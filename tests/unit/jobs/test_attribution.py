"""The attribution report's edges: the costs file, the figures per value with costs, the
bounded gauges. Figures are worked out by hand."""

from __future__ import annotations

from datetime import date
from fractions import Fraction
from pathlib import Path

import pytest

from streams.core.attribution import ValueFigures
from streams.jobs.attribution import (
    CostsError,
    attribution_to_json,
    build_attribution,
    parse_period,
    read_costs,
)
from streams.observability import Metrics, top_values

pytestmark = pytest.mark.unit

HEADER = "dimension,value,period,cost,currency\n"


def costs_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "costs.csv"
    path.write_text(HEADER + body)
    return path


def test_periods() -> None:
    assert parse_period("2026-11-05") == (date(2026, 11, 5), date(2026, 11, 5))
    assert parse_period("2026-W45") == (date(2026, 11, 2), date(2026, 11, 8))
    assert parse_period("2026-02") == (date(2026, 2, 1), date(2026, 2, 28))
    assert parse_period("2026-11-01..2026-11-15") == (date(2026, 11, 1), date(2026, 11, 15))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("channel,google,2026-11,10,USD", "costs.csv:2: dimension: 'channel' is not one of"),
        ("source,,2026-11,10,USD", "costs.csv:2: value: empty"),
        ("source,google,2026-13,10,USD", "costs.csv:2: period: '2026-13' is not a day"),
        ("source,google,2026-11,ten,USD", "costs.csv:2: cost: 'ten' is not a number"),
        ("source,google,2026-11,-5,USD", "costs.csv:2: cost: '-5' is not an amount"),
        ("source,google,2026-11,10,XYZ", "costs.csv:2: currency: 'XYZ' is not an ISO 4217"),
        ("source,google,2026-11,10.5,JPY", "costs.csv:2: cost: 10.5 has more decimals than JPY"),
    ],
)
def test_a_bad_costs_row_names_the_line_and_the_column(
    tmp_path: Path, row: str, message: str
) -> None:
    with pytest.raises(CostsError) as caught:
        read_costs(costs_file(tmp_path, row + "\n"))
    assert str(caught.value).startswith(f"{tmp_path}/{message}")


def test_a_costs_file_without_the_columns_says_which(tmp_path: Path) -> None:
    path = tmp_path / "costs.csv"
    path.write_text("source,cost\ngoogle,10\n")
    with pytest.raises(CostsError, match=r"missing column.*dimension, value, period, currency"):
        read_costs(path)


def figures_of(
    value: str, mqls: Fraction, sqls: Fraction, revenue: dict[str, int]
) -> dict[str, int]:
    """The daily counters of one value under linear/source."""
    head = "attr:linear:source:"
    fields = {
        f"{head}mql:{value}": int(mqls * 1_000_000),
        f"{head}sql:{value}": int(sqls * 1_000_000),
    }
    fields.update({f"{head}revenue.{cur}:{value}": n for cur, n in revenue.items()})
    return fields


def test_costs_pro_rata_cost_per_conversion_and_roi(tmp_path: Path) -> None:
    # 30 days of November in the range 2026-11-16..2026-11-30: half the month's cost counts.
    costs = read_costs(
        costs_file(
            tmp_path,
            "source,google,2026-11,3000.00,USD\n"
            "source,google,2026-11-20,100,JPY\n"
            "source,events,2026-10,999,USD\n"  # before the range: not counted
            "campaign,google,2026-11,5,USD\n"  # another dimension: not counted
            "source,radio,2026-11-16..2026-11-17,40,USD\n",  # no credit at all
        )
    )
    day = date(2026, 11, 20)
    counts = {day: figures_of("google", Fraction(3), Fraction(3, 2), {"USD": 300_000})}
    report = build_attribution(
        counts, date(2026, 11, 16), date(2026, 11, 30), "source", "linear", costs
    )
    rows = {r["value"]: r for r in attribution_to_json(report)["rows"]}
    assert set(rows) == {"google", "radio"}
    google = rows["google"]
    assert google["cost"] == {"USD": "1500.00", "JPY": "100.00"}
    assert google["cost_per_mql"] == {"USD": "500.00", "JPY": "33.33"}
    assert google["cost_per_sql"] == {"USD": "1000.00", "JPY": "66.67"}
    assert google["roi"] == {"USD": "1.0000", "JPY": "-1.0000"}  # (3000 - 1500) / 1500
    assert google["won_amount"] == {"USD": "3000.00"}
    assert (google["mqls"], google["sqls"], google["mql_to_sql"]) == (3.0, 1.5, 0.5)
    radio = rows["radio"]
    assert (radio["mqls"], radio["cost"], radio["cost_per_mql"]) == (
        0,
        {"USD": "40.00"},
        {"USD": None},
    )


def value(name: str, revenue: int) -> ValueFigures:
    one = Fraction(1)
    return ValueFigures(name, one, one, one, one, {}, {"USD": revenue})


def test_gauges_keep_the_top_sources_and_sum_the_rest() -> None:
    rows = [value(f"s{i}", 1000 - i) for i in range(12)]
    top = top_values(rows, n=10)
    assert [r.value for r in top] == [*(f"s{i}" for i in range(10)), "other"]
    assert top[-1].revenue == {"USD": 990 + 989} and top[-1].mqls == 2

    metrics = Metrics()
    metrics.observe_attribution("7d", {"linear": rows})
    registry = metrics.registry

    def sample(source: str) -> float | None:
        return registry.get_sample_value(
            "leadflow_attribution_won_amount",
            {"source": source, "currency": "USD", "model": "linear", "window": "7d"},
        )

    assert sample("s0") == 10.0 and sample("other") == 19.79 and sample("s11") is None
    # A later refresh where s0 is gone: its series goes too, nothing is left stale.
    metrics.observe_attribution("7d", {"linear": rows[1:3]})
    assert sample("s0") is None and sample("other") is None and sample("s1") == 9.99
