"""How a worker process of the shell (the monitor and retrain workers) knows it is asked to stop."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable


def stop_requested(should_stop: Callable[[], bool] | None = None) -> Callable[[], bool]:
    """``should_stop`` when given (a test's or an embedding's own condition); else a flag set by SIGINT or SIGTERM,
    whose handlers are installed here when called from the main thread (a signal handler can only live there)."""
    if should_stop is not None:
        return should_stop
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    return stop.is_set
