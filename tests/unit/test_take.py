"""The bounded take relies on Faust's Stream internals that its own ``noack_take`` uses."""

from __future__ import annotations

import inspect

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
