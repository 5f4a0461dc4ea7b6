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
from collections.abc import AsyncIterator
from typing import Any

import faust
from mode.utils.futures import notify

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
