"""Working days, bank holidays and office hours: when does a time limit run out?

Policies promise things in three kinds of time: hours ("pass to your line manager within
48 hours"), calendar days ("within 28 days") and working days ("within 5 working days").
This module turns "received at T, limit L" into one due moment, using the organisation's
bank holidays (England and Wales, Scotland or Northern Ireland, from the ``holidays`` package)
and office hours, all in Europe/London time whatever the server's own timezone.

Rules, chosen so that a complainant is never short-changed:

- The clock starts when the mail arrives if that is within office hours on a working day;
  otherwise at the next opening time (mail on Friday evening, or on a bank holiday, counts as
  received at 09:00 on the next working day).
- ``hours``: that many hours after the clock starts.
- ``days`` and ``working_days``: counted from the day the clock starts (that day is day 0);
  the limit runs out at the end of office hours on the last day.  A calendar-day limit may
  end on a weekend; a working-day limit never does.
- An appeal *window* ("write to us within 14 days of the outcome letter") is the
  complainant's time, not ours: it runs to the end of the last day (23:59:59), not to 17:00.

Due dates are computed once, when the event happens, and stored (``Deadline`` rows): a later
change of the rules or of the holiday list never moves a date already promised in a letter.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from functools import cached_property
from zoneinfo import ZoneInfo

import holidays

from mailbot.policy.rules import WEEKDAYS, Duration, OfficeHours, Rules

LONDON = ZoneInfo("Europe/London")
SUBDIVISIONS = {"england-and-wales": "ENG", "scotland": "SCT", "northern-ireland": "NIR"}
END_OF_DAY = time(23, 59, 59)


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


_CALENDARS: dict[tuple, "Calendar"] = {}

class Calendar:
    def __init__(self, nation: str = "england-and-wales", office_hours: OfficeHours | None = None):
        self.nation = nation
        hours = office_hours or OfficeHours()
        self.days = {WEEKDAYS.index(d) for d in hours.days}
        self.opens, self.closes = _hhmm(hours.start), _hhmm(hours.end)

    @classmethod
    def for_rules(cls, rules: Rules) -> "Calendar":
        """One calendar per policy: its bank-holiday table is filled once, not per message."""
        key = (rules.organisation.nation, rules.office_hours.model_dump_json())
        calendar = _CALENDARS.get(key)
        if calendar is None:
            calendar = _CALENDARS[key] = cls(rules.organisation.nation, rules.office_hours)
        return calendar

    @cached_property
    def bank_holidays(self) -> holidays.HolidayBase:
        # years are filled in on demand by the package as dates are looked up
        return holidays.country_holidays("GB", subdiv=SUBDIVISIONS[self.nation])

    def holiday_name(self, day: date) -> str | None:
        return self.bank_holidays.get(day)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.days and day not in self.bank_holidays

    def next_working_day(self, day: date) -> date:
        day += timedelta(days=1)
        while not self.is_working_day(day):
            day += timedelta(days=1)
        return day

    def _local(self, day: date, at: time) -> datetime:
        return datetime.combine(day, at, tzinfo=LONDON).astimezone(timezone.utc)

    def clock_start(self, received: datetime) -> datetime:
        """When a time limit starts for mail received at ``received`` (aware, any zone)."""
        local = received.astimezone(LONDON)
        day = local.date()
        if self.is_working_day(day):
            if local.timetz().replace(tzinfo=None) < self.opens:
                return self._local(day, self.opens)
            if local.timetz().replace(tzinfo=None) < self.closes:
                return received.astimezone(timezone.utc)
        return self._local(self.next_working_day(day), self.opens)

    def due(self, received: datetime, limit: Duration, *, window: bool = False) -> datetime:
        """The moment ``limit`` runs out for something received at ``received``.

        ``window``: the complainant's own time limit (an appeal window), which runs to the end
        of the last day rather than to the end of office hours."""
        start = self.clock_start(received)
        if limit.unit == "hours":
            return start + timedelta(hours=limit.amount)
        day = start.astimezone(LONDON).date()
        if limit.unit == "days":
            day += timedelta(days=limit.amount)
        else:
            for _ in range(limit.amount):
                day = self.next_working_day(day)
        return self._local(day, END_OF_DAY if window else self.closes)


def describe(moment: datetime) -> str:
    """A due date as a letter states it: 'Thursday 3 September 2026'."""
    local = moment.astimezone(LONDON)
    return f"{local:%A} {local.day} {local:%B %Y}"


def describe_time(moment: datetime) -> str:
    local = moment.astimezone(LONDON)
    return f"{describe(moment)} at {local:%H:%M}"
