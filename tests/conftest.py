"""Session fixtures: a real broker and a real PostgreSQL, started once, or the external ones named
by PITSTOP_KAFKA_BOOTSTRAP / PITSTOP_DATABASE_URL. A service that cannot start fails the tests."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from feedback.store import FeedbackStore, migrate
from pitstop import stack
from pitstop.settings import Topics


@dataclass(frozen=True)
class Services:
    kafka_bootstrap: str
    database_url: str


def stack_root() -> Path:
    """A folder for a PostgreSQL data directory, outside pytest's basetemp: every pytest session resets
    /tmp/pytest-of-<user> to mode 0700, which locks the database's system user out of a data directory that
    another session (a second `pytest` run at the same time) started there."""
    return Path(tempfile.mkdtemp(prefix="pitstop-test-stack-"))


@pytest.fixture
def stack_dir() -> Iterator[Path]:
    """A test's own folder for a local stack (broker and PostgreSQL), removed afterwards."""
    root = stack_root()
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    """The broker and database every integration test uses."""
    kafka = os.environ.get("PITSTOP_KAFKA_BOOTSTRAP")
    database = os.environ.get("PITSTOP_DATABASE_URL")
    root = stack_root()
    started: list[stack.ProcessRecord] = []
    pgdata = root / "pgdata"
    try:
        if not kafka:
            broker = stack.start_broker(root)
            started.append(broker)
            kafka = broker.address
        if not database:
            postgres = stack.start_postgres(pgdata)
            started.append(postgres)
            database = stack.postgres_url(postgres.address)
        yield Services(kafka, database)
    finally:
        for record in started:
            if record.name == "postgres":
                stack.stop_postgres(pgdata)
            else:
                stack.stop_process(record)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """A short name unique to this test, usable as a schema, topic prefix or app id."""
    base = "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:30]
    return f"t_{base}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def db_schema(services: Services, unique_name: str) -> Iterator[str]:
    """A migrated schema of this test's own, dropped afterwards."""
    migrate(services.database_url, unique_name)
    yield unique_name
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')


@pytest.fixture
def store(services: Services, db_schema: str) -> Iterator[FeedbackStore]:
    with FeedbackStore(services.database_url, db_schema) as s:
        yield s


@pytest.fixture
def topics(services: Services, unique_name: str) -> Topics:
    """Topics of this test's own, created with 4 partitions."""
    t = Topics(prefix=f"{unique_name}.")
    stack.ensure_topics(services.kafka_bootstrap, t.all(), 4)
    return t


@dataclass
class WorkerHandle:
    record: stack.ProcessRecord
    log_path: Path
    ready_file: Path

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@pytest.fixture
def start_worker(
    services: Services, db_schema: str, topics: Topics, unique_name: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerHandle]]:
    """Start ingest worker processes for this test's topics and schema; all stopped afterwards."""
    started: list[WorkerHandle] = []

    def _start(index: int = 0, *, database_url: str | None = None, wait: bool = True,
               **extra_env: str) -> WorkerHandle:
        ready = tmp_path / f"worker-{index}-{len(started)}.ready"
        env = {
            "PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
            "PITSTOP_DATABASE_URL": database_url or services.database_url,
            "PITSTOP_DB_SCHEMA": db_schema,
            "PITSTOP_TOPIC_PREFIX": topics.prefix,
            "PITSTOP_APP_ID": unique_name,
            "PITSTOP_STATE_DIR": str(tmp_path / "state"),
            "PITSTOP_READY_FILE": str(ready),
            **extra_env,
        }
        log_path = tmp_path / f"worker-{index}-{len(started)}.log"
        handle = WorkerHandle(stack.start_worker(env, log_path, index), log_path, ready)
        started.append(handle)
        if wait:
            wait_until(ready.exists, 60, lambda: f"worker not ready:\n{handle.log_tail()}")
        return handle

    yield _start
    for handle in started:
        stack.stop_process(handle.record, timeout_s=15)


def wait_until(condition: Callable[[], object], timeout_s: float, describe: Callable[[], str],
               interval_s: float = 0.1) -> None:
    """Poll ``condition`` until it is truthy; fail with ``describe()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s: {describe()}")
        time.sleep(interval_s)
