"""Session fixtures: a real broker and a real PostgreSQL, started once, or the external ones named
by PITSTOP_KAFKA_BOOTSTRAP / PITSTOP_DATABASE_URL. A service that cannot start fails the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

# One OpenMP and one BLAS thread a process, in the test processes and in every process they start (workers,
# trainers, the demo: they inherit the environment), set before numpy or scikit-learn is loaded. The suite runs 2
# xdist workers on 2 cores beside a broker, a database and worker processes: OpenMP's spinning threads, oversubscribed,
# made each gradient-boosting fit and predict many times slower (the retrain test of a drift trigger took 63 s with
# the libraries' defaults and 8 s with one thread, on a busy machine). What is computed is the same; set either
# variable to run with more threads.
for _threads in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_threads, "1")

# On the suite's own Tansu broker, the workers' consumer groups run with a session timeout of 4 s, not the default 6:
# Tansu holds a group's first join for half of it (3 s at 6, 2 s at 4: some 70 worker starts), and a worker killed by
# a test gives up its partitions only when it runs out. An external broker (PITSTOP_KAFKA_BOOTSTRAP) keeps the
# default: Kafka refuses a session timeout below its group.min.session.timeout.ms, 6 s unless set lower.
if not os.environ.get("PITSTOP_KAFKA_BOOTSTRAP"):
    os.environ.setdefault("PITSTOP_KAFKA_SESSION_TIMEOUT_S", "4")

import psycopg  # noqa: E402
import pytest  # noqa: E402

from feedback.store import FeedbackStore, drop_store, migrate  # noqa: E402
from pitstop import stack  # noqa: E402
from pitstop.settings import Topics  # noqa: E402

#: The test files that take longest (measured with --durations), longest first. `make test`
#: runs `--dist loadfile`: each file runs whole on one worker, so a long file dealt out last keeps one worker
#: busy while the others idle. These files run first, the rest in their collection order; xdist's own order (files
#: with more tests first, which put these one- and two-test files last) is off in pyproject.toml
#: (--no-loadscope-reorder).
LONGEST_FIRST = (  # seconds in two fresh clones' `make test` of 2026-12-07 17:34 and 17:49 UTC, averaged
    "tests/integration/test_faults.py",  # 120
    "tests/integration/test_pipeline.py",  # 119
    "tests/integration/test_triggers_stream.py",  # 103
    "tests/integration/test_rollout_controller.py",  # 100
    "tests/integration/test_demo.py",  # 98
    "tests/integration/test_triggers.py",  # 90
    "tests/integration/test_demo_runs.py",  # 89
    "tests/integration/test_rollout_e2e.py",  # 77
    "tests/integration/test_cli.py",  # 70
    "tests/integration/test_windows.py",  # 47
    "tests/integration/test_triggers_cli.py",  # 41
    "tests/unit/test_trainers.py",  # 40
    "tests/integration/test_retrain_recipe.py",  # 31
    "tests/integration/test_shadow.py",  # 30
    "tests/integration/test_hostile_input.py",  # 28
    "tests/unit/test_rollout_rules.py",  # 27
    "tests/integration/test_rebalance.py",  # 27
    "tests/integration/test_dashboard.py",  # 27
    "tests/integration/test_ingest_stream.py",  # 26
    "tests/integration/test_trigger_skipping.py",  # 26
    "tests/integration/test_demo_stops.py",  # 26
    "tests/unit/test_codec_schema.py",  # 22
    "tests/integration/test_join.py",  # 21
    "tests/integration/test_monitor_cli.py",  # 21
    "tests/integration/test_analysts.py",  # 15
    "tests/integration/test_dead_letters.py",  # 13
    "tests/integration/test_monitor_results.py",  # 13
)


#: the project's own packages, whose modules every process the suite starts imports
_PACKAGES = ("pitstop", "feedback", "streams", "retrain_worker", "schemas", "tests")


def pytest_configure(config: pytest.Config) -> None:
    """The project's own modules compiled to bytecode (in their ``__pycache__``, which git ignores) before any test
    starts a process. With PYTHONDONTWRITEBYTECODE set, as on these machines, no process writes bytecode: every
    worker, command, trainer and demo the suite starts (some 200) compiled the 25,000 lines of the project's source
    it imports again (the installed packages are compiled by `make test`'s install). A source changed afterwards is
    compiled again when it is imported (its size and time no longer match the bytecode's), so nothing stale runs.
    The first process (xdist's controller) compiles; the others find the bytecode up to date."""
    import compileall

    root = Path(__file__).resolve().parents[1]
    for package in _PACKAGES:
        compileall.compile_dir(root / package, quiet=2)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of LONGEST_FIRST first, in its order; every file's tests stay together and in their order."""
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


#: the ``pitstop_main`` fixture's runner: ``run(env, *args)``
PitstopMain = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def pitstop_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> PitstopMain:
    """Runs `pitstop ARGS` in this process (``pitstop.cli.main``: the command line's own code, argument parsing and
    error lines included, without an interpreter's start-up) with the PITSTOP_* variables of ``env`` only; returns
    what a subprocess would: the exit code, stdout and stderr."""
    from pitstop.cli import main

    def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
        for key in [k for k in os.environ if k.startswith("PITSTOP_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            if key.startswith("PITSTOP_"):
                monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(["pitstop", *args], code, out, err)

    return run


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
        drop_store(conn, unique_name)


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

    def wait_ready(self, timeout_s: float = 60) -> WorkerHandle:
        """Wait for a worker started with ``wait=False`` to say it is ready (tests start two at once this way: most
        of a worker's start is waiting for its consumer group, in which the other starts)."""
        wait_until(self.ready_file.exists, timeout_s, lambda: f"{self.log_path.stem} not ready:\n{self.log_tail()}")
        return self


@pytest.fixture
def start_worker(
    services: Services, db_schema: str, topics: Topics, unique_name: str, tmp_path: Path
) -> Iterator[Callable[..., WorkerHandle]]:
    """Start worker processes for this test's topics and schema (ingest workers; ``kind="monitor"``: a monitor
    worker, the monitor rounds, the retrain decisions and the outbox relay); all stopped afterwards."""
    started: list[WorkerHandle] = []

    def _start(index: int = 0, *, kind: str = "ingest", database_url: str | None = None, wait: bool = True,
               **extra_env: str) -> WorkerHandle:
        ready = tmp_path / f"{kind}-{index}-{len(started)}.ready"
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
        log_path = tmp_path / f"{kind}-{index}-{len(started)}.log"
        start = {"ingest": stack.start_worker, "monitor": stack.start_monitor_worker}[kind]
        handle = WorkerHandle(start(env, log_path, index), log_path, ready)
        started.append(handle)
        if wait:
            handle.wait_ready()
        return handle

    yield _start
    stack.stop_processes([handle.record for handle in started], timeout_s=15)


def wait_until(condition: Callable[[], object], timeout_s: float, describe: Callable[[], str],
               interval_s: float = 0.1) -> None:
    """Poll ``condition`` until it is truthy; fail with ``describe()`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f} s: {describe()}")
        time.sleep(interval_s)
