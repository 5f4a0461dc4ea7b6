"""The rollout tick: what the rollout worker does every few seconds, in order. Shadows score the requests they
have not scored yet and are judged, then the ramp controller looks at each model (a shadow that passed starts
its ramp in the same tick).

One object holds what the tick keeps between ticks (the shadow models loaded, the scan cursors, when shadows were
last judged), so that the worker (streams/rollout_app.py), the benchmark (bench/_pitstop_loop.py) and the tests
run the same tick. Everything else is in the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from feedback.alerts import AlertSink
from feedback.config import MonitoringConfig
from feedback.registry.versions import Registry
from feedback.rollout.controller import Controller, LookResult
from feedback.rollout.shadow import ScanCursors, ShadowModelCache, judge_round, score_round


class RolloutTick:
    """The shadow rounds and the ramp controller's look, for every model of ``config``.

    ``score_budget_s``: the time a tick's scoring may take (a slow shadow model waits for the next tick);
    ``judge_every_s``: the least time between two judgements (a judgement loads every labelled row of a shadow,
    and verdicts measured in hours of event time lose nothing by waiting). The defaults score everything and judge
    at every tick, as a replay wants.
    """

    def __init__(self, store: Any, config: MonitoringConfig, alerts: AlertSink, *,
                 registry: Registry | None = None, score_budget_s: float = math.inf, judge_every_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.config = config
        self.alerts = alerts
        self.registry = registry or Registry()
        self.models = ShadowModelCache()
        self.cursors = ScanCursors()
        self.controller = Controller(store, config, alerts, registry=self.registry)
        self.score_budget_s = score_budget_s
        self.judge_every_s = judge_every_s
        self.clock = clock
        self._judged_at = -math.inf

    def shadows(self) -> None:
        """Score what the shadows have not scored, and judge them when ``judge_every_s`` has passed."""
        score_round(self.store, self.registry, self.config, budget_s=self.score_budget_s, models=self.models,
                    cursors=self.cursors, clock=self.clock)
        if self.clock() - self._judged_at >= self.judge_every_s:
            self._judged_at = self.clock()
            judge_round(self.store, self.registry, self.config, self.alerts)

    def ramps(self) -> list[LookResult]:
        """The controller's look at each model."""
        return self.controller.look()

    def __call__(self) -> bool:
        """One whole tick; True when a ramp changed (a deployment message waits in the outbox)."""
        self.shadows()
        return any(look.changed for look in self.ramps())
