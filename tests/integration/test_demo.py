"""`pitstop demo` end to end: its own stack, the join filling up, every prediction served through the serving
router by the run's first version (registered and deployed by the demo), the loop turning (drift, a retrain, a gated
candidate in its shadow), and nothing left running. The acts to the end take minutes: bench/demo_fast.py runs them
live, tests/integration/test_demo_runs.py in process."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import psycopg
import pytest

from feedback.registry.versions import Registry
from pitstop import stack, supervisor
from pitstop.demo import world
from tests.conftest import stack_root

# At the defaults (200 predictions per second, an event hour per second): drift starts 24 s in and is complete at
# 30 s; a 6-hour window fills in 6 s; the drift retrain fires at about 50 s and its outcome (a candidate, whose
# shadow starts at once) comes 2-3 s later.
DEMO_SECONDS = 66
TIMEOUT_S = 200.0
#: how much later than its recorded_at a shadow's start may commit (see test_demo_console_matches_the_store)
SHADOW_START_COMMIT_S = timedelta(seconds=10)


@dataclass(frozen=True)
class DemoRun:
    returncode: int | None
    text: str
    state_dir: Path
    seen: dict[int, stack.ProcessRecord]
    still_mentioned: list[str]
    #: the demo read its timeline from the database after this instant (it had not yet printed the line before it)
    timeline_read_after: datetime


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match is not None, f"no match for {pattern!r} in the demo's output:\n{text}"
    return int(match.group(1).replace(",", ""))


def _recorded(state_dir: Path) -> list[stack.ProcessRecord]:
    record = stack.StackRecord.load(state_dir)
    found = [record.supervisor, record.broker, record.postgres, *record.workers]
    return [p for p in found if p is not None]


def _processes_mentioning(text: str) -> list[str]:
    """Processes whose command line or environment names ``text`` (this test's state dir)."""
    hits = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid == os.getpid():
                continue
            if text in " ".join(proc.info["cmdline"] or ()):
                hits.append(f"{proc.pid}: {' '.join(proc.info['cmdline'])}")
            elif any(text in value for value in proc.environ().values()):
                hits.append(f"{proc.pid} (environment): {' '.join(proc.info['cmdline'] or ())}")
    return hits


#: the line the demo prints when its run ends, before its reports and the timeline it reads from the database
_BEFORE_TIMELINE = "letting the workers catch up"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """One `pitstop demo --duration 66` without configured services (it starts and stops its own stack)."""
    root = stack_root()
    state_dir = (root / "state").resolve()
    env = {k: v for k, v in os.environ.items()
           if k not in ("PITSTOP_KAFKA_BOOTSTRAP", "PITSTOP_DATABASE_URL", "PITSTOP_DB_SCHEMA", "PITSTOP_CONFIG")}
    env["PITSTOP_STATE_DIR"] = str(state_dir)
    cwd = tmp_path_factory.mktemp("demo")
    output = cwd / "demo.out"
    seen: dict[int, stack.ProcessRecord] = {}
    timeline_read_after = datetime.now(UTC)
    try:
        with open(output, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pitstop.cli", "demo", "--duration", str(DEMO_SECONDS)],
                cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + TIMEOUT_S
            try:
                while proc.poll() is None and time.monotonic() < deadline:
                    with contextlib.suppress(ValueError, KeyError, TypeError):  # a file being replaced
                        seen.update((p.pid, p) for p in _recorded(state_dir))
                    now = datetime.now(UTC)
                    if _BEFORE_TIMELINE not in output.read_text(errors="replace"):
                        timeline_read_after = now  # the line is printed after now, the timeline read after it
                    time.sleep(0.5)
            finally:
                if proc.poll() is None:  # too slow: stop it the way an operator would, then for sure
                    proc.terminate()
                    try:
                        proc.wait(60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
                    supervisor.stop_recorded(stack.StackRecord.load(state_dir))
        yield DemoRun(proc.returncode, output.read_text(errors="replace"), state_dir, seen,
                      _processes_mentioning(str(state_dir)), timeline_read_after)
    finally:
        stack.stop_postgres(state_dir / "pgdata")  # started again by a test, if it failed to stop it
        shutil.rmtree(root, ignore_errors=True)


def _monitor_table(text: str, version: str) -> dict[str, str]:
    """Status per feature in the drift table of the demo's `pitstop monitor` report of ``version``."""
    block = text.split(f"pitstop monitor --model churn --version {version} ", 1)[1].split("\n\n", 1)[0]
    return dict(re.findall(r"^\s{4}([a-z][a-z_]*)\s+(drift|stable)\s", block, re.MULTILINE))


def test_demo_joins_outcomes_and_leaves_nothing_running(demo_run: DemoRun) -> None:
    """`pitstop demo` without configured services starts a stack, stores and joins predictions with their
    outcomes, dead-letters the malformed messages, shows drift on exactly the shifted features, exits 0, and
    stops every process it started."""
    text = demo_run.text
    assert demo_run.returncode == 0, f"demo exited with {demo_run.returncode}:\n{text}"
    stored = _number(r"stored\s+([\d,]+) predictions;", text)
    joined = _number(r"([\d,]+) with a label", text)
    dead_letters = _number(r"([\d,]+) dead letters\n", text)
    published = _number(r"published ([\d,]+) predictions", text)
    assert 0 < stored <= published
    assert 0 < joined <= stored
    assert dead_letters > 0
    assert re.search(r"^stopped$", text, re.MULTILINE), text
    # the monitor's drift table of the first version: status per feature in the newest judged window
    first = re.search(r"^model     churn (v1-\d{8}T\d{6}):", text, re.MULTILINE)
    assert first is not None, text
    table = _monitor_table(text, first.group(1))
    assert set(table) == set(world.NUMERIC_FEATURES) | {"region", "plan"}, text
    assert {f for f, status in table.items() if status == "drift"} == set(world.DRIFTING_FEATURES), text
    assert re.search(r"accuracy\s+0\.\d+ \[0\.\d+, 0\.\d+\]", text), text
    # the drift makes one retrain decision: it fires once (pending first, unless a round saw every label at once).
    # Drift with an elevated drop is a drift retrain; where a window's interval falls 10% below the baseline it
    # is a critical performance retrain (both wait for the labels since the change): the live world's timing
    # decides which, and storm control holds back the other
    fired = re.findall(r"^decision  FIRED (drift retrain, elevated|performance retrain, critical): (.*)$", text,
                       re.MULTILINE)
    assert len(fired) == 1 and "drift on 3 of 8 features" in fired[0][1], text
    kind = fired[0][0].split()[0]
    pending = text.find(f"decision  PENDING {kind} retrain")
    assert pending == -1 or pending < text.find(f"decision  FIRED {kind} retrain"), text
    assert re.search(rf"^  fired +{kind} (elevated|critical); trigger event published: churn/{kind}/v1-", text,
                     re.MULTILINE), text

    assert {"broker", "postgres", "worker-0"} <= {p.name for p in demo_run.seen.values()}, demo_run.seen
    still_running = [f"{p.name} (pid {p.pid})" for p in demo_run.seen.values() if stack.is_ours(p)]
    assert still_running == [], f"left running: {still_running}"
    assert not (demo_run.state_dir / stack.STACK_FILE).exists()
    assert demo_run.still_mentioned == []


# --- what the console said, read back from the database the demo left in its state dir --------------------------


def _sql(conn: psycopg.Connection[Any], query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


# the console's accuracy by phase and version, counted afresh from the raw tables
_PHASES = """
SELECT CASE WHEN p.model_version <> %s THEN p.model_version
            WHEN p.predicted_at < %s THEN 'before drift'
            WHEN p.predicted_at < %s THEN 'while drifting' ELSE 'after drift' END,
       count(*), sum((p.prediction = l.label)::int)
FROM predictions p JOIN current_labels l USING (prediction_id) GROUP BY 1
"""


def test_demo_console_matches_the_store(demo_run: DemoRun) -> None:
    """What the console showed of the loop is what the store holds: the drift trigger's outcome and its gate table
    as the retrain worker recorded them, the accuracy by phase as the raw tables count it, the first deployment,
    every prediction routed to the run's first version and served by its registered artifact (its version, and the
    probabilities the artifact computes), and the timeline's training, gates and shadow as the store has them."""
    text = demo_run.text
    assert demo_run.returncode == 0, f"demo exited with {demo_run.returncode}:\n{text}"
    schema = re.search(r"^schema    (demo_\d{8}_\d{6}): ", text, re.MULTILINE)
    first = re.search(r"^model     churn (v1-(\d{8}T\d{6})):", text, re.MULTILINE)
    assert schema is not None and first is not None, text
    feed = world.feed_for_run(datetime.strptime(first.group(2), "%Y%m%dT%H%M%S").replace(tzinfo=UTC))
    drift_starts = feed.clock_start + timedelta(seconds=world.DRIFT_STARTS_AFTER_S)
    pgdata = demo_run.state_dir / "pgdata"
    postgres = stack.start_postgres(pgdata)  # the data the demo leaves, as its last lines say
    try:
        with psycopg.connect(stack.postgres_url(postgres.address), autocommit=True) as conn:
            conn.execute(f'SET search_path TO "{schema.group(1)}"')
            _check_console(conn, text, first.group(1), drift_starts,
                           drift_starts + timedelta(seconds=world.DRIFT_RAMP_S), demo_run.timeline_read_after)
    finally:
        stack.stop_postgres(pgdata)


def _check_console(conn: psycopg.Connection[Any], text: str, first_version: str, drift_starts: datetime,
                   drift_full: datetime, timeline_read_after: datetime) -> None:
    # the drift trigger's outcome, shown live with its gate table as the worker recorded them
    (trigger_id,), = _sql(conn, "SELECT decision_id FROM retrain_decisions WHERE kind IN ('drift', 'performance') "
                                "AND status = 'fired' AND model_version = %s", (first_version,))
    (outcome, sentence), = _sql(conn, "SELECT outcome, sentence FROM retrain_outcomes WHERE trigger_id = %s",
                                (trigger_id,))
    assert f"retrain   {outcome.upper()}: {sentence}\n" in text, text
    (version, stage), = _sql(conn, "SELECT version, stage FROM model_versions WHERE trigger_id = %s", (trigger_id,))
    gates = _sql(conn, "SELECT passed, sentence FROM model_gate_results WHERE version = %s ORDER BY ordinal",
                 (version,))
    marks = {True: "pass", False: "FAIL", None: "info"}
    table = "".join(f"            {marks[passed]}  {gate}\n" for passed, gate in gates)
    assert len(gates) >= 7 and f"{sentence}\n          v2 = churn {version}; its offline gates" in text, text
    assert table in text, text
    assert any(name == "calibration" for (name,) in _sql(conn, "SELECT name FROM model_gate_results WHERE "
                                                                "version = %s", (version,)))

    # the accuracy by phase (the first version) as the raw tables count it; nothing else served
    phases = ("before drift", "while drifting", "after drift")
    counted = {phase: (n, correct) for phase, n, correct in _sql(conn, _PHASES,
                                                                 (first_version, drift_starts, drift_full))
               if phase in phases}  # the others: a challenger's requests, if its ramp started (checked below)
    assert set(counted) == set(phases), counted
    for phase in phases:
        n, correct = counted[phase]
        assert f"{phase} {correct / n:.1%} (n={n:,})" in text, (phase, n, correct, text)
    assert counted["after drift"][1] / counted["after drift"][0] < counted["before drift"][1] / counted[
        "before drift"][0], counted

    # the run's first version is the registry's champion, deployed by the demo's first message; every prediction
    # was routed to it and served by its registered artifact (one request in ~30 timed one at a time)
    assert "deploy    message 1 (steady): v1 serves every customer" in text, text
    assert _sql(conn, "SELECT version, stage FROM model_versions WHERE stage = 'champion'") == [
        (first_version, "champion")]
    # a drift's candidate may pass its shadow early and start its ramp within the run (the champion confirmed
    # degraded): the first version stays champion, and only it and that challenger served
    [(champion, challenger)] = _sql(conn, "SELECT champion, challenger FROM deployments")
    assert champion == first_version, (champion, challenger)
    served = {v for (v,) in _sql(conn, "SELECT DISTINCT model_version FROM predictions")}
    assert served <= {first_version, challenger} and first_version in served, served
    rows = _sql(conn, "SELECT features, prediction, (probabilities->>'1')::float, latency_ms FROM predictions "
                      "ORDER BY predicted_at LIMIT 400")
    with conn.cursor() as cur:
        entry = Registry().get(cur, "churn", first_version)
        assert entry is not None
        model = Registry().load(cur, entry)
    features = pd.DataFrame.from_records([f for f, _, _, _ in rows])
    recomputed = model.predict_proba(features)[:, [str(c) for c in model.classes_].index("1")]
    assert all(abs(p - q) < 1e-9 for (_, _, p, _), q in zip(rows, recomputed, strict=True))
    assert [int(v) for v in model.predict(features)] == [v for _, v, _, _ in rows]
    timed = [ms for *_, ms in rows if ms is not None]
    assert 0 < len(timed) < len(rows) / 5 and min(timed) > 0, len(timed)
    assert re.search(r"^ +\d+s \d\d-\d\d \d\dh +100% +v1 ", text, re.MULTILINE), text

    # the candidate goes to its shadow (promotion = "shadow"): a day of event time, longer than this run, unless it
    # passes early (the champion confirmed degraded, its gain shown on a few hundred labels) and starts its ramp
    assert outcome == "candidate" and stage in ("candidate", "shadow", "canary"), (outcome, stage)
    assert f"retrain   CANDIDATE: {version}: every gate passed (candidate)" in text, text
    timeline = text.split("\ntimeline of this run", 1)[1]
    assert re.search(rf"^  \d\d-\d\d \d\d:\d\d  training +v2 +candidate: {re.escape(version)}", timeline,
                     re.MULTILINE), timeline
    assert re.search(r"^  \d\d-\d\d \d\d:\d\d  gates +v2 +\d+ passed, 0 failed", timeline, re.MULTILINE), timeline
    # the timeline shows the shadow's start when the store holds it; the demo's workers run on until its stack stops,
    # so a shadow that started after the demo read its timeline is in the store only. Its recorded_at is its
    # transaction's start, and that transaction loads the candidate's artifact (the rollout worker's first load
    # imports skops: seconds on a busy machine) before it commits: a start recorded up to that long before the read
    # can still have been invisible to it (twice so in `make test` once retraining got faster)
    started = [at for (at,) in _sql(conn, "SELECT recorded_at FROM rollout_events WHERE version = %s "
                                          "AND kind = 'shadow_started'", (version,))]
    if re.search(r"^  \d\d-\d\d \d\d:\d\d  shadow started +v2 ", timeline, re.MULTILINE) is not None:
        assert len(started) == 1, (started, timeline)
    else:
        assert len(started) != 1 or started[0] > timeline_read_after - SHADOW_START_COMMIT_S, (
            started, timeline_read_after, timeline)
    assert "scenario  not played out: act one:" in text, text
