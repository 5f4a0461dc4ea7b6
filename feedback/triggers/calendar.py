"""Calendar retrain triggers: cron schedules (UTC) read in event time, with a clock that falls back to wall time.

The cron arithmetic is cronsim's (https://github.com/cuu508/cronsim); this module only fixes how it is
called: instants go in and come out as aware UTC, a slot exactly at ``at`` is its own latest slot, and
the end of cronsim's range ends in None, never in an exception. That range is about 50 years either side
of the starting instant, and stops short of datetime's limits: within a few days of year 1 or the end of
year 9999 cronsim's arithmetic overflows and the answer is None.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError

#: the most slots :meth:`Schedule.slots_between` returns ("* * * * *" makes 10,000 in about a week)
MAX_SLOTS = 10_000
#: minute hour day-of-month month day-of-week: cronsim also takes a leading seconds field, which we refuse
#: (a retrain schedule needs no seconds, and "0 3 * * 1 2026" would otherwise read as seconds = 0)
CRON_FIELDS = 5

_SECOND = timedelta(seconds=1)
# any aware instant will do: cronsim parses the expression when it is built
_PARSE_AT = datetime(2000, 1, 1, tzinfo=UTC)


def _utc(value: datetime, name: str) -> datetime:
    """``value`` in UTC; a naive datetime is refused (it could be any zone).

    cronsim reads a non-UTC tzinfo as local wall time (with Debian cron's DST quirks), so every
    instant is converted to UTC before it reaches cronsim.

    >>> from datetime import timezone
    >>> _utc(datetime(2026, 1, 1, 4, 0, tzinfo=timezone(timedelta(hours=1))), "at")
    datetime.datetime(2026, 1, 1, 3, 0, tzinfo=datetime.timezone.utc)
    >>> _utc(datetime(2026, 1, 1), "at")
    Traceback (most recent call last):
    ...
    ValueError: at must be timezone-aware (UTC), got naive 2026-01-01 00:00:00
    """
    if value.tzinfo is None or value.utcoffset() is None:
        msg = f"{name} must be timezone-aware (UTC), got naive {value}"
        raise ValueError(msg)
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A cron schedule in UTC, built by :func:`parse_schedule`; every method takes and returns aware UTC.

    Examples
    --------
    >>> s = parse_schedule("0 3 * * 1")  # Mondays at 03:00 UTC
    >>> s.latest_slot(datetime(2026, 1, 1, tzinfo=UTC))
    datetime.datetime(2025, 12, 29, 3, 0, tzinfo=datetime.timezone.utc)
    >>> s.next_slot(datetime(2026, 1, 1, tzinfo=UTC))
    datetime.datetime(2026, 1, 5, 3, 0, tzinfo=datetime.timezone.utc)
    >>> len(s.slots_between(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)))
    4
    """

    expression: str

    def __post_init__(self) -> None:
        if not isinstance(self.expression, str):
            msg = f"cron expression must be a string, got {self.expression!r}"
            raise ValueError(msg)
        fields = len(self.expression.split())
        if fields != CRON_FIELDS:
            msg = (
                f"invalid cron expression {self.expression!r}: expected {CRON_FIELDS} fields "
                f"(minute hour day-of-month month day-of-week), got {fields}"
            )
            raise ValueError(msg)
        try:
            CronSim(self.expression, _PARSE_AT)
        except CronSimError as exc:
            # cronsim says "Bad minute", "Bad day-of-month", ...
            reason = str(exc)
            msg = f"invalid cron expression {self.expression!r}: {reason[:1].lower()}{reason[1:]}"
            raise ValueError(msg) from None

    def latest_slot(self, at: datetime) -> datetime | None:
        """The latest scheduled instant <= ``at`` (a slot exactly at ``at`` counts), or None past cronsim's range.

        >>> parse_schedule("*/15 * * * *").latest_slot(datetime(2026, 1, 1, 0, 15, tzinfo=UTC))
        datetime.datetime(2026, 1, 1, 0, 15, tzinfo=datetime.timezone.utc)
        """
        at = _utc(at, "at")
        try:
            # cronsim's reverse iteration first steps back one second (or drops the microseconds), so it
            # never yields its starting instant: start one second past the whole second of `at`
            return next(CronSim(self.expression, at.replace(microsecond=0) + _SECOND, reverse=True))
        except (StopIteration, OverflowError, ValueError):
            # no slot within 50 years, or the search ran off datetime's years 1-9999
            return None

    def next_slot(self, after: datetime) -> datetime | None:
        """The first scheduled instant > ``after``, or None past cronsim's range.

        >>> parse_schedule("*/15 * * * *").next_slot(datetime(2026, 1, 1, 0, 15, tzinfo=UTC))
        datetime.datetime(2026, 1, 1, 0, 30, tzinfo=datetime.timezone.utc)
        """
        after = _utc(after, "after")
        try:
            return next(CronSim(self.expression, after))
        except (StopIteration, OverflowError, ValueError):
            return None

    def slots_between(self, start: datetime, end: datetime, *, limit: int = MAX_SLOTS) -> list[datetime]:
        """The scheduled instants in (``start``, ``end``], oldest first, at most ``limit`` of them.

        When there are more than ``limit``, the oldest ``limit`` are returned: a result of exactly
        ``limit`` slots may be cut short, and :meth:`latest_slot` (``end``) gives the newest.

        >>> s = parse_schedule("0 * * * *")
        >>> s.slots_between(datetime(2026, 1, 1, 0, 0, tzinfo=UTC), datetime(2026, 1, 1, 2, 0, tzinfo=UTC))
        [datetime.datetime(2026, 1, 1, 1, 0, tzinfo=datetime.timezone.utc), \
datetime.datetime(2026, 1, 1, 2, 0, tzinfo=datetime.timezone.utc)]
        >>> len(s.slots_between(datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC), limit=100))
        100
        """
        start, end = _utc(start, "start"), _utc(end, "end")
        if limit < 1:
            msg = f"limit must be >= 1, got {limit}"
            raise ValueError(msg)
        slots: list[datetime] = []
        if start >= end:
            return slots
        try:
            for slot in CronSim(self.expression, start):
                if slot > end:
                    break
                slots.append(slot)
                if len(slots) == limit:
                    break
        except (OverflowError, ValueError):
            pass  # ran off datetime's last year: the slots found so far are all there are
        return slots


def parse_schedule(expression: str) -> Schedule:
    """A :class:`Schedule` from a five-field cron expression in UTC; ValueError names what is wrong.

    Fields are minute, hour, day-of-month, month, day-of-week, with cronsim's syntax (``*/15``,
    ``1-5``, ``MON``, ``L``, ``LW``, ``1#2``); when neither day field starts with ``*`` a day
    matching either one matches (Debian cron). Whitespace between fields is normalised.

    >>> parse_schedule("  0 3   * * MON ")
    Schedule(expression='0 3 * * MON')
    >>> parse_schedule("61 * * * *")
    Traceback (most recent call last):
    ...
    ValueError: invalid cron expression '61 * * * *': bad minute
    """
    if not isinstance(expression, str):
        msg = f"cron expression must be a string, got {expression!r}"
        raise ValueError(msg)
    return Schedule(" ".join(expression.split()))


class EventClock:
    """One model's calendar clock: event time while events flow, wall time when they stop.

    :meth:`now` returns the watermark (the newest event timestamp seen) while it keeps advancing.
    Once it has not advanced for ``idle_after`` of wall time, the clock runs on from it at wall
    speed: watermark + wall time elapsed since it last advanced, so a schedule still fires when
    traffic stops (the first reading after the switch jumps ahead by ``idle_after``). The clock never
    goes backwards: a late watermark, a resumed stream behind the wall-time reading, or a wall
    clock stepped back all leave it where it was until time catches up.

    Keep one clock per model (the caller's ``dict[str, EventClock]``): each one remembers one
    watermark. The memory is in-process; after a restart the idle timer starts again from the
    first reading. Safe to share between threads.

    Examples
    --------
    >>> t0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    >>> clock = EventClock(idle_after=timedelta(hours=1))
    >>> clock.now(None, wall_now=t0) is None  # no events yet: nothing to decide
    True
    >>> clock.now(t0 - timedelta(minutes=5), wall_now=t0)  # the watermark, however late the wall clock
    datetime.datetime(2026, 1, 5, 11, 55, tzinfo=datetime.timezone.utc)
    >>> clock.now(t0 - timedelta(minutes=5), wall_now=t0 + timedelta(minutes=59))  # idle, not long enough
    datetime.datetime(2026, 1, 5, 11, 55, tzinfo=datetime.timezone.utc)
    >>> clock.now(t0 - timedelta(minutes=5), wall_now=t0 + timedelta(minutes=90))  # idle: runs on at wall speed
    datetime.datetime(2026, 1, 5, 13, 25, tzinfo=datetime.timezone.utc)
    >>> clock.now(t0, wall_now=t0 + timedelta(minutes=91))  # a resumed stream behind it: holds
    datetime.datetime(2026, 1, 5, 13, 25, tzinfo=datetime.timezone.utc)
    """

    def __init__(self, idle_after: timedelta = timedelta(hours=1)) -> None:
        if idle_after < timedelta(0):
            msg = f"idle_after must be >= 0, got {idle_after}"
            raise ValueError(msg)
        self.idle_after = idle_after
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        #: the newest watermark seen, and the wall time at which it last advanced
        self._watermark: datetime | None = None
        self._advanced_at: datetime | None = None
        #: the last reading returned, so that no reading is ever older
        self._last: datetime | None = None

    def reset(self) -> None:
        """Forget every watermark and reading, as a new clock."""
        with self._lock:
            self._reset()

    @property
    def watermark(self) -> datetime | None:
        """The newest event timestamp seen (None: none yet)."""
        with self._lock:
            return self._watermark

    def now(self, watermark: datetime | None, wall_now: datetime) -> datetime | None:
        """The clock's reading given the newest event timestamp (None: none known) and the wall time; aware UTC.

        None only until a first watermark is seen; after that a None watermark means "no news"
        and the last one stands.
        """
        wall_now = _utc(wall_now, "wall_now")
        with self._lock:
            if watermark is not None:
                watermark = _utc(watermark, "watermark")
                if self._watermark is None or watermark > self._watermark:
                    self._watermark, self._advanced_at = watermark, wall_now
            if self._watermark is None or self._advanced_at is None:
                return None
            reading = self._watermark
            idle = wall_now - self._advanced_at
            if idle >= self.idle_after:
                reading = self._watermark + idle
            if self._last is not None and reading < self._last:
                reading = self._last
            self._last = reading
            return reading
