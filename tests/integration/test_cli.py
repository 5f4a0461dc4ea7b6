"""The operator's commands as a person runs them: up --detach, status, down, and bad configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest

from feedback.store import drop_store
from pitstop import stack
from pitstop.settings import read_env_file
from tests.conftest import PitstopMain, Services, wait_until


def _pitstop(cwd: Path, *args: str, extra_env: dict[str, str] | None = None,
             timeout_s: float = 150) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "pitstop.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if text in " ".join(proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        except psutil.Error:
            continue
    return found


def _exported(cwd: Path, env_file: Path, *args: str, extra_env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    """A command run by a shell that exported `.pitstop/env` (`set -a; . .pitstop/env; set +a`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")} | (extra_env or {})
    script = f'set -a; . "{env_file}"; set +a; exec "$0" -m pitstop.cli "$@"'
    return subprocess.run(["bash", "-c", script, sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=150, check=False)


def _postmaster_running(pgdata: Path) -> bool:
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return False
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def _check_metrics(stack_dir: Path, tmp_path: Path) -> None:
    """Every worker serves its Prometheus metrics on 127.0.0.1, writes its address as a file_sd target, and `pitstop
    status` lists it; each worker's own series are there, the monitor's rounds counted."""
    import re
    import urllib.request

    from feedback.metrics import read_target

    folder = stack_dir / ".pitstop" / "metrics"
    names = ("worker-0", "worker-1", "monitor-0", "monitor-1", "retrain-0", "rollout-0")
    wait_until(lambda: all(read_target(folder / f"{n}.json") for n in names), 60,
               lambda: f"metrics targets written: {sorted(p.name for p in folder.glob('*.json'))}")
    targets = {n: json.loads((folder / f"{n}.json").read_text()) for n in names}
    assert all(t[0]["labels"]["worker"] and t[0]["targets"][0].startswith("127.0.0.1:") for t in targets.values())
    rows = {r["component"]: r for r in json.loads(_pitstop(stack_dir, "status", "--json").stdout)}
    for name in names:
        assert f"metrics http://{read_target(folder / f'{name}.json')}/metrics" in rows[name]["detail"], rows[name]

    def scrape(name: str) -> str:
        with urllib.request.urlopen(f"http://{read_target(folder / f'{name}.json')}/metrics", timeout=10) as answer:
            return answer.read().decode()

    own = {"worker-0": "pitstop_ingest_batch_seconds histogram", "worker-1": "pitstop_events_total counter",
           "retrain-0": "pitstop_trainings_total counter", "rollout-0": "pitstop_version_stage gauge",
           "monitor-1": "pitstop_retrain_decisions_total counter"}
    for name, series in own.items():
        assert f"# TYPE {series}" in scrape(name), name

    def rounds() -> float:
        found = re.search(r"^pitstop_monitor_round_seconds_count (\S+)$", scrape("monitor-0"), flags=re.M)
        return float(found.group(1)) if found else 0.0

    wait_until(lambda: rounds() >= 1, 60, lambda: "monitor-0 counted no round")
    _prometheus_scrapes(folder, names, tmp_path)


def _prometheus_scrapes(folder: Path, names: tuple[str, ...], tmp_path: Path) -> None:
    """A real Prometheus (Debian's package, installed by `make test`) given the workers' target files scrapes every
    worker, labelled with its name, and holds the series each serves."""
    import socket
    import urllib.parse
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s}\nscrape_configs:\n  - job_name: pitstop\n    file_sd_configs:\n"
                      f"      - files: ['{folder}/*.json']\n        refresh_interval: 1s\n")
    log = (tmp_path / "prometheus.log").open("wb")
    server = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                               f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)

    def query(promql: str) -> list[dict]:
        url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(promql)}"
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.loads(answer.read())["data"]["result"]
        except OSError:
            return []

    try:
        wait_until(lambda: {r["metric"]["worker"] for r in query('up{job="pitstop"} == 1')} == set(names), 60,
                   lambda: f"up: {query('up')}; log: {(tmp_path / 'prometheus.log').read_text()[-500:]}")
        by_worker = {r["metric"]["worker"] for r in query("pitstop_ingest_batch_seconds_count")}
        assert {"worker-0", "worker-1"} <= by_worker, by_worker
        wait_until(lambda: {r["metric"]["worker"] for r in query("pitstop_monitor_round_seconds_count > 0")}
                   == {"monitor-0", "monitor-1"}, 60, lambda: "the monitor workers' rounds were not scraped")
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()


