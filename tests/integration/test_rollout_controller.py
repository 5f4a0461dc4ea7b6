"""The rollout controller on the real database: a good challenger walks every step to champion, dwell respected
and each deployment message parseable by the router; a 5% canary failing every request is rolled back at its
first look (the champion had no failure at all), latched, and the next candidate waits; a challenger that
degrades after reaching 100% is rolled back during the hold; a challenger the shadow found no better is
abandoned at the start; a champion that no longer loads stops the ramp before it starts."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from psycopg.types.json import Jsonb
from sklearn.linear_model import LogisticRegression

from feedback.config import parse_config
from feedback.registry.artifacts import serialise
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout.controller import Controller, RolloutError, publish_deployment
from feedback.store import FeedbackStore, ensure_partitions, index_loaded_predictions
from pitstop.router import parse_deployment

T0 = datetime(2026, 5, 1, tzinfo=UTC)
FAST = """
[models.churn]
task = "classification"
positive_class = 1
segments = ["region"]
[models.churn.retrain]
promotion = "shadow"
[models.churn.rollout]
dwell = ["1h", "1h", "1h", "1h"]
hold = "3h"
step_min_requests = 100
"""


class _Alerts:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, alert: Any) -> None:
        self.sent.append(alert)

    def close(self, timeout_s: float = 5.0) -> None:
        pass


@dataclass
class World:
    """Users served by the deployment in the database, each version with its error and failure rates."""

    store: FeedbackStore
    error: dict[str, float]
    failure: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    users: int = 3_000
    per_hour: int = 600
    classes: tuple[Any, ...] = (0, 1)
    #: the declared segment by user (region "apac" for every fifth user), and errors by (version, region) that
    #: override ``error``; None: the region alternates by request
    by_user: bool = False
    segment_error: dict[tuple[str, str], float] = field(default_factory=dict)
    #: the champion (v1) is shadow-scored on the requests another version serves, as the rollout worker does
    #: during a ramp: its errors are drawn first, and the other version errs where it does, except on a share
    #: ``1 - error[version] / error["v1"]`` of them (hard requests are hard for both)
    shadow_champion: bool = False
    #: draw the errors that way but store none of the champion's scores (the same traffic, no covariate)
    store_shadow: bool = True
    at: datetime = T0
    seq: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    def hour(self, served_by: str | None = None) -> None:
        """An hour of requests routed by the current deployment (or all to ``served_by``), labelled at once."""
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            row = cur.execute("SELECT message_version, champion, challenger, challenger_share, salt, state,"
                              " decided_at, reason FROM deployments WHERE model_name = 'churn'").fetchone()
            deployment = None if row is None else parse_deployment(_dumps_deployment(row))
            predictions, labels, shadowed = [], [], []
            for k in range(self.per_hour):
                self.seq += 1
                uid = int(self.rng.integers(self.users))
                user = f"u{uid}"
                version = served_by or (deployment.route(user) if deployment else "v1")
                region = ("apac" if uid % 5 == 0 else "eu") if self.by_user else ("eu" if self.seq % 2 else "us")
                at = self.at + timedelta(seconds=3600 * k / self.per_hour)
                label = int(self.rng.integers(len(self.classes)))
                failed = self.rng.random() < self.failure.get(version, 0.0)
                wrong = self.rng.random() < self.segment_error.get((version, region), self.error[version])
                if self.shadow_champion:
                    champion_wrong = wrong = self.rng.random() < self.error["v1"]
                    if version != "v1":
                        wrong = champion_wrong and self.rng.random() < self.error[version] / self.error["v1"]
                        shadowed.append((f"r{self.seq}", Jsonb(self.classes[_wrong(label, self.classes, self.rng)
                                                                            if champion_wrong else label])))
                predicted = _wrong(label, self.classes, self.rng) if wrong else label
                predictions.append((f"r{self.seq}", "churn", version, at, Jsonb({"x": 1.0}),
                                    Jsonb(None if failed else self.classes[predicted]),
                                    user, Jsonb({"region": region}),
                                    self.latency_ms.get(version, 4.0) * (1 + self.rng.random()),
                                    "RuntimeError: boom" if failed else None))
                labels.append((f"r{self.seq}", Jsonb(self.classes[label]), at + timedelta(minutes=1)))
            # one statement a table, as the ingest and the shadow scorer write (the ramp's triggers run a statement)
            _copy(cur, "predictions (prediction_id, model_name, model_version, predicted_at, features, prediction,"
                  " routing_key, segment, latency_ms, error)", predictions)
            _copy(cur, "current_labels (prediction_id, label, observed_at)", labels)
            _copy(cur, "shadow_predictions (model_name, version, prediction_id, prediction)",
                  [("churn", "v1", *row) for row in shadowed] if self.store_shadow else [])
        self.at += timedelta(hours=1)


def _copy(cur: Any, table: str, rows: list[tuple[Any, ...]]) -> None:
    with cur.copy(f"COPY {table} FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def _wrong(label: int, classes: tuple[Any, ...], rng: np.random.Generator) -> int:
    """Another class than ``label``'s (the other one of two, without a draw)."""
    return 1 - label if len(classes) == 2 else (label + 1 + int(rng.integers(len(classes) - 1))) % len(classes)


def _dumps_deployment(row: tuple[Any, ...]) -> bytes:
    return json.dumps({"schema_version": 1, "model_name": "churn", "message_version": row[0], "champion": row[1],
                       "challenger": row[2], "challenger_share": row[3], "salt": row[4], "state": row[5],
                       "decided_at": row[6].isoformat(), "reason": row[7]}).encode()


def _model() -> LogisticRegression:
    x = np.random.default_rng(0).normal(size=(200, 1))
    return LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))


