"""What the single-database benches share: their PostgreSQL (PITSTOP_DATABASE_URL's, or one of their own in a
temporary folder, stopped and removed at the end) and the figures of the machine they ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from pitstop import stack


def machine(database_url: str) -> dict[str, Any]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        pg = conn.execute("SHOW server_version").fetchone()[0]
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('shared_buffers',"
                                     " 'work_mem', 'jit')").fetchall())
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "postgres": pg, "settings": settings,
            "date": datetime.now(UTC).isoformat(timespec="seconds")}


@contextlib.contextmanager
def database(prefix: str) -> Iterator[str]:
    url = os.environ.get("PITSTOP_DATABASE_URL")
    if url:
        yield url
        return
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        record = stack.start_postgres(folder / "pgdata")
        try:
            yield stack.postgres_url(record.address)
        finally:
            stack.stop_postgres(folder / "pgdata")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
