"""`pitstop triggers list | reset | replay` and `pitstop retrain` as subprocesses against the real store and broker,
over a drifting workload: what they print, what they write, and what they refuse with one line. Each test's first
command runs as a subprocess, as a shell runs it; most further ones by the command line's main in this process."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import psycopg
import pytest
from kafka import KafkaConsumer

from feedback.alerts import LogAlertSink
from feedback.config import MonitoringConfig, parse_config
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.store import FeedbackStore, drop_store, migrate
from feedback.triggers.engine import TriggerEngine
from pitstop.settings import Topics
from tests.conftest import Services
from tests.factories import DRIFT_HOUR, DRIFT_TOML, T0, drifting_hour

TOML = DRIFT_TOML
LEGACY = """
[models.legacy]
task = "classification"
positive_class = 1
[models.legacy.triggers]
enabled = false
"""
CHANGE = T0 + timedelta(hours=DRIFT_HOUR)
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "retrain_trigger.schema.json").read_text())


def run_hours(store: FeedbackStore, engine: TriggerEngine, hours: range) -> None:
    """Write each hour, then run a monitor round with the engine deciding at the end of it (as a worker does)."""
    monitor = Monitor(store, store.windows)  # type: ignore[arg-type]
    for hour in hours:
        store.write_batch(*drifting_hour(hour, accuracy_after=0.825))
        wall_now = T0 + timedelta(hours=hour + 1)
        monitor.run_once(after=lambda conn, evs, wall_now=wall_now: engine.run(conn, evs, wall_now=wall_now))


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pitstop.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


#: how a command's process prints a log record on stderr (``pitstop.cli.main``'s ``logging.basicConfig``)
_LOG_LINE = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")


@pytest.fixture
def in_process(pitstop_main, caplog: pytest.LogCaptureFixture) -> Callable[..., subprocess.CompletedProcess[str]]:
    """`pitstop ARGS` by the command line's main in this process, for a test's commands after its first from a shell:
    the same exit code, stdout and stderr without an interpreter's start-up (a second or more on a loaded machine).
    Its log records at WARNING and above are added to its stderr as its process would print them (here they reach
    pytest's handlers instead), so that a one-line check sees them as from a shell."""

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        caplog.clear()
        done = pitstop_main(env, *args)
        logged = "".join(_LOG_LINE.format(record) + "\n" for record in caplog.records
                         if record.levelno >= logging.WARNING)
        return subprocess.CompletedProcess(done.args, done.returncode, done.stdout, done.stderr + logged)

    return run


def cli_env(services: Services, schema: str, config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=schema, PITSTOP_CONFIG=str(config),
               PITSTOP_STATE_DIR=str(config.parent / "state"), **extra)
    return env


def one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stdout == "", (done.stdout, done.stderr)
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def counts(database_url: str, schema: str) -> dict[str, int]:
    """Rows of every table a decision could touch."""
    tables = ("retrain_decisions", "outbox", "trigger_state", "trigger_resets", "retrain_outcomes")
    with psycopg.connect(database_url, options=f"-c search_path={schema}") as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}  # type: ignore[index]


def minute(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M}"


@dataclass(frozen=True)
class DriftedHistory:
    """Ten hours of a drifting workload decided by the live engine, in a schema of its own."""

    env: dict[str, str]
    database_url: str
    schema: str
    decision_id: str
    fired_at: datetime
    sentence: str


@pytest.fixture(scope="module")
def history(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DriftedHistory]:
    """The drifting history, built once for the tests that only read it."""
    schema = f"t_triggers_cli_{uuid.uuid4().hex[:8]}"
    config_path = tmp_path_factory.mktemp("triggers_cli") / "pitstop.toml"
    config_path.write_text(TOML)
    config = parse_config(TOML)
    migrate(services.database_url, schema)
    try:
        with FeedbackStore(services.database_url, schema, windows=WindowUpdater(config)) as store:
            run_hours(store, TriggerEngine(config, LogAlertSink()), range(10))
            [(decision_id, fired_at, sentence)] = store.rows(
                "SELECT decision_id, fired_at, sentence FROM retrain_decisions WHERE status = 'fired'")
        yield DriftedHistory(env=cli_env(services, schema, config_path), database_url=services.database_url,
                             schema=schema, decision_id=decision_id, fired_at=fired_at, sentence=sentence)
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            drop_store(conn, schema)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "pitstop.toml"
    path.write_text(TOML + LEGACY)
    return path


