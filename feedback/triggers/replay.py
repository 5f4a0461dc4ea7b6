"""`pitstop triggers replay`: the decision rules re-run over a version's stored windows, in memory; writes nothing.

For each window within a range (oldest first) the version's span ending there is judged again
(:func:`feedback.monitoring.round.evaluate_version` with ``newest`` = that window's start) and handed to a fresh
:class:`~feedback.triggers.engine.Decider` with a :class:`MemoryLedger`: decisions, published events and calendar
slots live in memory, and the only reads are of windows, profiles and label counts, inside a read-only
transaction (:func:`read_only`). The result is the list of transitions (a decision's first sight, or a change
of its status or urgency) and the events that would have been published.

What a replay cannot know, and so leaves out:

* windows are read as they are stored now: labels that arrived after an instant count at that instant, so a
  decision waiting for labels may fire earlier in a replay than it did live;
* the version's current reference profile judges every instant;
* its firings are hypothetical, so they have no outcomes: each counts as a training running for
  ``max_training`` after it fired (as live, until the worker reports), and the circuit breaker never trips;
* storm control sees only the replay's own firings (cooldown, daily cap), from an empty history at the first
  window end; the calendar's first look only notes its slot, as the live engine's does.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import psycopg

from feedback.config import ModelConfig, MonitoringConfig, parse_config
from feedback.errors import ModelConfigError
from feedback.monitoring.profile import ROWS, ReferenceProfile
from feedback.monitoring.round import evaluate_version
from feedback.triggers.engine import (
    Decider,
    Decision,
    first_seen,
    has_former_champion,
    labels_since,
    trigger_event,
)
from feedback.triggers.rules import CHANGE_KINDS, History

#: every statement of a replay runs in one snapshot that refuses writes
READ_ONLY = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"

_PROFILE = """
SELECT source, n_rows, profile FROM reference_profiles WHERE model_name = %s AND model_version = %s
"""
_PROFILED = "SELECT model_version FROM reference_profiles WHERE model_name = %s ORDER BY model_version"
# the version whose newest window with rows is the newest among those starting in [first, last]
_LIVE_VERSION = """
SELECT model_version FROM window_counts
WHERE model_name = %s AND window_s = %s AND segment = '*' AND series = %s AND window_start BETWEEN %s AND %s
ORDER BY window_start DESC, model_version DESC LIMIT 1
"""
_WINDOWS = """
SELECT count(*) FILTER (WHERE window_start BETWEEN %s AND %s), min(window_start), max(window_start)
FROM window_counts WHERE model_name = %s AND model_version = %s AND window_s = %s AND segment = '*' AND series = %s
"""
_MODEL_WINDOWS = """
SELECT min(window_start), max(window_start) FROM window_counts
WHERE model_name = %s AND window_s = %s AND segment = '*' AND series = %s
"""


class MemoryLedger:
    """A :class:`~feedback.triggers.engine.Ledger` in memory: decisions, published events and calendar slots are
    kept here, with the database ledger's rules (a fired decision is final, an event id is published once);
    :meth:`labels_since` reads ``window_performance`` through ``cur`` (read-only), counting windows before
    ``until`` only.

    A replayed firing has no outcome, so it counts as a running training for ``max_training_s`` of its model
    (default one day), and the circuit breaker never trips.

    Examples
    --------
    >>> t = datetime(2026, 3, 2, 14, tzinfo=UTC)
    >>> ledger = MemoryLedger(None, max_training_s={"churn": 3600})
    >>> fired = Decision(decision_id="churn/manual/r1", model_name="churn", model_version=None, kind="manual",
    ...                  urgency="routine", status="fired", sentence="manual request by ana: new features",
    ...                  decided_at=t, fired_at=t)
    >>> ledger.save(fired)
    >>> ledger.publish(fired)
    >>> ledger.publish(fired)  # the same event id: published once
    >>> [e["trigger_id"] for e in ledger.events]
    ['churn/manual/r1']
    >>> ledger.save(replace(fired, status="suppressed", fired_at=None))  # a fired decision is final
    >>> ledger.decision("churn/manual/r1").status
    'fired'
    >>> h = ledger.history("churn", t + timedelta(minutes=30))
    >>> h.last_fired_at == t, h.fired_last_day, h.running
    (True, 1, 'churn/manual/r1')
    >>> ledger.history("churn", t + timedelta(hours=2)).running is None  # past max_training_s
    True
    """

    def __init__(self, cur: psycopg.Cursor[Any] | None, *, max_training_s: Mapping[str, int] | None = None) -> None:
        self.cur = cur
        self.max_training_s = dict(max_training_s or {})
        self._decisions: dict[str, Decision] = {}
        self._published: dict[str, dict[str, Any]] = {}
        self._slots: dict[str, datetime] = {}
        self.former_champions = False
        self.first_window: datetime | None = None

    @property
    def events(self) -> list[dict[str, Any]]:
        """The trigger events the replay would have published, in order."""
        return list(self._published.values())

    @property
    def decisions(self) -> list[Decision]:
        """Every decision recorded, in the order first seen."""
        return list(self._decisions.values())

    def history(self, model: str, at: datetime) -> History:
        fired = sorted((d.fired_at, d.decision_id, d.kind) for d in self._decisions.values()
                       if d.model_name == model and d.status == "fired" and d.fired_at is not None
                       and d.kind != "pool")  # a pool look trains nothing (see the database ledger)
        running_since = at - timedelta(seconds=self.max_training_s.get(model, 86_400))
        running = [decision_id for fired_at, decision_id, _ in fired if fired_at > running_since]
        storm = [t for t, _, kind in fired if kind != "refresh"]  # a refresh starts no cooldown, counts to no cap
        return History(
            last_fired_at=max((t for t in storm if t <= at), default=None),
            fired_last_day=sum(1 for t in storm if at - timedelta(days=1) < t <= at),
            last_trained_at=max((t for t, _, _ in fired if t <= at), default=None),
            running=running[-1] if running else None,
        )

    def decision(self, decision_id: str) -> Decision | None:
        return self._decisions.get(decision_id)

    def latest(self, model: str, version: str | None, kind: str) -> Decision | None:
        found = [d for d in self._decisions.values()
                 if d.model_name == model and d.model_version == version and d.kind == kind]
        return max(found, key=lambda d: d.decided_at, default=None)

    def save(self, decision: Decision) -> None:
        stored = self._decisions.get(decision.decision_id)
        if stored is None:
            self._decisions[decision.decision_id] = replace(
                decision, first_decided_at=decision.first_decided_at or decision.decided_at)
            return
        if stored.status == "fired" and decision.status != "fired":
            return
        # what the database ledger's upsert updates; identity, first sight and requester stay as first stored
        self._decisions[decision.decision_id] = replace(
            stored, urgency=decision.urgency, status=decision.status, sentence=decision.sentence,
            suppressed_by=decision.suppressed_by, change_point=decision.change_point,
            labels_since_change=decision.labels_since_change, labels_needed=decision.labels_needed,
            decided_at=decision.decided_at, fired_at=decision.fired_at, evidence=decision.evidence,
        )

    def publish(self, decision: Decision) -> None:
        self._published.setdefault(decision.decision_id, trigger_event(decision))

    def episode(self, model: str) -> Decision | None:
        fired = [d for d in self._decisions.values() if d.model_name == model and d.status == "fired"
                 and d.kind in CHANGE_KINDS and d.kind != "refit" and d.fired_at is not None]
        return max(fired, key=lambda d: (d.fired_at, d.decision_id), default=None)

    def latest_change(self, model: str) -> datetime | None:
        return max((d.change_point for d in self._decisions.values() if d.model_name == model
                    and d.kind in CHANGE_KINDS and d.kind != "refit" and d.status in ("fired", "pending")
                    and d.change_point is not None), default=None)

    def first_seen(self, model: ModelConfig) -> datetime | None:
        """From the windows through ``cur``; without a cursor, :attr:`first_window` (set by a test)."""
        return first_seen(self.cur, model) if self.cur is not None else self.first_window

    def has_former_champion(self, model: str) -> bool:
        """From the registry through ``cur``; without a cursor, :attr:`former_champions` (set by a test)."""
        return has_former_champion(self.cur, model) if self.cur is not None else self.former_champions

    def refits(self, model: str, change_point: datetime) -> list[Decision]:
        return [d for d in self._decisions.values()
                if d.model_name == model and d.kind == "refit" and d.change_point == change_point]

    def calendar_slot(self, model: str) -> datetime | None:
        return self._slots.get(model)

    def set_calendar_slot(self, model: str, slot: datetime) -> None:
        self._slots[model] = slot

    def labels_since(self, model: ModelConfig, version: str | None, since: datetime | None, until: datetime) -> int:
        if self.cur is None:
            msg = "MemoryLedger.labels_since needs a cursor on the feedback store"
            raise RuntimeError(msg)
        return labels_since(self.cur, model, version, since, until)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult:
    """What the rules would have decided over a range of window ends."""

    model_name: str
    model_version: str
    window_ends: tuple[datetime, ...]
    #: each decision when first seen, and again whenever its status or urgency changed, oldest first
    transitions: tuple[Decision, ...]
    #: the trigger events that would have been published
    events: tuple[Mapping[str, Any], ...]

    @property
    def fired(self) -> list[Decision]:
        """The decisions that would have fired, in firing order."""
        return [d for d in self.transitions if d.status == "fired"]


def replay(cur: psycopg.Cursor[Any], model: ModelConfig, profile: ReferenceProfile, window_ends: Sequence[datetime],
           *, progress: Callable[[int, int], object] | None = None) -> ReplayResult:
    """Re-run the decision rules at each of ``window_ends`` (oldest first; see :func:`window_ends`) over
    ``profile``'s version.

    ``cur`` should be inside a :func:`read_only` transaction; nothing is written either way. ``progress`` is
    called with (window ends done, all) after each look.
    """
    decider = Decider(MonitoringConfig(path="", models={model.name: model}))
    ledger = MemoryLedger(cur, max_training_s={model.name: model.triggers.max_training_s})
    step = timedelta(seconds=model.window_s)
    seen: dict[str, tuple[str, str]] = {}
    transitions: list[Decision] = []
    for done, end in enumerate(window_ends, 1):
        evaluation = evaluate_version(cur, model, profile, newest=end - step)
        # wall time is the window end: the calendar reads event time, never this machine's clock
        for decision in decider.decide(ledger, model, evaluation, wall_now=end):
            state = (decision.status, decision.urgency)
            if seen.get(decision.decision_id) != state:
                seen[decision.decision_id] = state
                transitions.append(decision)
        if progress is not None:
            progress(done, len(window_ends))
    return ReplayResult(model_name=model.name, model_version=profile.model_version, window_ends=tuple(window_ends),
                        transitions=tuple(transitions), events=tuple(ledger.events))


@contextmanager
def read_only(conn: psycopg.Connection[Any]) -> Iterator[psycopg.Cursor[Any]]:
    """A cursor in a read-only, repeatable-read transaction of ``conn`` (an autocommit connection): one snapshot
    for the whole replay, and any write fails."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(READ_ONLY)
        yield cur


