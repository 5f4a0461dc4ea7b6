"""The demo's two acts: the first watched in the database (the stack plays it), the second played by the demo.

Act one: the world drifts, a retrain fires, the retrain worker's candidate goes through its shadow and the ramp
(5, 10, 25, 50, 100% held), and becomes champion: the rollout worker decides every step, the demo only watches
for this run's first promotion. Act two, once that champion is final: the demo registers a deliberately bad
candidate (the drill's :class:`~feedback.rollout.drill.FailingModel`, which fails every request) and starts its
ramp at the first step without a shadow (:meth:`~feedback.rollout.controller.Controller.drill`); the rollout
worker's controller sees its failures on its own 5% and rolls it back. A rollback latches (no ramp of the model
starts again until a person clears it); the demo clears the latch once the rollback is in, as a person would
with `pitstop rollout clear`, and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.controller import Controller, RolloutError
from feedback.rollout.drill import FailingModel
from feedback.store import FeedbackStore
from pitstop.demo.world import MODEL_NAME

#: who the demo's own rollout commands name (the drill's start, the latch's clearing)
ACTOR = "pitstop demo"
ACTIVE = ("ramping", "paused", "holding")

# this run's rollouts (the store may hold earlier runs' when the demo uses a running stack)
_ROLLOUTS = """
SELECT rollout_id, champion, challenger, state, share, sentence FROM rollouts
WHERE model_name = %s AND recorded_at >= %s ORDER BY recorded_at, rollout_id
"""
# where act one stands when it has no rollout yet: the newest shadow, training outcome and decision of this run
_SHADOW = """
SELECT version, status, sentence FROM shadows WHERE model_name = %s AND recorded_at >= %s
ORDER BY recorded_at DESC LIMIT 1
"""
_TRAINING = """
SELECT outcome, sentence FROM retrain_outcomes WHERE model_name = %s AND recorded_at >= %s
ORDER BY recorded_at DESC LIMIT 1
"""
_DECISION = """
SELECT kind, status, sentence, coalesce(suppressed_by, '') FROM retrain_decisions
WHERE model_name = %s AND recorded_at >= %s ORDER BY updated_at DESC LIMIT 1
"""


class Acts:
    """Plays the scenario, one :meth:`poll` at a time from the demo's loop; ``phase`` is ``act one``, ``act two``
    or ``done``, ``said`` what it last reported."""

    def __init__(self, store: FeedbackStore, controller: Controller, *, wall_start: datetime, drill_version: str,
                 publish: Callable[[], None], say: Callable[[str], None], tag: Callable[[str], str],
                 registry: Registry | None = None) -> None:
        self.store = store
        self.controller = controller
        self.wall_start = wall_start
        #: the deliberately bad candidate of act two
        self.drill_version = drill_version
        self.publish = publish
        self.say = say
        self.tag = tag
        self.registry = registry or Registry()
        self.phase = "act one"
        #: the version act one made champion
        self.champion: str | None = None
        self._drill_started = False
        self._waiting: str | None = None

    @property
    def done(self) -> bool:
        return self.phase == "done"

    @property
    def drill_rollout(self) -> str:
        return f"{MODEL_NAME}/{self.drill_version}"

    def poll(self) -> None:
        """Look at the store and move the scenario on (psycopg errors are the caller's: it retries next time)."""
        rollouts = self.store.rows(_ROLLOUTS, (MODEL_NAME, self.wall_start))
        if self.phase == "act one":
            promoted = [r for r in rollouts if r[3] == "promoted" and r[2] != self.drill_version]
            if not promoted:
                return
            _, champion, challenger, _, _, sentence = promoted[0]
            self.champion = challenger
            self.phase = "act two"
            self.say(f"act one   done: {self.tag(challenger)} {challenger} replaced {self.tag(champion)} as champion "
                     f"through shadow and ramp ({sentence})")
        if self.phase == "act two" and not self._drill_started:
            self._start_drill(rollouts)
        if self.phase == "act two" and self._drill_started:
            ended = [r for r in rollouts if r[0] == self.drill_rollout and r[3] not in ACTIVE]
            if ended:
                self._end_drill(ended[0][3], ended[0][5])

    def _start_drill(self, rollouts: list[tuple[object, ...]]) -> None:
        active = [r for r in rollouts if r[3] in ACTIVE]
        try:
            if active:
                msg = f"{active[0][2]} is {active[0][3]} at {100 * float(active[0][4]):g}%"  # type: ignore[arg-type]
                raise RolloutError(msg)
            with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                if self.registry.get(cur, MODEL_NAME, self.drill_version) is None:
                    self.registry.register(
                        cur, ModelVersion(model_name=MODEL_NAME, version=self.drill_version, stage="candidate",
                                          trainer="feedback.rollout.drill:FailingModel",
                                          lineage={"drill": True, "demo": "act two"}),
                        serialise(FailingModel(), "pickle"), reason="the demo's act two: fails every request")
            sentence = self.controller.drill(MODEL_NAME, ACTOR, self.drill_version)
        except RolloutError as exc:
            if self._waiting != str(exc):
                self._waiting = str(exc)
                self.say(f"act two   waits for the ramp under way to end: {exc}")
            return
        self._drill_started = True
        self.publish()
        self.say(f"act two   a deliberately bad candidate: {sentence}; the controller must roll it back by itself")

    def _end_drill(self, state: object, sentence: object) -> None:
        self.phase = "done"
        if state != "rolled_back":
            self.say(f"act two   FAILED: the bad candidate's ramp ended {state}, not rolled back: {sentence}")
            return
        self.say(f"act two   done: the controller rolled {self.drill_version} back on its own: {sentence}")
        cleared = self.controller.clear(MODEL_NAME, ACTOR)
        self.say(f"act two   the rollback latched (no ramp of {MODEL_NAME} starts until someone clears it); the demo "
                 f"clears it, as `pitstop rollout clear --model {MODEL_NAME}` would: {cleared}")

    @property
    def succeeded(self) -> bool:
        """Both acts played as written: a champion from the ramp, and the bad candidate rolled back."""
        if not self.done:
            return False
        rows = self.store.rows("SELECT state FROM rollouts WHERE rollout_id = %s", (self.drill_rollout,))
        return self.champion is not None and rows == [("rolled_back",)]

    def where(self) -> str:
        """Where the scenario stands, in one sentence (for a timeout)."""
        if self.phase == "act two":
            if not self._drill_started:
                return f"act two had not started: {self._waiting or 'the drill did not start'}"
            rows = self.store.rows("SELECT state, share, sentence FROM rollouts WHERE rollout_id = %s",
                                   (self.drill_rollout,))
            if rows:
                state, share, sentence = rows[0]
                return f"act two: the bad candidate is {state} at {100 * share:g}%: {sentence}"
            return "act two: the bad candidate's ramp is not in the store"
        rollouts = self.store.rows(_ROLLOUTS, (MODEL_NAME, self.wall_start))
        if rollouts:
            _, champion, challenger, state, share, sentence = rollouts[-1]
            return f"act one: {challenger} against {champion} is {state} at {100 * share:g}%: {sentence}"
        for query, label in ((_SHADOW, "shadow"), (_TRAINING, "training"), (_DECISION, "decision")):
            rows = self.store.rows(query, (MODEL_NAME, self.wall_start))
            if rows:
                return f"act one: the newest {label}: " + ": ".join(str(v) for v in rows[0] if v != "")
        return "act one: no retrain decision yet"