def _setup(store: FeedbackStore, *, shadow_error: float = 0.2, served_error: float = 0.3,
           champion_loads: bool = True, classes: tuple[Any, ...] = (0, 1), shadow_status: str = "passed") -> None:
    """v1 the champion; v2 a candidate whose shadow passed, scored on 1,500 labelled requests served by v1."""
    registry = Registry()
    rng = np.random.default_rng(3)
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        for version, stage in (("v1", "champion"), ("v2", "candidate")):
            registry.register(cur, ModelVersion(model_name="churn", version=version, stage=stage),  # type: ignore[arg-type]
                              serialise(_model()), reason="test")
        registry.move(cur, "churn", "v2", "shadow", reason="test shadow")
        rows, shadow_rows, labels = [], [], []
        for i in range(1_500):
            at = T0 - timedelta(hours=30) + timedelta(seconds=60 * i)
            label = int(rng.integers(len(classes)))
            served = label if rng.random() >= served_error else _wrong(label, classes, rng)
            shadow = label if rng.random() > shadow_error else _wrong(label, classes, rng)
            rows.append((f"s{i}", "churn", "v1", at, Jsonb({}), Jsonb(classes[served]), f"u{i % 1000}", 4))
            shadow_rows.append(("churn", "v2", f"s{i}", Jsonb(classes[shadow])))
            labels.append((f"s{i}", Jsonb(classes[label]), at + timedelta(minutes=5)))
        ensure_partitions(cur, {"predictions": [row[3] for row in rows]})
        _copy(cur, "predictions (prediction_id, model_name, model_version, predicted_at, features, prediction,"
              " routing_key, latency_ms)", rows)
        index_loaded_predictions(cur)
        _copy(cur, "shadow_predictions (model_name, version, prediction_id, prediction)", shadow_rows)
        _copy(cur, "current_labels (prediction_id, label, observed_at)", labels)
        cur.execute("INSERT INTO shadows (model_name, version, champion, cutoff, started_at, status, sentence,"
                    " decided_at) VALUES ('churn', 'v2', 'v1', %s, %s, %s, %s, %s)",
                    (T0 - timedelta(hours=31), T0 - timedelta(hours=30), shadow_status, shadow_status, T0))
        if not champion_loads:
            cur.execute("UPDATE model_artifacts SET data = data || '\\x00'::bytea WHERE artifact_id ="
                        " (SELECT artifact_id FROM model_versions WHERE version = 'v1')")


def _events(store: FeedbackStore) -> list[tuple[str, float | None, datetime, str]]:
    with store.pool.connection() as conn:
        return conn.execute("SELECT kind, share, at, sentence FROM rollout_events ORDER BY event_id").fetchall()


def _stages(store: FeedbackStore) -> dict[str, str]:
    with store.pool.connection() as conn:
        return dict(conn.execute("SELECT version, stage FROM model_versions").fetchall())


def _messages(store: FeedbackStore) -> list[Any]:
    with store.pool.connection() as conn:
        rows = conn.execute("SELECT payload FROM outbox WHERE topic = 'deployments' ORDER BY id").fetchall()
    return [parse_deployment(json.dumps(r[0]).encode()) for r in rows]


def _controller(store: FeedbackStore, text: str = FAST) -> tuple[Controller, _Alerts]:
    alerts = _Alerts()
    return Controller(store, parse_config(text), alerts), alerts


def _run(world: World, controller: Controller, hours: int, until: str | None = None) -> None:
    for _ in range(hours):
        world.hour()
        results = controller.look()
        if until and results and results[-1].state == until:
            return


def test_a_good_challenger_walks_every_step_to_champion(store: FeedbackStore) -> None:
    """Error 0.20 against 0.30 per request: 5, 10, 25, 50%, each after its dwell, then 100% held 3 h, then
    champion; v1 becomes previous; every deployment message parses and its version rises by one."""
    _setup(store)
    controller, alerts = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    world.hour(served_by="v1")
    _run(world, controller, 40, until="promoted")
    events = _events(store)
    kinds = [(k, s) for k, s, _, _ in events]
    assert kinds == [("step", 0.05), ("step", 0.10), ("step", 0.25), ("step", 0.50), ("holding", 1.0),
                     ("promoted", 1.0)], events
    times = [at for _, _, at, _ in events]
    assert all(b - a >= timedelta(hours=1) for a, b in zip(times[:4], times[1:5], strict=True))
    assert times[5] - times[4] >= timedelta(hours=3)
    assert _stages(store) == {"v1": "previous", "v2": "champion"}
    messages = _messages(store)
    assert [m.message_version for m in messages] == list(range(1, len(messages) + 1))
    assert [m.challenger_share for m in messages] == [0.05, 0.10, 0.25, 0.50, 1.0, 0.0]
    assert messages[-1].champion == "v2" and messages[-1].challenger is None
    assert "mSPRT p = " in events[4][3] and not alerts.sent
    with store.pool.connection() as conn:
        trail = conn.execute("SELECT step, sentence FROM version_trail WHERE model_name = 'churn' AND version = 'v2'"
                             " ORDER BY recorded_at, source, seq").fetchall()
    assert [step for step, _ in trail] == ["stage", "stage", "stage", "step", "step", "step", "step",
                                           "holding", "stage", "promoted"], trail
    assert trail[0][1] == "registered -> candidate: test" and trail[2][1] == "shadow -> canary"


