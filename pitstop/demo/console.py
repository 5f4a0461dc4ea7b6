"""The demo's console: what it reads from the store and how it prints it."""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from feedback.store import FeedbackStore
from pitstop.output import say
from pitstop.router import Deployment

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
# this run's fired retrain decisions whose training has no outcome yet
_TRAINING = """
SELECT count(*) FROM retrain_decisions d
WHERE d.model_name = %s AND d.status = 'fired'
  AND (d.model_version = ANY(%s) OR (d.model_version IS NULL AND d.recorded_at >= %s))
  AND NOT EXISTS (SELECT 1 FROM retrain_outcomes o WHERE o.trigger_id = d.decision_id)
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

# the accuracy of the run's labelled predictions made in (since, until], whichever version served them; a failed
# request (no prediction) counts as a wrong one, as the monitor counts it
_ACCURACY = """
SELECT count(*), avg(coalesce((prediction_value = label_value)::int, 0))
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
       count(*), avg(coalesce((prediction_value = label_value)::int, 0)), min(predicted_at), max(predicted_at),
       count(*) FILTER (WHERE error IS NOT NULL)
FROM feedback
WHERE model_name = %(model)s AND model_version = ANY(%(versions)s) AND label_value IS NOT NULL
  AND prediction_id LIKE %(prefix)s
GROUP BY 1 ORDER BY 4
"""

# the rollout's events of the run, as they come (shadow verdicts, ramp steps, promotion, rollback, the latch)
_ROLLOUT_EVENTS = """
SELECT event_id, kind, version, share, sentence, actor FROM rollout_events
WHERE model_name = %s AND recorded_at >= %s AND event_id > %s ORDER BY event_id
"""
# the ramp under way, and the sentence of its latest look
_RAMP = """
SELECT champion, challenger, state, share, sentence FROM rollouts
WHERE model_name = %s AND state IN ('ramping', 'paused', 'holding')
"""

# --- the timeline: every decision of the run and its sentence, from the database ---------------------------------

# a fired decision at the instant its trigger event was queued (the row itself is touched by later looks), any other
# at its latest look
_TIMELINE_DECISIONS = """
SELECT coalesce(o.created_at, d.updated_at), d.model_version, d.kind, d.urgency, d.status, d.sentence,
       coalesce(d.suppressed_by, '')
FROM retrain_decisions d LEFT JOIN outbox o ON o.event_id = d.decision_id AND d.status = 'fired'
WHERE d.model_name = %s AND (d.model_version = ANY(%s) OR (d.model_version IS NULL AND d.recorded_at >= %s))
"""
_TIMELINE_TRAININGS = """
SELECT o.recorded_at, v.version, o.outcome, o.sentence FROM retrain_outcomes o
LEFT JOIN model_versions v ON v.trigger_id = o.trigger_id
WHERE o.model_name = %s AND o.recorded_at >= %s
"""
_TIMELINE_GATES = """
SELECT v.version, min(v.created_at), count(*) FILTER (WHERE g.passed), count(*) FILTER (WHERE NOT g.passed),
       count(*) FILTER (WHERE g.passed IS NULL),
       coalesce(array_agg(g.sentence ORDER BY g.ordinal) FILTER (WHERE NOT g.passed), '{}')
FROM model_gate_results g JOIN model_versions v USING (model_name, version)
WHERE g.model_name = %s AND v.created_at >= %s GROUP BY v.version
"""
_TIMELINE_CHAMPIONS = """
SELECT changed_at, version, reason FROM model_stage_changes
WHERE model_name = %s AND version = ANY(%s) AND from_stage = 'candidate' AND to_stage = 'champion' AND changed_at >= %s
"""
_TIMELINE_ROLLOUT = """
SELECT recorded_at, version, kind, share, sentence, actor FROM rollout_events
WHERE model_name = %s AND recorded_at >= %s
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
    """Say a line of the console, wrapped at the terminal's width; whole when the output is not a terminal."""
    width = console_width()
    for part in [line] if width is None else wrapped(line, width - 1):
        say(part)  # a reader that left raises BrokenPipeError once: the demo stops its stack on the way out


def console_width() -> int | None:
    """The width the console fits when stdout is a terminal (``COLUMNS`` when set, else the terminal's), else None:
    a pipe or a file gets whole lines, for grep and for the tests that read them, whatever ``COLUMNS`` says
    (pytest-xdist's workers export COLUMNS=80)."""
    try:
        if not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):  # a closed or odd stdout
        return None
    return shutil.get_terminal_size().columns


_LABEL = re.compile(r"^\s*\S+(?: \S+)?\s{2,}")  # "monitor   ", "             pass  ": where the text starts


