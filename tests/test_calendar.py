"""The policy calendar: working days, bank holidays per UK nation, office hours, Europe/London."""

from __future__ import annotations

from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from mailbot.policy.calendar import Calendar, describe
from mailbot.policy.rules import OfficeHours, parse_duration

LONDON = ZoneInfo("Europe/London")


def at(*args):
    return datetime(*args, tzinfo=LONDON)


@pytest.mark.parametrize("nation, day, working", [
    ("england-and-wales", date(2026, 8, 31), False),   # summer bank holiday, last Monday of August
    ("scotland", date(2026, 8, 31), True),
    ("scotland", date(2026, 8, 3), False),              # Scotland's is the first Monday
    ("england-and-wales", date(2026, 8, 3), True),
    ("northern-ireland", date(2026, 3, 17), False),     # St Patrick's Day
    ("england-and-wales", date(2026, 3, 17), True),
    ("scotland", date(2026, 11, 30), False),            # St Andrew's Day
    ("england-and-wales", date(2026, 12, 28), False),   # Boxing Day (observed)
    ("england-and-wales", date(2026, 12, 26), False),   # a Saturday
])
def test_bank_holidays_by_nation(nation, day, working):
    assert Calendar(nation).is_working_day(day) is working


def test_mail_inside_office_hours_starts_the_clock_at_once():
    cal = Calendar()
    assert cal.clock_start(at(2026, 8, 28, 11, 0)) == at(2026, 8, 28, 11, 0)


@pytest.mark.parametrize("received, starts", [
    (at(2026, 8, 28, 17, 0), at(2026, 9, 1, 9, 0)),     # Friday at closing time -> Tuesday (bank holiday Monday)
    (at(2026, 8, 29, 10, 0), at(2026, 9, 1, 9, 0)),     # Saturday
    (at(2026, 9, 1, 7, 45), at(2026, 9, 1, 9, 0)),      # before opening
    (at(2026, 12, 24, 17, 30), at(2026, 12, 29, 9, 0)), # Christmas Eve evening -> 29th
])
def test_mail_outside_office_hours_counts_from_next_opening(received, starts):
    assert Calendar().clock_start(received) == starts


@pytest.mark.parametrize("limit, due", [
    ("3 working days", at(2026, 9, 3, 17, 0)),   # Tue 1, Wed 2, Thu 3 (Mon 31 is a bank holiday)
    ("5 working days", at(2026, 9, 7, 17, 0)),
    ("28 working days", at(2026, 10, 8, 17, 0)),
    ("28 days", at(2026, 9, 25, 17, 0)),
    ("7 days", at(2026, 9, 4, 17, 0)),
    ("48 hours", at(2026, 8, 30, 11, 0)),
    ("by return", at(2026, 8, 28, 11, 0)),
])
def test_due_dates_from_the_friday_before_a_bank_holiday(limit, due):
    assert Calendar().due(at(2026, 8, 28, 11, 0), parse_duration(limit)) == due


def test_scotland_counts_the_english_bank_holiday_as_a_working_day():
    assert Calendar("scotland").due(at(2026, 8, 28, 11, 0), parse_duration("3 working days")) \
        == at(2026, 9, 2, 17, 0)


def test_window_runs_to_the_end_of_the_day_and_survives_the_clock_change():
    # outcome on Monday 19 October 2026 (BST); 14 days later is after the clocks go back
    due = Calendar().due(at(2026, 10, 19, 10, 0), parse_duration("14 days"), window=True)
    assert due == at(2026, 11, 2, 23, 59, 59)
    assert due.tzinfo is not None and due.utcoffset().total_seconds() == 0  # stored as UTC


def test_custom_office_hours_and_days():
    hours = OfficeHours(days=["monday", "tuesday", "wednesday", "thursday"], start="08:30", end="16:00")
    cal = Calendar("england-and-wales", hours)
    assert not cal.is_working_day(date(2026, 9, 4))  # a Friday
    assert cal.clock_start(at(2026, 9, 3, 16, 30)) == at(2026, 9, 7, 8, 30)
    assert cal.due(at(2026, 9, 3, 10, 0), parse_duration("1 working day")) == at(2026, 9, 7, 16, 0)


def test_server_timezone_does_not_matter():
    utc = datetime(2026, 8, 28, 16, 30, tzinfo=timezone.utc)  # 17:30 in London: after hours
    assert Calendar().clock_start(utc) == at(2026, 9, 1, 9, 0)


def test_describe_is_how_a_letter_says_it():
    assert describe(at(2026, 9, 3, 17, 0)) == "Thursday 3 September 2026"
