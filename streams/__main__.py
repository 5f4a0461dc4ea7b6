"""`python -m streams worker`: run one ingest worker process (what `pitstop up` starts)."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from faust import Worker

from feedback.store import migrate
from pitstop.errors import PitstopError
from pitstop.settings import Settings
from streams.app import build_app


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "worker":
        print("usage: python -m streams worker [--pitstop-worker=N]", file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        _, database_url = settings.require_services()
    except PitstopError as exc:
        print(f"pitstop worker: {exc}", file=sys.stderr)
        return 78
    _progress(f"applying migrations to schema {settings.db_schema}")
    migrate(database_url, settings.db_schema)
    ready = os.environ.get("PITSTOP_READY_FILE")
    app = build_app(settings, ready_file=Path(ready) if ready else None)
    _progress(f"starting the Faust worker (group {settings.app_id})")
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False,
                    override_logging=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()
    return 0


def _progress(step: str) -> None:
    # Before Faust sets up logging: a worker that hangs here still says where.
    print(f"[{datetime.now(UTC):%Y-%m-%d %H:%M:%S}] pitstop worker: {step}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
