"""The KPI report of `leadflow report`: the date range, the daily counters read from Redis,
and the Report summarised over them by streams.core.funnel, as figures and JSON.

Rendering (tables, charts) is in streams/cli/report.py and streams/cli/charts.py. Definitions
of every figure: docs/kpis.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast, get_args
from zoneinfo import ZoneInfo

import typer

from streams.core.funnel import (
    SERIES,
    ClockKpis,
    Counts,
    DurationKpis,
    Durations,
    OwnerKpis,
    Period,
    PeriodKpis,
    days_between,
    summarize,
    total,
)
from streams.core.rules import Rules
from streams.settings import Settings

DEFAULT_DAYS = 28
MAX_DAYS = 3660  # ten years of days: one Redis pipeline of three reads per day
PERIODS: tuple[str, ...] = get_args(Period)


# -- the range -----------------------------------------------------------------------------


def resolve_range(
    today: date,
    days: int | None = None,
    since: date | None = None,
    until: date | None = None,
) -> tuple[date, date]:
    """--days N (ending at --until or today) or --since/--until; both ends included."""
    if days is not None and since is not None:
        raise typer.BadParameter("use --days or --since, not both", param_hint="'--days'")
    if days is not None and days < 1:
        raise typer.BadParameter(f"{days} is not a positive number of days", param_hint="'--days'")
    end = until or today
    start = since or end - timedelta(days=(days or DEFAULT_DAYS) - 1)
    if start > end:
        raise typer.BadParameter(f"--since {start} is after --until {end}", param_hint="'--since'")
    if (end - start).days + 1 > MAX_DAYS:
        raise typer.BadParameter(
            f"{(end - start).days + 1} days is more than {MAX_DAYS}", param_hint="'--since'"
        )
    return start, end


def check_period(period: str) -> Period:
    if period not in PERIODS:
        raise typer.BadParameter(
            f"{period!r} is not one of {', '.join(PERIODS)}", param_hint="'--period'"
        )
    return cast(Period, period)


def today_in(timezone: str, now: datetime | None = None) -> date:
    return (now or datetime.now(ZoneInfo(timezone))).astimezone(ZoneInfo(timezone)).date()


# -- reading -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KpiData:
    counts: dict[date, dict[str, int]]
    durations: dict[tuple[date, str], list[float]]
    days_anywhere: tuple[date, ...]  # days with counters at all (only looked up when needed)

    @property
    def empty(self) -> bool:
        return not any(any(v for v in c.values()) for c in self.counts.values()) and not any(
            self.durations.values()
        )


async def read_kpi_data(settings: Settings, start: date, end: date) -> KpiData:
    # Redis loads only when a report is read: every `leadflow` command imports this module.
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from streams.bootstrap import check_layout, open_store

    store = open_store(settings)
    try:
        await check_layout(store, settings)
        counts, durations = await store.read_kpis(days_between(start, end), SERIES.values())
        data = KpiData(counts, durations, ())
        if data.empty:
            data = KpiData(counts, durations, tuple(await store.kpi_days()))
        return data
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise TimeoutError(
            f"Redis at {settings.redis_url} is not answering ({exc}); start it with "
            "`ops/stack up` or set LEADFLOW_REDIS_URL"
        ) from None
    finally:
        await store.close()


# -- the report ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    namespace: str
    timezone: str
    start: date
    end: date
    period: Period
    periods: list[PeriodKpis]
    total: PeriodKpis
    weeks: list[PeriodKpis]  # always weekly, for the trend chart

    @property
    def has_data(self) -> bool:
        return self.total.days_with_data > 0


def build_report(
    counts: Counts,
    durations: Durations,
    start: date,
    end: date,
    period: Period,
    timezone: str = "UTC",
    namespace: str = "",
) -> Report:
    return Report(
        namespace=namespace,
        timezone=timezone,
        start=start,
        end=end,
        period=period,
        periods=summarize(counts, durations, start, end, period),
        total=total(counts, durations, start, end),
        weeks=summarize(counts, durations, start, end, "week"),
    )


async def read_report(
    settings: Settings,
    rules: Rules,
    *,
    days: int | None = None,
    since: date | None = None,
    until: date | None = None,
    period: str = "week",
    now: datetime | None = None,
) -> tuple[Report, KpiData]:
    """The report over the range asked for, in the rules' reporting time zone, and the data
    it was built from (which says where there is data when the range has none)."""
    chosen = check_period(period)
    timezone = rules.reporting.timezone
    start, end = resolve_range(today_in(timezone, now), days, since, until)
    data = await read_kpi_data(settings, start, end)
    report = build_report(
        data.counts, data.durations, start, end, chosen, timezone, settings.namespace
    )
    return report, data


# -- how figures are written (the tables and the charts share these) ----------------------


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def humanize(seconds: float | None) -> str:
    """3h12m, 12m05s, 42s, 1.5s, 2d03h; '-' for no value."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        minutes = whole // 60
        return f"{minutes // 60}h{minutes % 60:02d}m"
    hours = whole // 3600
    return f"{hours // 24}d{hours % 24:02d}h"