def test_a_5_percent_canary_failing_every_request_is_rolled_back_and_latched(store: FeedbackStore) -> None:
    """The champion fails nothing; the canary fails all its requests: rolled back at the first look, rejected,
    all traffic to v1 in the next message, an alert, and a later passed shadow waits for the latch."""
    _setup(store)
    controller, alerts = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20}, failure={"v2": 1.0})
    world.hour(served_by="v1")
    _run(world, controller, 3)
    events = _events(store)
    assert [k for k, *_ in events] == ["step", "rolled_back"], events
    assert "failed" in events[1][3] and "(100.0%)" in events[1][3]
    assert _stages(store)["v2"] == "rejected"
    last = _messages(store)[-1]
    assert (last.champion, last.challenger, last.challenger_share) == ("v1", None, 0.0)
    assert [a.kind for a in alerts.sent] == ["rollback"]
    with store.pool.connection() as conn:
        assert conn.execute("SELECT version FROM rollback_latches").fetchone() == ("v2",)
        conn.execute("INSERT INTO model_versions (model_name, version, stage) VALUES ('churn', 'v3', 'shadow')")
        conn.execute("INSERT INTO shadows (model_name, version, champion, cutoff, started_at, status, decided_at)"
                     " VALUES ('churn', 'v3', 'v1', %s, %s, 'passed', %s)", (world.at, world.at, world.at))
    results = controller.look()
    assert "latched" in results[0].sentence and not results[0].changed


def test_a_challenger_degrading_after_100_percent_is_rolled_back_in_the_hold(store: FeedbackStore) -> None:
    """Once v2 serves everything, no champion traffic is left: its error, 0.20 on the ramp, turns 0.50 and is
    judged against v1's frozen 0.30: rolled back during the hold, v1 champion again."""
    _setup(store)
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    world.hour(served_by="v1")
    _run(world, controller, 40, until="holding")
    world.error["v2"] = 0.50
    _run(world, controller, 3, until="rolled_back")
    events = _events(store)
    assert [k for k, *_ in events][-2:] == ["holding", "rolled_back"]
    assert "error" in events[-1][3] and "1.15 x the champion v1" in events[-1][3]
    assert _stages(store) == {"v1": "champion", "v2": "rejected"}
    assert _messages(store)[-1].challenger is None


def test_a_challenger_the_shadow_found_no_better_is_abandoned_at_the_start(store: FeedbackStore) -> None:
    """Shadow error 0.36 against the champion's 0.30: no gain beyond 0.98 x to find; the ramp never starts."""
    _setup(store, shadow_error=0.36)
    controller, alerts = _controller(store)
    World(store, error={"v1": 0.30}).hour(served_by="v1")
    results = controller.look()
    assert results[0].state == "abandoned" and "no gain beyond 0.98 x" in results[0].sentence
    assert _stages(store)["v2"] == "archived" and not _messages(store)
    assert [a.kind for a in alerts.sent] == ["rollout_abandoned"]


def test_a_champion_that_no_longer_loads_stops_the_ramp_before_it_starts(store: FeedbackStore) -> None:
    """The rollback target must load (digest checked) before any user is sent to the challenger."""
    _setup(store, champion_loads=False)
    controller, _ = _controller(store)
    World(store, error={"v1": 0.30}).hour(served_by="v1")
    results = controller.look()
    assert results[0].state == "abandoned" and "does not load: DigestMismatch" in results[0].sentence


def test_looks_are_idempotent_and_hold_nothing_twice(store: FeedbackStore) -> None:
    """Two looks at the same event time change nothing the second time."""
    _setup(store)
    controller, _ = _controller(store)
    World(store, error={"v1": 0.30}).hour(served_by="v1")
    assert controller.look()[0].changed
    again = controller.look()
    assert not again[0].changed and len(_events(store)) == 1 and len(_messages(store)) == 1



def test_a_persons_commands_pause_resume_promote_roll_back_and_clear(store: FeedbackStore) -> None:
    """Pause freezes the share through hours that would advance it; resume restarts the dwell; promote ends the
    ramp at once; rollback with no ramp returns the previous champion in one message; a command with nothing to
    act on says so in one line."""
    _setup(store)
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    world.hour(served_by="v1")
    _run(world, controller, 1)
    assert "paused the ramp of v2 at 5%" in controller.pause("churn", "ana")
    _run(world, controller, 3)
    assert [s for k, s, *_ in _events(store)] == [0.05, 0.05]  # the step and the pause, nothing more
    assert "its dwell restarts" in controller.pause("churn", "ana", resume=True)
    assert "promoted v2 at 5%" in controller.promote("churn", "ana")
    assert _stages(store) == {"v1": "previous", "v2": "champion"}
    before = len(_messages(store))
    assert "returned churn to the previous champion v1 (from v2)" in controller.rollback("churn", "ana")
    assert _stages(store) == {"v1": "champion", "v2": "previous"}
    messages = _messages(store)
    assert len(messages) == before + 1 and (messages[-1].champion, messages[-1].challenger) == ("v1", None)
    assert "is already rolled back (v2: " in controller.rollback("churn", "ana")  # twice: nothing more
    assert _stages(store) == {"v1": "champion", "v2": "previous"} and len(_messages(store)) == before + 1
    with pytest.raises(RolloutError, match="has no ramp under way to promote"):
        controller.promote("churn", "ana")
    assert "cleared the latched rollback of v2" in controller.clear("churn", "ana")
    assert controller.clear("churn", "ana") == "churn has no latched rollback"
    with store.pool.connection() as conn:
        actors = [r[0] for r in conn.execute("SELECT actor FROM rollout_events ORDER BY event_id").fetchall()]
    assert actors == ["controller", "ana", "ana", "ana", "ana", "ana"]


