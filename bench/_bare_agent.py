"""Reference process for ``bench/ingest.py``: a bare Faust agent that only counts messages.

It runs the same Faust app settings as the ingest worker (``streams/app.py``: session timeout
6 s, heartbeat 1 s, web server off, raw bytes, earliest offsets, one agent, ``concurrency=1``)
over the same topics, and does nothing with a message but count it, so its rate is what Faust
itself can deliver to an agent on this machine. ``bench/ingest.py`` starts it as its own process;
it is not meant to be run by hand, but can be::

    BENCH_BOOTSTRAP=127.0.0.1:9092 BENCH_TOPICS=a.predictions,a.outcomes BENCH_APP_ID=count-1 \\
    BENCH_STATE_DIR=/tmp/bench BENCH_READY_FILE=/tmp/bench/ready BENCH_DONE_FILE=/tmp/bench/done \\
    BENCH_EXPECTED_MESSAGES=1000 .venv/bin/python bench/_bare_agent.py --bench-bare=1

Modes (``BENCH_MODE``):
  ``take`` (default) - ``stream.noack_take(500, within=0.2)`` and an ``ack`` per event after
      the batch, the worker's own consumption shape minus the decode and the database write.
  ``iter`` - ``async for value in stream``, the plainest agent.

When the count reaches ``BENCH_EXPECTED_MESSAGES`` it writes ``BENCH_DONE_FILE`` (JSON with the
wall-clock times of the first and the last count, how many the first count was, and the times and
counts where it first reached 10 % and 90 % of the messages) and keeps running until it is stopped.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import faust


def main() -> int:
    env = os.environ
    bootstrap = env["BENCH_BOOTSTRAP"]
    topics = env["BENCH_TOPICS"].split(",")
    app_id = env["BENCH_APP_ID"]
    state_dir = Path(env["BENCH_STATE_DIR"])
    ready_file = Path(env["BENCH_READY_FILE"])
    done_file = Path(env["BENCH_DONE_FILE"])
    expected = int(env["BENCH_EXPECTED_MESSAGES"])
    mode = env.get("BENCH_MODE", "take")
    batch = int(env.get("BENCH_BATCH_MESSAGES", "500"))
    within = float(env.get("BENCH_BATCH_WITHIN_S", "0.2"))
    partitions = int(env.get("BENCH_PARTITIONS", "4"))

    datadir = state_dir / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        datadir=str(datadir),
        web_enabled=False,
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        topic_partitions=partitions,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
    )
    channel = app.topic(
        *topics, value_type=bytes, key_type=bytes, value_serializer="raw", key_serializer="raw"
    )
    state: dict[str, Any] = {"messages": 0, "first": None, "first_count": 0, "done": False, "marks": {}}

    def count(n: int) -> None:
        if state["first"] is None:
            state["first"] = time.time()
            state["first_count"] = n
        state["messages"] += n
        for share in (0.1, 0.9):  # the 10-90 % window: a start-up stall and the last stragglers left out
            if share not in state["marks"] and state["messages"] >= share * expected:
                state["marks"][share] = (time.time(), state["messages"])
        if not state["done"] and state["messages"] >= expected:
            state["done"] = True
            record = {
                "first": state["first"],
                "first_count": state["first_count"],
                "last": time.time(),
                "messages": state["messages"],
                "t10": state["marks"][0.1][0], "n10": state["marks"][0.1][1],
                "t90": state["marks"][0.9][0], "n90": state["marks"][0.9][1],
            }
            tmp = done_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(record))
            tmp.replace(done_file)

    if mode == "take":

        @app.agent(channel, name="count", concurrency=1)
        async def count_batches(stream: faust.StreamT[Any]) -> None:
            async for events in stream.noack_take(batch, within=within):
                count(len(events))
                for event in events:
                    await stream.ack(event)

    elif mode == "iter":

        @app.agent(channel, name="count", concurrency=1)
        async def count_values(stream: faust.StreamT[Any]) -> None:
            async for _value in stream:
                count(1)

    else:
        print(f"BENCH_MODE={mode!r}: expected 'take' or 'iter'", file=sys.stderr)
        return 2

    @app.on_rebalance_complete.connect
    async def _mark_ready(sender: faust.App, **_: Any) -> None:
        if not ready_file.exists():
            ready_file.write_text(str(sorted(str(tp) for tp in app.consumer.assignment())))

    worker = faust.Worker(
        app, loglevel="WARNING", quiet=True, redirect_stdouts=False, override_logging=True
    )
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
