"""The demo's console: what it reads from the store and how it prints it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from feedback.store import FeedbackStore

ACCURACY_WINDOW = timedelta(hours=12)

_MONITOR_DRIFT = """
SELECT window_start, array_agg(feature ORDER BY feature) FILTER (WHERE status = 'drift'), count(*)
FROM monitor_results
WHERE model_name = %s AND model_version = %s AND segment = '*' AND kind = 'drift' AND metric = 'drift'
  AND status <> 'unjudged' AND left(feature, 2) <> '__'
GROUP BY window_start ORDER BY window_start DESC LIMIT 1
"""

# the run's retrain decisions: of the versions it served, or of the model as a whole (calendar, volume, manual)
# since it began
_DECISIONS = """
SELECT decision_id, status, kind, urgency, sentence, coalesce(suppressed_by, '') FROM retrain_decisions
WHERE model_name = %s AND (model_version = ANY(%s) OR (model_version IS NULL AND recorded_at >= %s))
ORDER BY updated_at, decision_id
"""

# what the retrain worker made of this run's triggers: outcomes, and the versions it registered
_RETRAINS = """
SELECT o.trigger_id, o.outcome, o.sentence, v.version, v.stage
FROM retrain_outcomes o LEFT JOIN model_versions v ON v.trigger_id = o.trigger_id
WHERE o.model_name = %s AND o.trigger_id IN (
    SELECT decision_id FROM retrain_decisions
    WHERE model_name = %s AND (model_version = ANY(%s) OR (model_version IS NULL AND recorded_at >= %s)))
ORDER BY o.recorded_at
"""
_GATES = """
SELECT passed, sentence FROM model_gate_results WHERE model_name = %s AND version = %s ORDER BY ordinal
"""

_MONITOR_PERFORMANCE = """
SELECT window_start, metric, value, ci_low, ci_high, status FROM performance_by_window
WHERE model_name = %s AND model_version = %s AND segment = '*' AND metric = 'accuracy'
  AND status <> 'unjudged'
ORDER BY window_start DESC LIMIT 1
"""


_COUNTS = """
SELECT (SELECT count(*) FROM predictions),
       (SELECT count(*) FROM outcomes),
       (SELECT count(*) FROM current_labels),
       (SELECT count(*) FROM unmatched_outcomes),
       (SELECT count(*) FROM dead_letters)
"""

# the accuracy of the run's labelled predictions made in (since, until], whichever version served them
_ACCURACY = """
SELECT count(*), avg((prediction_value = label_value)::int)
FROM feedback
WHERE model_name = %s AND model_version = ANY(%s) AND predicted_at > %s AND predicted_at <= %s
  AND label_value IS NOT NULL AND prediction_id LIKE %s
"""

# the same by phase: the first version's predictions by the drift's phase, each later version's as a whole
_ACCURACY_BY_PHASE = """
SELECT CASE WHEN model_version <> %(first)s THEN model_version
            WHEN predicted_at < %(drift_starts)s THEN 'before drift'
            WHEN predicted_at < %(drift_full)s THEN 'while drifting'
            ELSE 'after drift' END,
       count(*), avg((prediction_value = label_value)::int), min(predicted_at), max(predicted_at)
FROM feedback
WHERE model_name = %(model)s AND model_version = ANY(%(versions)s) AND label_value IS NOT NULL
  AND prediction_id LIKE %(prefix)s
GROUP BY 1 ORDER BY 4
"""

_COVERAGE = """
SELECT model_name, model_version, predictions, labeled, coverage, median_label_delay
FROM label_coverage ORDER BY model_name, model_version
"""

_DEAD_LETTER_REASONS = """
SELECT count(*), min(reason)
FROM dead_letters WHERE received_at >= %s
GROUP BY split_part(reason, ':', 1) ORDER BY 1 DESC LIMIT 6
"""


@dataclass(frozen=True, slots=True)
class StoreCounts:
    """Row counts of the feedback store, all from one snapshot.

    >>> c = StoreCounts(predictions=10, outcomes=9, labels=8, waiting=1, dead_letters=2)
    >>> c.joined, c.corrected, (c - c).rows
    (7, 1, 0)
    """

    predictions: int = 0
    outcomes: int = 0  # outcome history rows (identical duplicates are stored once)
    labels: int = 0  # current labels, one per prediction_id
    waiting: int = 0  # current labels whose prediction has not arrived yet
    dead_letters: int = 0

    @property
    def joined(self) -> int:
        """Stored predictions that have a label."""
        return self.labels - self.waiting

    @property
    def corrected(self) -> int:
        """Outcomes that replaced an earlier label of the same prediction."""
        return self.outcomes - self.labels

    @property
    def rows(self) -> int:
        return self.predictions + self.outcomes + self.dead_letters

    def __sub__(self, other: StoreCounts) -> StoreCounts:
        return StoreCounts(
            self.predictions - other.predictions, self.outcomes - other.outcomes,
            self.labels - other.labels, self.waiting - other.waiting,
            self.dead_letters - other.dead_letters,
        )


def read_counts(store: FeedbackStore) -> StoreCounts:
    """The store's row counts (a handful of count(*): fine at demo scale)."""
    return StoreCounts(*(int(v) for v in store.rows(_COUNTS)[0]))



