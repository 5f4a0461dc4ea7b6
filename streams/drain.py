"""Faust's consumer drain loop without its per-message ``wait_first`` while the flow runs (issue 19).

faust-streaming 0.15's ``Consumer._drain_messages`` hands every fetched message to the conductor with
``await self.wait_first(callback(message), self.suspend_flow.wait())``: four futures and an ``asyncio.wait`` per
message, 37 % of the ingest worker's event-loop thread (py-spy, ``../shared/research/single-event-ingest/``). The
``wait_first`` is there so that a rebalance (``stop_flow`` sets ``suspend_flow``) abandons a hand-off blocked on a
full stream queue (faust-streaming PR #223, "Discard message after rebalance").

:func:`use_direct_hand_off` installs a copy of that loop which awaits the callback directly while the flow is not
suspended, and keeps Faust's ``wait_first`` whenever it is. What changes is one case: a hand-off already blocked
on a full queue when a rebalance starts completes when the agent frees room, instead of being cancelled. That
message then meets what every message already queued at a rebalance meets: the stream skips a message of an older
consumer generation, or while the flow is inactive (``Stream._py_aiter``, the other half of PR #223), and after
the rebalance the consumer seeks to the committed offsets. For Pitstop's ingest, whose write is idempotent and whose
ack follows the commit, that is at worst a message written twice, never one lost: the kill -9 and rebalance tests
(tests/integration/test_faults.py, test_restarts.py) run on this loop.

The copy is installed only over the exact Faust source it was made from (:data:`FAUST_SOURCE_SHA256`); any other
Faust keeps its own loop, with a warning.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from faust.transport import consumer as faust_consumer
from mode import Service, ServiceT

log = logging.getLogger(__name__)

#: sha256 of faust-streaming 0.15.3's ``Consumer._drain_messages`` source, which :func:`_drain_messages` copies
FAUST_SOURCE_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
_ORIGINAL = faust_consumer.Consumer._drain_messages


def use_direct_hand_off() -> bool:
    """Install :func:`_drain_messages` on Faust's consumer when Faust's own is the one it copies; returns whether it
    did."""
    source = inspect.getsource(_ORIGINAL)
    if hashlib.sha256(source.encode()).hexdigest() != FAUST_SOURCE_SHA256:
        log.warning("faust's Consumer._drain_messages is not the one streams/drain.py copies: keeping Faust's")
        return False
    faust_consumer.Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    return True


async def _drain_messages(self: Any, fetcher: ServiceT) -> None:  # pragma: no cover - Faust's loop
    # faust-streaming 0.15.3, faust/transport/consumer.py, Consumer._drain_messages; the change is marked CHANGED
    callback = self.callback
    getmany = self.getmany
    consumer_should_stop = cast(Service, self)._stopped.is_set
    fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
    suspended = self.suspend_flow.is_set  # CHANGED: read once per message below

    get_read_offset = self._read_offset.__getitem__
    set_read_offset = self._read_offset.__setitem__
    flag_consumer_fetching = faust_consumer.CONSUMER_FETCHING
    set_flag = self.diag.set_flag
    unset_flag = self.diag.unset_flag
    commit_every = self._commit_every
    acks_enabled_for = self.app.topics.acks_enabled_for

    yield_every = 100
    num_since_yield = 0
    sleep = asyncio.sleep

    try:
        while not (consumer_should_stop() or fetcher_should_stop()):
            set_flag(flag_consumer_fetching)
            ait = cast(AsyncIterator, getmany(timeout=1.0))

            # Sleeping because sometimes getmany is called in a loop
            # never releasing to the event loop
            await self.sleep(0)
            if not self.should_stop:
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0

                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is None or offset >= r_offset:
                        gap = offset - (r_offset or 0)
                        # We have a gap in income messages
                        if gap > 1 and r_offset:
                            acks_enabled = acks_enabled_for(message.topic)
                            if acks_enabled:
                                await self._add_gap(tp, r_offset + 1, offset)
                        if commit_every is not None:
                            if self._n_acked >= commit_every:
                                self._n_acked = 0
                                await self.commit()
                        if suspended():  # CHANGED: Faust's wait_first only while the flow is suspended
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        else:
                            await callback(message)
                        set_read_offset(tp, offset)
                    else:
                        self.log.dev(
                            "DROPPED MESSAGE ROFF %r: k=%r v=%r",
                            offset,
                            message.key,
                            message.value,
                        )
                unset_flag(flag_consumer_fetching)

    except self.consumer_stopped_errors:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Broker stopped consumer, shutting down...")
            return
        raise
    except asyncio.CancelledError:
        if self.transport.app.should_stop:
            # we're already stopping so ignore
            self.log.info("Consumer shutting down for user cancel.")
            return
        raise
    except Exception as exc:
        self.log.exception("Drain messages raised: %r", exc)
        raise
    finally:
        unset_flag(flag_consumer_fetching)
