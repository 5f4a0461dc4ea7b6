"""A store's advisory locks are its own: two stores in schemas of one database (two teams, or staging beside
production) never wait on each other, while two sessions of one store still exclude each other."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from feedback.config import parse_config
from feedback.monitoring.windows import _LOCK_EXCLUSIVE, PROFILE_LOCK_CLASS, WindowUpdater
from feedback.store import FeedbackStore, connect_kwargs, drop_store, lock_key
from tests.conftest import Services
from tests.factories import DRIFT_TOML, outcome, prediction

ROOT = Path(__file__).parents[2]


@pytest.fixture
def other_schema(services: Services, unique_name: str) -> Iterator[str]:
    """A second schema in the same database (its locks need no tables)."""
    name = f"{unique_name[:40]}_other"
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(services.database_url, autocommit=True) as conn:
        drop_store(conn, name)


def _session(services: Services, schema: str) -> psycopg.Connection:
    return psycopg.connect(services.database_url, **connect_kwargs(schema))


def test_the_same_key_excludes_within_a_store_and_not_across_stores(services: Services, db_schema: str,
                                                                    other_schema: str) -> None:
    statement = f"SELECT pg_try_advisory_xact_lock(%s, {lock_key()})"
    with (_session(services, db_schema) as holder, _session(services, db_schema) as same,
          _session(services, other_schema) as other, holder.transaction()):
        assert holder.execute(statement, (PROFILE_LOCK_CLASS, "churn")).fetchone()[0]
        with same.transaction():
            assert not same.execute(statement, (PROFILE_LOCK_CLASS, "churn")).fetchone()[0]
        with other.transaction():
            assert other.execute(statement, (PROFILE_LOCK_CLASS, "churn")).fetchone()[0]


def test_a_profile_install_in_one_store_does_not_hold_up_ingest_in_another(services: Services, db_schema: str,
                                                                          other_schema: str) -> None:
    """A profile being installed (its version's lock held exclusively, for as long as the recount takes) holds
    up the ingest of its own store only: another store's batch of the same model name is written meanwhile."""
    config = parse_config(DRIFT_TOML)
    written: list[int] = []
    with (_session(services, other_schema) as installing, installing.transaction(),
          FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as store):
        installing.execute(_LOCK_EXCLUSIVE, (PROFILE_LOCK_CLASS, "churn"))
        writer = threading.Thread(target=lambda: written.append(store.write_batch([prediction(1)], [outcome(1)])
                                                                .predictions))
        writer.start()
        writer.join(20)
        assert written == [1], "the batch waited on the other store's lock"


def _advisory_calls() -> Iterator[tuple[str, str]]:
    """Every string of the product's code that takes an advisory lock (an f-string whole), with its file."""
    for folder in ("feedback", "pitstop", "retrain_worker", "streams"):
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
            for node in ast.walk(tree):
                text = (ast.unparse(node) if isinstance(node, ast.JoinedStr)
                        else node.value if isinstance(node, ast.Constant) and id(node) not in parts else None)
                if isinstance(text, str) and "advisory_" in text:
                    yield str(path.relative_to(ROOT)), text


#: the one lock of the whole database, on purpose: one migrator at a time (an analysts' role is database-wide)
MIGRATIONS = ("feedback/store/database.py", "SELECT pg_advisory_xact_lock(%s)")


def test_every_advisory_lock_of_the_product_is_keyed_by_its_store() -> None:
    """A lock added without the store's schema in its key would couple the stores of a database again."""
    calls = list(_advisory_calls())
    assert len(calls) >= 15 and MIGRATIONS in calls, calls
    unkeyed = [(f, text) for f, text in calls
               if "lock_key(" not in text and "current_schema()" not in text and (f, text) != MIGRATIONS]
    assert unkeyed == [], unkeyed
