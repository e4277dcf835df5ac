"""Business-hours calendar: SLA clocks that count only working time.

Expectations are worked out by hand in comments. Unless a test says otherwise the calendar is
Asia/Tokyo (no DST), Mon-Fri 09:00-18:00, and the dates are in June 2026:
Fri 5, Sat 6, Sun 7, Mon 8, Tue 9, Wed 10, Thu 11, Fri 12.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from functools import reduce
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from streams.core.calendar import IDLE_LIMIT_DAYS, WEEKDAYS, BusinessCalendar, add_time

pytestmark = pytest.mark.unit

EXAMPLES = settings(max_examples=200, deadline=None)

JST = ZoneInfo("Asia/Tokyo")
BERLIN = ZoneInfo("Europe/Berlin")
TOKYO = BusinessCalendar(timezone="Asia/Tokyo")
H = timedelta(hours=1)
M = timedelta(minutes=1)


def jst(day: int, hour: int, minute: int = 0, month: int = 6) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=JST)


def berlin(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=BERLIN)


def utc(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def assert_utc(value: datetime) -> None:
    assert value.tzinfo is UTC


# --- add: the table ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "duration", "expected"),
    [
        # Fri 17-18 = 1 h (23 left), Mon 9 h (14), Tue 9 h (5), Wed 09:00 + 5 h = Wed 14:00.
        pytest.param(jst(5, 17), 24 * H, jst(10, 14), id="fri-17h+24h"),
        # After close: Mon 9 h (15 left), Tue 9 h (6), Wed 09:00 + 6 h = Wed 15:00.
        pytest.param(jst(5, 19), 24 * H, jst(10, 15), id="fri-evening+24h"),
        # Exactly at closing: nothing left on Friday, same as after close.
        pytest.param(jst(5, 18), 24 * H, jst(10, 15), id="fri-at-closing+24h"),
        # Weekend: the count starts Mon 09:00, as above -> Wed 15:00.
        pytest.param(jst(6, 11), 24 * H, jst(10, 15), id="saturday+24h"),
        pytest.param(jst(7, 23, 59), H, jst(8, 10), id="sunday-night+1h"),
        # At opening: Mon 09:00 + 9 h is all of Monday, ending at the closing instant.
        pytest.param(jst(8, 9), 9 * H, jst(8, 18), id="at-opening+9h"),
        pytest.param(jst(8, 8, 59), M, jst(8, 9, 1), id="before-opening+1m"),
        # At closing Mon 18:00: nothing left on Monday; Tue 09:00 + 1 h.
        pytest.param(jst(8, 18), H, jst(9, 10), id="at-closing+1h"),
        # Runs out exactly at Friday's close: the closing instant, not Monday's opening.
        pytest.param(jst(5, 17), H, jst(5, 18), id="ends-at-closing"),
        # One minute more spills into Monday.
        pytest.param(jst(5, 17), H + M, jst(8, 9, 1), id="one-minute-past-closing"),
        # Fri 17:30-18:00 = 30 m, then Mon 09:00 + 60 m.
        pytest.param(jst(5, 17, 30), 90 * M, jst(8, 10), id="fri-17:30+90m"),
        # Thu Jun 4 12-18 = 6 h (42 left), Fri 9 (33), Mon 9 (24), Tue 9 (15), Wed 9 (6),
        # Thu 09:00 + 6 h = Thu 15:00.
        pytest.param(jst(4, 12), 48 * H, jst(11, 15), id="thu-noon+48h"),
        # A full week is 5 x 9 = 45 h: Mon 09:00 + 48 h = next Mon 09:00 + 3 h.
        pytest.param(jst(8, 9), 48 * H, jst(15, 12), id="mon-opening+48h"),
        # Zero duration: the first working instant at or after start.
        pytest.param(jst(6, 11), timedelta(0), jst(8, 9), id="zero-on-saturday"),
        pytest.param(jst(9, 11, 23), timedelta(0), jst(9, 11, 23), id="zero-in-hours"),
        pytest.param(jst(8, 9), timedelta(0), jst(8, 9), id="zero-at-opening"),
        pytest.param(jst(8, 18), timedelta(0), jst(9, 9), id="zero-at-closing"),
        pytest.param(jst(5, 18), timedelta(0), jst(8, 9), id="zero-at-friday-closing"),
    ],
)
def test_add(start: datetime, duration: timedelta, expected: datetime) -> None:
    due = TOKYO.add(start, duration)
    assert due == expected
    assert_utc(due)


def test_add_accepts_any_aware_start_and_returns_utc() -> None:
    # Fri 17:00 JST is 08:00 UTC and 04:00 at UTC+4.
    for start in (jst(5, 17), utc(6, 5, 8), datetime(2026, 6, 5, 12, tzinfo=timezone(4 * H))):
        due = TOKYO.add(start, 24 * H)
        assert due == jst(10, 14)
        assert due == utc(6, 10, 5)  # Wed 14:00 JST
        assert_utc(due)


def test_holiday_monday_pushes_to_tuesday() -> None:
    calendar = BusinessCalendar(timezone="Asia/Tokyo", holidays=(date(2026, 6, 8),))
    # Fri 1 h (23 left), Mon is a holiday, Tue 9 (14), Wed 9 (5), Thu 09:00 + 5 h = Thu 14:00.
    assert calendar.add(jst(5, 17), 24 * H) == jst(11, 14)
    # A handoff on the holiday itself starts counting on Tuesday.
    assert calendar.add(jst(8, 10), H) == jst(9, 10)
    assert not calendar.is_working(jst(8, 10))


def test_a_week_of_holidays_and_custom_days_and_hours() -> None:
    # Mon-Sat 10:00-16:30 (6.5 h), with Wed Jun 10 to Fri Jun 12 off.
    calendar = BusinessCalendar(
        timezone="Asia/Tokyo",
        working_days=("mon", "tue", "wed", "thu", "fri", "sat"),
        hours=("10:00", "16:30"),
        holidays=(date(2026, 6, 10), date(2026, 6, 11), date(2026, 6, 12)),
    )
    # Tue Jun 9 16:00-16:30 = 0.5 h (19.5 left), Sat 13 6.5 h (13), Mon 15 6.5 h (6.5),
    # Tue 16 6.5 h -> ends exactly at Tue 16 16:30.
    assert calendar.add(jst(9, 16), 20 * H) == jst(16, 16, 30)


# --- working_time_between and is_working --------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        pytest.param(jst(5, 17), jst(10, 14), 24 * H, id="inverse-of-the-first-add-case"),
        pytest.param(jst(5, 12), jst(5, 12), timedelta(0), id="empty"),
        pytest.param(jst(10, 12), jst(8, 12), timedelta(0), id="end-before-start"),
        pytest.param(jst(6, 0), jst(8, 0), timedelta(0), id="weekend"),
        pytest.param(jst(8, 8), jst(8, 19), 9 * H, id="whole-monday"),
        # Mon 12-18 = 6 h, Tue 09:00-10:30 = 1.5 h.
        pytest.param(jst(8, 12), jst(9, 10, 30), 7.5 * H, id="overnight"),
        # Fri 9 h + Mon-Thu 4 x 9 h.
        pytest.param(jst(5, 0), jst(12, 0), 45 * H, id="one-week"),
        # 52 weeks of 45 h: Fri Jun 5 2026 to Fri Jun 4 2027.
        pytest.param(
            jst(5, 0), datetime(2027, 6, 4, tzinfo=JST), 52 * 45 * H, id="fifty-two-weeks"
        ),
    ],
)
def test_working_time_between(start: datetime, end: datetime, expected: timedelta) -> None:
    assert TOKYO.working_time_between(start, end) == expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (jst(8, 9), True),  # opening is working
        (jst(8, 17, 59) + timedelta(seconds=59, microseconds=999999), True),
        (jst(8, 18), False),  # closing is not
        (jst(8, 8, 59), False),
        (jst(6, 12), False),  # Saturday
        (utc(6, 8, 0), True),  # Mon 09:00 JST
    ],
)
def test_is_working(at: datetime, expected: bool) -> None:
    assert TOKYO.is_working(at) is expected


# --- DST (Europe/Berlin: clocks go forward Sun 29 Mar 2026 02:00, back Sun 25 Oct 03:00) ------

BERLIN_OFFICE = BusinessCalendar(timezone="Europe/Berlin")


def test_spring_forward_on_saturday_night_does_not_move_monday_opening() -> None:
    # Fri 27 Mar 17:00 CET (16:00 UTC) + 2 h: Fri 17-18 = 1 h, Mon 30 Mar 09:00 CEST + 1 h.
    due = BERLIN_OFFICE.add(berlin(3, 27, 17), 2 * H)
    assert due == berlin(3, 30, 10)
    assert due == utc(3, 30, 8)  # CEST is UTC+2; a naive UTC shift would say 09:00 UTC
    assert BERLIN_OFFICE.add(berlin(3, 28, 12), timedelta(0)) == utc(3, 30, 7)  # Mon 09:00 CEST


def test_fall_back_on_saturday_night_does_not_move_monday_opening() -> None:
    # Fri 23 Oct 17:00 CEST + 2 h: Fri 1 h, Mon 26 Oct 09:00 CET + 1 h = 10:00 CET = 09:00 UTC.
    due = BERLIN_OFFICE.add(berlin(10, 23, 17), 2 * H)
    assert due == berlin(10, 26, 10)
    assert due == utc(10, 26, 9)


@pytest.mark.parametrize(("month", "day"), [(3, 27), (3, 30), (10, 23), (10, 26)])
def test_days_around_dst_changes_have_exactly_nine_hours(month: int, day: int) -> None:
    start = berlin(month, day, 0)
    assert BERLIN_OFFICE.working_time_between(start, start + timedelta(days=1)) == 9 * H


def test_working_time_across_dst_weekends() -> None:
    # Fri 09-18 and Mon 09-18 = 18 h, whatever the clocks did on Sunday.
    assert BERLIN_OFFICE.working_time_between(berlin(3, 27, 9), berlin(3, 30, 18)) == 18 * H
    assert BERLIN_OFFICE.working_time_between(berlin(10, 23, 9), berlin(10, 26, 18)) == 18 * H
    # 45 h from Fri 27 Mar 09:00 CET: Fri 9 h + Mon-Thu 4 x 9 h = 45 h, ending at the close of
    # Thu 2 Apr, 18:00 CEST = 16:00 UTC.
    assert BERLIN_OFFICE.add(berlin(3, 27, 9), 45 * H) == utc(4, 2, 16)


ROUND_THE_CLOCK_BERLIN = BusinessCalendar(
    timezone="Europe/Berlin", working_days=WEEKDAYS, hours=("00:00", "24:00")
)


def test_a_day_with_a_dst_change_inside_working_hours_counts_real_time() -> None:
    calendar = ROUND_THE_CLOCK_BERLIN
    # Sat 28 Mar has 24 h, Sun 29 Mar only 23 h; Sat 24 Oct 24 h, Sun 25 Oct 25 h.
    assert calendar.working_time_between(berlin(3, 28, 0), berlin(3, 30, 0)) == 47 * H
    assert calendar.working_time_between(berlin(10, 24, 0), berlin(10, 26, 0)) == 49 * H
    # 24 h of working time from Sun 29 Mar 00:00 CET: the 23 h Sunday, then 1 h of Monday.
    assert calendar.add(berlin(3, 29, 0), 24 * H) == berlin(3, 30, 1)


def test_an_opening_time_the_clocks_skip_opens_at_the_jump() -> None:
    # 02:30 does not exist on 29 Mar (02:00 CET -> 03:00 CEST at 01:00 UTC): the day opens at
    # the jump, 01:00 UTC, and closes at 05:00 CEST = 03:00 UTC: 2 h instead of 2.5 h.
    calendar = BusinessCalendar(
        timezone="Europe/Berlin", working_days=WEEKDAYS, hours=("02:30", "05:00")
    )
    assert calendar.working_time_between(berlin(3, 29, 0), berlin(3, 30, 0)) == 2 * H
    assert calendar.is_working(utc(3, 29, 1))
    assert not calendar.is_working(utc(3, 29, 1) - timedelta(microseconds=1))
    assert calendar.add(berlin(3, 29, 0), timedelta(0)) == utc(3, 29, 1)


def test_an_opening_time_the_clocks_repeat_opens_at_its_first_occurrence() -> None:
    # 02:30 happens twice on 25 Oct (00:30 UTC in CEST, 01:30 UTC in CET): the first one.
    # 04:00 CET = 03:00 UTC, so the day has 2.5 h instead of 1.5 h.
    calendar = BusinessCalendar(
        timezone="Europe/Berlin", working_days=WEEKDAYS, hours=("02:30", "04:00")
    )
    assert calendar.add(berlin(10, 25, 0), timedelta(0)) == utc(10, 25, 0, 30)
    assert calendar.working_time_between(berlin(10, 25, 0), berlin(10, 26, 0)) == 2.5 * H


SANTIAGO = ZoneInfo("America/Santiago")


def test_clocks_skipping_midnight() -> None:
    # Santiago, Sun 6 Sep 2026: 00:00 -04 becomes 01:00 -03 (04:00 UTC). 00:30 does not exist,
    # so the day opens at 01:00 -03 = 04:00 UTC and closes at 02:30 -03: 1.5 h; Sat 5 has 2 h.
    calendar = BusinessCalendar(
        timezone="America/Santiago", working_days=WEEKDAYS, hours=("00:30", "02:30")
    )
    saturday = datetime(2026, 9, 5, tzinfo=SANTIAGO)
    assert calendar.working_time_between(saturday, saturday + timedelta(days=2)) == 3.5 * H
    assert calendar.add(datetime(2026, 9, 6, tzinfo=SANTIAGO), timedelta(0)) == utc(9, 6, 4)
    # 20 h from Sat 5 Sep 00:00: Sat 2 h, Sun 1.5 h, Mon 7 to Sun 13 7 x 2 h = 14 h (17.5),
    # Mon 14 2 h (19.5), Tue 15 00:30 -03 + 0.5 h = 01:00 -03 = 04:00 UTC. (A week counted whole
    # from Sunday 6 would wrongly hold 14 h.)
    assert calendar.add(saturday, 20 * H) == utc(9, 15, 4)
    stepped = reduce(lambda at, _: calendar.add(at, H), range(20), saturday)
    assert stepped == utc(9, 15, 4)


def test_clocks_going_back_over_midnight() -> None:
    # Santiago, Sun 5 Apr 2026 00:00 -03 (03:00 UTC) becomes Sat 4 Apr 23:00 -04: Saturday's
    # 23:00-24:00 happens twice and both count: 02:00 to 04:00 UTC. Sunday has its 1 h.
    calendar = BusinessCalendar(
        timezone="America/Santiago", working_days=WEEKDAYS, hours=("23:00", "24:00")
    )
    saturday = datetime(2026, 4, 4, tzinfo=SANTIAGO)
    assert calendar.working_time_between(saturday, saturday + timedelta(days=2)) == 3 * H
    assert calendar.add(saturday, timedelta(0)) == utc(4, 5, 2)
    assert calendar.add(saturday, 2 * H) == utc(4, 5, 4)
    assert calendar.is_working(utc(4, 5, 3, 30))  # Sat 23:30 -04, the second time round


# --- end-at-closing and additivity --------------------------------------------------------------


def test_ending_at_closing_then_adding_zero_moves_to_the_next_opening() -> None:
    # The documented exception to add(add(s, d1), d2) == add(s, d1 + d2): d2 == 0 after a
    # duration that ended at a closing instant (closing is not a working instant).
    friday_close = TOKYO.add(jst(5, 17), H)
    assert friday_close == jst(5, 18)
    assert TOKYO.add(friday_close, timedelta(0)) == jst(8, 9)
    assert TOKYO.add(friday_close, M) == TOKYO.add(jst(5, 17), H + M) == jst(8, 9, 1)


# --- long durations and calendars without working time ------------------------------------------


def test_ten_thousand_hours_terminates_with_the_right_answer() -> None:
    # 10,000 h = 1111 working days of 9 h + 1 h. From Mon 8 Jun 2026 09:00: 1111 days is 222
    # weeks + 1 day, i.e. through Mon 9 Sep 2030 (8 Jun 2026 + 222 weeks) 18:00; then Tue 10:00.
    assert TOKYO.add(jst(8, 9), 10_000 * H) == datetime(2030, 9, 10, 10, tzinfo=JST)
    due = BERLIN_OFFICE.add(berlin(3, 27, 17), 10_000 * H)
    assert BERLIN_OFFICE.working_time_between(berlin(3, 27, 17), due) == 10_000 * H
    # The same in 40 h steps (each shorter than a 45 h week, so no week is skipped).
    stepped = reduce(lambda at, _: BERLIN_OFFICE.add(at, 40 * H), range(250), berlin(3, 27, 17))
    assert stepped == due


def test_long_holiday_runs_are_crossed() -> None:
    # Every day from Sat 6 Jun 2026 to Mon 5 Jun 2028 (731 days) is a holiday.
    run = tuple(date(2026, 6, 6) + timedelta(days=i) for i in range(731))
    calendar = BusinessCalendar(timezone="Asia/Tokyo", holidays=run)
    # Fri 17-18 = 1 h, then the first working day after the run, Tue 6 Jun 2028, 09:00 + 1 h.
    assert calendar.add(jst(5, 17), 2 * H) == datetime(2028, 6, 6, 10, tzinfo=JST)
    # Long enough for whole weeks to be skipped: Fri 1 h, then 45 h = Tue 6 to Mon 12 Jun 2028
    # 18:00 (a full week of working days), then 1 h -> Tue 13 Jun 10:00.
    assert calendar.add(jst(5, 17), 47 * H) == datetime(2028, 6, 13, 10, tzinfo=JST)


def test_no_working_time_for_years_is_an_error() -> None:
    run = tuple(date(2026, 6, 6) + timedelta(days=i) for i in range(IDLE_LIMIT_DAYS + 10))
    calendar = BusinessCalendar(timezone="Asia/Tokyo", holidays=run)
    with pytest.raises(ValueError, match="no working time"):
        calendar.add(jst(5, 17), 2 * H)
    with pytest.raises(ValueError, match="no working time"):
        calendar.add(jst(5, 17), 500 * H)  # whole-week skipping on the way
    # Nothing to find is not an error for working_time_between.
    assert calendar.working_time_between(jst(6, 0), jst(6, 0) + timedelta(days=900)) == timedelta(0)


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field", "fragment"),
    [
        ({"timezone": "Mars/Olympus_Mons"}, "timezone", "Mars/Olympus_Mons"),
        ({"timezone": ""}, "timezone", "unknown time zone"),
        ({"timezone": "Europe"}, "timezone", "unknown time zone"),
        ({"timezone": "/etc/localtime"}, "timezone", "unknown time zone"),
        ({"hours": ("18:00", "09:00")}, "hours", "must be before"),
        ({"hours": ("09:00", "09:00")}, "hours", "must be before"),
        ({"hours": ("9am", "18:00")}, "hours", "'9am'"),
        ({"hours": ("24:00", "24:00")}, "hours", "'24:00'"),
        ({"hours": ("09:00", "25:00")}, "hours", "'25:00'"),
        ({"hours": ("09:00",)}, "hours", ""),
        # PyYAML reads an unquoted 18:00 as the base-60 number 1080.
        ({"hours": ["09:00", 1080]}, "hours", "quote the times"),
        ({"working_days": ()}, "working_days", "at least 1"),
        ({"working_days": ("mon", "tue", "mon")}, "working_days", "more than once: mon"),
        ({"working_days": ("mon", "funday")}, "working_days", "'mon'"),
        ({"holidays": ("2026-02-30",)}, "holidays", ""),
        ({"lunch": ("12:00", "13:00")}, "lunch", "Extra inputs are not permitted"),
    ],
)
def test_validation_names_the_field(fields: dict[str, Any], field: str, fragment: str) -> None:
    data = {"timezone": "Asia/Tokyo", **fields}
    with pytest.raises(ValidationError) as caught:
        BusinessCalendar.model_validate(data)
    text = str(caught.value)
    assert field in text
    assert fragment in text


def test_calendar_is_frozen() -> None:
    with pytest.raises(ValidationError):
        TOKYO.timezone = "UTC"  # type: ignore[misc]


def test_yaml_shape_and_normalisation() -> None:
    text = """
    sla:
      mql_first_contact: 24h
      calendar:
        timezone: Europe/Berlin
        working_days: [Mon, tue, wed, thu, fri, sat]
        hours: ["08:30", "17:00"]
        holidays: [2026-12-25, "2026-12-24", 2026-12-25]
    """
    raw = yaml.safe_load(text)["sla"]["calendar"]
    calendar = BusinessCalendar.model_validate(raw)
    assert calendar.working_days == ("mon", "tue", "wed", "thu", "fri", "sat")
    assert calendar.hours == ("08:30", "17:00")
    assert calendar.holidays == (date(2026, 12, 24), date(2026, 12, 25))  # sorted, deduplicated
    dumped = calendar.model_dump(mode="json")
    assert dumped["holidays"] == ["2026-12-24", "2026-12-25"]
    assert BusinessCalendar.model_validate(dumped) == calendar
    # Defaults: Mon-Fri 09:00-18:00, no holidays.
    default = BusinessCalendar.model_validate({"timezone": "Asia/Tokyo"})
    assert default.working_days == ("mon", "tue", "wed", "thu", "fri")
    assert default.hours == ("09:00", "18:00")
    assert default.holidays == ()


def test_naive_datetimes_and_negative_durations_are_rejected() -> None:
    naive = datetime(2026, 6, 5, 17)
    with pytest.raises(ValueError, match="start must be a timezone-aware"):
        TOKYO.add(naive, H)
    with pytest.raises(ValueError, match="start must be a timezone-aware"):
        TOKYO.working_time_between(naive, jst(8, 9))
    with pytest.raises(ValueError, match="end must be a timezone-aware"):
        TOKYO.working_time_between(jst(8, 9), naive)
    with pytest.raises(ValueError, match="at must be a timezone-aware"):
        TOKYO.is_working(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        add_time(None, naive, H)
    with pytest.raises(ValueError, match="timezone-aware"):
        add_time(TOKYO, naive, H)
    with pytest.raises(ValueError, match="negative"):
        TOKYO.add(jst(8, 9), -H)
    with pytest.raises(ValueError, match="negative"):
        add_time(None, jst(8, 9), -H)


def test_add_time() -> None:
    assert add_time(TOKYO, jst(5, 17), 24 * H) == jst(10, 14)
    start = utc(6, 5, 8)
    assert add_time(None, start, 24 * H) == start + 24 * H
    assert add_time(None, start, 24 * H).tzinfo is UTC
    # 24/7 is elapsed time, even where the start's zone changes clocks: Sat 28 Mar 12:00 CET
    # + 24 h = Sun 29 Mar 13:00 CEST (wall-clock arithmetic would give 12:00 CEST, 23 h).
    due = add_time(None, berlin(3, 28, 12), 24 * H)
    assert due == berlin(3, 29, 13)
    assert due.astimezone(UTC) - berlin(3, 28, 12).astimezone(UTC) == 24 * H
    assert due.tzinfo is BERLIN


# --- properties (hypothesis) --------------------------------------------------------------------

ZONES = [
    "Asia/Tokyo",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Sydney",  # southern hemisphere DST
    "Australia/Lord_Howe",  # 30-minute DST
    "Asia/Kathmandu",  # UTC+5:45
    "Africa/Casablanca",  # clocks change around Ramadan
    "Pacific/Chatham",  # DST at 02:45
    "America/Santiago",  # clocks change at midnight
    "UTC",
]
HOURS = [
    ("09:00", "18:00"),
    ("08:30", "12:15"),
    ("00:00", "24:00"),
    ("01:30", "03:30"),  # contains the DST changes of Europe and the US
    ("22:00", "24:00"),
    ("00:00", "02:45"),
    ("00:30", "02:30"),
    ("23:00", "24:00"),
]
HOLIDAYS = st.dates(min_value=date(2025, 1, 1), max_value=date(2029, 12, 31))

calendars = st.builds(
    BusinessCalendar,
    timezone=st.sampled_from(ZONES),
    working_days=st.sets(st.sampled_from(WEEKDAYS), min_size=1).map(tuple),
    hours=st.sampled_from(HOURS),
    holidays=st.sets(HOLIDAYS, max_size=40).map(tuple),
)
starts = st.datetimes(
    min_value=datetime(2025, 1, 1),
    max_value=datetime(2028, 12, 31),
    timezones=st.sampled_from([UTC, JST, BERLIN, timezone(timedelta(hours=-3, minutes=-30))]),
)
MAX_US = 3000 * 3600 * 10**6
durations = st.integers(0, MAX_US).map(lambda us: timedelta(microseconds=us))
positive_durations = st.integers(1, MAX_US).map(lambda us: timedelta(microseconds=us))


@EXAMPLES
@given(calendars, starts, durations)
def test_working_time_between_inverts_add(
    calendar: BusinessCalendar, start: datetime, duration: timedelta
) -> None:
    first = calendar.add(start, timedelta(0))
    due = calendar.add(start, duration)
    assert_utc(due)
    assert calendar.working_time_between(first, due) == duration
    assert calendar.working_time_between(start, due) == duration


@EXAMPLES
@given(calendars, starts)
def test_zero_duration_gives_the_first_working_instant(
    calendar: BusinessCalendar, start: datetime
) -> None:
    first = calendar.add(start, timedelta(0))
    assert first >= start
    assert calendar.is_working(first)
    assert calendar.working_time_between(start, first) == timedelta(0)
    assert calendar.add(first, timedelta(0)) == first


@EXAMPLES
@given(calendars, starts, durations, durations)
def test_add_is_monotonic(
    calendar: BusinessCalendar, start: datetime, d1: timedelta, d2: timedelta
) -> None:
    short, long = sorted((d1, d2))
    assert calendar.add(start, short) <= calendar.add(start, long)


@EXAMPLES
@given(calendars, starts, durations, positive_durations)
def test_add_is_additive(
    calendar: BusinessCalendar, start: datetime, d1: timedelta, d2: timedelta
) -> None:
    # d2 > 0: see test_ending_at_closing_then_adding_zero_moves_to_the_next_opening.
    assert calendar.add(calendar.add(start, d1), d2) == calendar.add(start, d1 + d2)


@EXAMPLES
@given(calendars, starts, st.integers(1, 80), st.floats(0.01, 1.0))
def test_skipping_whole_weeks_agrees_with_walking_day_by_day(
    calendar: BusinessCalendar, start: datetime, steps: int, fraction: float
) -> None:
    # A step no longer than one week's working time is walked day by day; the single long add
    # may skip whole weeks.
    week = len(calendar.working_days) * _nominal_day(calendar)
    step = max(timedelta(seconds=1), week * fraction)
    stepped = reduce(lambda at, _: calendar.add(at, step), range(steps), start)
    assert stepped == calendar.add(start, steps * step)


@EXAMPLES
@given(st.sampled_from(ZONES), starts, durations)
def test_a_round_the_clock_calendar_is_elapsed_time(
    zone: str, start: datetime, duration: timedelta
) -> None:
    calendar = BusinessCalendar(timezone=zone, working_days=WEEKDAYS, hours=("00:00", "24:00"))
    # Compared in UTC: Python never finds a zoned time in a DST gap or fold equal to another.
    elapsed = start.astimezone(UTC) + duration
    assert calendar.add(start, duration) == elapsed
    assert add_time(None, start, duration).astimezone(UTC) == elapsed
    assert calendar.working_time_between(start, elapsed) == duration


@EXAMPLES
@given(calendars, starts)
def test_is_working_reads_the_local_clock(calendar: BusinessCalendar, start: datetime) -> None:
    # Away from DST changes (checked: the offset is the same an hour either side), an instant
    # is working exactly when the local clock shows a working date and a time within hours.
    zone = ZoneInfo(calendar.timezone)
    local = start.astimezone(zone)
    assume(
        (start - H).astimezone(zone).utcoffset()
        == local.utcoffset()
        == (start + H).astimezone(zone).utcoffset()
    )
    opening, closing = calendar.hours
    wall = local.time()
    expected = (
        WEEKDAYS[local.weekday()] in calendar.working_days
        and local.date() not in calendar.holidays
        and time.fromisoformat(opening) <= wall
        and (closing == "24:00" or wall < time.fromisoformat(closing))
    )
    assert calendar.is_working(start) is expected


def _nominal_day(calendar: BusinessCalendar) -> timedelta:
    opening, closing = (int(h) * 60 + int(m) for h, m in (t.split(":") for t in calendar.hours))
    return timedelta(minutes=closing - opening)
