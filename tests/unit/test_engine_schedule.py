"""The retraining schedule: cron in UTC with the ``D#N`` form a Kubernetes CronJob cannot express."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwarden.engine.schedule import DEFAULT_SCHEDULE, next_fire, parse, previous_fire


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# The second Tuesday of every month of 2027, written out by hand from a calendar. June 2027 starts on a
# Tuesday (so the 1st is the first Tuesday and the 8th the second); September and December 2027 start on a
# Wednesday (the first Tuesday is the 7th, the second the 14th).
SECOND_TUESDAYS_2027 = [
    utc(2027, 1, 12, 2), utc(2027, 2, 9, 2), utc(2027, 3, 9, 2), utc(2027, 4, 13, 2), utc(2027, 5, 11, 2),
    utc(2027, 6, 8, 2), utc(2027, 7, 13, 2), utc(2027, 8, 10, 2), utc(2027, 9, 14, 2), utc(2027, 10, 12, 2),
    utc(2027, 11, 9, 2), utc(2027, 12, 14, 2),
]


def test_the_default_hits_exactly_the_second_tuesdays_of_2027_at_0200_utc() -> None:
    assert utc(2027, 6, 1).weekday() == 1, "June 2027 starts on a Tuesday"
    assert utc(2027, 9, 1).weekday() == 2 and utc(2027, 12, 1).weekday() == 2, "Sep and Dec start on a Wednesday"
    fired, t = [], utc(2026, 12, 31, 23, 59)
    while True:
        t = next_fire(DEFAULT_SCHEDULE, t)
        if t.year > 2027:
            break
        fired.append(t)
    assert fired == SECOND_TUESDAYS_2027
    assert next_fire(DEFAULT_SCHEDULE, utc(2027, 12, 14, 2)) == utc(2028, 1, 11, 2)


def test_every_minute_of_2027_matches_only_at_the_windows() -> None:
    """Brute force over the year, independent of next_fire's search."""
    schedule = parse(DEFAULT_SCHEDULE)
    t, end, hits = utc(2027, 1, 1), utc(2028, 1, 1), []
    while t < end:
        if schedule.matches(t):
            hits.append(t)
        t += timedelta(minutes=1)
    assert hits == SECOND_TUESDAYS_2027


def test_just_before_and_at_a_window() -> None:
    assert next_fire(DEFAULT_SCHEDULE, utc(2027, 6, 8, 1, 59)) == utc(2027, 6, 8, 2)
    assert next_fire(DEFAULT_SCHEDULE, utc(2027, 6, 8, 2)) == utc(2027, 7, 13, 2), "strictly after"
    assert previous_fire(DEFAULT_SCHEDULE, utc(2027, 6, 8, 2)) == utc(2027, 5, 11, 2), "strictly before"
    assert previous_fire(DEFAULT_SCHEDULE, utc(2027, 6, 8, 2, 1)) == utc(2027, 6, 8, 2)


@pytest.mark.parametrize(("expression", "after", "expected"), [
    ("*/15 * * * *", utc(2027, 1, 1, 0, 7), utc(2027, 1, 1, 0, 15)),
    ("0 0 1 1 *", utc(2027, 1, 1), utc(2028, 1, 1)),
    ("30 4 1,15 * *", utc(2027, 1, 2), utc(2027, 1, 15, 4, 30)),
    ("0 9-17/4 * * MON-FRI", utc(2027, 1, 1, 18), utc(2027, 1, 4, 9)),  # Friday evening → Monday 09:00
    ("0 0 * * 7", utc(2027, 1, 1), utc(2027, 1, 3)),  # 7 is Sunday
    ("0 0 29 2 *", utc(2027, 1, 1), utc(2028, 2, 29)),  # leap day
    ("0 0 L * *", utc(2027, 2, 1), utc(2027, 2, 28)),
    ("0 3 * * 5L", utc(2027, 1, 1), utc(2027, 1, 29, 3)),  # last Friday
    ("0 2 * * TUE#1", utc(2027, 5, 31), utc(2027, 6, 1, 2)),  # June 2027 starts on a Tuesday
    ("0 2 * * 1#5", utc(2027, 1, 1), utc(2027, 3, 29, 2)),  # the first month with a fifth Monday
    ("0 0 13 * 5", utc(2027, 1, 2), utc(2027, 1, 8)),  # both restricted: either matches (Vixie cron)
    ("0 0 1 JAN-MAR/2 *", utc(2027, 1, 2), utc(2027, 3, 1)),
])
def test_table(expression: str, after: datetime, expected: datetime) -> None:
    assert next_fire(expression, after) == expected


@pytest.mark.parametrize(("expression", "message"), [
    ("0 2 * *", "5 fields"),
    ("60 * * * *", "minute: 60 is outside 0-59"),
    ("* 24 * * *", "hour: 24 is outside 0-23"),
    ("* * 0 * *", "day of month: 0 is outside 1-31"),
    ("* * * 13 *", "month: 13 is outside 1-12"),
    ("* * * * 2#6", "the N in D#N is 1-5"),
    ("* * * * FOO", "day of week: 'FOO' is not a number"),
    ("*/0 * * * *", "step '0' must be a positive number"),
    ("* * 5-1 * *", "runs backwards"),
    ("0 0 30 2 *", "never fires"),
    ("0 0 1,,2 * *", "empty list entry"),
])
def test_bad_expressions_say_what_is_wrong(expression: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse(expression)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(DEFAULT_SCHEDULE, datetime(2027, 1, 1))  # noqa: DTZ001


def _fields() -> st.SearchStrategy[str]:
    def field(low: int, high: int) -> st.SearchStrategy[str]:
        single = st.integers(low, high).map(str)
        ranged = st.tuples(st.integers(low, high), st.integers(low, high)).map(
            lambda ab: f"{min(ab)}-{max(ab)}")
        stepped = st.tuples(st.sampled_from(["*", f"{low}-{high}"]), st.integers(1, 10)).map(
            lambda s: f"{s[0]}/{s[1]}")
        entry = st.one_of(single, ranged, stepped)
        return st.one_of(st.just("*"), st.lists(entry, min_size=1, max_size=3).map(",".join))

    dow = st.one_of(field(0, 7), st.tuples(st.integers(0, 6), st.integers(1, 4)).map(lambda d: f"{d[0]}#{d[1]}"))
    return st.tuples(field(0, 59), field(0, 23), field(1, 28), field(1, 12), dow).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(expression=_fields(),
       after=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1),  # noqa: DTZ001 (naive bounds)
                          timezones=st.just(UTC)))
def test_next_fire_is_later_matches_and_skips_nothing(expression: str, after: datetime) -> None:
    schedule = parse(expression)
    fire = next_fire(schedule, after)
    assert fire > after
    assert schedule.matches(fire)
    assert previous_fire(schedule, fire) <= after, "nothing matched between after and the next fire"