@pytest.fixture
def monitoring(config_path: Path) -> MonitoringConfig:
    return parse_config(config_path.read_text())


# --- list -------------------------------------------------------------------------------------------------------


def test_list_shows_the_fired_decision_with_its_sentence(history: DriftedHistory, in_process) -> None:
    """`triggers list` shows the drift decision the engine fired: kind, urgency, status, change point, labels, the
    sentence whole and its event still queued in the outbox; --json gives the same as objects."""
    done = run_cli(history.env, "triggers", "list", "--model", "churn")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "churn: 1 retrain decision, newest first (event time, UTC)"
    row = lines[2].split()
    assert row[2:5] == ["drift", "elevated", "fired"] and " ".join(row[5:7]) == minute(CHANGE), lines[2]
    assert row[-2:] == ["queued", "-"], lines[2]
    assert lines[3].strip() == f"fired {minute(history.fired_at)}: {history.sentence}"

    done = in_process(history.env, "triggers", "list", "--model", "churn", "--json")
    assert done.returncode == 0, done.stderr
    [decision] = json.loads(done.stdout)
    assert decision["decision_id"] == history.decision_id and decision["sentence"] == history.sentence
    assert (decision["kind"], decision["urgency"], decision["status"]) == ("drift", "elevated", "fired")
    assert decision["change_point"] == "2026-03-01T17:00:00Z"
    assert decision["labels_since_change"] >= decision["labels_needed"] == 5000
    assert decision["event"] == "queued" and decision["published_at"] is None and decision["outcome"] is None

    refused = in_process(history.env, "triggers", "list", "--model", "churn", "--limit", "0")  # by the parser
    assert refused.returncode == 2 and refused.stdout == "", refused
    assert refused.stderr == ("pitstop triggers list: argument --limit: '0': expected an integer >= 1; `pitstop "
                              "triggers list --help` lists the arguments\n"), refused.stderr  # one line
    one_line_error(in_process(history.env, "triggers", "list", "--model", "nope"), "configured models: churn")


def test_list_shows_pool_and_refit_decisions_which_need_no_label_count(services: Services, db_schema: str,
                                                                        config_path: Path) -> None:
    """A pool look and a refit carry the labels since the change but no labels needed (NULL): the table shows the
    count alone (it raised TypeError on every model after a drift episode with the defaults)."""
    from feedback.triggers.engine import Decision, PostgresLedger

    at = CHANGE + timedelta(hours=1)
    with FeedbackStore(services.database_url, db_schema) as store, store.pool.connection() as conn, \
            conn.transaction(), conn.cursor() as cur:
        ledger = PostgresLedger(cur, max_training_s={})
        for kind, hours in (("pool", 1), ("refit", 2)):
            ledger.save(Decision(decision_id=f"churn/{kind}/x", model_name="churn", model_version="v1", kind=kind,
                                 urgency="routine", status="fired", sentence=f"{kind} sentence",
                                 decided_at=at + timedelta(hours=hours), fired_at=at + timedelta(hours=hours),
                                 change_point=CHANGE, labels_since_change=1234 * hours))
    done = run_cli(cli_env(services, db_schema, config_path), "triggers", "list", "--model", "churn")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "churn: 2 retrain decisions, newest first (event time, UTC)"
    assert lines[2].split()[2:5] == ["refit", "routine", "fired"] and " 2,468 " in lines[2], lines[2]
    assert lines[4].split()[2:5] == ["pool", "routine", "fired"] and " 1,234 " in lines[4], lines[4]
    assert "/" not in lines[4].split("fired", 1)[1].split("queued")[0].replace(minute(CHANGE), ""), lines[4]


# --- replay -----------------------------------------------------------------------------------------------------


