"""When the trigger engine may skip a model's look: the two clock cases its side-by-side test
(tests/integration/test_trigger_skipping.py) cannot reach with hourly windows and an hour's idle_after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from feedback.triggers.calendar import parse_schedule
from feedback.triggers.engine import _Seen

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
LATER = T0 + timedelta(minutes=15)


def seen(*, idle: bool = True, fired: datetime | None = None, standing: bool = False) -> _Seen:
    mark = ((0, 3, 1234, fired), (3, 1, 99, None))
    return _Seen((), mark, T0, idle=idle, standing=standing, refresh_due=None)


def test_an_unmoved_clock_skips_whatever_stands() -> None:
    look = seen(idle=False, standing=True, fired=T0 + timedelta(hours=3))
    assert look.holds((), look.mark, T0, parse_schedule("*/5 * * * *"))


def test_a_moved_clock_skips_only_once_it_ran_past_every_event() -> None:
    """At the watermark a window may start at the reading (label counts run up to the reading, exclusive): the next
    reading may count it."""
    assert seen(idle=True).holds((), seen().mark, LATER, None)
    assert not seen(idle=False).holds((), seen().mark, LATER, None)


def test_a_moved_clock_looks_when_a_decision_was_fired_ahead_of_the_last_reading() -> None:
    """A manual request is fired at its model's newest window end, which a window longer than idle_after leaves ahead
    of an idle clock: the history the storm control reads changes as the clock passes it."""
    ahead = seen(fired=T0 + timedelta(minutes=10))
    assert not ahead.holds((), ahead.mark, LATER, None)
    behind = seen(fired=T0 - timedelta(minutes=10))
    assert behind.holds((), behind.mark, LATER, None)


def test_other_rows_or_other_evaluations_always_look() -> None:
    look = seen()
    assert not look.holds((), ((0, 4, 1300, None),), T0, None)
    assert not look.holds((object(),), look.mark, T0, None)  # type: ignore[arg-type]