def test_up_detach_status_down(stack_dir: Path, tmp_path: Path) -> None:
    """`up --detach` returns when ready with a usable env file, after stopping a PostgreSQL left running on its
    data (and saying so); `status` is healthy and names the configuration the workers run with; commands without
    PITSTOP_CONFIG use that configuration, and refuse one that differs; the env file exported by a shell is taken
    for the local stack, not external services; `down` stops all of it, a PostgreSQL restarted by hand under the
    stack too, and says nothing was running the second time."""
    from pitstop.demo.scenario import demo_config_path

    pgdata = stack_dir / ".pitstop" / "pgdata"
    leftover = stack.start_postgres(pgdata)  # a server left running on the stack's data (nobody recorded it)
    config = {"PITSTOP_CONFIG": demo_config_path(), "PITSTOP_MONITOR_WORKERS": "2"}
    up = _pitstop(stack_dir, "up", "--detach", "--workers", "2", extra_env=config)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"stopped PostgreSQL (pid {leftover.pid})" in (stack_dir / ".pitstop" / "up.log").read_text()
        env_file = stack_dir / ".pitstop" / "env"
        env = read_env_file(env_file)
        sourced = tmp_path / "env"  # what a shell sourced: it keeps the values after `down`
        sourced.write_text(env_file.read_text())
        assert set(env) == {"PITSTOP_KAFKA_BOOTSTRAP", "PITSTOP_DATABASE_URL", "PITSTOP_STACK_DIR"}
        assert env["PITSTOP_KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
        with psycopg.connect(env["PITSTOP_DATABASE_URL"]) as conn:  # psycopg accepts the URL
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pitstop'")}
        assert {"predictions", "outcomes", "current_labels", "dead_letters", "feedback"} <= tables

        status = _pitstop(stack_dir, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {r["component"]: r for r in json.loads(status.stdout)}
        assert set(rows) == {"supervisor", "broker", "database", "config", "worker-0", "worker-1", "monitor-0",
                             "monitor-1", "retrain-0", "rollout-0", "dashboard-0"}
        assert all(r["healthy"] for r in rows.values())
        assert "(pid " in rows["broker"]["detail"] and "(pid " in rows["database"]["detail"], rows
        from pitstop.supervisor import dashboard_url

        dashboard = dashboard_url(stack_dir / ".pitstop", wait_s=60)  # `up` says where too, once it listens
        assert dashboard is not None and dashboard.startswith("http://127.0.0.1:"), up.stdout
        last = up.stdout.splitlines()[-1]
        assert last in (f"dashboard {dashboard}", "dashboard starting (pitstop status shows where)"), up.stdout
        rows = {r["component"]: r for r in json.loads(_pitstop(stack_dir, "status", "--json").stdout)}
        assert dashboard in rows["dashboard-0"]["detail"], rows["dashboard-0"]
        with urllib.request.urlopen(f"{dashboard}/api/fleet", timeout=10) as answer:
            assert [m["model"] for m in json.loads(answer.read())["models"]] == ["churn"]
        with psycopg.connect(env["PITSTOP_DATABASE_URL"]) as conn:  # both monitor workers share the models
            wait_until(lambda: conn.execute("SELECT count(*) FROM pitstop.monitor_workers").fetchone()[0] == 2, 30,
                       lambda: "the two monitor workers did not both say they are alive")
        assert demo_config_path() in rows["config"]["detail"] and "churn" in rows["config"]["detail"]
        _check_metrics(stack_dir, tmp_path)
        again = _pitstop(stack_dir, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1

        # the stack's configuration without PITSTOP_CONFIG; another one is refused in one line
        retrain = _pitstop(stack_dir, "retrain", "--model", "churn", "--reason", "the stack's configuration")
        assert retrain.returncode == 0, retrain.stdout + retrain.stderr
        other = tmp_path / "other.toml"
        other.write_text('[models.eta]\ntask = "regression"\nmetric = "mae"\n')
        refused = _pitstop(stack_dir, "retrain", "--model", "eta", "--reason", "x",
                           extra_env={"PITSTOP_CONFIG": str(other)})
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "differs from the configuration the running stack's workers use" in refused.stderr

        # the env file, exported by a shell, from another directory: the local stack, not external services
        exported = _exported(tmp_path, sourced, "status", "--json")
        assert exported.returncode == 0, exported.stdout + exported.stderr
        rows = {r["component"]: r for r in json.loads(exported.stdout)}
        assert rows["broker"]["detail"].startswith("local Tansu"), rows["broker"]
        assert rows["database"]["detail"].startswith("local PostgreSQL"), rows["database"]

        # PostgreSQL restarted by hand under the running stack: a server the stack did not start
        address = json.loads((stack_dir / ".pitstop" / stack.STACK_FILE).read_text())["postgres"]["address"]
        stack.stop_postgres(pgdata)
        stack.start_postgres(pgdata, port=int(address.rpartition(":")[2]))
    finally:
        down = _pitstop(stack_dir, "down")
        stack.stop_postgres(pgdata)  # whatever `down` left, so that a failure leaks nothing
    assert down.returncode == 0 and "supervisor" in down.stdout and "postgres" in down.stdout, down.stdout
    assert not _postmaster_running(pgdata)
    assert _processes_mentioning(str(stack_dir)) == []  # postgres, broker log dir, workers: all gone
    assert not (stack_dir / ".pitstop" / "env").exists()
    after = _pitstop(stack_dir, "status")
    assert after.returncode == 1 and "DOWN" in after.stdout
    twice = _pitstop(stack_dir, "down", "--json")
    assert twice.returncode == 0, twice
    assert json.loads(twice.stdout) == {"stopped": [], "sentence": "nothing was running"}, twice.stdout
    stale = _exported(tmp_path, tmp_path / "env", "status", "--json")  # a shell that exported it earlier
    rows = {r["component"]: r for r in json.loads(stale.stdout)}
    assert rows["broker"]["detail"].startswith("not configured"), rows["broker"]


def test_bad_setting_fails_with_one_line_naming_the_key(tmp_path: Path, pitstop_main: PitstopMain,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed setting stops the command with one line: the key, the value, what was expected."""
    monkeypatch.chdir(tmp_path)
    result = pitstop_main({"PITSTOP_PARTITIONS": "four"}, "status")
    assert result.returncode == 1
    assert result.stderr.strip() == "pitstop status: PITSTOP_PARTITIONS='four': expected an integer between 1 and 1000"
    bad_url = pitstop_main({"PITSTOP_DATABASE_URL": "mysql://x"}, "migrate")
    assert bad_url.stderr.strip() == "pitstop migrate: PITSTOP_DATABASE_URL='mysql://x': expected a postgresql:// URL"


def test_worker_with_bad_setting_exits_naming_the_key(tmp_path: Path) -> None:
    """An ingest worker started with a bad setting exits at once, naming it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env["PITSTOP_BATCH_WITHIN_S"] = "-1"
    result = subprocess.run([sys.executable, "-m", "streams", "worker"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 78
    assert "PITSTOP_BATCH_WITHIN_S='-1': expected seconds > 0" in result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_each_command_needs_only_the_services_it_uses(services: Services, tmp_path: Path, unique_name: str,
                                                      pitstop_main: PitstopMain,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`migrate` needs a database and no broker, `topics` a broker and no database; each works with only its own.
    A command on a schema not migrated yet says to migrate, in one line."""
    monkeypatch.chdir(tmp_path)
    database = {"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": unique_name}
    early = pitstop_main(database, "models", "list")
    assert early.returncode == 1 and len(early.stderr.strip().splitlines()) == 1, early.stderr
    assert early.stderr.strip().endswith("apply the migrations with `pitstop migrate`"), early.stderr
    migrate = pitstop_main(database, "migrate", "--json")
    try:
        assert migrate.returncode == 0, migrate.stderr
        applied = json.loads(migrate.stdout)
        assert applied["sentence"].startswith(f"schema {unique_name}: applied "), applied
        every = sorted(p.name for p in (Path(__file__).parents[2] / "feedback" / "migrations").glob("*.sql"))
        assert applied["applied"] == every and applied["schema"] == unique_name, applied
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            drop_store(conn, unique_name)
    topics = pitstop_main({"PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
                           "PITSTOP_TOPIC_PREFIX": f"{unique_name}."}, "topics", "--json")
    assert topics.returncode == 0, topics.stderr
    created = json.loads(topics.stdout)
    assert f"{unique_name}.predictions" in created["topics"] and f"{unique_name}.deployments" in created["compacted"]
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=services.kafka_bootstrap)
    try:
        assert set(created["topics"]) <= set(admin.list_topics())
    finally:
        admin.close()


def test_an_unreachable_service_is_one_line_saying_what_to_do(tmp_path: Path, pitstop_main: PitstopMain,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A database or broker that does not answer stops a command with one line naming it and what to do, never a
    traceback: migrate, models list, monitor, rollback against a closed port; topics against a closed broker."""
    monkeypatch.chdir(tmp_path)
    database = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    for args in (["migrate"], ["models", "list"], ["rollback", "--model", "churn"]):
        done = pitstop_main({"PITSTOP_DATABASE_URL": database}, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"pitstop {args[0]}: cannot reach the database at {database}"), lines[0]
        assert "pitstop up --detach" in lines[0] and "PITSTOP_DATABASE_URL" in lines[0], lines[0]
    bootstrap = f"127.0.0.1:{_closed_port()}"
    done = pitstop_main({"PITSTOP_KAFKA_BOOTSTRAP": bootstrap}, "topics")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"pitstop topics: cannot reach the broker at {bootstrap}"), lines[0]


def test_drill_refuses_before_writing_anything(services: Services, db_schema: str, tmp_path: Path,
                                               pitstop_main: PitstopMain, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pitstop drill` on a model that is not configured, or that has no champion to fall back to, is one line
    saying what to do, and registers nothing (it used to register its failing version, then refuse)."""
    from pitstop.demo.scenario import demo_config_path

    env = {"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": db_schema,
           "PITSTOP_CONFIG": demo_config_path()}
    monkeypatch.chdir(tmp_path)
    for model, expected in (("nosuch", "model 'nosuch' is not configured in "), ("churn", "no champion")):
        done = pitstop_main(env, "drill", "--model", model)
        assert done.returncode == 1, done.stdout + done.stderr
        with psycopg.connect(services.database_url) as conn:
            written = conn.execute(f'SELECT version FROM "{db_schema}".model_versions').fetchall()
        assert written == [], (model, written, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pitstop drill: ") and expected in lines[0], done.stderr
        assert done.stdout == ""
