"""`python -m streams worker` (one ingest worker process) and `python -m streams rollout-worker` (one rollout
worker: candidates start their shadows, the rollout ticks score, judge and ramp them): what `pitstop up` starts.
The only entry points that run Faust."""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from faust import App, Worker

from feedback.store import migrate
from pitstop.errors import PitstopError
from pitstop.settings import Settings

USAGE = "usage: python -m streams worker|rollout-worker [--pitstop-worker=N]"


def main(argv: list[str]) -> int:
    command = argv[0] if argv else None
    if command not in ("worker", "rollout-worker"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        settings = Settings.from_env()
        _, database_url = settings.require_services()
    except PitstopError as exc:
        print(f"pitstop {command}: {exc}", file=sys.stderr)
        return 78
    _progress(command, f"applying migrations to schema {settings.db_schema}")
    migrate(database_url, settings.db_schema)
    ready = os.environ.get("PITSTOP_READY_FILE")
    ready_file = Path(ready) if ready else None
    app: App
    if command == "worker":
        from streams.app import build_app

        app, group = build_app(settings, ready_file=ready_file), settings.app_id
    else:
        from streams.rollout_app import build_rollout_app, rollout_app_id

        app, group = build_rollout_app(settings, ready_file=ready_file), rollout_app_id(settings)
    _progress(command, f"starting the Faust worker (group {group})")
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()  # until SIGINT/SIGTERM: Faust's worker handles them, and exits the process
    return 0


def _progress(command: str, step: str) -> None:
    # Before Faust sets up logging: a worker that hangs here still says where.
    print(f"[{datetime.now(UTC):%Y-%m-%d %H:%M:%S}] pitstop {command}: {step}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
