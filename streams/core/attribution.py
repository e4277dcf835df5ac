"""Source and campaign attribution: which touches get the credit for a lead's conversions.

A *touch* is a counted engagement event of a type the rules score with positive points (the
daily cap may have let it add nothing: it still touched the lead), with its channel (`source`,
or `properties.utm_source` when present) and its campaign (`properties.campaign`, else
`properties.utm_campaign`). A lead collects touches from its previous qualification on; when it
becomes an MQL, the touches up to and including the event that made it one are frozen as that
qualification's touch set (the triggering event last, the rest in event-time order), and the
next qualification starts an empty set.

Each conversion of a qualification (mql, sql, opportunity, won, and the amounts of the
opportunity and the win) is credited across its touch set by a model (`weights`). Credits are
exact: a conversion is CREDIT_UNITS units, amounts are integer minor units, and `apportion`
splits an integer total by largest remainder, so the parts always add up to the whole. Pure:
no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Any, Literal, NamedTuple

Model = Literal["first_touch", "last_touch", "linear", "position_based"]
Dimension = Literal["source", "campaign"]
Conversion = Literal["mql", "sql", "opportunity", "won"]

MODELS: tuple[Model, ...] = ("first_touch", "last_touch", "linear", "position_based")
DIMENSIONS: tuple[Dimension, ...] = ("source", "campaign")
CONVERSIONS: tuple[Conversion, ...] = ("mql", "sql", "opportunity", "won")
# Amounts: the opportunity's (pipeline) and the win's, per currency.
AMOUNTS = {"opportunity": "pipeline", "won": "revenue"}

# One conversion is this many credit units: integers add up exactly in Redis and in reports.
CREDIT_UNITS = 1_000_000
# A touch without a channel or campaign is credited to this value (never dropped).
NONE = "(none)"
# Counter fields: attr:<model>:<dimension>:<measure>:<value>; the value comes last, so it may
# hold any character. A measure is a conversion, or pipeline.<CUR> / revenue.<CUR>.
PREFIX = "attr:"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(at: datetime) -> int:
    """Microseconds since the Unix epoch (UTC): how a touch keeps its time."""
    return (at - _EPOCH) // _MICROSECOND


class Touch(NamedTuple):
    """One touch of a lead: when (microseconds since the Unix epoch, UTC), through which
    channel, for which campaign. An integer time in a named tuple, because a lead carries up
    to `max_touches` of them through every read and write of its state."""

    us: int
    source: str
    campaign: str

    @classmethod
    def at_time(cls, at: datetime, source: str, campaign: str) -> Touch:
        return cls(micros(at), source, campaign)

    @property
    def at(self) -> datetime:
        return _EPOCH + timedelta(microseconds=self.us)

    def value(self, dimension: Dimension) -> str:
        return self.source if dimension == "source" else self.campaign


@dataclass(frozen=True, slots=True)
class Deal:
    """An opportunity or a win of the lead's current qualification; the amount (if sales gave
    one) in minor units of the currency (JPY: yen, USD: cents)."""

    at: datetime
    amount: int | None = None
    currency: str | None = None


def touch_of(at: datetime | int, source: str | None, properties: Mapping[str, Any] | None) -> Touch:
    """The touch of an engagement event at `at` (a datetime, or microseconds since the epoch);
    see the module docstring for where its values come from."""
    campaign = None
    if properties:
        utm_source = properties.get("utm_source")
        if isinstance(utm_source, str) and utm_source.strip():
            source = utm_source
        campaign = properties.get("campaign")
        if not (isinstance(campaign, str) and campaign.strip()):
            campaign = properties.get("utm_campaign")
        if not (isinstance(campaign, str) and campaign.strip()):
            campaign = None
    return Touch(
        at if isinstance(at, int) else micros(at),
        source.strip() if source and source.strip() else NONE,
        campaign.strip() if campaign else NONE,
    )


def add_touch(touches: Sequence[Touch], touch: Touch, limit: int) -> tuple[Touch, ...]:
    """The open touches with one more (see `insert_touch`)."""
    working = list(touches)
    insert_touch(working, touch, limit)
    return tuple(working)


def insert_touch(touches: list[Touch], touch: Touch, limit: int) -> None:
    """Put a touch in its place among the open touches, kept in event-time order (a late event
    takes its place by time; equal times keep arrival order). Over `limit`, the oldest touch
    after the first is forgotten: the first touch always stays."""
    us = touch.us
    i = len(touches)
    while i > 0 and touches[i - 1].us > us:
        i -= 1
    touches.insert(i, touch)
    if len(touches) > limit:
        del touches[1]


def qualification_touches(
    open_touches: Sequence[Touch], trigger: Touch | None, limit: int
) -> tuple[Touch, ...]:
    """The touch set frozen at an MQL: the open touches, the triggering event's touch last (it
    made the lead an MQL, whatever its time), bounded like the open ones."""
    if trigger is None:
        return _bounded(tuple(open_touches), limit)
    rest = list(open_touches)
    if trigger in rest:
        rest.remove(trigger)
    return _bounded((*rest, trigger), limit)


def _bounded(touches: tuple[Touch, ...], limit: int) -> tuple[Touch, ...]:
    """The first touch and the newest `limit - 1`."""
    if len(touches) <= limit:
        return touches
    return (touches[0], *touches[len(touches) - limit + 1 :])


def weights(count: int, model: Model) -> list[Fraction]:
    """Each touch's share of one conversion under `model`; exact, and they sum to 1.

    first_touch: all to the first; last_touch: all to the last (the MQL-triggering touch);
    linear: equal shares; position_based: 40 % first, 40 % last, 20 % split evenly over the
    touches in between (one touch: 100 %; two: 50/50).
    """
    if count <= 0:
        return []
    numerators, denominator = _integer_weights(count, model)
    return [Fraction(n, denominator) for n in numerators]


def shares(touches: Sequence[Touch], model: Model, dimension: Dimension) -> dict[str, Fraction]:
    """Each value's exact share of one conversion (values in order of their first touch). A
    conversion without touches (a handoff from elsewhere) goes all to NONE."""
    numerators, denominator = _integer_shares(touches, model, dimension)
    return {value: Fraction(n, denominator) for value, n in numerators.items()}


def _integer_weights(count: int, model: Model) -> tuple[list[int], int]:
    """`weights` as integer numerators over one denominator (the worker's hot path: no
    Fraction arithmetic)."""
    if model == "first_touch":
        return [1] + [0] * (count - 1), 1
    if model == "last_touch":
        return [0] * (count - 1) + [1], 1
    if model == "linear" or count <= 2:
        return [1] * count, count
    if model == "position_based":
        # 2/5 = 2(n-2) / 5(n-2) at each end, 1/5(n-2) for each of the n-2 in between
        ends = 2 * (count - 2)
        return [ends] + [1] * (count - 2) + [ends], 5 * (count - 2)
    raise ValueError(f"unknown attribution model {model!r}; use one of {', '.join(MODELS)}")


def _integer_shares(
    touches: Sequence[Touch], model: Model, dimension: Dimension
) -> tuple[dict[str, int], int]:
    if not touches:
        return {NONE: 1}, 1
    numerators, denominator = _integer_weights(len(touches), model)
    result: dict[str, int] = {}
    for touch, n in zip(touches, numerators, strict=True):
        value = touch.source if dimension == "source" else touch.campaign
        result[value] = result.get(value, 0) + n
    return result, denominator


def apportion(total: int, parts: Mapping[str, Fraction]) -> dict[str, int]:
    """`total` split by the exact `parts` (which sum to 1) into integers that sum to `total`:
    each gets the floor of its share, and the units left over go to the largest remainders
    (ties: in the order given). Zero shares get nothing."""
    floors: dict[str, int] = {}
    remainders: list[tuple[Fraction, int, str]] = []
    for position, (key, part) in enumerate(parts.items()):
        exact = part * total
        floors[key] = exact.numerator // exact.denominator
        remainders.append((exact - floors[key], position, key))
    left = total - sum(floors.values())
    for _, _, key in sorted(remainders, key=lambda r: (-r[0], r[1]))[:left]:
        floors[key] += 1
    return {key: n for key, n in floors.items() if n}


def _apportion_int(total: int, numerators: Mapping[str, int], denominator: int) -> dict[str, int]:
    """`apportion` for shares numerator / denominator, in integers only (the same result)."""
    floors: dict[str, int] = {}
    remainders: list[tuple[int, int, str]] = []
    for position, (key, n) in enumerate(numerators.items()):
        whole, rest = divmod(total * n, denominator)
        floors[key] = whole
        remainders.append((-rest, position, key))
    left = total - sum(floors.values())
    if left:
        for _, _, key in sorted(remainders)[:left]:
            floors[key] += 1
    return {key: n for key, n in floors.items() if n}


def field_name(model: Model, dimension: Dimension, measure: str, value: str) -> str:
    return f"{PREFIX}{model}:{dimension}:{measure}:{value}"


def credit(
    touches: Sequence[Touch], conversion: Conversion, deal: Deal | None = None
) -> dict[str, int]:
    """The counter increments of one conversion: for every model and dimension, the credit
    units of each value, and (opportunity, won) the amount's minor units of each value."""
    fields: dict[str, int] = {}
    measure = None
    if deal is not None and deal.amount and deal.currency and conversion in AMOUNTS:
        measure, amount = f"{AMOUNTS[conversion]}.{deal.currency}", deal.amount
    for model in MODELS:
        for dimension in DIMENSIONS:
            numerators, denominator = _integer_shares(touches, model, dimension)
            for value, units in _apportion_int(CREDIT_UNITS, numerators, denominator).items():
                fields[field_name(model, dimension, conversion, value)] = units
            if measure is not None:
                for value, minor in _apportion_int(amount, numerators, denominator).items():
                    fields[field_name(model, dimension, measure, value)] = minor
    return fields


