"""`pitstop rollout-worker`: one rollout worker process (settings, the Faust worker, signals) around
streams/rollout_app.py: candidates start their shadows, and the rollout rounds score and judge them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from faust import Worker

from pitstop.settings import Settings
from streams.rollout_app import build_rollout_app, rollout_app_id

log = logging.getLogger(__name__)


def run(settings: Settings) -> int:
    """Run one rollout worker until SIGINT/SIGTERM (Faust's worker handles them, and exits the process)."""
    settings.require_services()
    ready = os.environ.get("PITSTOP_READY_FILE")
    app = build_rollout_app(settings, ready_file=Path(ready) if ready else None)
    log.info("rollout worker: consuming %s (group %s)", settings.topics.candidates, rollout_app_id(settings))
    worker = Worker(app, loglevel=settings.log_level, quiet=True, redirect_stdouts=False, override_logging=True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    worker.execute_from_commandline()
    return 0
