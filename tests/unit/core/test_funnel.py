"""Funnel KPIs from daily counters: conversion, compliance, quantiles, periods (hand-computed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest

from schemas.activity import SalesActivity
from schemas.handoff import MqlHandoff
from streams.core.funnel import (
    ClockKpis,
    OwnerKpis,
    PeriodKpis,
    aggregate,
    days_between,
    period_of,
    quantile,
    summarize,
    total,
)
from streams.core.kpi import kpi_changes
from streams.core.lead import LeadState
from streams.core.rules import parse_rules
from streams.core.sales import apply_activity, open_first_contact_clock
from streams.observability import bounded_owners

pytestmark = pytest.mark.unit

D = date.fromisoformat
FC, SA = "first_contact_seconds", "sales_action_seconds"


def one_day(fields: dict[str, int], samples: dict[str, list[float]] | None = None) -> PeriodKpis:
    day = D("2026-11-25")
    durations = {(day, s): v for s, v in (samples or {}).items()}
    return aggregate("x", [day], {day: fields}, durations)


# -- conversion ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "mql_to_sql", "sql_to_won", "sql_to_lost"),
    [
        ({"mql": 4, "cohort_sql": 3}, 0.75, None, None),
        ({"mql": 8, "cohort_sql": 2, "sql": 5, "cohort_won": 1, "cohort_lost": 2}, 0.25, 0.2, 0.4),
        ({"mql": 3}, 0.0, None, None),  # MQLs, none became SQL (yet)
        ({"sql": 2, "cohort_sql": 1}, None, 0.0, 0.0),  # no MQLs that day: no rate, not 0
        ({}, None, None, None),
    ],
)
def test_conversion_is_the_cohort_over_the_period_flow(
    fields: dict[str, int],
    mql_to_sql: float | None,
    sql_to_won: float | None,
    sql_to_lost: float | None,
) -> None:
    p = one_day(fields)
    assert (p.mql_to_sql, p.sql_to_won, p.sql_to_lost) == (mql_to_sql, sql_to_won, sql_to_lost)


def test_flow_counts_and_missing_bant_are_summed() -> None:
    p = one_day(
        {
            "mql": 5,
            "sql": 2,
            "nurture": 3,
            "disqualified": 1,
            "won": 1,
            "lost": 4,
            "nurture_missing:budget": 3,
            "nurture_missing:timeframe": 1,
        }
    )
    assert (p.mqls, p.sqls, p.nurture, p.disqualified, p.won, p.lost) == (5, 2, 3, 1, 1, 4)
    assert p.missing_bant == {"budget": 3, "authority": 0, "need": 0, "timeframe": 1}


# -- SLA compliance --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ({"met": 3, "breached": 1}, 0.75),
        # Expired (backfills) and closed (left the funnel first) are no decisions: left out.
        ({"met": 3, "breached": 1, "expired": 5, "closed": 2}, 0.75),
        ({"met": 1, "breached": 3, "late": 2}, 0.25),  # late actions stay breaches
        ({"expired": 4, "closed": 1}, None),  # nothing decided: no figure, not 0 % or 100 %
        ({"breached": 2}, 0.0),
        ({"met": 2}, 1.0),
        ({}, None),
    ],
)
def test_compliance_is_met_over_met_plus_breached(
    verdicts: dict[str, int], expected: float | None
) -> None:
    fields = {f"clock:mql_first_contact:{k}": n for k, n in verdicts.items()}
    p = one_day(fields)
    contact = p.sla["mql_first_contact"]
    assert contact == ClockKpis(**verdicts)
    assert contact.compliance == expected
    assert p.compliance == {"mql_first_contact": expected, "sql_follow_up": None}
    assert p.sla["sql_follow_up"] == ClockKpis()


def test_each_clock_kind_has_its_own_compliance() -> None:
    p = one_day(
        {
            "clock:mql_first_contact:met": 9,
            "clock:mql_first_contact:breached": 1,
            "clock:sql_follow_up:met": 1,
            "clock:sql_follow_up:breached": 1,
        }
    )
    assert p.compliance == {"mql_first_contact": 0.9, "sql_follow_up": 0.5}


def test_breaches_by_owner_most_first_and_zeros_dropped() -> None:
    p = one_day({"breach_owner:sato": 1, "breach_owner:-": 3, "breach_owner:abe": 1, "x": 2})
    assert p.breaches_by_owner == {"-": 3, "abe": 1, "sato": 1}
    assert list(one_day({"breach_owner:sato": 0}).breaches_by_owner) == []


# -- quantiles -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "median", "p90"),
    [
        ([], None, None),
        ([42.0], 42.0, 42.0),
        ([10.0, 20.0], 15.0, 19.0),  # p90: 10 + 0.9 * 10
        ([40.0, 10.0, 30.0, 20.0], 25.0, 37.0),  # unsorted; p90 at rank 2.7: 30 + 0.7 * 10
        ([float(i) for i in range(1, 11)], 5.5, 9.1),  # rank 8.1 of 0..9: 9 + 0.1 * 1
        ([1.0, 1.0, 1.0, 100.0], 1.0, 70.3),  # rank 2.7: 1 + 0.7 * 99
    ],
)
def test_median_and_p90_interpolate_linearly(
    values: list[float], median: float | None, p90: float | None
) -> None:
    assert quantile(values, 0.5) == pytest.approx(median)
    assert quantile(values, 0.9) == pytest.approx(p90)
    p = one_day({}, {FC: values})
    assert p.time_to_first_contact.samples == len(values)
    assert p.time_to_first_contact.median == pytest.approx(median)
    assert p.time_to_first_contact.p90 == pytest.approx(p90)
    assert p.time_to_sales_action.samples == 0 and p.time_to_sales_action.median is None


def test_quantile_rejects_a_share_outside_0_to_1() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        quantile([1.0], 1.5)


def test_total_quantiles_are_over_all_samples_not_a_median_of_medians() -> None:
    a, b = D("2026-11-23"), D("2026-11-24")
    durations = {(a, FC): [1.0, 2.0, 3.0], (b, FC): [100.0], (b, SA): [60.0]}
    t = total({}, durations, a, b)
    # All samples 1, 2, 3, 100: median 2.5 (the medians of the days, 2 and 100, would give 51).
    assert t.time_to_first_contact.median == 2.5
    assert t.time_to_first_contact.p90 == pytest.approx(3 + 0.7 * 97)
    assert t.time_to_sales_action.median == 60.0
    assert t.days_with_data == 2


# -- periods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "period", "label", "first", "last"),
    [
        ("2026-11-25", "day", "2026-11-25", "2026-11-25", "2026-11-25"),
        ("2026-11-25", "week", "2026-W48", "2026-11-23", "2026-11-29"),  # a Wednesday
        ("2026-11-23", "week", "2026-W48", "2026-11-23", "2026-11-29"),  # its Monday
        ("2026-11-29", "week", "2026-W48", "2026-11-23", "2026-11-29"),  # its Sunday
        ("2027-01-01", "week", "2026-W53", "2026-12-28", "2027-01-03"),  # 2026 has 53 weeks
        ("2027-01-04", "week", "2027-W01", "2027-01-04", "2027-01-10"),
        ("2024-12-30", "week", "2025-W01", "2024-12-30", "2025-01-05"),  # Dec day, next year
        ("2026-11-25", "month", "2026-11", "2026-11-01", "2026-11-30"),
        ("2026-12-31", "month", "2026-12", "2026-12-01", "2026-12-31"),
        ("2028-02-10", "month", "2028-02", "2028-02-01", "2028-02-29"),  # leap year
    ],
)
def test_period_labels_and_bounds(day: str, period: str, label: str, first: str, last: str) -> None:
    assert period_of(D(day), period) == (label, D(first), D(last))  # type: ignore[arg-type]


def test_iso_weeks_across_the_year_boundary() -> None:
    # Thursday 2026-12-24 to Tuesday 2027-01-12: parts of four ISO weeks.
    start, end = D("2026-12-24"), D("2027-01-12")
    counts = {
        D("2026-12-27"): {"mql": 1},  # Sunday: still W52
        D("2026-12-28"): {"mql": 2},  # Monday: W53
        D("2027-01-01"): {"mql": 4, "cohort_sql": 2},  # New Year's Day: W53 of 2026
        D("2027-01-03"): {"mql": 8},  # Sunday: W53
        D("2027-01-04"): {"mql": 16},  # Monday: 2027-W01
        D("2027-01-12"): {"mql": 32},  # the last day: 2027-W02
        D("2027-01-13"): {"mql": 64},  # outside the range: not counted
    }
    weeks = summarize(counts, {}, start, end, "week")
    assert [(w.label, w.start, w.end, w.partial, w.mqls) for w in weeks] == [
        ("2026-W52", D("2026-12-24"), D("2026-12-27"), True, 1),
        ("2026-W53", D("2026-12-28"), D("2027-01-03"), False, 14),
        ("2027-W01", D("2027-01-04"), D("2027-01-10"), False, 16),
        ("2027-W02", D("2027-01-11"), D("2027-01-12"), True, 32),
    ]
    assert weeks[1].mql_to_sql == pytest.approx(2 / 14)
    assert total(counts, {}, start, end).mqls == 63


def test_empty_periods_are_listed_with_zeros_and_no_rates() -> None:
    start, end = D("2026-11-02"), D("2026-11-29")  # four whole weeks, data in the second only
    counts = {D("2026-11-11"): {"mql": 2, "clock:mql_first_contact:met": 2}}
    weeks = summarize(counts, {(D("2026-11-11"), FC): [30.0, 90.0]}, start, end, "week")
    assert [w.label for w in weeks] == ["2026-W45", "2026-W46", "2026-W47", "2026-W48"]
    assert [w.days_with_data for w in weeks] == [0, 1, 0, 0]
    empty = weeks[0]
    assert (empty.mqls, empty.sqls, empty.won, empty.partial) == (0, 0, 0, False)
    assert (empty.mql_to_sql, empty.sql_to_won) == (None, None)
    assert empty.compliance == {"mql_first_contact": None, "sql_follow_up": None}
    assert empty.time_to_first_contact.median is None
    assert empty.breaches_by_owner == {}
    assert weeks[1].time_to_first_contact.median == 60.0
    assert weeks[1].compliance["mql_first_contact"] == 1.0


def test_a_day_with_only_zero_counts_is_not_a_day_with_data() -> None:
    day = D("2026-11-25")
    assert total({day: {"mql": 0}}, {(day, FC): []}, day, day).days_with_data == 0


@pytest.mark.parametrize(
    ("start", "end", "period", "labels"),
    [
        ("2026-11-25", "2026-11-27", "day", ["2026-11-25", "2026-11-26", "2026-11-27"]),
        ("2026-10-30", "2026-12-02", "month", ["2026-10", "2026-11", "2026-12"]),
        ("2026-11-25", "2026-11-25", "week", ["2026-W48"]),
    ],
)
def test_every_period_of_the_range_is_there(
    start: str, end: str, period: str, labels: list[str]
) -> None:
    got = summarize({}, {}, D(start), D(end), period)  # type: ignore[arg-type]
    assert [p.label for p in got] == labels
    assert got[0].start == D(start) and got[-1].end == D(end)


def test_months_sum_to_the_total() -> None:
    start, end = D("2026-10-30"), D("2026-12-02")
    counts = {start + timedelta(days=i): {"mql": 1, "sql": i % 2} for i in range(34)}
    months = summarize(counts, {}, start, end, "month")
    assert [(m.label, m.partial, m.mqls) for m in months] == [
        ("2026-10", True, 2),
        ("2026-11", False, 30),
        ("2026-12", True, 2),
    ]
    t = total(counts, {}, start, end)
    assert (t.label, t.mqls, t.sqls) == ("total", 34, sum(m.sqls for m in months))


def test_a_range_that_ends_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        days_between(D("2026-11-02"), D("2026-11-01"))
    with pytest.raises(ValueError, match="at least one day"):
        aggregate("x", [], {}, {})


# -- known issues in the counters the funnel is built on (streams/core/kpi.py) ---------------
# The worker folds a lead's whole batch and derives the KPI counts from (state before the batch,
# state after it). These pin what the funnel then reports (they were strict xfails until fixed).

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
RULES = parse_rules(
    {
        "mql": {"threshold": 100},
        "engagement": {"demo_request": 100},
        "sla": {"mql_first_contact": "24h", "sql_follow_up": "48h"},
    }
)
ALL_MET = {"budget": True, "authority": True, "need": True, "timeframe": True}
ONLY_NEED = {"budget": False, "authority": False, "need": True, "timeframe": False}


def handed_off() -> LeadState:
    handoff = MqlHandoff(
        handoff_id="ho-1",
        lead_id="lead-1",
        qualified_at=T0,
        score=100,
        fit_score=0,
        engagement_score=100,
        threshold=100,
        rules_version=RULES.version,
        triggering_event_id="e-1",
        reasons=[],
        first_contact_due_at=T0 + 24 * HOUR,
    )
    state = LeadState("lead-1", stage="mql", handoff_id="ho-1", qualified_at=T0)
    return open_first_contact_clock(state, handoff, RULES, T0)


def sales(n: int, kind: str, at: datetime, **extra: object) -> SalesActivity:
    return SalesActivity.model_validate(
        {"activity_id": f"a-{n}", "lead_id": "lead-1", "type": kind, "occurred_at": at, **extra}
    )


def counts_of(batches: list[list[SalesActivity]], now: datetime) -> dict[date, dict[str, int]]:
    """Fold batches of activities as the worker does and sum the KPI counts per day."""
    state = handed_off()
    days: dict[date, Counter[str]] = {T0.date(): Counter(mql=1)}  # the scoring side's count
    for batch in batches:
        before, moved = state, []
        for a in batch:
            state, more = apply_activity(state, a, RULES, now)
            moved += more
        for c in kpi_changes(before, state, moved, RULES)[0]:
            days.setdefault(c.day, Counter())[c.field] += c.amount
    return {d: dict(c) for d, c in days.items()}


def test_a_win_in_a_later_batch_than_its_sql_counts_in_the_cohort() -> None:
    bant = sales(1, "bant_assessed", T0 + HOUR, bant=ALL_MET)
    won = sales(2, "won", T0 + 3 * 24 * HOUR)
    counts = counts_of([[bant], [won]], T0 + 2 * HOUR)
    assert total(counts, {}, T0.date(), T0.date() + timedelta(days=3)).sql_to_won == 1.0


def test_a_win_in_the_same_batch_as_its_sql_counts_in_the_cohort() -> None:
    bant = sales(1, "bant_assessed", T0 + HOUR, bant=ALL_MET)
    won = sales(2, "won", T0 + 3 * 24 * HOUR)
    counts = counts_of([[bant, won]], T0 + 2 * HOUR)
    assert total(counts, {}, T0.date(), T0.date() + timedelta(days=3)).sql_to_won == 1.0


def test_one_mql_that_becomes_sql_twice_converts_once() -> None:
    steps = [
        sales(1, "bant_assessed", T0 + HOUR, bant=ALL_MET),
        sales(2, "bant_assessed", T0 + 2 * HOUR, bant=ONLY_NEED),
        sales(3, "bant_assessed", T0 + 3 * HOUR, bant=ALL_MET),
    ]
    counts = counts_of([[s] for s in steps], T0 + 4 * HOUR)
    assert total(counts, {}, T0.date(), T0.date()).mql_to_sql == 1.0


def test_a_close_after_the_follow_up_deadline_is_a_breach() -> None:
    contact = sales(1, "contacted", T0 + HOUR)
    bant = sales(2, "bant_assessed", T0 + HOUR, bant=ALL_MET)
    lost = sales(3, "lost", T0 + 5 * 24 * HOUR)  # no sales action in the 48 h
    counts = counts_of([[contact, bant], [lost]], T0 + HOUR)
    t = total(counts, {}, T0.date(), T0.date() + timedelta(days=5))
    assert t.sla["sql_follow_up"].compliance == 0.0


# -- per owner and per queue (docs/routing.md, "KPIs") -----------------------------------------


def test_owner_kpis_from_a_routed_handoff_and_its_first_contact() -> None:
    # Routed to sato at 09:00; contact 90 minutes later: met, 5,400 s to first contact.
    state = replace(handed_off(), owner="sato")
    before = state
    state, moved = apply_activity(state, sales(1, "contacted", T0 + 1.5 * HOUR), RULES, T0)
    days = {T0.date(): Counter({"owner_handoffs:sato": 1, "queue_handoffs:inside": 1})}
    for c in kpi_changes(before, state, moved, RULES)[0]:
        days[c.day][c.field] += c.amount
    kpis = total({d: dict(c) for d, c in days.items()}, {}, T0.date(), T0.date())
    assert kpis.by_owner == {
        "sato": OwnerKpis(handoffs=1, met=1, contacted=1, contact_seconds=5400)
    }
    assert kpis.by_owner["sato"].breach_rate == 0.0
    assert kpis.by_owner["sato"].mean_time_to_first_contact == 5400.0
    assert kpis.by_queue == {"inside": 1}


def test_owner_breach_rate_and_mean_time_to_contact_by_hand() -> None:
    p = one_day(
        {
            "owner_handoffs:abe": 4,
            "owner_first_contact:abe:met": 3,
            "owner_first_contact:abe:breached": 1,
            "owner_contacted:abe": 4,  # the breached one was contacted late
            "owner_contact_seconds:abe": 4 * 3600 + 600,
            "owner_handoffs:ito": 2,
        }
    )
    abe, ito = p.by_owner["abe"], p.by_owner["ito"]
    assert (abe.breach_rate, abe.mean_time_to_first_contact) == (0.25, 3750.0)
    assert (ito.handoffs, ito.breach_rate, ito.mean_time_to_first_contact) == (2, None, None)
    assert list(p.by_owner) == ["abe", "ito"]  # most handoffs first


def test_metrics_name_only_owners_the_rules_know() -> None:
    by_owner = {
        "abe": OwnerKpis(handoffs=3),
        "crm-user-1": OwnerKpis(handoffs=1, breached=1),
        "crm-user-2": OwnerKpis(handoffs=2, met=1),
        "-": OwnerKpis(breached=2),
    }
    bounded = bounded_owners(by_owner, frozenset({"abe", "ito"}))
    assert bounded == {
        "abe": OwnerKpis(handoffs=3),
        "other": OwnerKpis(handoffs=3, met=1, breached=1),
        "-": OwnerKpis(breached=2),
    }


def test_a_lead_moved_by_hand_counts_against_the_owner_it_left_and_its_queue() -> None:
    state = replace(handed_off(), owner="sato", queue="inside")
    moved_state, moved = apply_activity(
        state, sales(2, "reassigned", T0 + HOUR, owner="abe"), RULES, T0 + HOUR
    )
    assert moved_state.owner == "abe"
    counts = Counter()
    for c in kpi_changes(state, moved_state, moved, RULES)[0]:
        counts[c.field] += c.amount
    assert counts == {"owner_reassigned_away:sato": 1, "queue_reassigned:inside": 1}
    kpis = total({T0.date(): dict(counts)}, {}, T0.date(), T0.date())
    assert kpis.by_owner["sato"].reassigned_away == 1
    assert kpis.reassigned_by_queue == {"inside": 1}
    assert kpis.mqls == 0  # a reassignment is not a stage change