def test_the_command_line_pauses_trails_promotes_and_says_what_to_do(services, db_schema, store: FeedbackStore,
                                                                      tmp_path, pitstop_main) -> None:
    """`pitstop pause`, `pitstop models trail`, `pitstop promote`, `pitstop rollback` against the real database,
    without a broker; a command with nothing to act on is one line on stderr saying what to do, exit 1."""
    import os
    import subprocess
    import sys

    _setup(store)
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    world.hour(served_by="v1")
    _run(world, controller, 1)
    config = tmp_path / "pitstop.toml"
    config.write_text(FAST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema, PITSTOP_CONFIG=str(config))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return pitstop_main(env, *args)

    paused = subprocess.run([sys.executable, "-m", "pitstop.cli", "pause", "--model", "churn"], env=env,
                            capture_output=True, text=True, timeout=60, check=False)  # once from a shell's view
    assert paused.returncode == 0 and "paused the ramp of v2 at 5%" in paused.stdout, paused.stderr
    trail = cli("models", "trail", "churn", "v2")
    assert trail.returncode == 0, trail.stderr
    lines = trail.stdout.splitlines()
    assert "registered -> candidate" in lines[1] and "ramp of v2 against v1 starts" in trail.stdout
    assert lines[-1].split()[4] == "paused" and "(by " in lines[-1]
    assert cli("promote", "--model", "churn").returncode == 0
    missing = cli("promote", "--model", "churn")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "has no ramp under way to promote" in missing.stderr
    back = cli("rollback", "--model", "churn")
    assert back.returncode == 0 and "returned churn to the previous champion v1 (from v2)" in back.stdout
    again = cli("rollback", "--model", "churn")
    assert again.returncode == 0 and "is already rolled back" in again.stdout
    for command in ("rollback", "promote", "pause", "rollout"):  # the same one line as every other command
        args = ["clear", "--model", "eta"] if command == "rollout" else ["--model", "eta"]
        unknown = cli(command, *args)
        assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1, (command, unknown.stderr)
        assert "model 'eta' is not configured in " in unknown.stderr and "configured models: churn" in unknown.stderr


def test_a_champion_without_errors_on_the_shadows_requests_leaves_nothing_to_gain(store: FeedbackStore) -> None:
    """Found by the staged loop benchmark: with the champion's error 0 on the shadow's rows the ratio was None and
    the ramp started 'with no labelled shadow rows' after a shadow that had 1,500; it is abandoned now."""
    _setup(store, served_error=0.0, shadow_error=0.05)
    controller, _ = _controller(store)
    World(store, error={"v1": 0.30}).hour(served_by="v1")
    result = controller.look()[0]
    assert result.state == "abandoned" and "at inf x the champion: no gain" in result.sentence


def test_a_version_ramped_before_ramps_again_after_a_new_shadow(store: FeedbackStore) -> None:
    """A former champion proposed again by the model pool passes a new shadow: its new ramp gets its own id (the
    first ramp's id stays with the first ramp) and starts."""
    _setup(store)
    controller, _ = _controller(store)
    World(store, error={"v1": 0.30}).hour(served_by="v1")
    assert controller.look()[0].state == "ramping"
    controller.rollback("churn", "ana")
    controller.clear("churn", "ana")
    with store.pool.connection() as conn:
        conn.execute("UPDATE model_versions SET stage = 'shadow' WHERE version = 'v2'")  # proposed again, shadowed
        conn.execute("UPDATE shadows SET status = 'passed', updated_at = now()")
    World(store, error={"v1": 0.30}, at=T0 + timedelta(hours=1), seq=10_000).hour(served_by="v1")
    again = controller.look()[0]
    assert again.state == "ramping", again.sentence
    with store.pool.connection() as conn:
        assert [r[0] for r in conn.execute("SELECT rollout_id FROM rollouts ORDER BY recorded_at")] == [
            "churn/v2", "churn/v2#2"]


MODES = ("bike", "bus", "car")
MULTICLASS = FAST.replace("positive_class = 1\n", "")


def test_a_much_worse_challenger_of_a_3_class_model_is_rolled_back_on_its_error(store: FeedbackStore) -> None:
    """A 3-class model (no positive_class): the canary misclassifies 70% of its labelled requests against the
    champion's 30%, so the error rule (0/1 error per labelled request) rolls it back at its first look."""
    _setup(store, classes=MODES)
    # judged at the first look, on its 30-odd labelled requests (the promotion test would otherwise keep the
    # champion first, on the same evidence)
    controller, alerts = _controller(store, MULTICLASS + "min_labelled = 20\n")
    world = World(store, error={"v1": 0.30, "v2": 0.70}, classes=MODES)
    world.hour(served_by="v1")
    _run(world, controller, 3, until="rolled_back")
    events = _events(store)
    assert [k for k, *_ in events] == ["step", "rolled_back"], events
    assert "error" in events[-1][3] and "1.15 x the champion v1" in events[-1][3], events[-1][3]
    assert _stages(store)["v2"] == "rejected" and [a.kind for a in alerts.sent] == ["rollback"]


def test_a_3_class_shadow_much_worse_than_the_champion_fails(store: FeedbackStore) -> None:
    """A running shadow of a 3-class model wrong on 60% of 1,500 labelled requests where the champion is wrong on
    30% fails the shadow gate (0/1 error) and its version is rejected; the verdict's figures say so."""
    from feedback.registry.versions import Registry
    from feedback.rollout.shadow import judge_round

    _setup(store, classes=MODES, shadow_error=0.6, shadow_status="running")
    with store.pool.connection() as conn:
        ensure_partitions(conn, {"predictions": [T0 + timedelta(days=2)]})
        conn.execute("INSERT INTO predictions (prediction_id, model_name, model_version, predicted_at, features,"
                     " prediction) VALUES ('late', 'churn', 'v1', %s, '{}', '\"bus\"')", (T0 + timedelta(days=2),))
        index_loaded_predictions(conn)
    [judged] = judge_round(store, Registry(), parse_config(MULTICLASS))
    assert judged.verdict.status == "failed", judged.verdict.sentence
    figures = judged.verdict.figures
    assert figures["n_labelled"] == 1_500 and figures["challenger_error"] > 1.10 * figures["champion_error"]
    assert _stages(store)["v2"] == "rejected"


