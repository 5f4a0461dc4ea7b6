"""The trigger engine against a real store: a drifting workload decides once (pending, then fired), a stable one
never; replays and repeated rounds make no second event; storm control and manual requests; the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from feedback.alerts import Alert
from feedback.config import MonitoringConfig, parse_config
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.outbox import relay
from feedback.store import FeedbackStore
from feedback.triggers.engine import Decision, TriggerEngine
from tests.factories import DRIFT_HOUR, DRIFT_TOML, T0, drifting_hour

TOML = DRIFT_TOML


class Alerts:
    """An alert sink that keeps what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    def close(self, timeout_s: float = 5.0) -> None:
        pass


@pytest.fixture
def config() -> MonitoringConfig:
    return parse_config(TOML)


@pytest.fixture
def store(services, db_schema, config) -> Iterator[FeedbackStore]:
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as s:
        yield s


def run_hours(store: FeedbackStore, config: MonitoringConfig, engine: TriggerEngine, hours: range, *,
              drift: bool, seed: int = 1) -> list[list[Decision]]:
    """Write each hour, then run a monitor round with the engine; the changed decisions of each round."""
    monitor = Monitor(store, store.windows)
    rounds = []
    for hour in hours:
        preds, labels = drifting_hour(hour, drift=drift, seed=seed)
        store.write_batch(preds, labels)
        found: list[Decision] = []
        wall_now = T0 + timedelta(hours=hour + 1)
        monitor.run_once(after=lambda conn, evs, found=found, wall_now=wall_now: found.extend(
            engine.run(conn, evs, wall_now=wall_now)))
        rounds.append(found)
    return rounds


def decisions(store: FeedbackStore) -> list[tuple[str, str, str, str]]:
    return store.rows("SELECT decision_id, kind, urgency, status FROM retrain_decisions ORDER BY first_decided_at")


def test_a_drift_decides_once_pending_then_fired(store: FeedbackStore, config: MonitoringConfig) -> None:
    """Drift confirmed by an elevated drop is pending until 5,000 labels since the change, then fires once."""
    alerts = Alerts()
    engine = TriggerEngine(config, alerts)
    rounds = run_hours(store, config, engine, range(10), drift=True)
    change = T0 + timedelta(hours=DRIFT_HOUR)
    expected_id = f"churn/drift/v1/{change:%Y-%m-%dT%H:%M:%SZ}"
    assert decisions(store) == [(expected_id, "drift", "elevated", "fired")]
    statuses = [[(d.decision_id, d.status) for d in r] for r in rounds]
    pending_at = next(i for i, r in enumerate(statuses) if (expected_id, "pending") in r)
    fired_at = next(i for i, r in enumerate(statuses) if (expected_id, "fired") in r)
    assert DRIFT_HOUR + 1 <= pending_at < fired_at <= DRIFT_HOUR + 3, statuses
    row = store.rows("SELECT change_point, labels_since_change, sentence, evidence FROM retrain_decisions")[0]
    assert row[0] == change and row[1] >= 5000
    assert "drift on 2 of 4 features" in row[2] and "accuracy" in row[2], row[2]
    fired_windows = [w["window_start"] for w in row[3]["windows"]]
    assert fired_windows[0] == change.isoformat()
    assert {d["feature"] for d in row[3]["windows"][0]["drifted"]} == {"age", "tenure"}
    outbox = store.rows("SELECT event_id, topic, key, payload FROM outbox")
    assert [(e, t, k) for e, t, k, _ in outbox] == [(expected_id, "retrain-triggers", "churn")]
    assert outbox[0][3]["change_point"] == change.isoformat().replace("+00:00", "Z")
    assert not alerts.sent  # elevated, judged: no alert


