"""`pitstop demo --fast` end to end, timed and checked: both acts, the timeline, and what the store says was served.

What it runs: ``python -m pitstop.cli demo --fast`` with no services configured, so the demo starts its own stack
(broker, PostgreSQL, ingest, retrain and rollout workers) in a temporary state folder, plays act one (drift, a
retrain, the candidate's shadow, the ramp 5-10-25-50-100% held, champion) and act two (a deliberately bad candidate
at 5%, rolled back by the controller, the latch cleared by the demo), prints its timeline and stops its stack. It
takes 4-6 minutes on a 2-core machine: the tests do not run it (`make test` has a 10-minute budget).

What it checks, from the demo's output:

* the exit code is 0 and the demo says the scenario played as written;
* the timeline holds, in this order, a fired retrain decision, the candidate's training and gates (none failed),
  its shadow started and passed, ramp steps 5, 10, 25 and 50%, the 100% hold and the promotion; then the bad
  candidate's 5% step (started by the demo), its rollback by the controller, and the latch cleared by the demo;
  and its event times never go back;

and from the store the demo leaves in its state folder (PostgreSQL started again on it):

* every prediction names a registered version, and only the versions the deployments named served;
* the bad candidate's predictions all failed, and none were made after its rollback (event time, with one event
  hour of slack for the router's switch: an event hour is a wall second);
* between two deployment changes, the challenger's share of the predictions is the deployment's share (within
  a few points: the hash on customer ids is not an exact split).

Run from the repository root::

    .venv/bin/python bench/demo_fast.py                 # prints the demo's output as it goes, then the checks
    .venv/bin/python bench/demo_fast.py --quiet         # the timeline and the checks only
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from pitstop import stack, supervisor  # noqa: E402

TIMEOUT_S = 1200.0
#: act one, then act two, as the timeline names their steps (a regular expression on "step version sentence")
ACT_ONE = (r"decision +v1 +\w+ retrain, \w+: FIRED", r"training +(v\d+) +candidate:",
           r"gates +{v} +\d+ passed, 0 failed", r"shadow started +{v}", r"shadow passed +{v}", r"ramp 5% +{v}",
           r"ramp 10% +{v}", r"ramp 25% +{v}", r"ramp 50% +{v}", r"hold 100% +{v}", r"promoted +{v}")
ACT_TWO = (r"ramp 5% +(v\d+) .*\(by pitstop demo\)", r"rolled back +{v} .*failed \d+ of \d+ requests",
           r"latch cleared +{v} .*\(by pitstop demo\)")
#: the challenger's share of the predictions between two deployments may differ from the deployment's by this much
SHARE_SLACK = 0.04


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quiet", action="store_true", help="do not echo the demo's live output")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="wall seconds before the demo is stopped")
    parser.add_argument("--keep", action="store_true", help="keep the state folder (its PostgreSQL data)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pitstop-demo-fast-"))
    state_dir = root / "state"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PITSTOP_KAFKA_BOOTSTRAP", "PITSTOP_DATABASE_URL", "PITSTOP_DB_SCHEMA", "PITSTOP_CONFIG")}
    env["PITSTOP_STATE_DIR"] = str(state_dir)
    lines: list[str] = []
    started = time.monotonic()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "pitstop.cli", "demo", "--fast"], cwd=root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                lines.append(line.rstrip("\n"))
                if not args.quiet:
                    print(line, end="", flush=True)
                if time.monotonic() - started > args.timeout:
                    proc.terminate()
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
                supervisor.stop_recorded(stack.StackRecord.load(state_dir))
        wall_s = time.monotonic() - started
        text = "\n".join(lines)
        block = _timeline(text)
        if args.quiet:
            print("\n".join(block))
        failures = _check_output(code, text, block)
        schema = re.search(r"^schema    (demo_\d{8}_\d{6}): ", text, re.MULTILINE)
        if schema is None:
            failures.append("the demo's output names no schema")
        else:
            failures += _check_store(state_dir / "pgdata", schema.group(1))
    finally:
        stack.stop_postgres(state_dir / "pgdata")
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"pitstop demo --fast: exit code {code}, {wall_s:.0f} s wall time")
    for failure in failures:
        print(f"  FAILED: {failure}")
    print("every check passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


def _timeline(text: str) -> list[str]:
    """The timeline block of the demo's output, its lines joined back (one entry a line)."""
    if "\ntimeline of this run" not in text:
        return []
    block = text.split("\ntimeline of this run", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    entries: list[str] = []
    for line in block:
        if re.match(r"^  \d\d-\d\d \d\d:\d\d ", line) or re.match(r"^  v\d+ ", line):
            entries.append(line)
        elif entries:
            entries[-1] += " " + line.strip()
    return entries


def _check_output(code: int, text: str, block: list[str]) -> list[str]:
    failures = []
    if code != 0:
        failures.append(f"exit code {code}")
    if "scenario  played as written" not in text:
        found = re.search(r"^scenario  (.*)$", text, re.MULTILINE)
        failures.append(f"the scenario did not play as written: {found.group(1) if found else 'no scenario line'}")
    entries = [line for line in block if re.match(r"^  \d\d-\d\d ", line)]
    times = [line[2:13] for line in entries]
    if times != sorted(times):
        failures.append("the timeline's event times go back")
    body = [line[15:] for line in entries]
    at = 0
    for act in (ACT_ONE, ACT_TWO):
        version = None
        for pattern in act:
            regex = re.compile(pattern.format(v=version or r"v\d+"))
            for i in range(at, len(body)):
                match = regex.match(body[i])
                if match:
                    at = i + 1
                    version = version or (match.group(1) if match.groups() else None)
                    break
            else:
                failures.append(f"the timeline has no {regex.pattern!r} after entry {at}")
                return failures
    return failures


def _check_store(pgdata: Path, schema: str) -> list[str]:
    """What the store the demo left says was served."""
    postgres = stack.start_postgres(pgdata)
    with psycopg.connect(stack.postgres_url(postgres.address), autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
        return _served(conn)


def _rows(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def _served(conn: psycopg.Connection[Any]) -> list[str]:
    failures = []
    versions = {v: (n, failed, timed) for v, n, failed, timed in _rows(
        conn, "SELECT model_version, count(*), count(*) FILTER (WHERE error IS NOT NULL), count(latency_ms) "
              "FROM predictions WHERE model_name = 'churn' GROUP BY 1")}
    registered = {v for (v,) in _rows(conn, "SELECT version FROM model_versions WHERE model_name = 'churn'")}
    deployed = {v for row in _rows(conn, "SELECT champion, challenger FROM rollouts") for v in row} | {
        v for (v,) in _rows(conn, "SELECT version FROM model_stage_changes WHERE to_stage = 'champion'")}
    print()
    print("served, by version (from the store):")
    for v, (n, failed, timed) in sorted(versions.items(), key=lambda kv: -kv[1][0]):
        print(f"  {v:<32} {n:>7,} predictions, {failed:>4,} failed, {timed:>6,} timed one at a time")
    if set(versions) - registered:
        failures.append(f"predictions name unregistered versions: {sorted(set(versions) - registered)}")
    if set(versions) - deployed:
        failures.append(f"versions served that no deployment named: {sorted(set(versions) - deployed)}")
    drills = _rows(conn, "SELECT rollout_id, challenger, ended_at FROM rollouts WHERE state = 'rolled_back' AND "
                         "challenger IN (SELECT version FROM model_versions WHERE trainer LIKE '%%FailingModel')")
    if not drills:
        failures.append("no rolled-back bad candidate in the store")
    for _, bad, ended_at in drills:
        n, failed, _ = versions.get(bad, (0, 0, 0))
        late = _rows(conn, "SELECT count(*) FROM predictions WHERE model_version = %s AND predicted_at > %s",
                     (bad, ended_at + timedelta(hours=1)))[0][0]
        print(f"  the bad candidate {bad}: {n:,} requests, {failed:,} failed, {late} after its rollback + 1 event hour")
        if n == 0 or failed != n:
            failures.append(f"the bad candidate {bad} served {n} requests, {failed} of them failed")
        if late:
            failures.append(f"{late} requests reached {bad} more than an event hour after its rollback")
    failures += _shares(conn)
    return failures


def _shares(conn: psycopg.Connection[Any]) -> list[str]:
    """Between two deployment changes (event time, an hour of slack after each), the challenger's share of the
    predictions against the deployment's."""
    failures = []
    print("the challenger's share of the predictions at each step (from the store):")
    for rollout_id, champion, challenger in _rows(conn, "SELECT rollout_id, champion, challenger FROM rollouts "
                                                        "ORDER BY started_at"):
        events = _rows(conn, "SELECT at, share, kind FROM rollout_events WHERE rollout_id = %s AND share IS NOT NULL "
                             "ORDER BY event_id", (rollout_id,))
        for (start, share, kind), (end, _, _) in zip(events, events[1:], strict=False):
            lo: datetime = start + timedelta(hours=1)
            if end - lo < timedelta(hours=1):
                continue
            (n, to_challenger), = _rows(
                conn, "SELECT count(*), count(*) FILTER (WHERE model_version = %s) FROM predictions "
                      "WHERE model_version IN (%s, %s) AND predicted_at >= %s AND predicted_at < %s",
                (challenger, champion, challenger, lo, end))
            observed = to_challenger / n if n else 0.0
            print(f"  {challenger:<32} {kind:<8} {100 * share:>5g}%: {100 * observed:5.1f}% of {n:,} predictions")
            if n >= 200 and abs(observed - share) > SHARE_SLACK:
                failures.append(f"{challenger} at {100 * share:g}% served {100 * observed:.1f}% of {n} predictions")
    return failures


if __name__ == "__main__":
    sys.exit(main())