def window_ends(start: datetime, end: datetime, window_s: int) -> list[datetime]:
    """The ends of the windows that lie within [start, end] (windows are aligned to UTC midnight), oldest first:
    a replay from midnight to midnight looks at the day's windows, each at its end.

    >>> ends = window_ends(datetime(2026, 3, 1, 12, 30, tzinfo=UTC), datetime(2026, 3, 1, 15, tzinfo=UTC), 3600)
    >>> [f"{e:%H:%M}" for e in ends]
    ['14:00', '15:00']
    >>> len(window_ends(datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), 3600))
    24
    >>> window_ends(datetime(2026, 3, 1, 12, 10, tzinfo=UTC), datetime(2026, 3, 1, 12, 50, tzinfo=UTC), 3600)
    []
    """
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    step = timedelta(seconds=window_s)
    first = epoch + step * (math.ceil((start - epoch) / step) + 1)
    last = epoch + step * math.floor((end - epoch) / step)
    return [first + step * i for i in range(int((last - first) / step) + 1)] if first <= last else []


# --- what the replay reads ------------------------------------------------------------------------------------


def load_profile(cur: psycopg.Cursor[Any], model: str, version: str) -> ReferenceProfile | None:
    """The version's current reference profile, or None."""
    row = cur.execute(_PROFILE, (model, version)).fetchone()
    return None if row is None else ReferenceProfile.from_row(model, version, row[0], row[1], row[2])