def test_a_challenger_better_overall_but_worse_on_a_fifth_of_the_users_is_never_promoted(store: FeedbackStore) -> None:
    """2,000 returning users, a fifth of them in region apac: v2 errs 0.15 in eu and 0.45 in apac against v1's 0.30
    everywhere (9 points better overall, 15 worse on apac), through steps that advance at 20 requests an arm (and
    the failure rule's minimum over the ramp). The
    steps' comparisons are combined by the information each holds: the first steps' handful of apac users in v2's
    arm must not keep their noise in the combined test for good (weighted by users, apac's p stayed above 0.2
    while the overall test promoted v2 at the 50% step)."""
    _setup(store)
    controller, _ = _controller(store, FAST.replace("step_min_requests = 100", "step_min_requests = 20"))
    world = World(store, error={"v1": 0.30, "v2": 0.30}, users=2_000, by_user=True,
                  segment_error={("v2", "eu"): 0.10, ("v2", "apac"): 0.45})
    world.hour(served_by="v1")
    for _ in range(24):  # the 5% step waits for the failure rule's 157 requests (30 an hour): about 6 hours
        world.hour()
        controller.look()
        with store.pool.connection() as conn:
            [(state, share, sentence)] = conn.execute("SELECT state, share, sentence FROM rollouts").fetchall()
        if state != "ramping":
            break
    assert _stages(store)["v2"] == "rejected" and state == "kept_champion" and share == 0.0, (state, sentence)
    assert "significantly worse in region=apac" in sentence and sentence.endswith("keep the champion"), sentence
    assert [(k, s) for k, s, _, _ in _events(store)][-2:] == [("step", 0.5), ("kept_champion", 0.0)]


def test_the_planner_counts_returning_users_once(store: FeedbackStore) -> None:
    """A day of 14,400 requests from 2,000 returning users, and a shadow that measured a small gain (0.285 against
    0.30): the 4 weeks can bring each arm about 1,000 users (2,000 at 50%), not the 28-fold day (scaled linearly it
    counted 20,000 and a ramp that cannot decide kept half of the users on the challenger for days). The ramp is
    abandoned at the start, and the figure it gives is checked against the stored users."""
    _setup(store, shadow_error=0.285, served_error=0.30)
    world = World(store, error={"v1": 0.30, "v2": 0.285}, users=2_000, at=T0 - timedelta(hours=24))
    for _ in range(24):
        world.hour(served_by="v1")
    controller, alerts = _controller(store, FAST.replace('dwell = ["1h", "1h", "1h", "1h"]\n', ""))
    [result] = controller.look()
    assert result.state == "abandoned", result.sentence
    with store.pool.connection() as conn:
        users = conn.execute("SELECT count(DISTINCT routing_key) FROM predictions").fetchone()[0]
    available = float(result.sentence.split(" available")[0].rsplit("; ", 1)[1].replace(",", ""))
    assert users > 1_990 and 0.5 * users <= available <= 0.5 * users * 1.05, result.sentence
    assert result.sentence.endswith("impractical") and [a.kind for a in alerts.sent] == ["rollout_abandoned"]


@pytest.mark.parametrize("scope", ["episode", "model"])
def test_an_automatic_rollback_holds_its_episode_and_lets_a_later_one_ramp(store: FeedbackStore, scope: str) -> None:
    """v2 answered the change of March 1 and is rolled back (its canary fails every request): the latch records that
    episode. v3, a refit of the same change, waits; v3 answering a later change ramps without a person. With
    rollout.latch = "model" every candidate waits, as a person's rollback makes them."""
    e1, e2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 20, tzinfo=UTC)
    _setup(store)
    with store.pool.connection() as conn:
        conn.execute("UPDATE model_versions SET lineage = %s WHERE version = 'v2'",
                     (Jsonb({"change_point": e1.isoformat()}),))
    text = FAST if scope == "episode" else FAST + 'latch = "model"\n'
    controller, _ = _controller(store, text)
    world = World(store, error={"v1": 0.30, "v2": 0.20}, failure={"v2": 1.0})
    world.hour(served_by="v1")
    _run(world, controller, 3)
    with store.pool.connection() as conn:
        assert conn.execute("SELECT version, change_point, automatic FROM rollback_latches").fetchone() == (
            "v2", e1, True)
        conn.execute("INSERT INTO model_versions (model_name, version, stage, lineage) VALUES ('churn', 'v3', "
                     "'shadow', %s)", (Jsonb({"change_point": e1.isoformat()}),))
        conn.execute("INSERT INTO shadows (model_name, version, champion, cutoff, started_at, status, decided_at)"
                     " VALUES ('churn', 'v3', 'v1', %s, %s, 'passed', %s)", (world.at, world.at, world.at))
    [waits] = controller.look()
    why = "v3 answers the same change (2026-03-01 00:00 UTC)" if scope == "episode" else "holds every candidate"
    assert not waits.changed and why in waits.sentence, waits.sentence
    with store.pool.connection() as conn:
        conn.execute("UPDATE model_versions SET lineage = %s WHERE version = 'v3'",
                     (Jsonb({"change_point": e2.isoformat()}),))
    [later] = controller.look()
    if scope == "episode":
        assert later.changed and later.state == "ramping", later.sentence
        assert _messages(store)[-1].challenger == "v3"
    else:
        assert not later.changed and 'rollout.latch = "model" holds every candidate' in later.sentence, later.sentence


