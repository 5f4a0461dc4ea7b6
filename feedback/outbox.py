"""The outbox relay: publishes committed decisions' events in order, then marks them sent.

A decision and its outbox row commit together (feedback/triggers/engine.py). The relay reads unsent rows in
id order under an advisory lock (one relay at a time, so the order holds), hands each to ``send``, waits for
the broker to confirm them all (``flush``), and only then marks them sent in the same transaction. A crash
anywhere before that commit leaves them unsent, so they are published again with the same event id: the
consumers ignore an id they have seen. Nothing is lost; nothing is doubled past the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from psycopg.types.json import Jsonb

log = logging.getLogger(__name__)

RELAY_LOCK = 0x5049_5242  # one relay at a time across processes
BATCH = 500

_ENQUEUE = """
INSERT INTO outbox (event_id, topic, key, payload) VALUES (%s, %s, %s, %s) ON CONFLICT (event_id) DO NOTHING
"""
_UNSENT = "SELECT id, event_id, topic, key, payload FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT %s"
_MARK_SENT = "UPDATE outbox SET sent_at = now(), attempts = attempts + 1, last_error = NULL WHERE id = ANY(%s)"
_MARK_FAILED = "UPDATE outbox SET attempts = attempts + 1, last_error = %s WHERE id = ANY(%s)"

#: ``send(topic, key, value)`` hands one message to the producer; ``flush()`` returns once the broker confirmed
#: every message handed over, and raises if any was refused.
Send = Callable[[str, bytes | None, bytes], Any]
Flush = Callable[[], Any]


def enqueue(cur: psycopg.Cursor[Any], event_id: str, topic: str, key: str | None, payload: Any) -> None:
    """Add an event to publish, in the caller's transaction (the decision's): an id already there changes nothing."""
    cur.execute(_ENQUEUE, (event_id, topic, key, Jsonb(payload)))


def relay(conn: psycopg.Connection[Any], send: Send, flush: Flush, *, topic_prefix: str = "pitstop.",
          batch: int = BATCH) -> int:
    """Publish the unsent outbox rows (up to ``batch``); returns how many were published and marked sent.

    Returns 0 when another relay holds the lock. A failure to publish leaves the rows unsent (retried by the
    next call), records the error on them, and is raised.
    """
    ids: list[int] = []
    try:
        with conn.transaction(), conn.cursor() as cur:
            if not cur.execute("SELECT pg_try_advisory_xact_lock(%s, hashtext(current_schema()))",
                               (RELAY_LOCK,)).fetchone()[0]:
                return 0
            rows = cur.execute(_UNSENT, (batch,)).fetchall()
            if not rows:
                return 0
            for row_id, _event_id, topic, key, payload in rows:
                ids.append(row_id)
                send(f"{topic_prefix}{topic}", None if key is None else key.encode(), orjson.dumps(payload))
            flush()
            cur.execute(_MARK_SENT, (ids,))
    except psycopg.Error:
        raise
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("outbox: %d event(s) not published, retried later: %s", len(ids), error)
        if ids:
            with conn.transaction():
                conn.execute(_MARK_FAILED, (error, ids))
        raise
    return len(ids)