def wrapped(line: str, width: int) -> list[str]:
    """``line`` in lines of at most ``width`` characters, each continuation indented to where the text after the
    line's label starts (a word, or two, then two spaces or more), so the labels stay a column of their own.

    >>> for part in wrapped("monitor   window 11-09 06h: drifting features: days_since_login, usage_gb (of 8)", 40):
    ...     print(part)
    monitor   window 11-09 06h: drifting
              features: days_since_login,
              usage_gb (of 8)
    >>> wrapped("   12s 11-07 06h     0%", 40)
    ['   12s 11-07 06h     0%']
    """
    if len(line) <= width:
        return [line]
    label = _LABEL.match(line)
    indent = len(label.group(0)) if label and len(label.group(0)) <= width // 2 else len(line) - len(line.lstrip())
    return textwrap.wrap(line, width=width, subsequent_indent=" " * indent, break_long_words=False,
                         break_on_hyphens=False) or [line]


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


_COLUMNS = (  # (title, width) in the order shown; every value is right-aligned but the event time
    ("wall", 5), ("event time", 10), ("drift", 5), ("serving", 10), ("sent p", 7), ("sent o", 7),
    ("stored", 7), ("joined", 7), ("cover", 6), ("fixed", 5), ("early", 5), ("dead", 5),
    (f"acc{_hours(ACCURACY_WINDOW)}", 6), ("in/s", 5),
)
#: the order columns are given up in when the terminal is narrower than the whole table: the figures the legend
#: calls secondary first; the wall and event times, drift, serving, the join and accuracy stay at 80 columns
_DROPPED_FIRST = ("sent o", "fixed", "early", "in/s", "sent p", "dead")


def table_columns(width: int | None) -> tuple[int, ...]:
    """The indexes of the live table's columns that fit ``width`` characters (a terminal's; None: no limit), in their
    order.

    >>> [_COLUMNS[i][0] for i in table_columns(80)]
    ['wall', 'event time', 'drift', 'serving', 'sent p', 'stored', 'joined', 'cover', 'dead', 'acc12h']
    >>> len(table_columns(200)), len(table_columns(10)), len(table_columns(None))
    (14, 8, 14)
    """
    shown = list(range(len(_COLUMNS)))
    if width is None:
        return tuple(shown)
    dropping = iter(_DROPPED_FIRST)
    while sum(_COLUMNS[i][1] + 1 for i in shown) - 1 > width:
        title = next(dropping, None)
        if title is None:
            break  # the core columns stay, even when they wrap
        shown = [i for i in shown if _COLUMNS[i][0] != title]
    return tuple(shown)


