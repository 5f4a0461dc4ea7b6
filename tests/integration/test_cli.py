"""The operator's commands as a person runs them: up --detach, status, down, and bad configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg

from pitstop.settings import read_env_file
from tests.conftest import Services


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


def test_up_detach_status_down(stack_dir: Path) -> None:
    """`up --detach` returns when ready with a usable env file; `status` is healthy; `down` stops all of it."""
    up = _pitstop(stack_dir, "up", "--detach", "--workers", "2")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        env = read_env_file(stack_dir / ".pitstop" / "env")
        assert set(env) == {"PITSTOP_KAFKA_BOOTSTRAP", "PITSTOP_DATABASE_URL"}
        assert env["PITSTOP_KAFKA_BOOTSTRAP"].startswith("127.0.0.1:")
        with psycopg.connect(env["PITSTOP_DATABASE_URL"]) as conn:  # psycopg accepts the URL
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pitstop'")}
        assert {"predictions", "outcomes", "current_labels", "dead_letters", "feedback"} <= tables

        status = _pitstop(stack_dir, "status", "--json")
        assert status.returncode == 0, status.stdout + status.stderr
        rows = {r["component"]: r for r in json.loads(status.stdout)}
        assert set(rows) == {"supervisor", "broker", "database", "worker-0", "worker-1", "retrain-0", "rollout-0"}
        assert all(r["healthy"] for r in rows.values())
        again = _pitstop(stack_dir, "up", "--detach")
        assert again.returncode == 1 and "already running" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
    finally:
        down = _pitstop(stack_dir, "down")
    assert down.returncode == 0 and "supervisor" in down.stdout
    assert _processes_mentioning(str(stack_dir)) == []  # postgres, broker log dir, workers: all gone
    assert not (stack_dir / ".pitstop" / "env").exists()
    after = _pitstop(stack_dir, "status")
    assert after.returncode == 1 and "DOWN" in after.stdout


def test_bad_setting_fails_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """A malformed setting stops the command with one line: the key, the value, what was expected."""
    result = _pitstop(tmp_path, "status", extra_env={"PITSTOP_PARTITIONS": "four"})
    assert result.returncode == 1
    assert result.stderr.strip() == "pitstop status: PITSTOP_PARTITIONS='four': expected an integer between 1 and 1000"
    bad_url = _pitstop(tmp_path, "migrate", extra_env={"PITSTOP_DATABASE_URL": "mysql://x"})
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


def test_each_command_needs_only_the_services_it_uses(services: Services, tmp_path: Path, unique_name: str) -> None:
    """`migrate` needs a database and no broker, `topics` a broker and no database; each works with only its own.
    A command on a schema not migrated yet says to migrate, in one line."""
    database = {"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": unique_name}
    early = _pitstop(tmp_path, "models", "list", extra_env=database)
    assert early.returncode == 1 and len(early.stderr.strip().splitlines()) == 1, early.stderr
    assert early.stderr.strip().endswith("apply the migrations with `pitstop migrate`"), early.stderr
    migrate = _pitstop(tmp_path, "migrate", extra_env={"PITSTOP_DATABASE_URL": services.database_url,
                                                       "PITSTOP_DB_SCHEMA": unique_name})
    try:
        assert migrate.returncode == 0, migrate.stderr
        assert migrate.stdout.startswith(f"schema {unique_name}: applied "), migrate.stdout
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{unique_name}" CASCADE')
    topics = _pitstop(tmp_path, "topics", extra_env={"PITSTOP_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
                                                     "PITSTOP_TOPIC_PREFIX": f"{unique_name}."})
    assert topics.returncode == 0, topics.stderr
    assert f"{unique_name}.predictions" in topics.stdout


def test_an_unreachable_service_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    """A database or broker that does not answer stops a command with one line naming it and what to do, never a
    traceback: migrate, models list, monitor, rollback against a closed port; topics against a closed broker."""
    database = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    for args in (["migrate"], ["models", "list"], ["rollback", "--model", "churn"]):
        done = _pitstop(tmp_path, *args, extra_env={"PITSTOP_DATABASE_URL": database})
        assert done.returncode == 1, done.stdout + done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"pitstop {args[0]}: cannot reach the database at {database}"), lines[0]
        assert "pitstop up --detach" in lines[0] and "PITSTOP_DATABASE_URL" in lines[0], lines[0]
    bootstrap = f"127.0.0.1:{_closed_port()}"
    done = _pitstop(tmp_path, "topics", extra_env={"PITSTOP_KAFKA_BOOTSTRAP": bootstrap}, timeout_s=60)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"pitstop topics: cannot reach the broker at {bootstrap}"), lines[0]


def test_drill_refuses_before_writing_anything(services: Services, db_schema: str, tmp_path: Path) -> None:
    """`pitstop drill` on a model that is not configured, or that has no champion to fall back to, is one line
    saying what to do, and registers nothing (it used to register its failing version, then refuse)."""
    from pitstop.demo.scenario import demo_config_path

    env = {"PITSTOP_DATABASE_URL": services.database_url, "PITSTOP_DB_SCHEMA": db_schema,
           "PITSTOP_CONFIG": demo_config_path()}
    for model, expected in (("nosuch", "model 'nosuch' is not configured in "), ("churn", "no champion")):
        done = _pitstop(tmp_path, "drill", "--model", model, extra_env=env)
        assert done.returncode == 1, done.stdout + done.stderr
        with psycopg.connect(services.database_url) as conn:
            written = conn.execute(f'SELECT version FROM "{db_schema}".model_versions').fetchall()
        assert written == [], (model, written, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pitstop drill: ") and expected in lines[0], done.stderr
        assert done.stdout == ""