def _say(line: str = "") -> None:
    print(line, flush=True)


def _hours(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 3600:g}h"


def _span(seconds: float) -> str:
    """A stretch of time in the unit that reads best.

    >>> _span(3600.0), _span(100_000.0), _span(90.0), _span(20.0)
    ('1 hour', '1.16 days', '1.5 minutes', '20 seconds')
    """
    for unit, size in (("day", 86_400.0), ("hour", 3600.0), ("minute", 60.0)):
        if seconds >= size:
            value = seconds / size
            return f"{value:.3g} {unit}{'' if value == 1 else 's'}"
    return f"{seconds:.3g} second{'' if seconds == 1 else 's'}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


_COLUMNS = (  # (title, width); every value is right-aligned but the event time
    ("wall", 5), ("event time UTC", 14), ("drift", 5), ("model", 5), ("sent p", 7), ("sent o", 7),
    ("stored", 7), ("joined", 7), ("cover", 6), ("fixed", 5), ("early", 5), ("dead", 5),
    (f"acc{_hours(ACCURACY_WINDOW)}", 6), ("in/s", 5),
)


def _table_row(values: Sequence[str]) -> str:
    """One line of the live table.

    >>> header = _table_row([title for title, _ in _COLUMNS])
    >>> header[:54], len(header)
    (' wall event time UTC drift model  sent p  sent o  stor', 102)
    """
    cells = [
        f"{value:<{width}}" if i == 1 else f"{value:>{width}}"
        for i, (value, (_, width)) in enumerate(zip(values, _COLUMNS, strict=True))
    ]
    return " ".join(cells)


def version_tag(versions: Sequence[str], version: str) -> str:
    """The short name of a version a run served: v1 for the first (the built-in model), v2 for the next ...

    >>> served = ["v1-20261130T102603", "20261102T1200Z-drift-041091"]
    >>> version_tag(served, served[1]), version_tag(served, "other")
    ('v2', 'other')
    """
    return f"v{versions.index(version) + 1}" if version in versions else version


def _coverage_lines(rows: Sequence[Sequence[Any]], these: Sequence[str]) -> list[str]:
    """The label_coverage rows as a table, its columns as wide as the versions, this run's rows marked.

    >>> rows = [("churn", "v1", 8000, 7000, 0.875, timedelta(hours=4)),
    ...         ("churn", "v1-20261130T102603", 120, 30, 0.25, None)]
    >>> print("\\n".join(_coverage_lines(rows, ["v1-20261130T102603"])))
      model    version            predictions   labeled coverage  median label delay
      churn    v1                       8,000     7,000    87.5%  4h00m
      churn    v1-20261130T102603         120        30    25.0%  -                   <- this run
    """
    name_w = max([8, *(len(r[0]) for r in rows)])
    version_w = max([len("version"), *(len(r[1]) for r in rows)])
    lines = [f"  {'model':<{name_w}} {'version':<{version_w}} {'predictions':>11} {'labeled':>9} "
             f"{'coverage':>8}  median label delay"]
    for name, version, n, labeled, coverage, delay in rows:
        mark = "<- this run" if version in these else ""
        line = (f"  {name:<{name_w}} {version:<{version_w}} {n:>11,} {labeled:>9,} {coverage:>8.1%}  "
                f"{_format_delay(delay):<18}  {mark}")
        lines.append(line.rstrip())
    return lines


def _format_delay(delay: timedelta | None) -> str:
    """A label delay the way people say it.

    >>> _format_delay(timedelta(hours=3, minutes=20, seconds=20.6)), _format_delay(None)
    ('3h20m', '-')
    """
    if delay is None:
        return "-"
    minutes = int(delay.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"
