"""Faust's ``Stream.noack_take`` with a bound on bytes as well as on messages.

Faust counts a take's buffer in messages only. The ingest gains from large takes of single-event messages (the
transaction's cost is shared by more events: 5,000 messages measured 0.67-0.76x the bare agent against 0.47-0.60x
with 500, BENCHMARKS.md), but a take of 5,000 messages of up to ``PITSTOP_MAX_MESSAGE_BYTES`` each could hold
gigabytes. :func:`noack_take_bounded` ends a take at whichever comes first: ``max_messages`` messages,
``max_bytes`` bytes of keys and values (the message that crosses it included), or ``within`` seconds.

It is faust-streaming 0.15's ``noack_take`` (``faust/streams.py``) with the byte count added and nothing else
changed: the buffer is filled by a processor while the stream is consumed passively, the processor waits while the
buffer is full or being consumed, and nothing is acked (the agent acks each event after its batch has committed).
It uses the stream's internals that ``noack_take`` itself uses; ``tests/unit/test_take.py`` fails should a Faust
upgrade move them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import faust
from mode.utils.futures import notify
from mode.utils.queues import ThrowableQueue

#: The Stream internals this module relies on (checked by the tests against the installed Faust).
STREAM_INTERNALS = ("add_processor", "_enable_passive", "_processors", "_active_agens", "current_event", "wait",
                    "wait_for_stopped", "should_stop", "enable_acks", "crash", "channel", "loop")


def message_bytes(message: Any) -> int:
    """What one message (Faust's or an :class:`~feedback.store.ingest.InboundMessage`) holds in memory, as far as
    the bound goes: its key's and its value's bytes."""
    return len(message.key or b"") + len(message.value or b"")


async def noack_take_bounded(stream: Any, max_messages: int, max_bytes: int,
                             within: float) -> AsyncIterator[list[faust.EventT]]:
    """Yield lists of the stream's events (not values), unacked, each ending at ``max_messages`` messages, at
    ``max_bytes`` bytes (:func:`message_bytes`, the crossing message included) or after ``within`` seconds."""
    buffer: list[faust.EventT] = []
    size = 0
    buffer_full = asyncio.Event()
    buffer_consumed = asyncio.Event()
    buffer_consuming: asyncio.Future[None] | None = None
    stream_enable_acks: bool = stream.enable_acks
    channel_it = stream.channel.__aiter__()

    async def add_to_buffer(value: Any) -> Any:
        nonlocal buffer_consuming, size
        try:
            if buffer_consuming is not None:  # the buffer is being consumed after a timeout
                try:
                    await buffer_consuming
                finally:
                    buffer_consuming = None
            event = stream.current_event
            if event is None:
                reason = "Take buffer found current_event is None"
                raise RuntimeError(reason)
            buffer.append(event)
            size += message_bytes(event.message)
            if len(buffer) >= max_messages or size >= max_bytes:
                buffer_full.set()
                buffer_consumed.clear()
                await stream.wait(buffer_consumed)  # a full buffer takes nothing more until it is consumed
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # the agent acks each event once its batch has committed
    stream.add_processor(add_to_buffer)
    stream._enable_passive(channel_it)
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(buffer_full, timeout=within)
            if buffer:
                buffer_consuming = stream.loop.create_future()
                try:
                    yield list(buffer)
                finally:
                    buffer.clear()
                    size = 0
                    notify(buffer_consuming)
                    buffer_full.clear()
                    buffer_consumed.set()
    finally:
        stream.enable_acks = stream_enable_acks
        stream._processors.remove(add_to_buffer)


def take_batches(stream: Any, max_messages: int, max_bytes: int, within: float) -> AsyncIterator[list[faust.EventT]]:
    """:func:`noack_take_bounded`, registered on the stream as Faust registers its own takes, so that the stream's
    ``on_stop`` closes the generator (acks restored, processor detached) however the agent ends."""
    agen = noack_take_bounded(stream, max_messages, max_bytes, within)
    stream._active_agens.add(agen)
    return agen


class ByteBoundedQueue(ThrowableQueue):
    """Faust's stream buffer (``App.FlowControlQueue``), bounded in bytes as well as in messages.

    Faust counts a stream's buffer in messages (``stream_buffer_maxsize``, 4,096): the conductor pauses fetching a
    partition once the buffer holds 80 % of that, and resumes it once the buffer is down to 40 % (or empty). With
    batched messages of 130 KB a backlog filled it with 4,096 of them, 537 MB (``bench/soak.py``), and messages of
    up to ``PITSTOP_MAX_MESSAGE_BYTES`` could fill it with gigabytes. This queue is under that same pressure once it
    holds ``max_bytes`` of keys and values too, and its pressure drops only once both its messages and its bytes
    are down to 40 %. A message already fetched is still taken in (as Faust does), so it can hold ``max_bytes``
    plus what the fetcher had in hand."""

    def __init__(self, *args: Any, max_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_bytes = max_bytes
        self.bytes = 0

    def _put(self, item: Any) -> None:  # asyncio.Queue's own hooks: every put and get goes through them
        self.bytes += _item_bytes(item)
        super()._put(item)  # type: ignore[misc]

    def _get(self) -> Any:
        item = super()._get()  # type: ignore[misc]
        self.bytes -= _item_bytes(item)
        return item

    def clear(self) -> None:
        super().clear()
        self.bytes = 0

    def in_pressure_high_state(self, callback: Callable[[], None]) -> bool:
        pending = self._pending_pressure_drop_callbacks
        if callback not in pending and (self.qsize() >= self.pressure_high_size or self.bytes >= self.max_bytes):
            pending.add(callback)
            self.on_pressure_high()
            return True
        return False

    def maybe_endorse_pressure_drop(self) -> None:
        pending = self._pending_pressure_drop_callbacks
        if not pending:
            return
        if not self.qsize():  # empty: every paused partition resumes
            for resume in pending:
                resume()
            pending.clear()
            self.on_pressure_drop()
        elif self.qsize() <= self.pressure_drop_size and self.bytes <= self.max_bytes * self.pressure_drop_ratio:
            pending.pop()()  # one partition resumes a get; the items left call the others'
            self.on_pressure_drop()


def _item_bytes(item: Any) -> int:
    """A buffered event's message's bytes (:func:`message_bytes`); 0 for anything else a queue may hold."""
    message = getattr(item, "message", None)
    return message_bytes(message) if message is not None else 0


def bound_stream_buffers(app: faust.App, max_bytes: int) -> None:
    """Make ``app``'s stream buffers :class:`ByteBoundedQueue` of ``max_bytes``."""

    def flow_control_queue(maxsize: int | None = None, *, clear_on_resume: bool = False) -> ThrowableQueue:
        return ByteBoundedQueue(maxsize=maxsize, flow_control=app.flow_control, clear_on_resume=clear_on_resume,
                                max_bytes=max_bytes)

    app.FlowControlQueue = flow_control_queue  # type: ignore[method-assign]
