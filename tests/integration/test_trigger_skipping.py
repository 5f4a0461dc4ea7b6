"""The trigger engine looks only at the models something changed for: side by side with an engine that looks at every
model every round, on two stores fed the same workload (a drift, calm traffic, a model whose traffic stops so its
clock runs on wall time, calendar slots and refreshes falling due while idle, a cooldown ending, a manual request, a
training's outcome, a breaker reset), every round's decisions, every stored decision and every published event are
the same, while rounds where nothing changed look at no model."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import psycopg
import pytest

from feedback.alerts import LogAlertSink
from feedback.config import MonitoringConfig, parse_config
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.store import FeedbackStore, drop_store, migrate
from feedback.triggers.engine import TriggerEngine
from tests.factories import T0, drifting_hour

PER_HOUR = 800
MODELS = {  # name: (drifts, hours with traffic, calendar, refresh, volume)
    "churn": (True, range(12), "0 */4 * * *", "5h", None),
    "calm": (False, range(12), "30 */5 * * *", "4h", 1500),
    "quiet": (False, range(5), None, "210m", None),
}


def _toml() -> str:
    parts = []
    for name, (_, _, calendar, refresh, volume) in MODELS.items():
        parts.append(f"""
[models.{name}]
task = "classification"
positive_class = 1
window = "1h"
span = 12
min_rows = 200
min_labels = 150
reference_rows = 400
[models.{name}.performance]
baseline_windows = 2
[models.{name}.triggers]
min_labels_since_change = 1500
cooldown = "3h"
daily_cap = 20
pool_labels = 0
{f'calendar = "{calendar}"' if calendar else ""}
refresh = "{refresh}"
{f"volume = {volume}" if volume else ""}
[models.{name}.triggers.drift]
windows = 2
""")
    return "".join(parts)


@pytest.fixture
def config() -> MonitoringConfig:
    return parse_config(_toml())


@pytest.fixture
def stores(services, unique_name, config) -> Iterator[tuple[FeedbackStore, FeedbackStore]]:
    names = [f"{unique_name}_a", f"{unique_name}_b"]
    for name in names:
        migrate(services.database_url, name)
    try:
        with (FeedbackStore(services.database_url, names[0], windows=WindowUpdater(config)) as a,
              FeedbackStore(services.database_url, names[1], windows=WindowUpdater(config)) as b):
            yield a, b
    finally:
        with psycopg.connect(services.database_url, autocommit=True) as conn:
            for name in names:
                drop_store(conn, name)


def _hour(hour: int) -> tuple[list, list]:
    preds, labels = [], []
    for k, (name, (drifts, hours, *_)) in enumerate(MODELS.items()):
        if hour not in hours:
            continue
        p, o = drifting_hour(hour, drift=drifts, seed=k + 1, per_hour=PER_HOUR)
        preds += [replace(e, model_name=name, prediction_id=f"{name}-{e.prediction_id}") for e in p]
        labels += [replace(e, prediction_id=f"{name}-{e.prediction_id}") for e in o]
    return preds, labels


_ROWS = {
    "retrain_decisions": "SELECT decision_id, model_version, kind, urgency, status, sentence, suppressed_by, "
                         "change_point, labels_since_change, labels_needed, first_decided_at, decided_at, fired_at, "
                         "requested_by, evidence FROM retrain_decisions ORDER BY decision_id",
    "outbox": "SELECT event_id, topic, key, payload FROM outbox ORDER BY event_id",
    "trigger_state": "SELECT model_name, calendar_slot FROM trigger_state ORDER BY model_name",
}


def test_skipping_unchanged_models_decides_as_looking_at_every_model(stores, config: MonitoringConfig) -> None:
    skipping, every = TriggerEngine(config, LogAlertSink()), TriggerEngine(config, LogAlertSink(),
                                                                          skip_unchanged=False)
    runs = [(store, Monitor(store, store.windows), engine) for store, engine in zip(stores, (skipping, every),
                                                                                    strict=True)]
    looked: list[list[str]] = []

    def both(sql: str, params: tuple = ()) -> None:
        for store, _, _ in runs:
            with store.pool.connection() as conn:
                conn.execute(sql, params)

    def round_at(wall_now: datetime, hour: int | None = None) -> None:
        if hour != 7:  # the retrain worker's outcome for every training fired so far (none for a while at 7)
            both("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, sentence) SELECT decision_id, "
                 "model_name, 'candidate', 'v2' FROM retrain_decisions WHERE status = 'fired' AND kind <> 'pool' "
                 "AND NOT EXISTS (SELECT 1 FROM retrain_outcomes o WHERE o.trigger_id = decision_id)")
        found = []
        for store, monitor, engine in runs:
            if hour is not None:
                store.write_batch(*_hour(hour))
            decided: list = []
            monitor.run_once(after=lambda conn, evs, decided=decided, engine=engine: decided.extend(
                engine.run(conn, evs, wall_now=wall_now)))
            found.append(sorted((d.decision_id, d.status, d.decided_at) for d in decided))
        assert found[0] == found[1], (wall_now, found)
        assert every.skipped == []
        looked.append(list(skipping.looked))

    for hour in range(12):
        round_at(T0 + timedelta(hours=hour + 1), hour)
        if hour == 9:
            for store, engine in zip(stores, (skipping, every), strict=True):
                with store.pool.connection() as conn:
                    engine.manual(conn, "calm", reason="new features", requested_by="ana", request_id="r1")
    end = T0 + timedelta(hours=12)
    round_at(end)  # what the manual request and the last hour wrote is looked at once more
    round_at(end)
    assert looked[-1] == [], "a round where nothing changed looks at no model"
    both("INSERT INTO trigger_resets (model_name, reset_by) VALUES ('churn', 'ana')")
    round_at(end)
    assert looked[-1] == ["churn"], looked[-1]
    for step in range(1, 40):  # traffic stops: after an hour each model's clock runs on wall time
        round_at(end + timedelta(minutes=15 * step))
        if step == 20:
            round_at(end + timedelta(minutes=15 * step))  # the same reading twice: the next look is still due
    idle = looked[-40:]
    # an idle model is looked at when its clock brings something due (a slot, a refresh) and once after: churn
    # every round, as its drift verdict stands and follows the clock
    assert looked[-40:-37] == [[], [], []], looked[-40:]
    assert all("churn" in r for r in idle[4:]) and sum("quiet" in r for r in idle) <= len(idle) / 3, idle

    rows = [{table: store.rows(sql) for table, sql in _ROWS.items()} for store in stores]
    assert rows[0] == rows[1]
    decisions = rows[1]["retrain_decisions"]
    kinds = {(d[2], d[4]) for d in decisions}
    # the workload reaches what the skipping must not miss: a drift, the calendar and the refresh while idle, the
    # volume rule and the manual request
    assert {("drift", "fired"), ("calendar", "fired"), ("refresh", "fired"), ("volume", "fired"),
            ("manual", "fired")} <= kinds, kinds
    for kind, model in (("calendar", "calm"), ("refresh", "quiet")):  # fired while the model's clock ran idle
        assert any(d[0].startswith(f"{model}/{kind}/") and d[4] == "fired" and d[12] >= T0 + timedelta(
            hours=MODELS[model][1].stop + 1) for d in decisions), (kind, model, decisions)
    assert any(d[4] == "suppressed" for d in decisions), kinds
