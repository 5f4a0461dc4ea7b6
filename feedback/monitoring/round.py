"""The monitor's round over this worker's share of the models: build missing profiles, count stray labels, bring
every changed version's evaluation up to date (feedback/monitoring/incremental.py), store what changed
(feedback/monitoring/results.py)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from feedback.config import ModelConfig
from feedback.monitoring.changes import changed_since, snapshot
from feedback.monitoring.evaluate import Evaluation, summary
from feedback.monitoring.incremental import Key, VersionState, read_tested_level
from feedback.monitoring.profile import ReferenceProfile
from feedback.monitoring.results import VersionWrites, write_results
from feedback.monitoring.windows import (
    WindowUpdater,
    count_uncounted,
    install_profile,
    profile_from_first_predictions,
)
from feedback.store import FeedbackStore, lock_key

log = logging.getLogger(__name__)

#: advisory lock class of "the stray-label sweep of a schema": one sweep at a time across the monitor workers of one
#: store (keyed by the schema, so that stores in other schemas of the same database never wait for it)
MONITOR_LOCK = 0x5049_4D4E
#: advisory lock class of "a model's round": one monitor worker evaluates and decides for a model at a time (keyed
#: by the schema and the model's name); a killed worker's locks go with its connection
MODEL_LOCK = 0x5049_4D4F
#: chunks of the stray-label sweep per round (feedback.monitoring.windows.SWEEP_CHUNK labels each)
SWEEP_CHUNKS = 4
#: a version's kept state this many rounds old (an hour at the default 10 s interval) may be rebuilt from scratch,
#: one version a round, the oldest first: a safety net under the change marks, cheap because only rows that differ
#: are written
FULL_PASS_ROUNDS = 360
#: a round stores its results in transactions of about this many rows (a first round over 1,000 models builds 10M)
WRITE_ROWS = 20_000

_TRY_SWEEP_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"
_SWEEP_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))"
_CLAIM_MODELS = f"""
SELECT m FROM unnest(%s::text[]) AS m WHERE pg_try_advisory_lock({MODEL_LOCK}, {lock_key("m")})
"""
_RELEASE_MODELS = f"""
SELECT pg_advisory_unlock({MODEL_LOCK}, {lock_key("m")}) FROM unnest(%s::text[]) AS m
"""
# the monitor workers of the store: each says it is alive at every round (and within long ones)
_HEARTBEAT = """
INSERT INTO monitor_workers (worker_id, seen_at) VALUES (%s, now())
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now()
"""
_LIVE_WORKERS = "SELECT worker_id FROM monitor_workers WHERE seen_at > now() - make_interval(secs => %s)"
_FORGET_WORKERS = "DELETE FROM monitor_workers WHERE worker_id = %s OR seen_at < now() - interval '1 day'"

# a loose index scan over predictions_model_time: the model's versions without a profile
_UNPROFILED = """
WITH RECURSIVE v AS (
    (SELECT model_version FROM predictions WHERE model_name = %(m)s ORDER BY model_version LIMIT 1)
    UNION ALL
    SELECT (SELECT p.model_version FROM predictions p
            WHERE p.model_name = %(m)s AND p.model_version > v.model_version
            ORDER BY p.model_version LIMIT 1)
    FROM v WHERE v.model_version IS NOT NULL
)
SELECT model_version FROM v
WHERE model_version IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM reference_profiles r WHERE r.model_name = %(m)s AND r.model_version = v.model_version)
"""

_VERSIONS = """
SELECT model_name, model_version FROM reference_profiles WHERE model_name = ANY(%s) ORDER BY 1, 2
"""

# every version's tested level, to tell one that changed since its evaluation (registered after its windows)
_TESTED_LEVELS = """
SELECT model_name, version, (lineage->'expected')::text FROM model_versions WHERE model_name = ANY(%s)
"""


#: what runs at the end of a round, under its lock: (connection, the round's evaluations)
AfterRound = Callable[[psycopg.Connection[Any], list[Evaluation]], object]


@dataclass(frozen=True, slots=True)
class RoundResult:
    """What one monitor round did."""

    evaluations: list[Evaluation]
    summaries: list[dict[str, Any]]
    profiles_built: list[tuple[str, str]]
    labels_swept: int
    #: result rows written (the rows of the windows whose results changed)
    results_written: int = 0


class Monitor:
    """Runs monitor rounds against one store; any number of monitors may run them at once (one a model at a time).

    A round evaluates only the versions whose windows changed since this monitor's last round of their model
    (``window_changes``, feedback/monitoring/changes.py), and of those only what changed
    (feedback/monitoring/incremental.py): each version's evaluation is kept between rounds
    (:class:`~feedback.monitoring.incremental.VersionState`) and brought up to date from the accumulator rows
    changed since. The versions with nothing changed keep the evaluation of the round that last evaluated them.

    A kept evaluation is a function of the version's windows, its profile (reinstalling one marks every window and
    makes a new profile object) and its tested level (compared at every round). As a safety net, one version a
    round, the one kept longest, is evaluated from scratch once its state is ``full_every`` rounds old (about an
    hour at the default 10 s interval, or a version every round when there are more than that): its rows are
    written only where they differ, so a state that had drifted from the store would be corrected, not doubled.
    """

    def __init__(self, store: FeedbackStore, updater: WindowUpdater, *, full_every: int = FULL_PASS_ROUNDS,
                 worker_id: str | None = None, lease_s: float = 60.0) -> None:
        self.store = store
        self.updater = updater
        self.full_every = full_every
        #: this monitor's name among the monitor workers sharing the store's models (None: it takes every model
        #: it can lock), and how long a worker not heard from still owns its share
        self.worker_id = worker_id
        self.lease_s = lease_s
        #: the models this monitor's current (or last) round holds
        self.claimed: list[str] = []
        self._heard = 0.0
        #: per model, the snapshot under which this monitor's last round of it read its windows
        self._since: dict[str, str] = {}
        #: per version: its kept evaluation, the tested level it was judged with, and the round its state was built
        self._states: dict[tuple[str, str], _Kept] = {}
        #: versions a round began to update and did not finish (an error): their states are dropped
        self._unsettled: set[tuple[str, str]] = set()
        self._rounds = 0

    def run_once(
        self, *, models: Sequence[str] | None = None, write: bool = True, after: AfterRound | None = None
    ) -> RoundResult:
        """One round over the models of ``models`` (all by default) that are this monitor's share and that no other
        worker's round holds now (:attr:`claimed`).

        ``after`` runs at the end of the round, still under its locks, with the evaluation of every version of the
        claimed models (those evaluated this round, the others as kept; the trigger engine decides there for the
        claimed models: one decider a model at a time across workers). ``evaluations`` and ``summaries`` of the
        result are those of the versions evaluated this round, slimmed to what the engine and the summary read.
        ``write=False`` (a look that stores nothing) evaluates every version whole, every result row included, and
        keeps nothing.
        """
        names = sorted(models if models is not None else self.updater.config.models)
        with self.store.pool.connection() as conn:
            names = self._claim(conn, names)
            self.claimed = names
            try:
                for key in self._unsettled:
                    self._states.pop(key, None)
                for key in [k for k in self._states if k[0] not in names]:  # another worker's share now
                    del self._states[key]
                built = self._build_profiles(conn, names)
                swept = self._sweep(conn)
                with conn.cursor() as cur:
                    seen_at = snapshot(cur)  # before any accumulator is read: nothing committed after it is lost
                    if write:
                        evaluations, kept, written = self._evaluate(cur, names)
                    else:
                        evaluations, kept, written = self._look(cur, names), [], 0
                if write:
                    self._rounds += 1
                    for name in names:
                        self._since[name] = seen_at
                    self._unsettled.clear()
                if after is not None:
                    after(conn, evaluations + kept)
            finally:
                conn.execute(_RELEASE_MODELS, (names,))
        summaries = [summary(ev, self.updater.config.models[ev.model_name]) for ev in evaluations]
        return RoundResult(evaluations, summaries, built, swept, written)

    def _claim(self, conn: psycopg.Connection[Any], names: Sequence[str]) -> list[str]:
        """The models of ``names`` this round takes: this worker's share (when it shares them), those of it no
        other worker's round holds now, locked until the round ends."""
        if self.worker_id is not None:
            self.heartbeat(conn)
            live = [w for (w,) in conn.execute(_LIVE_WORKERS, (self.lease_s,)).fetchall()]
            names = [name for name in names if owner(name, live) == self.worker_id]
        return sorted(m for (m,) in conn.execute(_CLAIM_MODELS, (list(names),)).fetchall())

    def heartbeat(self, conn: psycopg.Connection[Any], *, every_s: float = 0.0) -> None:
        """Say this worker is alive (at most every ``every_s`` seconds): its share stays its own."""
        if self.worker_id is not None and time.monotonic() - self._heard >= every_s:
            conn.execute(_HEARTBEAT, (self.worker_id,))
            self._heard = time.monotonic()

    def leave(self) -> None:
        """This worker stops: its share goes to the others at their next round (and workers gone a day are
        forgotten)."""
        if self.worker_id is not None:
            with self.store.pool.connection() as conn:
                conn.execute(_FORGET_WORKERS, (self.worker_id,))

    def _look(self, cur: psycopg.Cursor[Any], names: Sequence[str]) -> list[Evaluation]:
        """Every version evaluated whole, from scratch; nothing kept."""
        out = []
        for model, version in cur.execute(_VERSIONS, (names,)).fetchall():
            profile = self.updater.profiles(cur, [(model, version)]).get((model, version))
            if profile is None:
                continue
            update = VersionState(self.updater.config.models[model], profile).update(
                cur, tested=read_tested_level(cur, model, version), whole=True)
            if update is not None:
                out.append(update.evaluation)
        return out

    def _evaluate(self, cur: psycopg.Cursor[Any], names: Sequence[str]
                  ) -> tuple[list[Evaluation], list[Evaluation], int]:
        """The versions with something changed brought up to date (their states kept, their results stored as they
        come, a transaction every :data:`WRITE_ROWS` rows or so, so that a first round over many models never
        holds all their rows at once); returns their evaluations, the kept evaluations of the others and the
        result rows written."""
        config = self.updater.config
        marked = self._marked(cur, names)
        tested = {(m, v): level for m, v, level in cur.execute(_TESTED_LEVELS, (names,)).fetchall()}
        versions = [tuple(r) for r in cur.execute(_VERSIONS, (names,)).fetchall()]
        stale = [k for k in versions if k in self._states and self._rounds - self._states[k].round >= self.full_every]
        refresh = min(stale, key=lambda k: self._states[k].round) if stale else None
        evaluations: list[Evaluation] = []
        kept: list[Evaluation] = []
        pending: list[VersionWrites] = []
        written = pending_rows = 0

        def flush() -> int:
            nonlocal pending_rows
            with cur.connection.transaction():
                count = write_results(cur, pending)
            pending.clear()
            pending_rows = 0
            return count

        for key in versions:
            model, version = key
            self.heartbeat(cur.connection, every_s=self.lease_s / 4)  # a long round keeps its share
            have = self._states.get(key)
            if have is not None and key not in marked and have.tested == tested.get(key) and key != refresh:
                kept.append(have.evaluation)  # a profile installed again marks every window: it is in marked
                continue
            profile = self.updater.profiles(cur, [key]).get(key)
            if profile is None:
                continue
            fresh = (have is None or have.state.profile is not profile or have.tested != tested.get(key)
                     or key == refresh)
            self._unsettled.add(key)
            state = VersionState(config.models[model], profile) if fresh else have.state
            try:
                if fresh:
                    update = state.update(cur, tested=tested.get(key))
                else:
                    update = state.update(cur, tested=tested.get(key), since=self._since[model], marked=marked[key])
            except psycopg.Error:
                raise  # the database: the round stops, the next one starts afresh
            except Exception:  # this version's accumulators or profile: the others are judged all the same
                log.exception("monitor round: %s %s not evaluated (judged again from scratch at the next round)",
                              model, version)
                self._states.pop(key, None)
                continue
            if update is None:
                self._states.pop(key, None)
                continue
            self._states[key] = _Kept(state, update.evaluation, tested.get(key),
                                      self._rounds if fresh else have.round)
            evaluations.append(update.evaluation)
            pending.append(update.writes)
            pending_rows += sum(len(w.rows) for w in update.writes.windows)
            if pending_rows >= WRITE_ROWS:
                written += flush()
        if pending:
            written += flush()
        return evaluations, kept, written

    def _marked(self, cur: psycopg.Cursor[Any], names: Sequence[str]) -> dict[tuple[str, str], set[Key]]:
        """The windows (segment, start) of each version of ``names`` changed since this monitor's last round of
        their model (a version not listed has none)."""
        found: dict[tuple[str, str], set[Key]] = defaultdict(set)
        by_snapshot: dict[str, list[str]] = defaultdict(list)
        for name in names:
            if name in self._since:
                by_snapshot[self._since[name]].append(name)
        windows = {name: self.updater.config.models[name].window_s for name in names}
        for since, models in by_snapshot.items():
            for c in changed_since(cur, since, models):
                if c.window_s == windows[c.model_name]:
                    found[(c.model_name, c.model_version)].add((c.segment, c.window_start))
        return found

    def _sweep(self, conn: psycopg.Connection[Any]) -> int:
        """Count labels a race left uncounted: up to ``SWEEP_CHUNKS`` chunks a round, one transaction each, by one
        monitor worker at a time (the others skip it)."""
        if not conn.execute(_TRY_SWEEP_LOCK, (MONITOR_LOCK,)).fetchone()[0]:
            return 0
        swept = 0
        try:
            for _ in range(SWEEP_CHUNKS):
                with conn.transaction(), conn.cursor() as cur:
                    swept += count_uncounted(cur, self.updater)
                if not self.updater.sweep_after:
                    break  # the whole index was seen
        finally:
            conn.execute(_SWEEP_UNLOCK, (MONITOR_LOCK,))
        return swept

    def _build_profiles(self, conn: psycopg.Connection[Any], names: Sequence[str]) -> list[tuple[str, str]]:
        built = []
        with conn.cursor() as cur:
            for model in names:
                for (version,) in cur.execute(_UNPROFILED, {"m": model}).fetchall():
                    self.updater.unprofiled.add((model, version))
        for model, version in sorted(self.updater.unprofiled):
            config = self.updater.config.models.get(model)
            if config is None or model not in names:
                continue
            with conn.cursor() as cur:
                if self.updater.profiles(cur, [(model, version)]):
                    self.updater.unprofiled.discard((model, version))
                    continue
                profile = profile_from_first_predictions(cur, config, version)
            if profile is not None:
                n = install_profile(conn, self.updater, profile)
                log.info("reference profile for %s %s from its %s; %d predictions counted",
                         model, version, profile.source, n)
                built.append((model, version))
        return built


