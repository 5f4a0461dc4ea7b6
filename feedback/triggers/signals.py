"""From a monitor round's evaluation of a version to the window signals the decision rules read."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from feedback.config import ModelConfig
from feedback.monitoring.evaluate import Evaluation
from feedback.triggers.rules import DriftedSeries, PerfPoint, WindowSignal

ALL = "*"


def window_signals(evaluation: Evaluation, config: ModelConfig) -> list[WindowSignal]:
    """One signal per evaluated window of all traffic (segment ``*``), oldest first.

    Drift counts the model's features (the ``__prediction__``, ``__score__`` and ``__label__`` series are
    evidence of their own, not features); performance is the configured metric, judged or not.
    """
    starts: set[datetime] = set()
    judged: dict[datetime, int] = defaultdict(int)
    drifted: dict[datetime, list[DriftedSeries]] = defaultdict(list)
    for r in evaluation.drift:
        if r.segment != ALL or r.metric != "drift" or r.feature.startswith("__"):
            continue
        starts.add(r.window_start)
        if r.status == "unjudged":
            continue
        judged[r.window_start] += 1
        if r.status == "drift":
            drifted[r.window_start].append(DriftedSeries(feature=r.feature, psi=r.value, p_value=r.p_value))
    perf: dict[datetime, PerfPoint | None] = {}
    labels: dict[datetime, int] = {}
    for p in evaluation.performance:
        if p.segment != ALL or p.metric != config.metric:
            continue
        starts.add(p.window_start)
        labels[p.window_start] = p.sample_size
        judged_perf = p.status != "unjudged" and p.value is not None and p.ci_low is not None and p.ci_high is not None
        perf[p.window_start] = PerfPoint(value=p.value, ci_low=p.ci_low, ci_high=p.ci_high,  # type: ignore[arg-type]
                                         labels=p.sample_size) if judged_perf else None
    return [
        WindowSignal(start=s, drift_judged=judged[s] > 0, series=judged[s], drifted=tuple(drifted[s]),
                     perf=perf.get(s), labels=labels.get(s, 0))
        for s in sorted(starts)
    ]