def profiled_versions(cur: psycopg.Cursor[Any], model: str) -> list[str]:
    """The model's versions with a reference profile."""
    return [r[0] for r in cur.execute(_PROFILED, (model,)).fetchall()]


def live_version(cur: psycopg.Cursor[Any], model: ModelConfig, ends: Sequence[datetime]) -> str | None:
    """The version with the newest window among those ending at ``ends`` (the live one at the last of them)."""
    step = timedelta(seconds=model.window_s)
    row = cur.execute(_LIVE_VERSION, (model.name, model.window_s, ROWS, ends[0] - step, ends[-1] - step)).fetchone()
    return None if row is None else row[0]


def version_windows(cur: psycopg.Cursor[Any], model: ModelConfig, version: str | None,
                    ends: Sequence[datetime]) -> tuple[int, datetime | None, datetime | None]:
    """Windows with rows of ``version`` (every version when None) ending at ``ends``, and the first and last
    window start it has at all."""
    step = timedelta(seconds=model.window_s)
    if version is None:
        first, last = cur.execute(_MODEL_WINDOWS, (model.name, model.window_s, ROWS)).fetchone()  # type: ignore[misc]
        return 0, first, last
    n, first, last = cur.execute(  # type: ignore[misc]
        _WINDOWS, (ends[0] - step, ends[-1] - step, model.name, version, model.window_s, ROWS)).fetchone()
    return int(n), first, last