def owner(model: str, workers: Sequence[str]) -> str | None:
    """The worker of ``workers`` whose share ``model`` is: the highest of a stable hash of (worker, model), so that
    a worker that comes or goes moves only its own share (rendezvous hashing).

    >>> owner("churn", ["a", "b"]) == owner("churn", ["b", "a"])
    True
    >>> sorted({owner(f"m{i}", ["a", "b", "c"]) for i in range(30)})
    ['a', 'b', 'c']
    >>> owner("churn", [])
    """
    if not workers:
        return None
    return max(workers, key=lambda w: hashlib.blake2b(f"{w}\0{model}".encode(), digest_size=8).digest())


def evaluate_version(
    cur: psycopg.Cursor[Any], config: ModelConfig, profile: ReferenceProfile, *, newest: datetime | None = None
) -> Evaluation | None:
    """Judge the version's last ``span`` windows whole, up to its newest window with data (or up to the window
    starting at ``newest``: `pitstop triggers replay` walks history this way)."""
    update = VersionState(config, profile).update(
        cur, tested=read_tested_level(cur, config.name, profile.model_version), newest=newest, whole=True)
    return None if update is None else update.evaluation


@dataclass(frozen=True, slots=True)
class _Kept:
    """What a monitor keeps of a version between rounds."""

    state: VersionState
    evaluation: Evaluation  # slimmed
    tested: str | None
    round: int  # the round its state was built from scratch