def _table_row(values: Sequence[str], shown: Sequence[int]) -> str:
    """One line of the live table, of the ``shown`` columns.

    >>> header = _table_row([title for title, _ in _COLUMNS], table_columns(80))
    >>> header[:56], len(header)
    (' wall event time drift    serving  sent p  stored  joine', 77)
    """
    cells = [
        f"{values[i]:<{_COLUMNS[i][1]}}" if i == 1 else f"{values[i]:>{_COLUMNS[i][1]}}"
        for i in shown
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


def _pct(share: float) -> str:
    return f"{100 * share:g}%"


def serving_cell(deployment: Deployment | None, tag: Callable[[str], str]) -> str:
    """The live table's ``serving`` cell: the champion, and the challenger with its share during a ramp.

    >>> d = Deployment(model_name="churn", message_version=3, champion="a", challenger="b", challenger_share=0.05,
    ...                salt="s", state="canary", decided_at=datetime(2026, 1, 1), reason="")
    >>> tags = {"a": "v1", "b": "v2"}.__getitem__
    >>> serving_cell(d, tags), serving_cell(None, tags)
    ('v1+v2 5%', '-')
    """
    if deployment is None:
        return "-"
    if deployment.challenger is None or deployment.threshold == 0:
        return tag(deployment.champion)
    return f"{tag(deployment.champion)}+{tag(deployment.challenger)} {_pct(deployment.challenger_share)}"


def deployment_sentence(deployment: Deployment, tag: Callable[[str], str]) -> str:
    """Who serves whom under a deployment, in words.

    >>> d = Deployment(model_name="churn", message_version=4, champion="a", challenger="b", challenger_share=0.25,
    ...                salt="s", state="ramp", decided_at=datetime(2026, 1, 1), reason="")
    >>> deployment_sentence(d, {"a": "v1", "b": "v2"}.__getitem__)
    'message 4 (ramp): v2 serves 25% of the customers, v1 the others'
    """
    head = f"message {deployment.message_version} ({deployment.state}): "
    champion = tag(deployment.champion)
    if deployment.challenger is None or deployment.threshold == 0:
        return head + f"{champion} serves every customer"
    challenger = tag(deployment.challenger)
    if deployment.threshold >= 10_000:
        return head + f"{challenger} serves every customer; {champion} stays loaded as the rollback target"
    return head + f"{challenger} serves {_pct(deployment.challenger_share)} of the customers, {champion} the others"


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    """One decision of the run: when it was recorded (wall time, the database's clock) and the event time the feed's
    clock read then, what decided, about which version, and its sentence."""

    at: datetime
    recorded_at: datetime
    step: str
    version: str | None
    sentence: str


def timeline(store: FeedbackStore, *, model: str, versions: Sequence[str], since: datetime,
             event_time_of: Callable[[datetime], datetime]) -> list[TimelineEntry]:
    """Every decision of the run recorded since ``since`` (wall time), from the database, in the order it was taken:
    retrain decisions (fired, or at their latest status), training outcomes, gate summaries, the first champion's
    registration, shadow verdicts, ramp steps, holds, promotions, rollbacks and the latch's clearing.

    Each is timed by ``event_time_of`` its recording instant: the event time the feed's clock read when it was
    written. The tables' own event times follow different conventions (a decision's ``fired_at`` is the end of the
    window it judged, hours after the data it had; a rollout event's ``at`` is the newest stored prediction; a
    training's outcome has none), so ordered by them a decision would come after the training it started; the
    recording instant is one clock for all, in the order things happened.
    """
    rows: list[tuple[datetime, str, str | None, str]] = []
    for recorded, version, kind, urgency, status, sentence, why in store.rows(
            _TIMELINE_DECISIONS, (model, list(versions), since)):
        held = f" ({why})" if why else ""
        rows.append((recorded, "decision", version, f"{kind} retrain, {urgency}: {status.upper()}{held}: {sentence}"))
    for recorded, version, outcome, sentence in store.rows(_TIMELINE_TRAININGS, (model, since)):
        rows.append((recorded, "training", version, f"{outcome}: {sentence}"))
    for version, recorded, passed, failed, info, failures in store.rows(_TIMELINE_GATES, (model, since)):
        text = f"{passed} passed, {failed} failed, {info} for information"
        rows.append((recorded, "gates", version, text + ("; failed: " + "; ".join(failures) if failures else "")))
    for recorded, version, reason in store.rows(_TIMELINE_CHAMPIONS, (model, list(versions), since)):
        rows.append((recorded, "champion", version, reason))
    for recorded, version, kind, share, sentence, actor in store.rows(_TIMELINE_ROLLOUT, (model, since)):
        by = "" if actor in ("controller", "shadow") else f" (by {actor})"
        rows.append((recorded, rollout_step(kind, share), version, sentence + by))
    # a training's outcome and its gates share one transaction's instant: the outcome first
    order = {"decision": 0, "training": 1, "gates": 2}
    rows.sort(key=lambda r: (r[0], order.get(r[1], 3)))
    return [TimelineEntry(at=event_time_of(recorded), recorded_at=recorded, step=step, version=version,
                          sentence=sentence) for recorded, step, version, sentence in rows]


def rollout_step(kind: str, share: float | None) -> str:
    """A rollout event's kind as the timeline names it.

    >>> rollout_step("step", 0.25), rollout_step("shadow_passed", None), rollout_step("holding", 1.0)
    ('ramp 25%', 'shadow passed', 'hold 100%')
    """
    if kind == "step":
        return f"ramp {_pct(share or 0.0)}"
    if kind == "holding":
        return f"hold {_pct(share or 1.0)}"
    return kind.replace("_", " ")


def timeline_lines(entries: Sequence[TimelineEntry], tag: Callable[[str], str], width: int = 118) -> list[str]:
    """The timeline as the console prints it: event time, step, version, then the sentence, wrapped at ``width``.

    >>> e = TimelineEntry(at=datetime(2026, 11, 2, 3, 4), recorded_at=datetime(2026, 11, 30), step="ramp 5%",
    ...                   version="b", sentence="b serves 5%")
    >>> timeline_lines([e], {"b": "v2"}.__getitem__)
    ['  11-02 03:04  ramp 5%          v2   b serves 5%']
    """
    lines = []
    for e in entries:
        name = tag(e.version) if e.version else "-"
        head = f"  {e.at:%m-%d %H:%M}  {e.step:<16} {name:<4} "
        lines += textwrap.wrap(e.sentence, width=width, initial_indent=head, subsequent_indent=" " * len(head),
                               break_on_hyphens=False) or [head.rstrip()]
    return lines
