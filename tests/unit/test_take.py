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
