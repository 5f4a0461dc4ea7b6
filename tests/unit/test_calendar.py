"""Calendar triggers: cron slots across day, month and year boundaries, checked against brute force, and the
event clock that falls back to wall time."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from feedback.triggers.calendar import MAX_SLOTS, EventClock, Schedule, parse_schedule

MINUTE = timedelta(minutes=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# The independent computation: each expression written out as a plain predicate on a minute, no cron parsing.
PREDICATES: dict[str, Callable[[datetime], bool]] = {
    "0 3 * * 1": lambda t: t.weekday() == 0 and (t.hour, t.minute) == (3, 0),
    "0 0 1 * *": lambda t: (t.day, t.hour, t.minute) == (1, 0, 0),
    "*/15 * * * *": lambda t: t.minute % 15 == 0,
    "0 0 29 2 *": lambda t: (t.month, t.day, t.hour, t.minute) == (2, 29, 0, 0),
    "0 0 L * *": lambda t: (t + timedelta(days=1)).day == 1 and (t.hour, t.minute) == (0, 0),
    "30 */6 * * 1-5": lambda t: t.weekday() < 5 and t.hour % 6 == 0 and t.minute == 30,
}


def brute_slots(expression: str, start: datetime, end: datetime) -> list[datetime]:
    """Every minute in (start, end] the predicate accepts."""
    match = PREDICATES[expression]
    t = start.replace(second=0, microsecond=0) + MINUTE
    found = []
    while t <= end:
        if match(t):
            found.append(t)
        t += MINUTE
    return found


def brute_latest(expression: str, at: datetime, horizon: timedelta = timedelta(days=40)) -> datetime | None:
    """The newest accepted minute <= at, searching back at most `horizon`."""
    match = PREDICATES[expression]
    t = at.replace(second=0, microsecond=0)
    for _ in range(int(horizon / MINUTE)):
        if match(t):
            return t
        t -= MINUTE
    return None


@pytest.mark.parametrize(("expression", "at", "latest", "following"), [
    # Mondays 03:00 across the 2025/2026 year end (2025-12-29 and 2026-01-05 are Mondays)
    ("0 3 * * 1", utc(2025, 12, 31, 12, 0), utc(2025, 12, 29, 3, 0), utc(2026, 1, 5, 3, 0)),
    ("0 3 * * 1", utc(2026, 1, 5, 3, 0), utc(2026, 1, 5, 3, 0), utc(2026, 1, 12, 3, 0)),
    ("0 3 * * 1", utc(2026, 1, 5, 2, 59, 59, 999_999), utc(2025, 12, 29, 3, 0), utc(2026, 1, 5, 3, 0)),
    ("0 3 * * 1", utc(2026, 1, 5, 3, 0, 0, 1), utc(2026, 1, 5, 3, 0), utc(2026, 1, 12, 3, 0)),
    ("0 3 * * 1", utc(2025, 1, 1, 0, 0), utc(2024, 12, 30, 3, 0), utc(2025, 1, 6, 3, 0)),
    # first of the month across February of the leap year 2028 and of 2027, and across a year end
    ("0 0 1 * *", utc(2028, 2, 29, 23, 59), utc(2028, 2, 1), utc(2028, 3, 1)),
    ("0 0 1 * *", utc(2028, 3, 1), utc(2028, 3, 1), utc(2028, 4, 1)),
    ("0 0 1 * *", utc(2027, 2, 28, 23, 59, 59), utc(2027, 2, 1), utc(2027, 3, 1)),
    ("0 0 1 * *", utc(2027, 12, 31, 23, 59, 59), utc(2027, 12, 1), utc(2028, 1, 1)),
    # leap days only, and the last day of each month
    ("0 0 29 2 *", utc(2027, 3, 1), utc(2024, 2, 29), utc(2028, 2, 29)),
    ("0 0 L * *", utc(2028, 2, 15), utc(2028, 1, 31), utc(2028, 2, 29)),
    ("0 0 L * *", utc(2027, 2, 28), utc(2027, 2, 28), utc(2027, 3, 31)),
    # every 15 minutes at and around exact slot instants, across midnight and a year end
    ("*/15 * * * *", utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 30)),
    ("*/15 * * * *", utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 15)),
    ("*/15 * * * *", utc(2025, 12, 31, 23, 59, 59), utc(2025, 12, 31, 23, 45), utc(2026, 1, 1, 0, 0)),
    ("*/15 * * * *", utc(2026, 1, 1, 0, 14, 59, 999_999), utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 15)),
])
def test_latest_and_next_slot_across_boundaries(
    expression: str, at: datetime, latest: datetime, following: datetime
) -> None:
    """latest_slot is the newest slot <= at (an exact slot is its own), next_slot the first slot > at, both UTC."""
    s = parse_schedule(expression)
    got_latest, got_next = s.latest_slot(at), s.next_slot(at)
    assert (got_latest, got_next) == (latest, following)
    assert got_latest is not None and got_next is not None
    assert got_latest.tzinfo is UTC and got_next.tzinfo is UTC
    assert got_latest == brute_latest(expression, at, horizon=timedelta(days=4 * 366))
    assert s.latest_slot(got_next) == got_next


def test_an_instant_in_another_offset_is_read_as_the_same_utc_instant() -> None:
    """An aware non-UTC instant means the same moment: 04:00+01:00 on a Monday is the 03:00 UTC slot."""
    s = parse_schedule("0 3 * * 1")
    at = datetime(2026, 1, 5, 4, 0, tzinfo=timezone(timedelta(hours=1)))
    assert s.latest_slot(at) == utc(2026, 1, 5, 3, 0)
    assert s.latest_slot(at).tzinfo is UTC  # type: ignore[union-attr]
    assert s.next_slot(at) == utc(2026, 1, 12, 3, 0)


@settings(max_examples=60, deadline=None)
@given(
    expression=st.sampled_from(sorted(set(PREDICATES) - {"0 0 29 2 *"})),
    # hypothesis takes naive bounds and attaches the zone itself
    at=st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2030, 12, 31),  # noqa: DTZ001
                    timezones=st.just(UTC)),
)
def test_latest_slot_matches_brute_force(expression: str, at: datetime) -> None:
    """For any instant, latest_slot equals the newest matching minute found by stepping back one minute at a time."""
    assert parse_schedule(expression).latest_slot(at) == brute_latest(expression, at)


@pytest.mark.parametrize(("expression", "start", "end"), [
    ("0 3 * * 1", utc(2025, 11, 1), utc(2026, 3, 1)),
    ("0 0 1 * *", utc(2027, 11, 15), utc(2028, 4, 1)),
    ("*/15 * * * *", utc(2025, 12, 31, 20, 0), utc(2026, 1, 1, 4, 0)),
    ("0 0 L * *", utc(2027, 12, 1), utc(2028, 6, 1)),
    ("30 */6 * * 1-5", utc(2025, 12, 20), utc(2026, 1, 20)),
])
def test_slots_between_counts_match_an_independent_computation(
    expression: str, start: datetime, end: datetime
) -> None:
    """slots_between returns exactly the matching minutes in (start, end], oldest first."""
    got = parse_schedule(expression).slots_between(start, end)
    assert got == brute_slots(expression, start, end)
    assert got, "the range should hold slots"


def test_slots_between_excludes_start_includes_end_and_is_empty_when_reversed() -> None:
    """A slot at start is left out, a slot at end is kept, and an empty or reversed range holds nothing."""
    s = parse_schedule("*/15 * * * *")
    assert s.slots_between(utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 0, 30)) == [
        utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 30)]
    assert s.slots_between(utc(2026, 1, 1, 0, 15), utc(2026, 1, 1, 0, 15)) == []
    assert s.slots_between(utc(2026, 1, 1, 1, 0), utc(2026, 1, 1, 0, 0)) == []


def test_slots_between_is_capped_at_the_oldest_max_slots() -> None:
    """A year of every-minute slots stops at MAX_SLOTS, the oldest ones, unless a smaller limit is asked."""
    s = parse_schedule("* * * * *")
    got = s.slots_between(utc(2026, 1, 1), utc(2027, 1, 1))
    assert len(got) == MAX_SLOTS == 10_000
    assert (got[0], got[-1]) == (utc(2026, 1, 1, 0, 1), utc(2026, 1, 1) + MAX_SLOTS * MINUTE)
    assert len(s.slots_between(utc(2026, 1, 1), utc(2027, 1, 1), limit=3)) == 3


@pytest.mark.parametrize(("expression", "reason"), [
    ("", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ("   ", "expected 5 fields (minute hour day-of-month month day-of-week), got 0"),
    ("* * * *", "expected 5 fields (minute hour day-of-month month day-of-week), got 4"),
    ("0 3 * * 1 2026", "expected 5 fields (minute hour day-of-month month day-of-week), got 6"),
    ("@daily", "expected 5 fields (minute hour day-of-month month day-of-week), got 1"),
    ("61 * * * *", "bad minute"),
    ("0 24 * * *", "bad hour"),
    ("0 0 30 2 *", "bad day-of-month"),
    ("0 0 * 13 *", "bad month"),
    ("0 0 * * 8", "bad day-of-week"),
    ("*/0 * * * *", "bad minute"),
])
def test_invalid_expression_raises_value_error_naming_the_problem(expression: str, reason: str) -> None:
    """An invalid expression fails with one line quoting it and saying which part is wrong."""
    with pytest.raises(ValueError) as info:
        parse_schedule(expression)
    message = str(info.value)
    assert message.endswith(f": {reason}"), message
    assert "\n" not in message
    assert repr(" ".join(expression.split())) in message


def test_a_non_string_expression_raises_value_error() -> None:
    """A number where the expression belongs fails with ValueError, as an invalid expression does."""
    with pytest.raises(ValueError, match="must be a string, got 3"):
        parse_schedule(3)  # type: ignore[arg-type]


def test_schedule_built_directly_is_validated_and_compares_by_expression() -> None:
    """Schedule(...) validates as parse_schedule does; schedules are equal and hashable by expression."""
    with pytest.raises(ValueError, match="bad minute"):
        Schedule("61 * * * *")
    assert parse_schedule(" 0  3 * * 1") == Schedule("0 3 * * 1")
    assert len({Schedule("0 3 * * 1"), parse_schedule("0 3 * * 1")}) == 1


@pytest.mark.parametrize("call", [
    lambda s: s.latest_slot(datetime(2026, 1, 1)),  # noqa: DTZ001
    lambda s: s.next_slot(datetime(2026, 1, 1)),  # noqa: DTZ001
    lambda s: s.slots_between(datetime(2026, 1, 1), utc(2026, 1, 2)),  # noqa: DTZ001
    lambda s: s.slots_between(utc(2026, 1, 1), datetime(2026, 1, 2)),  # noqa: DTZ001
])
def test_naive_datetimes_are_refused(call: Callable[[Schedule], object]) -> None:
    """A datetime without a zone could be any instant, so every method refuses it."""
    with pytest.raises(ValueError, match="must be timezone-aware"):
        call(parse_schedule("0 3 * * 1"))


def test_event_clock_returns_none_until_a_first_watermark() -> None:
    """With no event ever seen there is nothing to decide, however much wall time passes."""
    clock = EventClock()
    assert clock.now(None, utc(2026, 1, 1)) is None
    assert clock.now(None, utc(2026, 2, 1)) is None


def test_event_clock_follows_the_advancing_watermark_not_the_wall_clock() -> None:
    """While the watermark advances the clock reads it exactly, even a day behind or ahead of the wall clock."""
    clock = EventClock(idle_after=timedelta(minutes=10))
    wall = utc(2026, 1, 2, 12, 0)
    for i in range(1, 50):
        watermark = utc(2026, 1, 1, 12, 0) + i * timedelta(minutes=9)
        assert clock.now(watermark, wall + i * timedelta(minutes=9)) == watermark
    ahead = utc(2026, 1, 3, 12, 0)
    assert clock.now(ahead, wall + timedelta(hours=10)) == ahead


def test_event_clock_falls_back_to_wall_time_after_idle_after() -> None:
    """A watermark stuck for idle_after of wall time is carried forward by the wall time since it last moved."""
    clock = EventClock(idle_after=timedelta(minutes=30))
    watermark, wall = utc(2026, 1, 1, 8, 0), utc(2026, 1, 1, 9, 0)
    assert clock.now(watermark, wall) == watermark
    assert clock.now(watermark, wall + timedelta(minutes=29, seconds=59)) == watermark
    assert clock.now(watermark, wall + timedelta(minutes=30)) == watermark + timedelta(minutes=30)
    assert clock.now(None, wall + timedelta(hours=5)) == watermark + timedelta(hours=5)
    # so a daily 03:00 schedule still fires after traffic stopped the evening before
    stopped = EventClock()
    stopped.now(utc(2026, 1, 1, 20, 0), utc(2026, 1, 1, 20, 0))
    reading = stopped.now(utc(2026, 1, 1, 20, 0), utc(2026, 1, 2, 3, 5))
    assert parse_schedule("0 3 * * *").latest_slot(reading) == utc(2026, 1, 2, 3, 0)  # type: ignore[arg-type]


def test_event_clock_never_goes_backwards() -> None:
    """A late watermark, a resumed stream behind the wall-time reading, or a wall clock stepped back all hold it."""
    clock = EventClock(idle_after=timedelta(minutes=10))
    assert clock.now(utc(2026, 1, 1, 12, 0), utc(2026, 1, 1, 12, 0)) == utc(2026, 1, 1, 12, 0)
    assert clock.now(utc(2026, 1, 1, 11, 0), utc(2026, 1, 1, 12, 1)) == utc(2026, 1, 1, 12, 0)
    assert clock.now(None, utc(2026, 1, 1, 13, 0)) == utc(2026, 1, 1, 13, 0)  # idle for an hour
    assert clock.now(utc(2026, 1, 1, 12, 5), utc(2026, 1, 1, 13, 1)) == utc(2026, 1, 1, 13, 0)
    assert clock.now(None, utc(2026, 1, 1, 12, 0)) == utc(2026, 1, 1, 13, 0)  # wall clock stepped back
    assert clock.now(utc(2026, 1, 1, 14, 0), utc(2026, 1, 1, 13, 2)) == utc(2026, 1, 1, 14, 0)


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(
    st.none() | st.integers(min_value=-120, max_value=120),
    st.integers(min_value=-30, max_value=180),
), max_size=40))
def test_event_clock_readings_never_decrease(steps: list[tuple[int | None, int]]) -> None:
    """Over any sequence of watermarks (missing, late or early) and wall times (even stepped back), readings rise."""
    clock = EventClock(idle_after=timedelta(minutes=60))
    watermark, wall = utc(2026, 1, 1), utc(2026, 1, 1)
    readings = []
    for wm_step, wall_step in steps:
        wall += timedelta(minutes=wall_step)
        if wm_step is not None:
            watermark += timedelta(minutes=wm_step)
        reading = clock.now(None if wm_step is None else watermark, wall)
        if reading is not None:
            readings.append(reading)
    assert readings == sorted(readings)


def test_event_clock_refuses_naive_datetimes_and_negative_idle() -> None:
    """Naive watermark or wall time, and a negative idle_after, raise ValueError."""
    clock = EventClock()
    with pytest.raises(ValueError, match="watermark must be timezone-aware"):
        clock.now(datetime(2026, 1, 1), utc(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="wall_now must be timezone-aware"):
        clock.now(utc(2026, 1, 1), datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="idle_after must be >= 0"):
        EventClock(idle_after=timedelta(seconds=-1))


def test_event_clocks_keep_separate_memory_and_reset_forgets() -> None:
    """One clock per model: a second clock knows nothing of the first's watermark; reset() starts over."""
    clocks = {"churn": EventClock(), "eta": EventClock()}
    assert clocks["churn"].now(utc(2026, 1, 1), utc(2026, 1, 1)) == utc(2026, 1, 1)
    assert clocks["eta"].now(None, utc(2026, 1, 1)) is None
    clocks["churn"].reset()
    assert clocks["churn"].now(None, utc(2026, 1, 1)) is None
