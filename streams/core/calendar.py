"""Business hours: SLA clocks that count only working time.

`sla.calendar` in the rules file. Pure like the rest of the core: no clock reads and no I/O;
every instant is passed in. Instants are aware datetimes; results are aware UTC datetimes.

Model: each working day (a `working_days` weekday that is not in `holidays`) has one working
interval, half-open, [opening, closing), with the bounds given as local wall-clock times. The
bounds are converted to UTC one day at a time with zoneinfo, so a DST change on another day never
moves them, and a working interval lasts the real time that elapses between its bounds. A bound
is "the first instant at which the local clock shows that time on that date": the first of two
occurrences when clocks go back, and the instant of the jump when clocks skip over it.

Long durations skip whole weeks at a time: while the zone's UTC offset does not change, a week
holds exactly `len(working_days) * (end - start)` of working time less one working day per
holiday on a working weekday.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

__all__ = ["WEEKDAYS", "BusinessCalendar", "Weekday", "add_time"]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# "add" gives up after this many consecutive days without any working time (about 3 years).
IDLE_LIMIT_DAYS = 3 * 366

_HHMM = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d|24:00")
_ZERO = timedelta(0)
_TICK = timedelta(microseconds=1)
_DAY = timedelta(days=1)
_WEEK = timedelta(days=7)
_MIDNIGHT = time(0)


class BusinessCalendar(BaseModel):
    """Working days and hours in one time zone, with holidays."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = Field(description="IANA time zone name, e.g. 'Asia/Tokyo'.")
    working_days: tuple[Weekday, ...] = Field(
        default=("mon", "tue", "wed", "thu", "fri"),
        min_length=1,
        description="Weekdays with working hours ('mon' ... 'sun').",
    )
    hours: tuple[str, str] = Field(
        default=("09:00", "18:00"),
        description="Local opening and closing time, 'HH:MM'; the closing time may be '24:00'.",
    )
    holidays: tuple[date, ...] = Field(
        default=(), description="Local dates without working time, e.g. 2026-12-31."
    )

    # Everything the walk needs, computed once; one private attribute (pydantic private
    # attributes are slow to read, and the walk reads them in a loop).
    _schedule: _Schedule = PrivateAttr()

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        key = value.strip()
        try:
            ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'Asia/Tokyo',"
                " 'Europe/Berlin' or 'UTC'"
            ) from None
        return key

    @field_validator("working_days", mode="before")
    @classmethod
    def _lowercase_days(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [v.strip().lower() if isinstance(v, str) else v for v in value]
        return value

    @field_validator("working_days")
    @classmethod
    def _distinct_days(cls, value: tuple[Weekday, ...]) -> tuple[Weekday, ...]:
        repeated = sorted({day for day in value if value.count(day) > 1}, key=WEEKDAYS.index)
        if repeated:
            raise ValueError(f"day listed more than once: {', '.join(repeated)}")
        return tuple(sorted(value, key=WEEKDAYS.index))

    @field_validator("hours", mode="before")
    @classmethod
    def _hours_are_text(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, int | float) and not isinstance(item, bool):
                    raise ValueError(
                        f"got the number {item}; quote the times, e.g. ['09:00', '18:00']"
                        " (YAML reads an unquoted 18:00 as the number 1080)"
                    )
        return value

    @field_validator("hours")
    @classmethod
    def _valid_hours(cls, value: tuple[str, str]) -> tuple[str, str]:
        start, end = value[0].strip(), value[1].strip()
        for label, text in (("start", start), ("end", end)):
            if not _HHMM.fullmatch(text):
                raise ValueError(
                    f"{label} {text!r} is not a time 'HH:MM' from 00:00 to 23:59"
                    " (the end may also be 24:00)"
                )
        if start >= end:  # zero-padded HH:MM compares like the time it names
            raise ValueError(
                f"start {start} must be before end {end} (overnight shifts are not supported)"
            )
        return start, end

    @field_validator("holidays")
    @classmethod
    def _sorted_holidays(cls, value: tuple[date, ...]) -> tuple[date, ...]:
        return tuple(sorted(set(value)))

    def model_post_init(self, context: Any, /) -> None:
        start, end = self.hours
        weekdays = frozenset(WEEKDAYS.index(day) for day in self.working_days)
        day_length = timedelta(minutes=_minutes(end) - _minutes(start))
        self._schedule = _Schedule(
            zone_key=self.timezone,
            zone=ZoneInfo(self.timezone),
            opening=time.fromisoformat(start),
            closing=_MIDNIGHT if end == "24:00" else time.fromisoformat(end),
            closes_next_day=end == "24:00",
            weekdays=weekdays,
            holidays=frozenset(self.holidays),
            working_holidays=tuple(d for d in self.holidays if d.weekday() in weekdays),
            day_length=day_length,
            week_length=len(weekdays) * day_length,
        )

    # --- public -------------------------------------------------------------------------------

    def add(self, start: datetime, duration: timedelta) -> datetime:
        """The instant when `duration` of working time has elapsed after `start`.

        `start` must be aware; the result is an aware UTC datetime. If `start` is outside working
        hours the count begins at the next opening. A duration of 0 gives the next working instant
        at or after `start`. A positive duration that runs out exactly at a closing time gives that
        closing instant, not the next opening. Raises ValueError for a naive `start`, a negative
        duration, or a calendar with no working time for about 3 years (IDLE_LIMIT_DAYS) on the way.
        """
        begin = _as_utc(start, "start")
        if duration < _ZERO:
            raise ValueError(f"duration must not be negative (got {duration})")
        try:
            return self._schedule.add(begin, duration)
        except OverflowError:
            raise ValueError(
                f"{duration} of working time after {start.isoformat()} is beyond year 9999"
            ) from None

    def working_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Working time in [start, end); 0 if end <= start. Both must be aware."""
        begin, finish = _as_utc(start, "start"), _as_utc(end, "end")
        if finish <= begin:
            return _ZERO
        try:
            return self._schedule.between(begin, finish)
        except OverflowError:
            raise ValueError("dates beyond the supported range (years 1 to 9999)") from None

    def is_working(self, at: datetime) -> bool:
        """Whether `at` (aware) falls in a working interval (opening included, closing not)."""
        return self._schedule.is_working(_as_utc(at, "at"))


@dataclass(frozen=True, slots=True)
class _Schedule:
    """A calendar's validated settings in the shape the walk uses; instants are UTC."""

    zone_key: str
    zone: ZoneInfo
    opening: time
    closing: time  # 00:00 with closes_next_day for hours ending at 24:00
    closes_next_day: bool
    weekdays: frozenset[int]  # date.weekday() numbers, Monday = 0
    holidays: frozenset[date]
    working_holidays: tuple[date, ...]  # sorted; only those on working weekdays
    day_length: timedelta  # nominal, in wall-clock time
    week_length: timedelta

    def is_working(self, instant: datetime) -> bool:
        day = instant.astimezone(self.zone).date()
        # Normally only `day` can hold `instant`; the next day too where clocks go back over
        # midnight.
        for candidate in (day, day + _DAY):
            interval = self.interval(candidate)
            if interval is not None and interval[0] <= instant < interval[1]:
                return True
        return False

    def add(self, start: datetime, remaining: timedelta) -> datetime:
        first_day = day = start.astimezone(self.zone).date()
        idle, idle_since = 0, day
        while True:
            if day > first_day and remaining > self.week_length:
                max_weeks = (remaining - _TICK) // self.week_length  # leaves remaining > 0
                weeks, worked = self.whole_weeks(day, start, max_weeks, None)
                if weeks:
                    after = day + weeks * _WEEK
                    if worked:
                        if idle == 0:
                            idle_since = day
                        self.check_idle(idle + self.idle_days_from(day), idle_since)
                        remaining -= worked
                        idle = self.idle_days_before(after)
                        idle_since = after - idle * _DAY
                    else:
                        if idle == 0:
                            idle_since = day
                        idle += 7 * weeks
                    day = after
                    self.check_idle(idle, idle_since)
                    continue
            interval = self.interval(day)
            if interval is not None and interval[1] > start:
                opening = max(interval[0], start)
                available = interval[1] - opening
                if remaining <= available:
                    return opening + remaining
                remaining -= available
                idle = 0
            else:
                if idle == 0:
                    idle_since = day
                idle += 1
                self.check_idle(idle, idle_since)
            day += _DAY

    def between(self, start: datetime, end: datetime) -> timedelta:
        first_day = day = start.astimezone(self.zone).date()
        last_day = end.astimezone(self.zone).date() + _DAY  # + 1: clocks going back at midnight
        total = _ZERO
        while day <= last_day:
            if day > first_day:
                weeks, worked = self.whole_weeks(day, start, (last_day - day).days // 7, end)
                if weeks:
                    total += worked
                    day += weeks * _WEEK
                    continue
            interval = self.interval(day)
            if interval is not None:
                lo, hi = max(interval[0], start), min(interval[1], end)
                if hi > lo:
                    total += hi - lo
            day += _DAY
        return total

    def check_idle(self, idle: int, since: date) -> None:
        if idle > IDLE_LIMIT_DAYS:
            raise ValueError(
                f"the business calendar ({self.zone_key}) has no working time in the"
                f" {IDLE_LIMIT_DAYS} days from {since.isoformat()}: check sla.calendar"
                " holidays, working_days and hours"
            )

    def idle_days_from(self, day: date) -> int:
        """Days without working time from `day` on (there is a working day somewhere after)."""
        count = 0
        while day.weekday() not in self.weekdays or day in self.holidays:
            count += 1
            day += _DAY
        return count

    def idle_days_before(self, day: date) -> int:
        """Days without working time just before `day` (there is a working day somewhere before)."""
        count, previous = 0, day - _DAY
        while previous.weekday() not in self.weekdays or previous in self.holidays:
            count += 1
            previous -= _DAY
        return count

    def whole_weeks(
        self, day: date, not_before: datetime, max_weeks: int, until: datetime | None
    ) -> tuple[int, timedelta]:
        """Whole weeks from local midnight of `day` that can be counted without walking them.

        Returns (weeks, their working time), at most `max_weeks` weeks, ending by `until` if
        given, all before the zone's next UTC offset change. (0, 0) when none qualify.
        """
        if max_weeks < 1:
            return 0, _ZERO
        midnight = datetime.combine(day, _MIDNIGHT)
        block_start = self.first_instant(midnight)
        if block_start < not_before:  # only where clocks went back over midnight
            return 0, _ZERO
        if _wall(block_start, self.zone) != midnight:  # clocks skip midnight: walk this day
            return 0, _ZERO
        if until is not None:
            max_weeks = min(max_weeks, (until - block_start) // _WEEK)
            if max_weeks < 1:
                return 0, _ZERO
        change = _next_offset_change(self.zone_key, block_start, block_start + max_weeks * _WEEK)
        weeks = (
            max_weeks if change is None else min(max_weeks, (change - block_start - _TICK) // _WEEK)
        )
        if weeks < 1:
            return 0, _ZERO
        # With one UTC offset throughout, every working day holds exactly the nominal hours.
        after = day + weeks * _WEEK
        lost = bisect_left(self.working_holidays, after) - bisect_left(self.working_holidays, day)
        return weeks, weeks * self.week_length - lost * self.day_length

    def interval(self, day: date) -> tuple[datetime, datetime] | None:
        """The working interval of a local date in UTC, or None if it has none."""
        if day.weekday() not in self.weekdays or day in self.holidays:
            return None
        opening = self.first_instant(datetime.combine(day, self.opening))
        closing_day = day + _DAY if self.closes_next_day else day
        closing = self.first_instant(datetime.combine(closing_day, self.closing))
        return (opening, closing) if closing > opening else None

    def first_instant(self, wall: datetime) -> datetime:
        """The first UTC instant at which the local clock shows `wall` (naive) or later."""
        zone = self.zone
        guess = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: first of two occurrences
        if guess.astimezone(zone).replace(tzinfo=None) == wall:
            return guess
        # Clocks jump over `wall`: the answer is the instant of the jump, between the readings of
        # `wall` with the offsets before and after it. tzdata changes offsets on whole seconds.
        other = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
        lo, hi = min(guess, other), max(guess, other)
        if _wall(lo, zone) >= wall:
            return lo
        while (step := int((hi - lo).total_seconds())) > 1:
            mid = lo + timedelta(seconds=step // 2)
            if _wall(mid, zone) >= wall:
                hi = mid
            else:
                lo = mid
        return hi


def add_time(calendar: BusinessCalendar | None, start: datetime, duration: timedelta) -> datetime:
    """`start` plus `duration`: working time under a calendar, elapsed time without one.

    With no calendar (24/7) the result is `start + duration` of real elapsed time (computed in
    UTC, so a DST change in start's zone does not shift it), in start's own tzinfo. With a
    calendar it is `calendar.add(start, duration)`, in UTC. `start` must be aware either way.
    """
    if calendar is not None:
        return calendar.add(start, duration)
    _as_utc(start, "start")
    if duration < _ZERO:
        raise ValueError(f"duration must not be negative (got {duration})")
    return (start.astimezone(UTC) + duration).astimezone(start.tzinfo)


def _as_utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{name} must be a timezone-aware datetime (got naive {value.isoformat()})"
        )
    return value.astimezone(UTC)


def _wall(instant: datetime, zone: ZoneInfo) -> datetime:
    return instant.astimezone(zone).replace(tzinfo=None)


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def _next_offset_change(zone_key: str, after: datetime, until: datetime) -> datetime | None:
    """The first instant in (after, until] at which the zone's UTC offset changes, or None."""
    for year in range(after.year, until.year + 1):
        changes = _offset_changes(zone_key, year)
        index = bisect_right(changes, after)
        if index < len(changes):
            return changes[index] if changes[index] <= until else None
    return None


@lru_cache(maxsize=2048)
def _offset_changes(zone_key: str, year: int) -> tuple[datetime, ...]:
    """Instants in (Jan 1, Jan 1 of the next year] UTC at which the zone's UTC offset changes.

    Probes the offset once a day and bisects to the second where it differs. That finds every
    change as long as no two are less than a day apart; in tzdata 2026 the closest pair is about
    four days apart (Africa/Freetown, 1939). A memo of a pure function: no I/O, no clock.
    """
    zone = ZoneInfo(zone_key)
    probe = datetime(year, 1, 1, tzinfo=UTC)
    offset = probe.astimezone(zone).utcoffset()
    changes: list[datetime] = []
    for _ in range(366 if _is_leap(year) else 365):
        following = probe + _DAY
        new_offset = following.astimezone(zone).utcoffset()
        if new_offset != offset:
            lo, hi = probe, following
            while (step := int((hi - lo).total_seconds())) > 1:
                mid = lo + timedelta(seconds=step // 2)
                if mid.astimezone(zone).utcoffset() == offset:
                    lo = mid
                else:
                    hi = mid
            changes.append(hi)
            offset = new_offset
        probe = following
    return tuple(changes)


def _is_leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