@pytest.mark.parametrize(("decision_change", "share"), [
    (datetime(2026, 3, 1, tzinfo=UTC), 0.25),   # v1 confirmed degraded in v2's episode: the ramp starts at 25%
    (datetime(2026, 2, 1, tzinfo=UTC), 0.05),   # a decision of another change: the cautious path
    (None, 0.05),                               # no decision: the cautious path
])
def test_a_degraded_champion_starts_the_ramp_at_the_largest_canary_share(store: FeedbackStore,
                                                                        decision_change: datetime | None,
                                                                        share: float) -> None:
    """v2 answers the change of March 1 and its shadow showed it better on the same requests (0.20 against 0.30);
    when a fired performance decision on v1's windows confirms v1 degraded since that change, waiting costs: the
    ramp starts at 25% (the largest share below 50%), with every rollback rule active; otherwise at 5%."""
    e1 = datetime(2026, 3, 1, tzinfo=UTC)
    _setup(store)
    with store.pool.connection() as conn:
        conn.execute("UPDATE model_versions SET lineage = %s WHERE version = 'v2'",
                     (Jsonb({"change_point": e1.isoformat()}),))
        if decision_change is not None:
            conn.execute(
                "INSERT INTO retrain_decisions (decision_id, model_name, model_version, kind, urgency, status,"
                " sentence, change_point, first_decided_at, decided_at, fired_at, evidence) VALUES ('d1', 'churn',"
                " 'v1', 'performance', 'elevated', 'fired', 'accuracy fell', %s, %s, %s, %s, %s)",
                (decision_change, T0, T0, T0, Jsonb({"metric": "accuracy", "baseline": 0.83,
                                                     "windows": [{"performance": {"value": 0.70}}]})))
    controller, _ = _controller(store, FAST.replace('["1h", "1h", "1h", "1h"]', '["6h", "6h", "6h", "6h"]'))
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    world.hour(served_by="v1")
    [started] = controller.look()
    assert started.state == "ramping" and _messages(store)[-1].challenger_share == share, started.sentence
    if share == 0.25:
        assert ("champion v1 degraded since 2026-03-01 00:00 UTC (performance decision): accuracy 0.7 against its "
                "baseline 0.83; the shadow showed the challenger better (p = ") in started.sentence, started.sentence
        assert "starting the ramp at 25%" in started.sentence
        # on evidence, not the 6 h dwells: 25% until the failure rule's 157 requests (150 an hour), then 50% until
        # the promotion test's win, then 100% held
        _run(world, controller, 4, until="holding")
        steps = [(k, s, at - T0) for k, s, at, _ in _events(store)]
        assert [(k, s) for k, s, _ in steps] == [("step", 0.25), ("step", 0.50), ("holding", 1.0)], steps
        assert steps[-1][2] < timedelta(hours=6), steps
    else:
        _run(world, controller, 3)
        assert [(k, s) for k, s, _, _ in _events(store)] == [("step", 0.05)]  # the 6 h dwell holds


@pytest.mark.parametrize(("v2_state", "v3_change", "v3_better"), [
    ("ramping", "2026-03-09", True), ("holding", "2026-03-09", True),
    ("holding", "2026-03-01", True),    # a refit of v2's own episode, better on the requests v2 served: takes over
    ("holding", "2026-03-01", False),   # ... as good only: the hold runs its course
])
def test_a_candidate_of_a_later_change_ends_the_earlier_episodes_ramp(store: FeedbackStore, v2_state: str,
                                                                      v3_change: str, v3_better: bool) -> None:
    """One episode, one ramp: v2 answers the change of March 1 and is ramping (or holding at 100%) when v3, which
    answers a change of March 9, passes its shadow. A ramp ends superseded (v2 archived, not rejected, no latch,
    everyone back on v1); a hold ends with v2 champion early (it passed the promotion test and every rule so far).
    A refit of v2's own episode ends the hold only when its shadow showed it better on the requests v2 served.
    The next look starts v3's ramp against whichever is champion."""
    e1 = datetime(2026, 3, 1, tzinfo=UTC)
    _setup(store)
    with store.pool.connection() as conn:
        conn.execute("UPDATE model_versions SET lineage = %s WHERE version = 'v2'",
                     (Jsonb({"change_point": e1.isoformat()}),))
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20, "v3": 0.15})
    world.hour(served_by="v1")
    controller.look()
    _run(world, controller, 1 if v2_state == "ramping" else 16, until=v2_state)
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        assert cur.execute("SELECT state FROM rollouts").fetchone()[0] == v2_state
        Registry().register(cur, ModelVersion(model_name="churn", version="v3", stage="candidate",
                                              lineage={"change_point": f"{v3_change}T00:00:00+00:00"}),
                            serialise(_model()), reason="test")
        Registry().move(cur, "churn", "v3", "shadow", reason="test shadow")
        cur.execute("INSERT INTO shadows (model_name, version, champion, cutoff, started_at, status, sentence,"
                    " decided_at) VALUES ('churn', 'v3', 'v1', %s, %s, 'passed', 'passed', %s)",
                    (world.at - timedelta(hours=3), world.at - timedelta(hours=2), world.at))
        # v3's shadow scored the last 3 hours' requests, all served by v2: right on each (better) or as v2 was
        rows = cur.execute("SELECT p.prediction_id, p.prediction, l.label FROM predictions p JOIN current_labels l"
                           " USING (prediction_id) WHERE p.predicted_at >= %s AND p.model_version = 'v2'",
                           (world.at - timedelta(hours=3),)).fetchall()
        cur.executemany("INSERT INTO shadow_predictions (model_name, version, prediction_id, prediction)"
                        " VALUES ('churn', 'v3', %s, %s)",
                        [(pid, Jsonb(label if v3_better else prediction)) for pid, prediction, label in rows])
    world.hour()
    [ended] = controller.look()
    stages = _stages(store)
    with store.pool.connection() as conn:
        latches = conn.execute("SELECT count(*) FROM rollback_latches").fetchone()[0]
    if v3_change == "2026-03-01":
        if not v3_better:
            assert ended.state == "holding" and not ended.changed, ended.sentence
            return
        assert ended.state == "promoted" and "v3 passed its shadow against it, better on the same requests" in \
            ended.sentence, ended.sentence
        assert stages["v2"] == "champion"
    elif v2_state == "ramping":
        assert ended.state == "superseded" and "v3 passed its shadow and answers a later change" in ended.sentence
        assert stages["v2"] == "archived" and stages["v1"] == "champion" and latches == 0
        assert _messages(store)[-1].challenger is None and _messages(store)[-1].champion == "v1"
    else:
        assert ended.state == "promoted" and "its hold ends early" in ended.sentence, ended.sentence
        assert stages["v2"] == "champion"
    world.hour()
    [started] = controller.look()
    champion = "v1" if v2_state == "ramping" else "v2"
    assert started.state == "ramping" and started.sentence.startswith(f"ramp of v3 against {champion} starts")
    assert _messages(store)[-1].challenger == "v3"


