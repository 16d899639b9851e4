"""Cron schedules in UTC, including what a Kubernetes CronJob cannot say (``0 2 * * 2#2``, second Tuesday).

Five fields: minute, hour, day of month, month, day of week. Each field takes ``*``, numbers, lists
(``1,15``), ranges (``1-5``), steps (``*/15``, ``0-30/10``, ``5/20``), and month/weekday names (``JAN``,
``TUE``). Day of week is 0-7 (0 and 7 are Sunday) and also takes ``D#N`` (the N-th weekday D of the month,
N = 1..5) and ``DL`` (the last weekday D of the month); day of month also takes ``L`` (its last day).

As in Vixie cron, when both day of month and day of week are restricted (neither is ``*``), a day matches
if *either* does. A ``D#N`` / ``DL`` entry counts as a restriction.

Pure: :func:`next_fire` and :func:`previous_fire` take the reference time as an argument.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

DEFAULT_SCHEDULE = "0 2 * * 2#2"

# How far to search: every valid expression fires at least once in 8 years (Feb 29 needs up to 8).
_SEARCH_DAYS = 8 * 366 + 1

_MONTHS = {name.upper(): i for i, name in enumerate(calendar.month_abbr) if name}
_DAYS = {"SUN": 0, "MON": 1, "TUE": 2, "WED": 3, "THU": 4, "FRI": 5, "SAT": 6}


@dataclass(frozen=True)
class Schedule:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    last_day: bool
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday .. 6 = Saturday
    nth_weekdays: frozenset[tuple[int, int]]  # (weekday, n)
    last_weekdays: frozenset[int]
    dom_restricted: bool
    dow_restricted: bool

    def matches_day(self, d: date) -> bool:
        if d.month not in self.months:
            return False
        last = calendar.monthrange(d.year, d.month)[1]
        dom = d.day in self.days or (self.last_day and d.day == last)
        weekday = (d.weekday() + 1) % 7  # Python: Monday = 0; cron: Sunday = 0
        dow = (weekday in self.weekdays
               or (weekday, (d.day - 1) // 7 + 1) in self.nth_weekdays
               or (weekday in self.last_weekdays and d.day + 7 > last))
        if self.dom_restricted and self.dow_restricted:
            return dom or dow
        if self.dom_restricted:
            return dom
        if self.dow_restricted:
            return dow
        return True

    def matches(self, when: datetime) -> bool:
        """Whether the schedule fires at ``when`` (UTC, minute resolution; seconds must be zero)."""
        when = _utc(when)
        return (when.second == 0 and when.microsecond == 0 and when.minute in self.minutes
                and when.hour in self.hours and self.matches_day(when.date()))


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("schedule times must be timezone-aware (UTC)")
    return when.astimezone(UTC)


def _number(text: str, low: int, high: int, names: dict[str, int], field: str) -> int:
    value = names.get(text.upper())
    if value is None:
        if not text.isdigit():
            raise ValueError(f"{field}: {text!r} is not a number" + (f" or a name ({', '.join(names)})"
                                                                      if names else ""))
        value = int(text)
    if not low <= value <= high:
        raise ValueError(f"{field}: {value} is outside {low}-{high}")
    return value


def _field(text: str, low: int, high: int, field: str, names: dict[str, int] | None = None) -> set[int]:
    names = names or {}
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError(f"{field}: empty list entry in {text!r}")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise ValueError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _number(a, low, high, names, field), _number(b, low, high, names, field)
            if start > end:
                raise ValueError(f"{field}: range {base!r} runs backwards")
        else:
            start = _number(base, low, high, names, field)
            end = high if slash else start
        out.update(range(start, end + 1, step))
    return out


def parse(expression: str) -> Schedule:
    """Parse a five-field cron expression; ``ValueError`` says what is wrong with it."""
    parts = expression.split()
    if len(parts) != 5:
        raise ValueError(f"{expression!r}: a schedule has 5 fields (minute hour day-of-month month day-of-week), "
                         f"not {len(parts)}")
    minute, hour, dom, month, dow = parts
    days: set[int] = set()
    last_day = False
    for part in dom.split(","):
        if part.upper() == "L":
            last_day = True
        else:
            days |= _field(part, 1, 31, "day of month")
    weekdays: set[int] = set()
    nth: set[tuple[int, int]] = set()
    last_weekdays: set[int] = set()
    for part in dow.split(","):
        if "#" in part:
            d, _, n = part.partition("#")
            if not n.isdigit() or not 1 <= int(n) <= 5:
                raise ValueError(f"day of week: {part!r}: the N in D#N is 1-5")
            nth.add((_number(d, 0, 7, _DAYS, "day of week") % 7, int(n)))
        elif len(part) > 1 and part.upper().endswith("L"):
            last_weekdays.add(_number(part[:-1], 0, 7, _DAYS, "day of week") % 7)
        else:
            weekdays |= {d % 7 for d in _field(part, 0, 7, "day of week", _DAYS)}
    schedule = Schedule(
        expression=expression,
        minutes=frozenset(_field(minute, 0, 59, "minute")),
        hours=frozenset(_field(hour, 0, 23, "hour")),
        days=frozenset(days), last_day=last_day,
        months=frozenset(_field(month, 1, 12, "month", _MONTHS)),
        weekdays=frozenset(weekdays), nth_weekdays=frozenset(nth), last_weekdays=frozenset(last_weekdays),
        dom_restricted=not dom.startswith("*"), dow_restricted=not dow.startswith("*"),
    )
    if not any(_days(schedule, date(2024, 1, 1), forward=True)):
        raise ValueError(f"{expression!r} never fires (no such day)")
    return schedule


def _days(schedule: Schedule, start: date, *, forward: bool) -> list[date]:
    """At most one matching day within the search horizon, starting at ``start`` (inclusive)."""
    step = timedelta(days=1 if forward else -1)
    d = start
    for _ in range(_SEARCH_DAYS):
        if schedule.matches_day(d):
            return [d]
        d += step
    return []


def next_fire(expression: str | Schedule, after: datetime) -> datetime:
    """The first time strictly after ``after`` at which the schedule fires (UTC)."""
    return _fire(expression, after, forward=True)


def previous_fire(expression: str | Schedule, before: datetime) -> datetime:
    """The last time strictly before ``before`` at which the schedule fires (UTC)."""
    return _fire(expression, before, forward=False)


def _fire(expression: str | Schedule, at: datetime, *, forward: bool) -> datetime:
    schedule = parse(expression) if isinstance(expression, str) else expression
    at = _utc(at)
    times = sorted(((h, m) for h in schedule.hours for m in schedule.minutes), reverse=not forward)
    d = at.date()
    for _ in range(_SEARCH_DAYS):
        found = _days(schedule, d, forward=forward)
        if not found:
            break
        d = found[0]
        for h, m in times:
            candidate = datetime(d.year, d.month, d.day, h, m, tzinfo=UTC)
            if (candidate > at) if forward else (candidate < at):
                return candidate
        d += timedelta(days=1 if forward else -1)
    raise ValueError(f"{schedule.expression!r} never fires {'after' if forward else 'before'} {at.isoformat()}")
