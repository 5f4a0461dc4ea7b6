"""The monitor's round: build missing profiles, count stray labels, judge every version's windows, store results."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from feedback.config import ModelConfig
from feedback.monitoring.changes import changed_since, snapshot
from feedback.monitoring.evaluate import Evaluation, summary
from feedback.monitoring.incremental import Key, Update, VersionState, read_tested_level
from feedback.monitoring.profile import ReferenceProfile
from feedback.monitoring.results import write_results
from feedback.monitoring.windows import (
    WindowUpdater,
    count_uncounted,
    install_profile,
    profile_from_first_predictions,
)
from feedback.store import FeedbackStore

log = logging.getLogger(__name__)

#: advisory lock class of "the monitor round of a schema": one round at a time across the workers of one store
#: (keyed by the schema, so that stores in other schemas of the same database never wait for it)
MONITOR_LOCK = 0x5049_4D4E
#: chunks of the stray-label sweep per round (feedback.monitoring.windows.SWEEP_CHUNK labels each)
SWEEP_CHUNKS = 4
#: a version's kept state this many rounds old (an hour at the default 10 s interval) may be rebuilt from scratch,
#: one version a round, the oldest first: a safety net under the change marks, cheap because only rows that differ
#: are written
FULL_PASS_ROUNDS = 360

_TRY_ROUND_LOCK = "SELECT pg_try_advisory_lock(%s, hashtext(current_schema()))"
_ROUND_UNLOCK = "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))"

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
    """Runs monitor rounds against one store; safe to run from every worker (one round at a time).

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

    def __init__(self, store: FeedbackStore, updater: WindowUpdater, *, full_every: int = FULL_PASS_ROUNDS) -> None:
        self.store = store
        self.updater = updater
        self.full_every = full_every
        #: per model, the snapshot under which this monitor's last round of it read its windows
        self._since: dict[str, str] = {}
        #: per version: its kept evaluation, the tested level it was judged with, and the round its state was built
        self._states: dict[tuple[str, str], _Kept] = {}
        #: versions a round began to update and did not finish (an error): their states are dropped
        self._unsettled: set[tuple[str, str]] = set()
        self._rounds = 0

    def run_once(
        self, *, models: Sequence[str] | None = None, write: bool = True, after: AfterRound | None = None
    ) -> RoundResult | None:
        """One round; ``None`` when another process holds the round.

        ``after`` runs at the end of the round, still under its lock, with the evaluation of every version (those
        evaluated this round, the others as kept; the trigger engine decides there: one decider at a time
        across workers). ``evaluations`` and ``summaries`` of the result are those of the versions evaluated this
        round, slimmed to what the engine and the summary read. ``write=False`` (a look that stores nothing)
        evaluates every version whole, every result row included, and keeps nothing.
        """
        names = sorted(models if models is not None else self.updater.config.models)
        with self.store.pool.connection() as conn:
            if not conn.execute(_TRY_ROUND_LOCK, (MONITOR_LOCK,)).fetchone()[0]:
                return None
            try:
                for key in self._unsettled:
                    self._states.pop(key, None)
                built = self._build_profiles(conn)
                swept = self._sweep(conn)
                with conn.cursor() as cur:
                    seen_at = snapshot(cur)  # before any accumulator is read: nothing committed after it is lost
                    if write:
                        updates, kept = self._evaluate(cur, names)
                    else:
                        updates, kept = self._look(cur, names), []
                evaluations = [u.evaluation for _, u in updates]
                written = 0
                if write and updates:
                    with conn.transaction(), conn.cursor() as cur:
                        written = write_results(cur, [u.writes for _, u in updates])
                if write:
                    self._rounds += 1
                    for name in names:
                        self._since[name] = seen_at
                    self._unsettled.clear()
                if after is not None:
                    after(conn, evaluations + kept)
            finally:
                conn.execute(_ROUND_UNLOCK, (MONITOR_LOCK,))
        summaries = [summary(ev, self.updater.config.models[ev.model_name]) for ev in evaluations]
        return RoundResult(evaluations, summaries, built, swept, written)

    def _look(self, cur: psycopg.Cursor[Any], names: Sequence[str]) -> list[tuple[Any, Update]]:
        """Every version evaluated whole, from scratch; nothing kept."""
        out = []
        for model, version in cur.execute(_VERSIONS, (names,)).fetchall():
            profile = self.updater.profiles(cur, [(model, version)]).get((model, version))
            if profile is None:
                continue
            update = VersionState(self.updater.config.models[model], profile).update(
                cur, tested=read_tested_level(cur, model, version), whole=True)
            if update is not None:
                out.append(((model, version), update))
        return out

    def _evaluate(self, cur: psycopg.Cursor[Any], names: Sequence[str]
                  ) -> tuple[list[tuple[tuple[str, str], Update]], list[Evaluation]]:
        """The versions with something changed brought up to date (and their states kept), and the kept evaluations
        of the others."""
        config = self.updater.config
        marked = self._marked(cur, names)
        tested = {(m, v): level for m, v, level in cur.execute(_TESTED_LEVELS, (names,)).fetchall()}
        versions = [tuple(r) for r in cur.execute(_VERSIONS, (names,)).fetchall()]
        stale = [k for k in versions if k in self._states and self._rounds - self._states[k].round >= self.full_every]
        refresh = min(stale, key=lambda k: self._states[k].round) if stale else None
        updates, kept = [], []
        for key in versions:
            model, version = key
            have = self._states.get(key)
            profile = self.updater.profiles(cur, [key]).get(key)
            if profile is None:
                continue
            fresh = (have is None or have.state.profile is not profile or have.tested != tested.get(key)
                     or key == refresh)
            if not fresh and key not in marked:
                kept.append(have.evaluation)
                continue
            self._unsettled.add(key)
            if fresh:
                state = VersionState(config.models[model], profile)
                update = state.update(cur, tested=tested.get(key))
            else:
                state = have.state
                update = state.update(cur, tested=tested.get(key), since=self._since[model], marked=marked[key])
            if update is None:
                self._states.pop(key, None)
                continue
            self._states[key] = _Kept(state, update.evaluation, tested.get(key),
                                      self._rounds if fresh else have.round)
            updates.append((key, update))
        return updates, kept

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
        """Count labels a race left uncounted: up to ``SWEEP_CHUNKS`` chunks a round, one transaction each."""
        swept = 0
        for _ in range(SWEEP_CHUNKS):
            with conn.transaction(), conn.cursor() as cur:
                swept += count_uncounted(cur, self.updater)
            if not self.updater.sweep_after:
                break  # the whole index was seen
        return swept

    def _build_profiles(self, conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
        built = []
        with conn.cursor() as cur:
            for model in sorted(self.updater.config.models):
                for (version,) in cur.execute(_UNPROFILED, {"m": model}).fetchall():
                    self.updater.unprofiled.add((model, version))
        for model, version in sorted(self.updater.unprofiled):
            config = self.updater.config.models.get(model)
            if config is None:
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