def test_a_shadow_that_passed_early_plans_the_test_from_its_own_rows(store: FeedbackStore) -> None:
    """A shadow that passed early (the champion degraded) ends before the champion's requests since its start have
    labels: the test is planned from the champion's errors on the shadow's labelled rows. Planned from none, its
    prior was nil (tau2 1e-12) and the ramp sat at 50% for good, whatever the gain (bench/loop_quality.py S1, S2)."""
    _setup(store)
    with store.pool.connection() as conn:
        # after the last labelled request the shadow was judged on: no champion request since its start
        conn.execute("UPDATE shadows SET started_at = %s WHERE version = 'v2'", (T0 - timedelta(hours=5),))
    controller, _ = _controller(store)
    [started] = controller.look()
    assert started.state == "ramping" and "needs about" in started.sentence, started.sentence
    with store.pool.connection() as conn:
        tau2 = conn.execute("SELECT test->>'tau2' FROM rollouts").fetchone()[0]
    assert float(tau2) > 1e-4, tau2  # the gain the shadow measured (0.2 against 0.3), squared


@pytest.mark.parametrize("shadowed", [True, False])
def test_the_champions_error_on_the_same_requests_shortens_the_ab_test(store: FeedbackStore, shadowed: bool) -> None:
    """v2 errs where v1 does, except on a tenth of those requests: error 0.27 against 0.30. With v1 scored on
    v2's requests (what the rollout worker does during a ramp), the promotion test is CUPED-adjusted and v2
    reaches 100% after 3 hours at 50% (p = 0.011); on the same traffic without those scores it is still at 50%
    after 24 hours of 600 requests (p = 1)."""
    _setup(store, shadow_error=0.25)
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.27}, shadow_champion=True, store_shadow=shadowed)
    world.hour(served_by="v1")
    _run(world, controller, 24, until="holding")
    events = _events(store)
    if shadowed:
        assert events[-1][0] == "holding", events
        assert "CUPED on the champion's error on the same requests" in events[-1][3], events[-1][3]
    else:
        assert events[-1][:2] == ("step", 0.5), events
        with store.pool.connection() as conn:
            sentence = conn.execute("SELECT sentence FROM rollouts").fetchone()[0]
        assert "not yet" in sentence and "CUPED" not in sentence, sentence


def test_a_drill_a_person_started_is_not_superseded_and_is_rolled_back(store: FeedbackStore) -> None:
    """A person's drill (v4, no change answered, failing every request) ramps at 5% while v2, a candidate of a
    change, has passed its shadow and waits: the drill is rolled back on its failures, not superseded by v2
    (`pitstop demo --fast` found a refit ending act two's drill that way)."""
    _setup(store)  # v2 passed its shadow
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("UPDATE model_versions SET lineage = %s WHERE version = 'v2'",
                    (Jsonb({"change_point": "2026-03-01T00:00:00+00:00"}),))
        Registry().register(cur, ModelVersion(model_name="churn", version="v4", stage="candidate",
                                              lineage={"drill": True}), serialise(_model()), reason="drill")
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20, "v4": 0.30}, failure={"v4": 1.0})
    world.hour(served_by="v1")
    assert "started a rollback drill" in controller.drill("churn", "ana", "v4")
    looks = []
    for _ in range(4):
        world.hour()
        looks += controller.look()
    assert [r.state for r in looks if r.changed] == ["rolled_back"], [r.sentence for r in looks]
    assert _stages(store)["v4"] == "rejected"