# -- reading the counters back (reports) --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ValueFigures:
    """One source's (or campaign's) credited conversions and amounts over a range.

    Counts are in conversions (credit units / CREDIT_UNITS); amounts in minor units per currency.
    """

    value: str
    mqls: Fraction
    sqls: Fraction
    opportunities: Fraction
    won: Fraction
    pipeline: dict[str, int]
    revenue: dict[str, int]

    @property
    def mql_to_sql(self) -> Fraction | None:
        return self.sqls / self.mqls if self.mqls else None

    @property
    def sql_to_won(self) -> Fraction | None:
        return self.won / self.sqls if self.sqls else None


def figures(
    counts_by_day: Mapping[date, Mapping[str, int]],
    days: Sequence[date],
    model: Model,
    dimension: Dimension,
) -> list[ValueFigures]:
    """Every value's credited figures over `days`, most won revenue first, then SQLs, MQLs."""
    head = f"{PREFIX}{model}:{dimension}:"
    units: dict[str, dict[str, int]] = {}
    for day in days:
        for name, n in (counts_by_day.get(day) or {}).items():
            if not name.startswith(head) or not n:
                continue
            measure, value = name[len(head) :].split(":", 1)
            per = units.setdefault(value, {})
            per[measure] = per.get(measure, 0) + n
    table = []
    for value, per in units.items():

        def amounts(kind: str, per: dict[str, int] = per) -> dict[str, int]:
            return {
                m.split(".", 1)[1]: n
                for m, n in sorted(per.items())
                if m.startswith(f"{kind}.") and n
            }

        table.append(
            ValueFigures(
                value=value,
                mqls=Fraction(per.get("mql", 0), CREDIT_UNITS),
                sqls=Fraction(per.get("sql", 0), CREDIT_UNITS),
                opportunities=Fraction(per.get("opportunity", 0), CREDIT_UNITS),
                won=Fraction(per.get("won", 0), CREDIT_UNITS),
                pipeline=amounts("pipeline"),
                revenue=amounts("revenue"),
            )
        )
    return sorted(
        table,
        key=lambda f: (-sum(f.revenue.values()), -f.sqls, -f.mqls, f.value),
    )