def period_label(p: PeriodKpis) -> str:
    """The period's label, starred when part of it lies outside the range."""
    return f"{p.label}*" if p.partial else p.label


# -- JSON ----------------------------------------------------------------------------------


def _duration_json(d: DurationKpis) -> dict[str, Any]:
    return {"samples": d.samples, "median_seconds": d.median, "p90_seconds": d.p90}


def period_to_json(p: PeriodKpis) -> dict[str, Any]:
    return {
        "label": p.label,
        "start": p.start.isoformat(),
        "end": p.end.isoformat(),
        "partial": p.partial,
        "days_with_data": p.days_with_data,
        "mqls": p.mqls,
        "sqls": p.sqls,
        "nurture": p.nurture,
        "disqualified": p.disqualified,
        "won": p.won,
        "lost": p.lost,
        "missing_bant": p.missing_bant,
        "cohort": {"sql": p.cohort_sql, "won": p.cohort_won, "lost": p.cohort_lost},
        "mql_to_sql": p.mql_to_sql,
        "sql_to_won": p.sql_to_won,
        "sql_to_lost": p.sql_to_lost,
        "sla": {
            kind: {
                "met": c.met,
                "breached": c.breached,
                "expired": c.expired,
                "closed": c.closed,
                "late": c.late,
                "compliance": c.compliance,
            }
            for kind, c in p.sla.items()
        },
        "time_to_first_contact": _duration_json(p.time_to_first_contact),
        "time_to_sales_action": _duration_json(p.time_to_sales_action),
        "breaches_by_owner": p.breaches_by_owner,
        "by_owner": {
            owner: {
                "handoffs": o.handoffs,
                "first_contact_met": o.met,
                "first_contact_breached": o.breached,
                "breach_rate": o.breach_rate,
                "contacted": o.contacted,
                "contact_seconds": o.contact_seconds,
                "mean_time_to_first_contact_seconds": o.mean_time_to_first_contact,
                "reassigned_away": o.reassigned_away,
            }
            for owner, o in p.by_owner.items()
        },
        "by_queue": {
            queue: {
                "handoffs": p.by_queue.get(queue, 0),
                "reassigned": p.reassigned_by_queue.get(queue, 0),
            }
            for queue in sorted(p.by_queue.keys() | p.reassigned_by_queue.keys())
        },
    }


def _duration_from_json(d: dict[str, Any]) -> DurationKpis:
    return DurationKpis(d["samples"], d["median_seconds"], d["p90_seconds"])


def period_from_json(d: dict[str, Any]) -> PeriodKpis:
    return PeriodKpis(
        label=d["label"],
        start=date.fromisoformat(d["start"]),
        end=date.fromisoformat(d["end"]),
        partial=d["partial"],
        mqls=d["mqls"],
        sqls=d["sqls"],
        nurture=d["nurture"],
        disqualified=d["disqualified"],
        won=d["won"],
        lost=d["lost"],
        missing_bant=dict(d["missing_bant"]),
        cohort_sql=d["cohort"]["sql"],
        cohort_won=d["cohort"]["won"],
        cohort_lost=d["cohort"]["lost"],
        sla={
            kind: ClockKpis(c["met"], c["breached"], c["expired"], c["closed"], c["late"])
            for kind, c in d["sla"].items()
        },
        time_to_first_contact=_duration_from_json(d["time_to_first_contact"]),
        time_to_sales_action=_duration_from_json(d["time_to_sales_action"]),
        breaches_by_owner=dict(d["breaches_by_owner"]),
        days_with_data=d["days_with_data"],
        by_owner={
            owner: OwnerKpis(
                o["handoffs"],
                o["first_contact_met"],
                o["first_contact_breached"],
                o["contacted"],
                o["contact_seconds"],
                o.get("reassigned_away", 0),
            )
            for owner, o in d.get("by_owner", {}).items()
        },
        by_queue={q: v["handoffs"] for q, v in d.get("by_queue", {}).items() if v["handoffs"]},
        reassigned_by_queue={
            q: v["reassigned"] for q, v in d.get("by_queue", {}).items() if v.get("reassigned")
        },
    )


def report_to_json(report: Report) -> dict[str, Any]:
    return {
        "namespace": report.namespace,
        "timezone": report.timezone,
        "start": report.start.isoformat(),
        "end": report.end.isoformat(),
        "period": report.period,
        "has_data": report.has_data,
        "periods": [period_to_json(p) for p in report.periods],
        "total": period_to_json(report.total),
    }