# --- overrides ------------------------------------------------------------------------------------------------


def override_config(text: str, model: str, overrides: Sequence[str], *, path: str = "pitstop.toml") -> ModelConfig:
    """The model's configuration from a ``pitstop.toml`` text with ``key=value`` overrides, validated as the file is.

    Keys are dotted and relative to the model's table; a value is read as TOML, and as a string when it is not
    TOML (so ``triggers.calendar=0 3 * * 1`` needs no quotes). ``[defaults]`` still applies; other models are
    left out. A bad key or value fails as a bad file would, naming it (``path`` names the source in errors).

    >>> text = '[models.churn]\\ntask = "classification"\\npositive_class = 1\\n'
    >>> m = override_config(text, "churn", ["triggers.performance.elevated=0.08", "thresholds.psi=0.2",
    ...                                     "triggers.drift.windows=3", "window=30m"])
    >>> m.triggers.performance.elevated, m.thresholds.psi, m.triggers.drift.windows, m.window_s
    (0.08, 0.2, 3, 1800)
    >>> override_config(text, "churn", ["triggers.performance.elevatd=0.08"])
    Traceback (most recent call last):
    ...
    feedback.errors.ModelConfigError: pitstop.toml: models.churn.triggers.performance.elevatd: unknown key; \
expected one of: elevated, critical, floor, persist, pool_windows (did you mean 'elevated'?)
    >>> override_config(text, "churn", ["triggers.performance.elevated=2"])
    Traceback (most recent call last):
    ...
    feedback.errors.ModelConfigError: pitstop.toml: models.churn.triggers.performance.elevated = 2: expected a \
number greater than 0 and less than 1
    """
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelConfigError(path, "", None, "", problem=f"invalid TOML: {exc}") from None
    models = document.get("models")
    if not isinstance(models, dict) or not isinstance(models.get(model), dict):
        raise ModelConfigError(path, f"models.{model}", None, "a [models.<name>] table", problem="missing")
    table = models[model]
    for item in overrides:
        key, value = _override(item, path)
        parts = key.split(".")
        at = table
        for i, part in enumerate(parts[:-1]):
            inner = at.setdefault(part, {})
            if not isinstance(inner, dict):
                dotted = ".".join(["models", model, *parts[: i + 1]])
                raise ModelConfigError(path, dotted, inner, "a table", problem=f"--set {key} goes through a value")
            at = inner
        at[parts[-1]] = value
    kept = {k: v for k, v in document.items() if k == "defaults"}
    kept["models"] = {model: table}
    config = parse_config(dumps_toml(kept), path=path)
    return config.models[model]


def _override(item: str, path: str) -> tuple[str, Any]:
    """``key=value`` as a dotted key and a TOML value (a string when the value is not TOML).

    >>> _override("triggers.performance.elevated=0.08", "x"), _override("triggers.calendar=0 3 * * 1", "x")
    (('triggers.performance.elevated', 0.08), ('triggers.calendar', '0 3 * * 1'))
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not p.strip() for p in key.split(".")):
        raise ModelConfigError(path, "", None, "key=value with a dotted key relative to the model's table, such as "
                               "triggers.performance.elevated=0.08", problem=f"--set {item!r} is not key=value")
    raw = raw.strip()
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return key, raw
    return key, parsed["v"] if list(parsed) == ["v"] else raw


def dumps_toml(document: Mapping[str, Any]) -> str:
    """A TOML document (one ``key = value`` line per top-level key, tables inline) that reads back the same.

    >>> doc = {"models": {"churn v2": {"segments": ["region"], "alpha": 0.01, "on": True, "s": 'a"b\\x7f'}}}
    >>> print(dumps_toml(doc), end="")
    models = { "churn v2" = { segments = ["region"], alpha = 0.01, on = true, s = "a\\"b\\u007f" } }
    >>> tomllib.loads(dumps_toml(doc)) == doc
    True
    """
    return "".join(f"{_key(k)} = {_value(v)}\n" for k, v in document.items())


def _value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    return _string(str(value))


def _key(key: str) -> str:
    bare = key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key)
    return key if bare else _string(key)


def _string(text: str) -> str:
    escaped = {'"': '\\"', "\\": "\\\\"}
    out = [escaped.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c) for c in text]
    return '"' + "".join(out) + '"'