def test_replay_fires_at_the_change_point_and_writes_nothing(history: DriftedHistory, in_process) -> None:
    """A replay over the drifting history fires the live engine's decision at the same event time with the drift's
    change point, after a pending wait for labels, and leaves every trigger table as it was."""
    before = counts(history.database_url, history.schema)
    args = ("triggers", "replay", "--model", "churn", "--from", "2026-03-01T12:00", "--to", "2026-03-01T22:00Z")
    done = run_cli(history.env, *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == ("replay churn v1: 10 windows ending 2026-03-01 13:00 to 2026-03-01 22:00 UTC (1h, 10 with "
                        "rows); in memory, nothing written"), lines[0]
    transitions = [line.split() for line in lines[1:-1]]
    assert [t[2:5] for t in transitions] == [["drift", "elevated", "pending"], ["drift", "elevated", "fired"]], lines
    assert " ".join(transitions[1][:2]) == minute(history.fired_at)
    assert all(t[5:8] == ["change", *minute(CHANGE).split()] for t in transitions), lines
    assert lines[-1] == (f"would have fired 1 retrain over 10 windows of churn v1: first at {minute(history.fired_at)} "
                         f"UTC (drift, elevated, change point {minute(CHANGE)} UTC); also 1 pending")

    done = in_process(history.env, *args, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["fired"] == 1 and report["first_fired_at"] == history.fired_at.isoformat().replace("+00:00", "Z")
    fired = [t for t in report["transitions"] if t["status"] == "fired"]
    assert [t["decision_id"] for t in fired] == [history.decision_id]
    assert fired[0]["sentence"].split("; ")[0] in history.sentence
    [event] = report["events"]
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(event)
    assert event["trigger_id"] == history.decision_id and event["change_point"] == "2026-03-01T17:00:00Z"
    assert counts(history.database_url, history.schema) == before


def test_replay_with_higher_drop_levels_fires_nothing(history: DriftedHistory, in_process) -> None:
    """With the elevated and critical drops raised to 50% and 60% for the replay only, the same history fires no
    retrain (the drift is watched), and the stored configuration and decisions are untouched."""
    before = counts(history.database_url, history.schema)
    done = run_cli(history.env, "triggers", "replay", "--model", "churn", "--from", "2026-03-01", "--to",
                   "2026-03-02", "--set", "triggers.performance.elevated=0.5", "--set",
                   "triggers.performance.critical=0.6", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["fired"] == 0 and report["first_fired_at"] is None and report["events"] == []
    assert {t["status"] for t in report["transitions"]} == {"watch"}, report["transitions"]
    assert report["overrides"] == ["triggers.performance.elevated=0.5", "triggers.performance.critical=0.6"]
    done = in_process(history.env, "triggers", "replay", "--model", "churn", "--from", "2026-03-01", "--to",
                      "2026-03-02", "--set", "triggers.performance.elevated=0.5", "--set",
                      "triggers.performance.critical=0.6")
    assert done.stdout.splitlines()[-1] == "would have fired no retrain over 24 windows of churn v1; also 1 watch"
    assert counts(history.database_url, history.schema) == before


def test_replay_errors_are_one_line(history: DriftedHistory, pitstop_main) -> None:
    """A reversed range, an unknown version, a range without windows, a malformed instant and bad overrides each
    fail with one line naming what is wrong (the first from a shell, the others by the command line's main)."""
    base = ("triggers", "replay", "--model", "churn")
    one_line_error(run_cli(history.env, *base, "--from", "2026-03-02", "--to", "2026-03-01"),
                   "--from 2026-03-02 00:00 is after --to 2026-03-01 00:00")
    main = pitstop_main
    one_line_error(main(history.env, *base, "--from", "2026-03-01", "--to", "2026-03-02", "--version", "v9"),
                   "churn v9: no reference profile", "versions with one: v1")
    one_line_error(main(history.env, *base, "--from", "2025-01-01", "--to", "2025-01-02"),
                   "churn: no windows with rows between 2025-01-01 00:00 and 2025-01-02 00:00 UTC",
                   "its windows with rows lie between 2026-03-01 12:00 and 2026-03-01 22:00 UTC")
    one_line_error(main(history.env, *base, "--from", "2026-3-1", "--to", "2026-03-02"),
                   "--from '2026-3-1': expected an instant")
    one_line_error(main(history.env, *base, "--from", "2026-03-01", "--to", "2026-03-02", "--set",
                           "triggers.performance.elevatd=0.1"),
                   "models.churn.triggers.performance.elevatd: unknown key", "did you mean 'elevated'?")
    one_line_error(main(history.env, *base, "--from", "2026-03-01", "--to", "2026-03-02", "--set",
                           "triggers.performance.elevated=2"),
                   "models.churn.triggers.performance.elevated = 2: expected a number greater than 0 and less than 1")
    one_line_error(main(history.env, *base, "--from", "2026-03-01", "--to", "2026-03-02", "--set", "psi"),
                   "--set 'psi' is not key=value")


# --- reset ------------------------------------------------------------------------------------------------------


def reject(store: FeedbackStore, *trigger_ids: str) -> None:
    """Record each trigger's candidate as rejected, in this order (as the retrain worker would)."""
    with store.pool.connection() as conn:
        for trigger_id in trigger_ids:
            conn.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome) VALUES (%s, 'churn', "
                         "'rejected')", (trigger_id,))


def test_reset_twice_is_harmless_and_clears_a_tripped_breaker(services: Services, db_schema: str, config_path: Path,
                                                              monitoring: MonitoringConfig, in_process) -> None:
    """After three rejected candidates a manual retrain still fires, but the drift decision is held back by the
    breaker until `triggers reset`; a second reset finds nothing tripped (the count starts again at a reset)."""
    env = cli_env(services, db_schema, config_path)
    engine = TriggerEngine(monitoring, LogAlertSink())
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(monitoring)) as store:
        reject(store, "old/1", "old/2", "old/3")
        run_hours(store, engine, range(DRIFT_HOUR))

        done = run_cli(env, "retrain", "--model", "churn", "--reason", "new plan tiers", "--by", "ana")
        assert done.returncode == 0 and "churn: fired churn/manual/" in done.stdout, (done.stdout, done.stderr)
        manual = store.scalar("SELECT decision_id FROM retrain_decisions WHERE kind = 'manual' AND status = 'fired'")
        reject(store, manual)

        run_hours(store, engine, range(DRIFT_HOUR, 12))
        [(status, why)] = store.rows("SELECT status, suppressed_by FROM retrain_decisions WHERE kind = 'drift'")
        assert status == "suppressed" and why.startswith("circuit breaker: "), why

        done = run_cli(env, "triggers", "reset", "--model", "churn")
        assert done.returncode == 0, done.stderr
        assert done.stdout == ("churn: circuit breaker was tripped (4 rejected candidates in a row since the last "
                               "reset, limit 3); reset: automatic retraining resumes\n")
        done = in_process(env, "triggers", "reset", "--model", "churn", "--by", "ana", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {
            "model": "churn", "was_tripped": False, "rejected_in_row": 0, "limit": 3, "by": "ana",
            "sentence": "churn: circuit breaker was not tripped (0 rejected candidates in a row since the last reset, "
                        "limit 3); reset recorded: automatic retraining goes on"}, done.stdout
        assert store.rows("SELECT reset_by FROM trigger_resets ORDER BY reset_at")[1] == ("ana",)

        Monitor(store, store.windows).run_once(  # type: ignore[arg-type]
            after=lambda conn, evs: engine.run(conn, evs, wall_now=T0 + timedelta(hours=12)))
        [(status, fired_at)] = store.rows("SELECT status, fired_at FROM retrain_decisions WHERE kind = 'drift'")
        assert status == "fired" and fired_at == T0 + timedelta(hours=12)
        assert store.scalar("SELECT count(*) FROM outbox") == 2


# --- retrain ----------------------------------------------------------------------------------------------------


def test_retrain_twice_within_a_minute_makes_one_decision(services: Services, db_schema: str,
                                                          config_path: Path, in_process) -> None:
    """The same request repeated within a minute is one decision with one event, and says so; another request
    while that training runs is recorded as suppressed, with exit code 1."""
    env = cli_env(services, db_schema, config_path)
    args = ("retrain", "--model", "churn", "--reason", "  new plan tiers in the feed ", "--by", "ana")
    while datetime.now(UTC).second >= 45:  # both runs must fall in one UTC minute (each takes about a second)
        time.sleep(0.5)
    first, second = run_cli(env, *args), run_cli(env, *args)
    assert first.returncode == 0 and second.returncode == 0, (first.stderr, second.stderr)
    [line, event] = first.stdout.splitlines()
    assert line.startswith("churn: fired churn/manual/") and line.endswith(": manual request by ana: new plan tiers "
                                                                          "in the feed"), line
    assert event.startswith("event is in the outbox; a worker's relay publishes it to pitstop.retrain-triggers")
    request = line.split()[2].rstrip(":")
    again = second.stdout.splitlines()
    assert again[0].startswith(f"churn: request {request} was already recorded at "), again
    assert again[1] == line and again[2] == event
    with psycopg.connect(services.database_url, options=f"-c search_path={db_schema}") as conn:
        assert conn.execute("SELECT decision_id, status FROM retrain_decisions").fetchall() == [(request, "fired")]
        assert conn.execute("SELECT event_id FROM outbox").fetchall() == [(request,)]

    other = in_process(env, "retrain", "--model", "churn", "--reason", "another reason", "--id", "r-2", "--by", "bo")
    assert other.returncode == 1, other.stderr
    assert other.stdout == (f"churn: suppressed churn/manual/r-2: a training for this model is already running "
                            f"(trigger {request}); request: manual request by bo: another reason\n")
    assert counts(services.database_url, db_schema)["retrain_decisions"] == 2
    assert counts(services.database_url, db_schema)["outbox"] == 1


def test_malformed_retrain_requests_fail_with_one_line(services: Services, db_schema: str,
                                                       config_path: Path, in_process) -> None:
    """An unknown model, an empty, blank, multi-line or 501-character reason, a bad id and a model whose triggers
    are disabled each fail with one line saying what to do, and record nothing."""
    env = cli_env(services, db_schema, config_path)
    retrain = ("retrain", "--model")
    one_line_error(run_cli(env, *retrain, "nope", "--reason", "x"), "model 'nope' is not configured",
                   "configured models: churn, legacy")
    one_line_error(in_process(env, *retrain, "churn", "--reason", ""), "--reason is empty")
    one_line_error(in_process(env, *retrain, "churn", "--reason", " \t "), "--reason is empty")
    one_line_error(in_process(env, *retrain, "churn", "--reason", "x" * 501), "--reason is 501 characters long",
                   "keep it to 500")
    one_line_error(in_process(env, *retrain, "churn", "--reason", "two\nlines"), "give one line")
    one_line_error(in_process(env, *retrain, "churn", "--reason", "x", "--id", "a b"), "--id 'a b'")
    one_line_error(in_process(env, *retrain, "legacy", "--reason", "x"), "model 'legacy' has retrain triggers disabled",
                   "enable them")
    assert counts(services.database_url, db_schema)["retrain_decisions"] == 0
    done = in_process(env, *retrain, "churn", "--reason", "x" * 500, "--id", "long")
    assert done.returncode == 0, done.stderr


def test_retrain_with_a_broker_publishes_the_event(services: Services, db_schema: str, config_path: Path,
                                                   topics: Topics, in_process) -> None:
    """With a broker configured the fired request's event is on `<prefix>retrain-triggers` when the command returns,
    valid against its schema and marked published; with the broker unreachable it stays in the outbox."""
    env = cli_env(services, db_schema, config_path, PITSTOP_KAFKA_BOOTSTRAP=services.kafka_bootstrap,
                  PITSTOP_TOPIC_PREFIX=topics.prefix)
    done = run_cli(env, "retrain", "--model", "churn", "--reason", "new plan tiers", "--by", "ana", "--id", "r-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "churn: fired churn/manual/r-1: manual request by ana: new plan tiers",
        f"event published to {topics.retrain_triggers}",
    ]
    consumer = KafkaConsumer(topics.retrain_triggers, bootstrap_servers=services.kafka_bootstrap,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=20_000)
    try:
        message = next(iter(consumer))
    finally:
        consumer.close()
    event = json.loads(message.value)
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(event)
    assert message.key == b"churn"
    assert {k: event[k] for k in ("trigger_id", "model_name", "kind", "urgency", "requested_by", "reason")} == {
        "trigger_id": "churn/manual/r-1", "model_name": "churn", "kind": "manual", "urgency": "routine",
        "requested_by": "ana", "reason": "manual request by ana: new plan tiers"}
    listed = json.loads(in_process(env, "triggers", "list", "--model", "churn", "--json").stdout)
    assert [(d["decision_id"], d["event"]) for d in listed] == [("churn/manual/r-1", "published")]

    with psycopg.connect(services.database_url, autocommit=True, options=f"-c search_path={db_schema}") as conn:
        conn.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome) VALUES ('churn/manual/r-1', "
                     "'churn', 'candidate')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    done = run_cli({**env, "PITSTOP_KAFKA_BOOTSTRAP": closed}, "retrain", "--model", "churn", "--reason", "again",
                   "--by", "ana", "--id", "r-2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "churn: fired churn/manual/r-2: manual request by ana: again"
    assert lines[1].startswith(f"event stays in the outbox (broker {closed}: ") and lines[1].endswith(
        f"a worker's relay publishes it to {topics.retrain_triggers}"), lines[1]
    with psycopg.connect(services.database_url, options=f"-c search_path={db_schema}") as conn:
        assert conn.execute("SELECT event_id, sent_at IS NOT NULL FROM outbox ORDER BY id").fetchall() == [
            ("churn/manual/r-1", True), ("churn/manual/r-2", False)]
