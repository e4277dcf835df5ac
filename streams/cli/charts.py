"""The PNG charts of `leadflow report` (funnel, weekly trend, attribution) and `leadflow backtest`
(precision, recall and F1 by threshold), drawn with matplotlib off screen.

The commands import this module only when a chart is asked for: matplotlib is slow to load.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Literal

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from streams.core.backtest import Backtest, Goal, ThresholdResult
from streams.core.funnel import PeriodKpis
from streams.jobs.attribution import AttributionReport
from streams.jobs.backtest import human_duration
from streams.jobs.report import Report, percent, period_label

DPI = 120
NOTE = "#555555"  # the grey of footnotes and secondary labels
BLUE = ("#1f4e79", "#2e75b6", "#70ad47")
SIDE = {"nurture": "#f4b183", "disqualified": "#a5a5a5", "lost": "#c55a5a"}


# -- drawing and saving --------------------------------------------------------------------


def new_chart(
    width: float, height: float, layout: Literal["constrained"] | None = None
) -> tuple[Figure, Axes]:
    """A figure with one plot, not tied to any window system (no pyplot, no backend)."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    return fig, fig.add_subplot()


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")  # PNG whatever the file is called
    return path


# -- leadflow report: the funnel -----------------------------------------------------------


def write_report_charts(report: Report, directory: Path) -> list[Path]:
    """funnel.png (the range) and trend.png (weekly) in `directory`; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        funnel_chart(report, directory / "funnel.png"),
        trend_chart(report, directory / "trend.png"),
    ]


def _funnel_bars(ax: Axes, t: PeriodKpis) -> float:
    """Through the funnel on the left, out of it on the right; returns the tallest bar."""
    main = [("MQL", t.mqls, BLUE[0]), ("SQL", t.sqls, BLUE[1]), ("Won", t.won, BLUE[2])]
    side = [
        ("Nurture", t.nurture, SIDE["nurture"]),
        ("Disqualified", t.disqualified, SIDE["disqualified"]),
        ("Lost", t.lost, SIDE["lost"]),
    ]
    xs = [0.0, 1.0, 2.0, 3.6, 4.6, 5.6]
    values = [v for _, v, _ in main + side]
    bars = ax.bar(
        xs,
        values,
        width=0.72,
        color=[c for _, _, c in main + side],
        edgecolor="white",
    )
    ax.bar_label(bars, labels=[f"{v:,}" for v in values], padding=3, fontsize=12, weight="bold")
    ax.set_xticks(xs, [n for n, _, _ in main + side], fontsize=12)
    return max(values) if max(values) > 0 else 1


def _funnel_rates(ax: Axes, t: PeriodKpis, top: float) -> None:
    """The cohort conversion rates, between the bars they connect."""
    for x, rate, text in (
        (0.5, t.mql_to_sql, "MQL→SQL"),
        (1.5, t.sql_to_won, "SQL→won"),
    ):
        ax.annotate(
            f"{text}\n{percent(rate) if rate is not None else 'n/a'}",
            xy=(x, top * 1.17),
            ha="center",
            va="center",
            fontsize=10,
            color="#1f4e79",
            bbox={"boxstyle": "round,pad=0.3", "fc": "#eaf1fb", "ec": "#9dc3e6"},
        )


def funnel_chart(report: Report, path: Path) -> Path:
    fig, ax = new_chart(10, 5.8)
    top = _funnel_bars(ax, report.total)
    ax.set_ylim(0, top * 1.42)
    ax.set_ylabel("stage changes in the range", fontsize=11)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.spines[["top", "right"]].set_visible(False)
    ax.axvline(2.8, color="#bbbbbb", linestyle=":", linewidth=1)
    ax.text(1.0, top * 1.34, "through the funnel", ha="center", fontsize=11, color="#444444")
    ax.text(4.6, top * 1.34, "left the funnel", ha="center", fontsize=11, color="#444444")
    _funnel_rates(ax, report.total, top)
    ax.set_title(
        f"leadflow funnel, {report.start} to {report.end} ({report.timezone})",
        fontsize=14,
        weight="bold",
        pad=12,
    )
    fig.text(
        0.01,
        0.01,
        "Bars: stage changes on days in the range. Rates: cohort conversion "
        "(of the range's MQLs / SQLs, how many became SQL / were won so far).",
        fontsize=9,
        color=NOTE,
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save(fig, path)


# -- leadflow report: the weekly trend -----------------------------------------------------

TrendLine = tuple[str, list[float], str, str]  # name, percent per week (nan: none), colour, marker


def _percents(values: Sequence[float | None]) -> list[float]:
    return [math.nan if v is None else v * 100 for v in values]


def _trend_lines(weeks: Sequence[PeriodKpis]) -> list[TrendLine]:
    return [
        ("MQL→SQL conversion (cohort)", _percents([w.mql_to_sql for w in weeks]), "#1f4e79", "o"),
        (
            "SLA compliance: first contact",
            _percents([w.sla["mql_first_contact"].compliance for w in weeks]),
            "#ed7d31",
            "s",
        ),
        (
            "SLA compliance: sales follow-up",
            _percents([w.sla["sql_follow_up"].compliance for w in weeks]),
            "#70ad47",
            "^",
        ),
    ]


def _plot_trend_lines(ax: Axes, xs: list[int], lines: list[TrendLine]) -> None:
    """Each line, and its latest value written to its right, nudged apart when lines meet."""
    ends: list[tuple[float, float, str]] = []  # (x, y, color) of each line's latest point
    for name, ys, color, marker in lines:
        ax.plot(xs, ys, label=name, color=color, marker=marker, markersize=7, linewidth=2.2)
        known = [(x, y) for x, y in zip(xs, ys, strict=True) if not math.isnan(y)]
        if known:
            ends.append((*known[-1], color))
    placed: list[float] = []
    for x, y, color in sorted(ends, key=lambda e: e[1]):
        at = max([y, *[p + 6 for p in placed]])
        placed.append(at)
        ax.annotate(
            f"{y:.1f}%",
            (x, y),
            xytext=(x + 0.25, at),
            textcoords="data",
            va="center",
            fontsize=10,
            weight="bold",
            color=color,
        )


def _week_axis(ax: Axes, xs: list[int], weeks: Sequence[PeriodKpis]) -> None:
    labels = [period_label(w) for w in weeks]
    step = math.ceil(len(weeks) / 26)  # at most 26 labels; the points stay weekly
    crowded = len(weeks) > 8
    ax.set_xticks(
        xs[::step],
        labels[::step],
        rotation=45 if crowded else 0,
        ha="right" if crowded else "center",
        rotation_mode="anchor",
    )
    ax.set_xlim(-0.5, len(weeks) - 0.5 + 0.9)  # room for the end labels
    partial = " (* = partly outside the range)" if any(w.partial for w in weeks) else ""
    ax.set_xlabel(f"ISO week{partial}", fontsize=10)


def trend_chart(report: Report, path: Path) -> Path:
    weeks = report.weeks
    xs = list(range(len(weeks)))
    fig, ax = new_chart(min(16.0, max(9.0, 0.45 * len(weeks) + 6)), 5.6)
    _plot_trend_lines(ax, xs, _trend_lines(weeks))
    ax.set_ylim(0, 105)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
    _week_axis(ax, xs, weeks)
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=3,
        frameon=False,
        fontsize=10,
    )
    fig.suptitle(
        f"Weekly conversion and SLA compliance, {report.start} to {report.end}",
        fontsize=13,
        weight="bold",
    )
    fig.text(
        0.01,
        0.01,
        "Conversion: of the week's MQLs, the share that became SQL so far.\n"
        "Compliance: met / (met + breached) of the clocks started that week; a gap: nothing "
        "to measure.",
        fontsize=8.5,
        color=NOTE,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, path)


# -- leadflow backtest ---------------------------------------------------------------------

CURRENT, RECOMMENDED = "#555555", "#d62728"


def _mql_volume(ax: Axes, report: Backtest) -> None:
    """MQLs handed off per threshold, as grey bars on their own axis behind the lines."""
    x = [r.threshold for r in report.rows]
    volume = ax.twinx()
    step = min((b - a for a, b in pairwise(x)), default=1.0)
    volume.bar(x, [r.mqls for r in report.rows], width=step * 0.8, color="#d9d9d9", zorder=0)
    volume.set_ylabel("MQLs handed off (bars)", color="#777777")
    volume.tick_params(axis="y", colors="#777777")
    ax.set_zorder(volume.get_zorder() + 1)
    ax.patch.set_visible(False)


def _quality_lines(ax: Axes, rows: Sequence[ThresholdResult]) -> None:
    """Precision, recall and F1 by threshold, the y axis just above the highest of them."""

    def values(pick: Callable[[ThresholdResult], float | None]) -> list[float]:
        return [math.nan if (v := pick(r)) is None else v for r in rows]

    x = [r.threshold for r in rows]
    precision = values(lambda r: r.precision)
    recall = values(lambda r: r.recall)
    f1 = values(lambda r: r.f1)
    ax.plot(x, precision, color="#1f77b4", lw=2, label="precision")
    ax.plot(x, recall, color="#ff7f0e", lw=2, label="recall")
    ax.plot(x, f1, color="#2ca02c", lw=2.5, ls="--", label="F1")
    highest = max(
        (v for pick in (precision, recall, f1) for v in pick if not math.isnan(v)), default=1
    )
    ax.set_ylim(0, min(1.05, math.ceil((highest + 0.08) * 10) / 10))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("MQL threshold (fit + engagement score)")
    ax.set_ylabel("precision / recall / F1")
    ax.grid(True, alpha=0.3)


Mark = tuple[float, str, str]  # threshold, colour, label


def _threshold_lines(ax: Axes, current: float, best: float | None) -> list[Mark]:
    """Vertical lines at the current and the recommended threshold; returns their labels."""
    ax.axvline(current, color=CURRENT, ls=":", lw=1.8, label=f"current {current:g}")
    if best is None:
        return [(current, CURRENT, f"current {current:g}")]
    ax.axvline(best, color=RECOMMENDED, ls="-", lw=1.8, label=f"recommended {best:g}")
    if best == current:
        return [(best, RECOMMENDED, f"recommended = current {best:g}")]
    return [
        (best, RECOMMENDED, f"recommended {best:g}"),
        (current, CURRENT, f"current {current:g}"),
    ]


def _threshold_labels(ax: Axes, marks: list[Mark], current: float, best: float | None) -> None:
    for i, (at, color, text) in enumerate(marks):
        # Each label on the side facing away from the other line, so they never cross it.
        right = best is None or best == current or (at == best) == (best > current)
        ax.annotate(
            text,
            xy=(at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(5 if right else -5, -4 - 14 * i),
            textcoords="offset points",
            ha="left" if right else "right",
            va="top",
            color=color,
            fontsize=9,
            fontweight="bold",
        )


def _goal_target(ax: Axes, goal: Goal) -> None:
    """A recall or precision goal's target, as a horizontal line in that metric's colour."""
    if goal.target is None:
        return
    line = {"recall": "#ff7f0e", "precision": "#1f77b4"}.get(goal.kind, NOTE)
    ax.axhline(goal.target, color=line, ls="-.", lw=1, alpha=0.8)
    ax.annotate(
        f"{goal.kind} target {goal.target:.0%}",
        xy=(1.0, goal.target),
        xycoords=("axes fraction", "data"),
        xytext=(-5, 3),
        textcoords="offset points",
        ha="right",
        va="bottom",
        color=line,
        fontsize=9,
    )


def write_backtest_chart(report: Backtest, path: Path) -> Path:
    """Precision, recall and F1 against the threshold, MQL volume behind them, both marked."""
    fig, ax = new_chart(10, 5.6, layout="constrained")
    _mql_volume(ax, report)
    _quality_lines(ax, report.rows)
    current = report.current.threshold
    best = report.recommended.threshold if report.recommended is not None else None
    marks = _threshold_lines(ax, current, best)
    _goal_target(ax, report.goal)
    _threshold_labels(ax, marks, current, best)
    ax.legend(loc="center right", framealpha=0.9, fontsize=9)
    window = f", within {human_duration(report.window)}" if report.window else ""
    fig.suptitle("Backtest: precision, recall and F1 by MQL threshold", fontweight="bold")
    ax.set_title(
        f"{report.leads} leads, {report.converted} converted ({report.target}{window}); "
        f"goal {report.goal}; rules {report.rules.version}",
        fontsize=9,
        color="#444444",
    )
    return save(fig, path)


# -- leadflow report --by: attribution -------------------------------------------------------


def write_attribution_chart(report: AttributionReport, directory: Path) -> Path:
    """attribution-<source|campaign>.png: the won amount (one panel per currency, the three
    largest) and the SQLs credited to each value (the 12 with the most revenue, then SQLs),
    under the report's model."""
    from streams.jobs.attribution import attribution_to_json

    directory.mkdir(parents=True, exist_ok=True)
    rows = attribution_to_json(report)["rows"][:12][::-1]  # the largest at the top
    labels = [r["value"] for r in rows]
    totals: dict[str, float] = {}
    for r in rows:
        for cur, amount in r["won_amount"].items():
            totals[cur] = totals.get(cur, 0.0) + float(amount)
    currencies = sorted(totals, key=lambda cur: -totals[cur])[:3]
    panels = len(currencies) + 1
    fig = Figure(
        figsize=(4.2 * panels + 1.5, 1.4 + 0.42 * max(len(rows), 3)), dpi=DPI, layout="constrained"
    )
    axes = fig.subplots(1, panels, sharey=True, squeeze=False)[0]
    ys = list(range(len(rows)))
    for ax, cur in zip(axes, currencies, strict=False):
        values = [float(r["won_amount"].get(cur, 0)) for r in rows]
        bars = ax.barh(ys, values, color=BLUE[2])
        ax.bar_label(bars, labels=[f"{v:,.0f}" if v else "" for v in values], padding=3)
        ax.set_title(f"Won amount, {cur}", loc="left")
    sqls = axes[-1]
    counts = [r["sqls"] for r in rows]
    bars = sqls.barh(ys, counts, color=BLUE[1])
    sqls.bar_label(
        bars, labels=[f"{c:.2f}".rstrip("0").rstrip(".") if c else "" for c in counts], padding=3
    )
    sqls.set_title("SQLs (credited)", loc="left")
    axes[0].set_yticks(ys, labels)
    for ax in axes:
        ax.margins(x=0.2)
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(axis="x", colors=NOTE)
    if not currencies:
        sqls.set_xlabel("no won amount yet", color=NOTE)
    fig.suptitle(
        f"Attribution by {report.dimension}, {report.model.replace('_', '-')} model, "
        f"{report.start} to {report.end}",
        x=0.01,
        ha="left",
        fontsize="large",
    )
    return save(fig, directory / f"attribution-{report.dimension}.png")
