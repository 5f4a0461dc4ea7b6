"""Faults with exact counts: the database going away mid-stream, and workers killed with SIGKILL."""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from feedback.store import FeedbackStore, migrate
from pitstop import stack
from pitstop.client import PitstopProducer
from pitstop.settings import Topics
from tests.conftest import Services, stack_root, wait_until
from tests.factories import outcome, prediction


def _counts(store: FeedbackStore) -> tuple[int, int, int]:
    row = store.rows(
        "SELECT (SELECT count(*) FROM predictions), (SELECT count(*) FROM outcomes),"
        " (SELECT count(*) FROM current_labels)"
    )[0]
    return (int(row[0]), int(row[1]), int(row[2]))


def _publish(services: Services, topics: Topics, ids: range, batch_size: int = 50) -> None:
    with PitstopProducer(services.kafka_bootstrap, topics=topics, batch_size=batch_size) as producer:
        for i in ids:
            producer.publish(prediction(i))
            producer.publish(outcome(i, label=i % 2))
            if i % 10 == 0:  # a correction for every tenth
                producer.publish(outcome(i, label=5, after_s=99_999))


@pytest.fixture(scope="module")
def module_postgres() -> Iterator[tuple[Path, int, str]]:
    """A PostgreSQL server of this module's own, initialised once for the tests that stop it."""
    root = stack_root()
    pgdata, port = root / "pgdata", stack.free_port()
    stack.start_postgres(pgdata, port)
    try:
        yield pgdata, port, stack.postgres_url(f"127.0.0.1:{port}")
    finally:
        stack.stop_postgres(pgdata)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def own_postgres(module_postgres: tuple[Path, int, str]) -> tuple[Path, int, str]:
    """A PostgreSQL server no other test uses while this one runs, so the test can stop it without hurting others:
    this module's, running (started again if a test before left it stopped); each test has a schema of its own."""
    pgdata, port, _ = module_postgres
    if stack.postgres_pid(pgdata) is None:
        stack.start_postgres(pgdata, port)
    return module_postgres


def test_database_outage_holds_the_stream_and_loses_nothing(
    services: Services, topics: Topics, db_schema: str, own_postgres: tuple[Path, int, str],
    start_worker: Callable[..., Any],
) -> None:
    """While Postgres is down the worker retries and holds the stream; after it returns every event lands once."""
    pgdata, port, url = own_postgres
    migrate(url, db_schema)
    worker = start_worker(database_url=url)
    with FeedbackStore(url, db_schema) as store:
        _publish(services, topics, range(0, 500))
        wait_until(lambda: _counts(store) == (500, 550, 500), 60, lambda: f"{_counts(store)}")
    stack.stop_postgres(pgdata)
    _publish(services, topics, range(500, 1500))
    # the outage lasts several retries, with backoff, before the database comes back
    wait_until(lambda: worker.log_path.read_text().count("database unavailable") >= 4, 60,
               lambda: f"no retries logged:\n{worker.log_tail()}")
    stack.start_postgres(pgdata, port)
    with FeedbackStore(url, db_schema) as store:
        wait_until(lambda: _counts(store) == (1500, 1650, 1500), 90,
                   lambda: f"{_counts(store)}\n{worker.log_tail()}")
        assert store.scalar("SELECT count(*) FROM current_labels WHERE label = '5'") == 150
        assert store.scalar("SELECT count(*) FROM dead_letters") == 0
    assert stack.is_ours(worker.record), "the worker must survive the outage"


