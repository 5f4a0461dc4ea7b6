"""The bounded take relies on Faust's Stream internals that its own ``noack_take`` uses."""

from __future__ import annotations

import inspect
from functools import partial
from typing import Any

from faust.streams import Stream

from streams.take import STREAM_INTERNALS


def test_the_stream_internals_the_take_uses_are_there() -> None:
    members = dict(inspect.getmembers(Stream))
    source = inspect.getsource(Stream.noack_take)
    slots = inspect.getsource(Stream)
    for name in STREAM_INTERNALS:
        assert name in members or f"self.{name}" in slots, name
    # the take is a copy of noack_take with a byte count: the calls it copies are still Faust's own
    for call in ("self.add_processor(add_to_buffer)", "self._enable_passive(", "self._processors.remove(",
                 "self.wait_for_stopped(", "await self.wait(buffer_consumed)"):
        assert call in source, call


def test_the_direct_hand_off_replaces_the_faust_loop_it_copies() -> None:
    """streams/drain.py copies faust-streaming 0.15.3's drain loop: a Faust whose loop differs keeps its own (this
    test then fails, and the copy is made again from the new source, or dropped)."""
    from faust.transport.consumer import Consumer

    from streams import drain

    original = Consumer._drain_messages
    try:
        assert drain.use_direct_hand_off()
        assert Consumer._drain_messages is drain._drain_messages
    finally:
        Consumer._drain_messages = original  # type: ignore[method-assign]


class _Message:
    def __init__(self, size: int) -> None:
        self.key, self.value = b"k", b"v" * (size - 1)


class _Event:
    def __init__(self, size: int) -> None:
        self.message = _Message(size)


def _queue(maxsize: int, max_bytes: int) -> Any:
    from mode.utils.queues import FlowControlEvent

    from streams.take import ByteBoundedQueue

    return ByteBoundedQueue(maxsize=maxsize, flow_control=FlowControlEvent(), max_bytes=max_bytes)


def test_the_stream_buffer_pauses_a_partition_at_its_bytes_and_resumes_it_under_40_percent() -> None:
    """Put as Faust's conductor puts (``put_nowait_enhanced`` with the partition's pause and resume), taken as the
    stream takes: a few large messages put the buffer under pressure long before its message count would. As in
    mode's queue, the pressure is judged on what the buffer holds before each put."""
    q = _queue(maxsize=4096, max_bytes=1000)
    paused: list[str] = []

    # the conductor makes each partition's two callbacks once (faust/transport/conductor.py)
    callbacks = {tp: (partial(paused.append, tp), partial(paused.remove, tp)) for tp in ("p0", "p1")}

    def put(size: int, tp: str = "p0") -> bool:
        high, drop = callbacks[tp]
        return q.put_nowait_enhanced(_Event(size), on_pressure_high=high, on_pressure_drop=drop)

    assert not any(put(400) for _ in range(3))  # 0, 400, 800 bytes held before each
    assert paused == [] and q.bytes == 1200
    assert put(400) and paused == ["p0"]  # 1,200 held: the partition is paused
    assert not put(400) and paused == ["p0"]  # what the fetcher had in hand is still taken in, paused once
    assert put(100, "p1") and paused == ["p0", "p1"]  # a partition that puts meanwhile is paused too
    assert q.bytes == 2100 and q.qsize() == 6
    for held in (1700, 1300, 900, 500, 100):
        q.get_nowait()
        assert q.bytes == held and paused == ["p0", "p1"]  # 5 messages at most: under 40 % of 4,096, not of bytes
    q.get_nowait()  # 100 bytes held before it: under 40 % of both, one partition resumes
    assert len(paused) == 1 and q.bytes == 0
    q.put_nowait(_Event(10))
    q.get_nowait()
    assert paused == [] and q.bytes == 0
    q.put_nowait(_Event(10))
    q.clear()  # at a rebalance Faust clears the buffers
    assert q.bytes == 0


def test_the_stream_buffer_still_pauses_on_its_message_count() -> None:
    q = _queue(maxsize=10, max_bytes=10**9)
    paused: list[int] = []
    high, drop = partial(paused.append, 1), paused.clear
    for _ in range(9):
        q.put_nowait_enhanced(_Event(1), on_pressure_high=high, on_pressure_drop=drop)
    assert paused == [1]  # 8 held before the 9th put: 10 / 1.25, mode's own ratio


def test_the_ingest_app_makes_its_stream_buffers_bounded_in_bytes() -> None:
    """Faust makes a channel's buffer and a stream's through ``App.FlowControlQueue``: both are bounded."""
    import faust

    from streams.take import ByteBoundedQueue, bound_stream_buffers

    app = faust.App("pitstop-test-buffers", broker="memory://")
    bound_stream_buffers(app, 16 * 2**20)
    channel = app.channel()
    assert isinstance(channel.queue, ByteBoundedQueue) and channel.queue.max_bytes == 16 * 2**20
    assert isinstance(channel.stream().outbox, ByteBoundedQueue)


def test_the_queue_methods_the_byte_bound_replaces_are_modes_own() -> None:
    """The byte-bounded buffer overrides two methods of mode's FlowControlQueue and copies their logic: a mode that
    changes them fails here, and the override is made again from its new source."""
    from mode.utils.queues import FlowControlQueue

    high = inspect.getsource(FlowControlQueue.in_pressure_high_state)
    drop = inspect.getsource(FlowControlQueue.maybe_endorse_pressure_drop)
    assert "if qsize >= pressure_high_size:" in high and "pending.add(callback)" in high
    assert "if size <= pressure_drop_size:" in drop and "pressure_drop_callback = pending.pop()" in drop
    assert "self._put(item)" in inspect.getsource(FlowControlQueue.force_put_nowait)
