"""What kafka-python's producer costs with the C CRC-32C (the `crc32c` package, a dependency) and with the pure
Python one it falls back to without it: the CPU of producing the same messages to a local Tansu broker.

kafka-python checksums each record batch it builds (``DefaultRecordBatchBuilder.write_header``); every Pitstop
producer (``PitstopProducer`` in model servers, the outbox relay, the demo) goes through it. aiokafka, under the
Faust workers, has a checksum of its own in C and is not measured here.

Run from the repository root::

    .venv/bin/python bench/producer_crc.py                  # 50,000 messages of about 300 bytes, each mode
    .venv/bin/python bench/producer_crc.py --messages 200000 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _modes import each_in_its_own_process  # bench/_modes.py, beside this script

MODES = ("c", "python")
MESSAGE = (b'{"prediction_id":"p-000001","model_name":"churn","model_version":"v1","predicted_at":'
           b'"2026-01-01T00:00:00Z","features":{"a":1.5,"b":"x"},"prediction":1}') * 2


def _one_mode(mode: str, messages: int) -> dict[str, float]:
    from kafka import KafkaProducer
    from kafka.record import default_records, util

    from pitstop import stack

    if util.crc32c_c is None:
        sys.exit("the crc32c package is not installed: `make .venv/.installed` installs it")
    if mode == "python":
        default_records.calc_crc32c = util.crc32c_py  # what kafka-python does without the package
    with tempfile.TemporaryDirectory() as state:
        broker = stack.start_broker(Path(state))
        try:
            stack.ensure_topics(broker.address, ["bench"], 4)
            producer = KafkaProducer(bootstrap_servers=broker.address, acks="all", linger_ms=5, batch_size=256 * 1024)
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(messages):
                producer.send("bench", MESSAGE)
            producer.flush()
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            producer.close()
        finally:
            stack.stop_process(broker)
    return {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "messages_per_cpu_s": round(messages / cpu)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(_one_mode(args.mode, args.messages)))
        return 0
    # the pure Python mode patches kafka-python: it must not reach the other
    report = {"messages": args.messages, "message_bytes": len(MESSAGE),
              **each_in_its_own_process(__file__, MODES, "--messages", str(args.messages))}
    report["cpu_ratio"] = round(report["python"]["cpu_s"] / report["c"]["cpu_s"], 2)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for mode in MODES:
            r = report[mode]
            print(f"CRC-32C in {mode:6}  {r['cpu_s']:.2f} s CPU, {r['wall_s']:.2f} s wall, "
                  f"{r['messages_per_cpu_s']:,} messages per CPU second")
        print(f"{args.messages:,} messages of {len(MESSAGE)} bytes: the pure Python CRC costs "
              f"{report['cpu_ratio']:.2f}x the CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