def test_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """SIGKILL during ingestion, several times over, then a clean run: every row exactly once."""
    n = 12_000  # 25,200 messages: each of 4 runs is killed 1,000-4,000 predictions on, so at least 3 are killed
    _publish(services, topics, range(n), batch_size=20)  # many messages, many batches
    rng = random.Random(7)
    kills = 0
    for _ in range(4):
        worker = start_worker(wait=False)
        target = min(_counts(store)[0] + rng.randint(1_000, 4_000), n - 1)

        def reached(target: int = target, worker: Any = worker) -> bool:
            return _counts(store)[0] >= target or not stack.is_ours(worker.record)

        wait_until(reached, 90, lambda w=worker: f"{_counts(store)}\n{w.log_tail()}", interval_s=0.02)
        if _counts(store)[0] >= n:
            break
        stack.kill_process(worker.record)
        kills += 1
    assert kills >= 2, "the worker finished before it could be killed twice; publish more"
    worker = start_worker()
    expected = (n, n + n // 10, n)
    wait_until(lambda: _counts(store) == expected, 120, lambda: f"{_counts(store)}\n{worker.log_tail()}")
    assert store.scalar("SELECT count(*) FROM current_labels WHERE label = '5'") == n // 10
    assert store.scalar(
        "SELECT count(*) FROM current_labels l JOIN predictions p USING (prediction_id)"
        " WHERE l.label <> '5' AND l.label <> to_jsonb(mod(substr(prediction_id, 3)::int, 2))") == 0


def test_unexpected_error_exits_the_worker_without_acking(
    services: Services, topics: Topics, store: FeedbackStore, start_worker: Callable[..., Any]
) -> None:
    """A failure that is not bad input stops the worker with the batch unacked; a restart ingests it."""
    with store.pool.connection() as conn:  # a broken deployment: the table is not where the code expects
        conn.execute("ALTER TABLE predictions RENAME TO predictions_moved")
    worker = start_worker()
    _publish(services, topics, range(200))
    wait_until(lambda: not stack.is_ours(worker.record), 60, lambda: f"worker still running:\n{worker.log_tail()}")
    assert "exiting with the batch unacked" in worker.log_path.read_text()
    with store.pool.connection() as conn:
        conn.execute("ALTER TABLE predictions_moved RENAME TO predictions")
        assert conn.execute("SELECT count(*) FROM predictions").fetchone() == (0,)
    start_worker()
    wait_until(lambda: _counts(store) == (200, 220, 200), 60, lambda: f"{_counts(store)}")


def test_a_monitor_worker_rides_out_a_database_outage(
    own_postgres: tuple[Path, int, str], db_schema: str, start_worker: Callable[..., Any], tmp_path: Path
) -> None:
    """While Postgres is down the monitor worker's rounds are skipped, said in its log; once it is back the worker,
    still the same process, judges the windows that came meanwhile."""
    from datetime import timedelta

    from feedback.config import parse_config
    from feedback.monitoring.windows import WindowUpdater
    from tests.factories import T0, drifting_hour
    from tests.integration.test_triggers import TOML

    pgdata, port, url = own_postgres
    migrate(url, db_schema)
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    monitor = start_worker(kind="monitor", database_url=url, PITSTOP_CONFIG=str(config),
                           PITSTOP_MONITOR_INTERVAL_S="0.5")
    newest = "SELECT max(window_start) FROM monitor_results WHERE kind = 'performance' AND status <> 'unjudged'"

    def hours(store: FeedbackStore, span: range) -> None:
        for hour in span:
            store.write_batch(*drifting_hour(hour, drift=False))

    with FeedbackStore(url, db_schema, windows=WindowUpdater(parse_config(TOML))) as store:
        hours(store, range(4))
        wait_until(lambda: store.scalar(newest) == T0 + timedelta(hours=3), 60, lambda: monitor.log_tail())
    stack.stop_postgres(pgdata)
    wait_until(lambda: monitor.log_path.read_text().count("database unavailable") >= 2, 60,
               lambda: f"no skipped round logged:\n{monitor.log_tail()}")
    stack.start_postgres(pgdata, port)
    with FeedbackStore(url, db_schema, windows=WindowUpdater(parse_config(TOML))) as store:
        hours(store, range(4, 7))
        wait_until(lambda: store.scalar(newest) == T0 + timedelta(hours=6), 60, lambda: monitor.log_tail())
    assert stack.is_ours(monitor.record), "the monitor worker must survive the outage"