def test_the_refit_ladder_refits_from_the_same_change_point_as_labels_accumulate(services, db_schema) -> None:
    """With refit_ladder = [1, 2], the drift retrain fires at 5,000 labels since the change and a refit of the
    same episode at 10,000 (once, through cooldown): stored with kind "refit", published after the first,
    carrying the episode's change point (the worker trains from it)."""
    import json
    from pathlib import Path

    import jsonschema

    config = parse_config(TOML.replace("min_labels_since_change = 5000",
                                       "min_labels_since_change = 5000\nrefit_ladder = [1, 2]"))
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as store:
        engine = TriggerEngine(config, Alerts())
        run_hours(store, config, engine, range(9), drift=True)
        change = T0 + timedelta(hours=DRIFT_HOUR)
        stamp = f"{change:%Y-%m-%dT%H:%M:%SZ}"
        with store.pool.connection() as conn:  # the worker's outcome (until then a training is running)
            conn.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, sentence) "
                         "VALUES (%s, 'churn', 'candidate', 'v2')", (f"churn/drift/v1/{stamp}",))
        run_hours(store, config, engine, range(9, 12), drift=True)
        assert decisions(store) == [(f"churn/drift/v1/{stamp}", "drift", "elevated", "fired"),
                                    (f"churn/refit/{stamp}/x2", "refit", "routine", "fired")]
        [(labels, fired_at, first_fired)] = store.rows(
            "SELECT r.labels_since_change, r.fired_at, d.fired_at FROM retrain_decisions r, retrain_decisions d "
            "WHERE r.kind = 'refit' AND d.kind = 'drift'")
        exact = store.scalar("SELECT count(*) FROM predictions p JOIN current_labels l USING (prediction_id) "
                             "WHERE p.predicted_at >= %s AND p.predicted_at < %s", (change, fired_at))
        assert labels == exact >= 10_000 and fired_at - first_fired < timedelta(hours=6)  # inside the cooldown
        outbox = store.rows("SELECT event_id, payload FROM outbox ORDER BY id")
    assert [e for e, _ in outbox] == [f"churn/drift/v1/{stamp}", f"churn/refit/{stamp}/x2"]
    schema = json.loads((Path(__file__).parents[2] / "schemas" / "retrain_trigger.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(outbox[1][1])
    assert outbox[1][1]["change_point"] == stamp and outbox[1][1]["kind"] == "refit"


def plant_former_champion(store: FeedbackStore) -> None:
    """v0 champion, then v1 champion: v0 is a former champion in the pool (stage previous, with an artifact)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from feedback.registry.artifacts import serialise
    from feedback.registry.versions import ModelVersion, Registry

    x = np.random.default_rng(0).normal(size=(100, 2))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    registry = Registry()
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        for version in ("v0", "v1"):
            registry.register(cur, ModelVersion(model_name="churn", version=version, stage="candidate",
                                                trigger_id=None, trainer="x:y"), serialise(model), reason="test")
            registry.move(cur, "churn", version, "champion", reason="test")


def test_a_pool_look_with_no_former_champion_publishes_nothing(services, db_schema) -> None:
    """The trigger topic is a contract other teams' retrain jobs consume: with no former champion in the registry,
    the pending drift makes no "pool" decision and publishes no "pool" event; its retrain fires as usual."""
    config = parse_config(TOML.replace("pool_labels = 0", "pool_labels = 200"))
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as store:
        run_hours(store, config, TriggerEngine(config, Alerts()), range(10), drift=True)
        stamp = f"{T0 + timedelta(hours=DRIFT_HOUR):%Y-%m-%dT%H:%M:%SZ}"
        assert [(d, k, s) for d, k, _, s in decisions(store)] == [(f"churn/drift/v1/{stamp}", "drift", "fired")]
        assert [e for (e,) in store.rows("SELECT event_id FROM outbox ORDER BY id")] == [f"churn/drift/v1/{stamp}"]


def test_a_pending_change_makes_one_pool_look_that_holds_nothing_back(services, db_schema) -> None:
    """With pool_labels = 200 and a former champion in the registry, the pending drift publishes one "pool" event
    first (same change point, labels counted in the store), and the drift retrain still fires at 5,000 labels:
    inside the 6 h cooldown, which a pool look does not start, and with no outcome recorded for the pool look (it
    is no running training)."""
    config = parse_config(TOML.replace("pool_labels = 0", "pool_labels = 200"))
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as store:
        plant_former_champion(store)
        run_hours(store, config, TriggerEngine(config, Alerts()), range(10), drift=True)
        stamp = f"{T0 + timedelta(hours=DRIFT_HOUR):%Y-%m-%dT%H:%M:%SZ}"
        assert sorted((d, k, s) for d, k, _, s in decisions(store)) == [
            (f"churn/drift/v1/{stamp}", "drift", "fired"), (f"churn/pool/v1/{stamp}", "pool", "fired")]
        events = store.rows("SELECT event_id, payload FROM outbox ORDER BY id")
        pool_labels = store.scalar("SELECT labels_since_change FROM retrain_decisions WHERE kind = 'pool'")
        fired = store.rows("SELECT kind, fired_at FROM retrain_decisions ORDER BY fired_at")
    assert [e for e, _ in events] == [f"churn/pool/v1/{stamp}", f"churn/drift/v1/{stamp}"]
    assert events[0][1]["kind"] == "pool" and events[0][1]["change_point"] == stamp
    assert 200 <= pool_labels < 5000
    assert fired[1][1] - fired[0][1] < timedelta(hours=6)


def test_a_stable_workload_of_the_same_size_decides_nothing(store: FeedbackStore, config: MonitoringConfig) -> None:
    """Without drift no decision is recorded and nothing is published."""
    engine = TriggerEngine(config, Alerts())
    run_hours(store, config, engine, range(10), drift=False)
    assert decisions(store) == []
    assert store.scalar("SELECT count(*) FROM outbox") == 0


def test_rounds_replayed_over_the_same_windows_make_no_second_event(store: FeedbackStore,
                                                                     config: MonitoringConfig) -> None:
    """Re-running rounds (a replay, a second worker, a restart with a fresh engine) adds no decision or event."""
    run_hours(store, config, TriggerEngine(config, Alerts()), range(10), drift=True)
    before = decisions(store)
    for _ in range(3):
        fresh = TriggerEngine(config, Alerts())  # a restarted process: no memory
        Monitor(store, store.windows).run_once(after=lambda conn, evs, e=fresh: e.run(
            conn, evs, wall_now=T0 + timedelta(hours=11)))
    assert decisions(store) == before
    assert store.scalar("SELECT count(*) FROM outbox") == 1


def test_storm_control_records_what_it_holds_back(store: FeedbackStore, config: MonitoringConfig) -> None:
    """A manual retrain after a fired trigger waits for the running training; after 3 rejected candidates the
    breaker holds back an automatic one (recorded, alerted) until a person resets it."""
    alerts = Alerts()
    engine = TriggerEngine(config, alerts)
    run_hours(store, config, engine, range(10), drift=True)
    with store.pool.connection() as conn:
        manual = engine.manual(conn, "churn", reason="new features", requested_by="ana", request_id="r1")
    assert manual.status == "suppressed"
    assert (manual.suppressed_by or "").startswith("a training for this model is already running")
    with store.pool.connection() as conn:
        [(fired,)] = conn.execute("SELECT decision_id FROM retrain_decisions WHERE status = 'fired'").fetchall()
        for i, trigger in enumerate([fired, "x/1", "x/2"]):
            conn.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, recorded_at) "
                         "VALUES (%s, 'churn', 'rejected', %s)", (trigger, datetime.now(UTC) + timedelta(seconds=i)))
        again = engine.manual(conn, "churn", reason="new features", requested_by="ana", request_id="r1")
    assert again.status == "fired"  # a person decided: the breaker holds back automatic retrains only
    assert store.scalar("SELECT count(*) FROM outbox") == 2


def test_the_relay_republishes_after_a_crash_between_publish_and_mark(store: FeedbackStore,
                                                                       config: MonitoringConfig) -> None:
    """A relay that dies after sending but before marking leaves the event unsent; the next sends the same id."""
    run_hours(store, config, TriggerEngine(config, Alerts()), range(10), drift=True)
    sent: list[tuple[str, bytes | None, bytes]] = []

    def crash() -> None:
        msg = "killed between publish and commit"
        raise ConnectionError(msg)

    with store.pool.connection() as conn:
        with pytest.raises(ConnectionError):
            relay(conn, lambda t, k, v: sent.append((t, k, v)), crash)
        assert conn.execute("SELECT sent_at, attempts, last_error FROM outbox").fetchone()[0] is None
        assert relay(conn, lambda t, k, v: sent.append((t, k, v)), lambda: None) == 1
        assert relay(conn, lambda t, k, v: sent.append((t, k, v)), lambda: None) == 0
    assert len(sent) == 2 and sent[0] == sent[1]
    assert sent[0][0] == "pitstop.retrain-triggers" and sent[0][1] == b"churn"


def test_calendar_cooldown_breaker_and_reset(store: FeedbackStore) -> None:
    """An hourly schedule fires, is held back by the cooldown, then by the circuit breaker after three rejected
    candidates (alerted), and fires again after a person resets the breaker."""
    config = parse_config(TOML.split("[models.churn.triggers]")[0] + '[models.churn.triggers]\ncalendar = "0 * * * *"\n'
                          'cooldown = "2h"\ndaily_cap = 10\nmax_training = "30m"\n')
    alerts = Alerts()
    engine = TriggerEngine(config, alerts)

    def calendar() -> list[tuple[str, str, str]]:
        rows = store.rows("SELECT decision_id, status, coalesce(suppressed_by, '') FROM retrain_decisions "
                          "ORDER BY first_decided_at")
        return [(d.rsplit("T", 1)[1][:5], status, why.split(":")[0]) for d, status, why in rows]

    run_hours(store, config, engine, range(4), drift=False)  # slots 13:00 (first sight: not fired) to 16:00
    assert calendar() == [("14:00", "fired", ""), ("15:00", "suppressed", "cooldown"), ("16:00", "fired", "")]
    with store.pool.connection() as conn:
        fired = [r[0] for r in conn.execute("SELECT decision_id FROM retrain_decisions WHERE status = 'fired' "
                                            "ORDER BY fired_at").fetchall()]
        for i, trigger in enumerate([*fired, "churn/manual/x"]):
            conn.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, recorded_at) "
                         "VALUES (%s, 'churn', 'rejected', %s)", (trigger, datetime.now(UTC) + timedelta(seconds=i)))
    run_hours(store, config, engine, range(4, 7), drift=False)  # 17:00 to 19:00
    assert calendar()[3:] == [(f"{h}:00", "suppressed", "circuit breaker") for h in (17, 18, 19)]
    assert [a.kind for a in alerts.sent] == ["circuit_breaker"] * 3
    assert "3 rejected candidates in a row" in alerts.sent[0].sentence
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO trigger_resets (model_name, reset_at) VALUES ('churn', %s)",
                     (datetime.now(UTC) + timedelta(minutes=1),))
    run_hours(store, config, engine, range(7, 9), drift=False)  # 20:00 fires (4 h after 16:00), 21:00 cooldown
    assert calendar()[6:] == [("20:00", "fired", ""), ("21:00", "suppressed", "cooldown")]
    assert store.scalar("SELECT count(*) FROM outbox") == 3


def test_an_episode_longer_than_the_span_keeps_its_id_and_counts_labels_in_the_store(services, db_schema) -> None:
    """With a span of 4 windows, a drift from 05:00 still has one decision placed at 05:00 once the span has moved
    past it, and fires when the store holds 9,000 labels since then (more than any span of 4 windows holds)."""
    config = parse_config(TOML.replace("span = 12", "span = 4").replace("min_labels_since_change = 5000",
                                                                          "min_labels_since_change = 9000"))
    assert config.models["churn"].span == 4
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(config)) as store:
        run_hours(store, config, TriggerEngine(config, Alerts()), range(12), drift=True)
        rows = store.rows("SELECT decision_id, status, change_point, labels_since_change FROM retrain_decisions")
    change = T0 + timedelta(hours=DRIFT_HOUR)
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (f"churn/drift/v1/{change:%Y-%m-%dT%H:%M:%SZ}", "fired", change)], rows
    assert rows[0][3] >= 9000


def test_a_retrain_requested_during_a_rollout_waits_recorded_until_it_ends(store: FeedbackStore,
                                                                          config: MonitoringConfig) -> None:
    """Even a person's request is held back while a ramp is under way (its reason names the ramp), and fires once
    the ramp has ended."""
    engine = TriggerEngine(config, Alerts())
    with store.pool.connection() as conn:
        conn.execute("INSERT INTO model_versions (model_name, version, stage) VALUES ('churn', 'v3', 'canary')")
        conn.execute("INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share,"
                     " step_started_at, started_at) VALUES ('churn/v3', 'churn', 'v1', 'v3', 's', 'ramping', 2, 0.25,"
                     " now(), now())")
        waiting = engine.manual(conn, "churn", reason="new features", requested_by="ana", request_id="r1")
        assert waiting.status == "suppressed"
        assert waiting.suppressed_by == "a rollout is under way (v3 at 25.0%): the retrain waits until it ends"
        conn.execute("UPDATE rollouts SET state = 'promoted'")
        fired = engine.manual(conn, "churn", reason="new features", requested_by="ana", request_id="r1")
        assert fired.status == "fired"
    assert store.scalar("SELECT count(*) FROM outbox") == 1


@pytest.mark.parametrize(("v1_answers", "expected"), [
    ("episode", "fired"),  # v1 was trained for the ramp's episode: its windows drifting again are news
    (None, "suppressed"),  # v1 is stale (trained for no change): the drift is the one the ramp answers
])
def test_during_a_refits_ramp_a_later_drift_on_a_champion_of_the_same_episode_escapes_it(
        store: FeedbackStore, config: MonitoringConfig, v1_answers: str | None, expected: str) -> None:
    """A refit (v3) of the episode v1 was trained for ramps against v1; the world changes again and v1's windows
    drift from DRIFT_HOUR. That change is later than the one both answer: its retrain fires through the ramp. Had v1
    been trained before the ramp's change, the drift would be the degradation the ramp answers, and waits."""
    from psycopg.types.json import Jsonb

    episode = T0 - timedelta(days=3)
    with store.pool.connection() as conn:
        lineage = {"change_point": episode.isoformat()}
        conn.execute("INSERT INTO model_versions (model_name, version, stage, lineage) VALUES "
                     "('churn', 'v1', 'champion', %s), ('churn', 'v3', 'canary', %s)",
                     (Jsonb(lineage if v1_answers else {}), Jsonb(lineage)))
        conn.execute("INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share,"
                     " step_started_at, started_at) VALUES ('churn/v3', 'churn', 'v1', 'v3', 's', 'ramping', 0, 0.05,"
                     " now(), now())")
    run_hours(store, config, TriggerEngine(config, Alerts()), range(10), drift=True)
    change = T0 + timedelta(hours=DRIFT_HOUR)
    rows = store.rows("SELECT decision_id, status, suppressed_by FROM retrain_decisions")
    assert [(r[0], r[1]) for r in rows] == [(f"churn/drift/v1/{change:%Y-%m-%dT%H:%M:%SZ}", expected)], rows
    assert (rows[0][2] or "").startswith("" if expected == "fired" else "a rollout is under way"), rows
    assert store.scalar("SELECT count(*) FROM outbox") == (1 if expected == "fired" else 0)