def test_with_approval_a_passed_shadow_waits_for_a_person_and_a_rejected_candidate_never_ramps(
        services, db_schema, store: FeedbackStore, tmp_path, pitstop_main) -> None:
    """promotion = "approval": the passed shadow waits (said once in the trail, with an alert) until `pitstop
    approve`, then ramps at the next look; `pitstop reject` makes a candidate rejected for good. Each command twice
    is harmless; a command that cannot apply is one line saying why."""
    import os
    import subprocess
    import sys

    approval = FAST.replace('promotion = "shadow"', 'promotion = "approval"')
    _setup(store)
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        Registry().register(cur, ModelVersion(model_name="churn", version="v3", stage="candidate"),
                            serialise(_model()), reason="test")
    controller, alerts = _controller(store, approval)
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    for _ in range(2):
        world.hour(served_by="v1")
        [result] = controller.look()
        assert result.state is None and "v2 passed its shadow and waits for a person" in result.sentence
    assert [(k, s) for k, s, _, _ in _events(store)] == [("waiting", None)] and not _messages(store)
    assert [a.kind for a in alerts.sent] == ["approval_waiting"]

    paths = {"shadow": tmp_path / "shadow.toml", "approval": tmp_path / "approval.toml"}
    paths["shadow"].write_text(FAST)
    paths["approval"].write_text(approval)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema)

    def cli(*args: str, config: str = "approval") -> subprocess.CompletedProcess[str]:
        return pitstop_main({**env, "PITSTOP_CONFIG": str(paths[config])}, *args)

    def refused(done: subprocess.CompletedProcess[str], fragment: str) -> None:
        assert done.returncode == 1 and done.stdout == "" and done.stderr.count("\n") == 1, done
        assert fragment in done.stderr, done.stderr

    approve = ("approve", "--model", "churn", "--version", "v2", "--by", "ana")
    done = subprocess.run([sys.executable, "-m", "pitstop.cli", *approve], env={**env, "PITSTOP_CONFIG":
                          str(paths["approval"])}, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ana approved v2 (shadow): its ramp starts at the rollout worker's next look\n"
    again = json.loads(cli(*approve, "--json").stdout)  # --json: what was done, and the model's state after it
    assert "was already approved by ana" in again["sentence"]
    assert {k: again[k] for k in ("command", "model", "version", "by", "ramp", "latched", "deployment")} == {
        "command": "approve", "model": "churn", "version": "v2", "by": "ana", "ramp": None, "latched": None,
        "deployment": None}  # no ramp until the next look; this store's champion was never sent to routers
    refused(cli(*approve, config="shadow"), "promotes 'shadow': no candidate waits for a person")
    refused(cli("approve", "--model", "churn", "--version", "v9"), "churn v9 is not in the registry")
    world.hour(served_by="v1")
    [result] = controller.look()
    assert result.state == "ramping" and _messages(store)[-1].challenger == "v2"
    refused(cli("reject", "--model", "churn", "--version", "v2", "--reason", "late doubts"),
            "is at stage canary: only a candidate before its ramp can be rejected (`pitstop rollback --model churn`")

    reject = ("reject", "--model", "churn", "--version", "v3", "--reason", "worse on the new tiers", "--by", "bo")
    done = cli(*reject, "--json")
    assert done.returncode == 0, done
    rejected = json.loads(done.stdout)
    assert rejected["sentence"] == "bo rejected v3 (candidate): worse on the new tiers", rejected
    assert (rejected["reason"], rejected["ramp"]["challenger"], rejected["ramp"]["state"]) == (
        "worse on the new tiers", "v2", "ramping")
    assert "was already rejected by bo: worse on the new tiers" in cli(*reject).stdout
    refused(cli("approve", "--model", "churn", "--version", "v3"), "was rejected by bo (worse on the new tiers)")
    refused(cli("reject", "--model", "churn", "--version", "v3", "--reason", "  "), "--reason is empty")
    assert _stages(store) == {"v1": "champion", "v2": "canary", "v3": "rejected"}
    with store.pool.connection() as conn:
        trail = conn.execute("SELECT version, step, sentence FROM version_trail WHERE model_name = 'churn' AND step IN"
                             " ('waiting', 'approved', 'rejected') ORDER BY recorded_at, source, seq").fetchall()
    assert [(v, s) for v, s, _ in trail] == [("v2", "waiting"), ("v2", "approved"), ("v3", "rejected")]
    assert trail[1][2].endswith("(by ana)") and trail[2][2].endswith("(by bo)")


def test_a_person_deploys_a_version_through_the_same_deployment_messages(services, db_schema, store: FeedbackStore,
                                                                          tmp_path, pitstop_main) -> None:
    """`pitstop deploy`: refused while a ramp is under way; a former champion deployed by hand becomes champion
    with the next versioned deployment message and an event naming the person; twice changes nothing."""
    import os
    import subprocess
    import sys

    _setup(store)
    controller, _ = _controller(store)
    world = World(store, error={"v1": 0.30, "v2": 0.20})
    world.hour(served_by="v1")
    _run(world, controller, 1)  # the ramp of v2 starts
    config = tmp_path / "pitstop.toml"
    config.write_text(FAST)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema, PITSTOP_CONFIG=str(config))

    def deploy(version: str) -> subprocess.CompletedProcess[str]:
        return pitstop_main(env, "deploy", "--model", "churn", "--version", version, "--by", "ana")

    during = subprocess.run([sys.executable, "-m", "pitstop.cli", "deploy", "--model", "churn", "--version", "v1"],
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert during.returncode == 1 and during.stderr.count("\n") == 1, during
    assert "has a ramp of v2 under way: `pitstop promote --model churn` or `pitstop rollback" in during.stderr
    controller.promote("churn", "bo")
    before = _messages(store)
    done = deploy("v1")
    assert done.returncode == 0 and done.stdout == "ana deployed v1 as champion of churn (in place of v2)\n", done
    assert _stages(store) == {"v1": "champion", "v2": "previous"}
    [message] = _messages(store)[len(before):]
    assert (message.champion, message.challenger, message.challenger_share) == ("v1", None, 0.0)
    assert message.message_version == before[-1].message_version + 1
    again = pitstop_main(env, "deploy", "--model", "churn", "--version", "v1", "--json")
    assert again.returncode == 0, again
    doc = json.loads(again.stdout)
    assert "v1 is already the champion; nothing changed" in doc["sentence"] and doc["command"] == "deploy"
    assert doc["deployment"]["champion"] == "v1" and doc["deployment"]["message_version"] == message.message_version
    assert len(_messages(store)) == len(before) + 1
    unknown = deploy("v9")
    assert unknown.returncode == 1 and "churn v9 is not in the registry" in unknown.stderr
    kind, share, _, sentence = _events(store)[-1]
    assert (kind, share, sentence) == ("promoted", 1.0, "ana deployed v1 as champion of churn (in place of v2)")
    with store.pool.connection() as conn:
        [(trail,)] = conn.execute("SELECT sentence FROM version_trail WHERE model_name = 'churn' AND version = 'v1'"
                                  " AND step = 'promoted'").fetchall()
    assert trail == "ana deployed v1 as champion of churn (in place of v2) (by ana)"


def test_a_deployment_published_again_on_a_plain_cursor_is_one_version_higher(store: FeedbackStore) -> None:
    """The demo registers its first champion with a plain (tuple) cursor; run twice on one store, the second
    deployment read the model's name as the version it followed (a TypeError)."""
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        for _ in range(2):
            version = publish_deployment(cur, "churn", champion="v1", challenger=None, share=0.0, salt="churn/v1",
                                         state="steady", reason="first deployment", at=T0)
    assert version == 2
    assert store.scalar("SELECT message_version FROM deployments WHERE model_name = 'churn'") == 2
    assert store.rows("SELECT event_id FROM outbox ORDER BY 1") == [("deployment/churn/1",), ("deployment/churn/2",)]
