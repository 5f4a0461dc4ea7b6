"""A ramp's figures kept as rows land (feedback/rollout/arms.py, migration 019) equal the figures computed from the raw
rows (``controller.arm_stats``), for each period, CUPED-adjusted or not, and the whole ramp's counts: written
through the ingest's batch write, with requests before and at the ramp's start, failures, segments, late and
out-of-order predictions, labels before their predictions, corrections, duplicates, shadow scores before and after
labels (and failed ones), a new period begun under the counting lock, and two transactions racing a label against
its prediction in both orders."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from feedback.config import parse_config
from feedback.monitoring.windows import WindowUpdater, segment_value
from feedback.registry.versions import ModelVersion, Registry
from feedback.rollout import arms
from feedback.rollout.controller import arm_stats
from feedback.rollout.rules import ArmStats, UnitStats
from feedback.store import FeedbackStore
from schemas.events import OutcomeEvent, PredictionEvent

T0 = datetime(2026, 5, 1, tzinfo=UTC)
CONFIG = parse_config("""
[models.churn]
task = "classification"
positive_class = 1
segments = ["region"]
[models.churn.retrain]
promotion = "shadow"
""")
MODEL = CONFIG.models["churn"]
#: a segment value past what a btree key holds whole (2,704 bytes; the contract allows 10,000 characters)
LONG_REGION = "région-" * 500
RID = "churn/v2"


@pytest.fixture
def ingest(services: Any, db_schema: str) -> Any:
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as store:
        yield store


def _ramp(store: FeedbackStore, task: str = "classification") -> None:
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        registry = Registry()
        for version in ("v1", "v2"):
            registry.register(cur, ModelVersion(model_name="churn", version=version, stage="candidate"), None,
                              reason="test")
        cur.execute("INSERT INTO rollouts (rollout_id, model_name, champion, challenger, salt, state, step, share,"
                    " step_started_at, started_at, period_starts, task, segments) VALUES"
                    " (%s, 'churn', 'v1', 'v2', %s, 'ramping', 0, 0.1, %s, %s, %s, %s, '{region}')",
                    (RID, RID, T0, T0, [T0], task))


def _new_period(store: FeedbackStore, at: datetime) -> None:
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        arms.cut(cur, "churn")
        arms.begin(cur, RID, at)


class Traffic:
    """Requests of both arms (and of a version outside the ramp), with labels, corrections and shadow scores."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store
        self.rng = np.random.default_rng(11)
        self.seq = 0

    def predictions(self, n: int, start: datetime, span: timedelta) -> list[PredictionEvent]:
        out = []
        for _ in range(n):
            self.seq += 1
            user = int(self.rng.integers(60))
            version = "v2" if user % 3 == 0 else "v1"
            if self.seq % 41 == 0:
                version = "v3"  # not an arm of the ramp
            failed = self.rng.random() < 0.03
            out.append(PredictionEvent(
                prediction_id=f"r{self.seq}", model_name="churn", model_version=version,
                predicted_at=start + span * float(self.rng.random()), features={"x": 1.0},
                prediction=None if failed else int(self.rng.integers(2)),
                routing_key=None if user == 59 else f"u{user}",
                segment=None if user % 7 == 0 else {"region": ("eu", "us", "apac", LONG_REGION)[user % 4]},
                latency_ms=None if self.seq % 13 == 0 else float(self.rng.lognormal(2.0, 0.5)),
                error="RuntimeError: boom" if failed else None))
        return out

    def labels(self, events: list[PredictionEvent], at: datetime) -> list[OutcomeEvent]:
        return [OutcomeEvent(prediction_id=e.prediction_id, label=int(self.rng.integers(2)), observed_at=at)
                for e in events]

    def shadow(self, events: list[PredictionEvent], *, failed_every: int = 0) -> None:
        """The champion's scores of the challenger's requests (as the rollout worker writes them)."""
        rows = [(e.prediction_id, None if failed_every and i % failed_every == 0 else Jsonb(int(self.rng.integers(2))),
                 "boom" if failed_every and i % failed_every == 0 else None)
                for i, e in enumerate(events) if e.model_version == "v2"]
        with self.store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute("INSERT INTO shadow_predictions (model_name, version, prediction_id, prediction, error)"
                        " SELECT 'churn', 'v1', id, p::jsonb, e FROM unnest(%s::text[], %s::text[], %s::text[]) AS"
                        " t(id, p, e) ON CONFLICT DO NOTHING",
                        ([r[0] for r in rows], [None if r[1] is None else str(r[1].obj) for r in rows],
                         [r[2] for r in rows]))


def _assert_units(kept: UnitStats, raw: UnitStats, where: str) -> None:
    assert kept.n == raw.n, where
    assert kept.mean == pytest.approx(raw.mean, rel=1e-9, abs=1e-12), where
    assert kept.var == pytest.approx(raw.var, rel=1e-9, abs=1e-12), where
    assert (kept.raw_var is None) == (raw.raw_var is None), where
    if raw.raw_var is not None:
        assert kept.raw_var == pytest.approx(raw.raw_var, rel=1e-9, abs=1e-12), where


def _assert_arm(kept: ArmStats, raw: ArmStats, where: str, *, users: bool = True) -> None:
    assert (kept.requests, kept.failures, kept.latency_n, kept.labelled) == (
        raw.requests, raw.failures, raw.latency_n, raw.labelled), where
    for k, r in ((kept.latency_p95_ms, raw.latency_p95_ms), (kept.latency_p99_ms, raw.latency_p99_ms)):
        assert (k is None) == (r is None), where
        if r is not None:  # buckets 2% wide: each order statistic within 1% of its value (the top bucket's)
            assert k == pytest.approx(min(r, arms.LATENCY_CEILING_MS), rel=0.011), where
    assert (kept.error is None) == (raw.error is None), where
    if raw.error is not None:
        assert kept.error == pytest.approx(raw.error, rel=1e-12), where
    if not users:  # the whole ramp: its users' figures are kept per period only
        assert (kept.units, kept.segments) == (UnitStats(), {}), where
        return
    _assert_units(kept.units, raw.units, where)
    assert sorted(kept.segments) == sorted(raw.segments), where
    for name in raw.segments:
        _assert_units(kept.segments[name], raw.segments[name], f"{where} {name}")


def _assert_same(store: FeedbackStore, model: Any = MODEL) -> int:
    """Every period's kept figures equal the raw rows'; returns how many arms were CUPED-adjusted."""
    adjusted = 0
    with store.pool.connection() as conn, conn.cursor() as cur:
        starts = cur.execute("SELECT period_starts FROM rollouts WHERE rollout_id = %s", (RID,)).fetchone()[0]
        until = cur.execute("SELECT max(predicted_at) FROM predictions").fetchone()[0]
        periods = list(range(len(starts)))
        figures = arms.read(cur, RID)
        whole_kept, whole_raw = figures.arms(arms.WHOLE, ["v1", "v2"]), arm_stats(cur, model, ["v1", "v2"],
                                                                                   starts[0], until)
        for v in ("v1", "v2"):
            _assert_arm(whole_kept[v], whole_raw[v], f"whole ramp {v}", users=False)
        ends = [*starts[1:], until]
        for k in periods:
            kept = figures.arms(k, ["v1", "v2"], covariate=("v2", "v1"))
            raw = arm_stats(cur, model, ["v1", "v2"], starts[k], ends[k], covariate=("v2", "v1"))
            assert figures.requests(k, ["v1", "v2"]) == {v: raw[v].requests for v in ("v1", "v2")}
            for v in ("v1", "v2"):
                _assert_arm(kept[v], raw[v], f"period {k} {v}")
                adjusted += raw[v].units.raw_var is not None
    return adjusted


def test_the_kept_figures_equal_the_raw_rows_through_every_kind_of_arrival(ingest: FeedbackStore) -> None:
    _ramp(ingest)
    t = Traffic(ingest)
    hour = timedelta(hours=1)
    # before and at the ramp's start: not the ramp's
    early = [*t.predictions(30, T0 - hour, hour),
             PredictionEvent(prediction_id="at-start", model_name="churn", model_version="v1", predicted_at=T0,
                             features={}, prediction=1, routing_key="u1")]
    first = t.predictions(400, T0, hour)
    ingest.write_batch(early + first[:300], t.labels(early, T0 + hour))
    t.shadow(first[:150])  # scores before the labels
    ingest.write_batch(first[300:], t.labels(first[:250], T0 + hour))  # labels, some for predictions in this batch
    t.shadow(first[150:])  # scores after the labels
    # labels before their predictions: stored first, predictions later
    second = t.predictions(200, T0 + hour, hour)
    ingest.write_batch([], t.labels(second[:120], T0 + 3 * hour))
    ingest.write_batch(second, [])
    t.shadow(second, failed_every=17)
    # corrections (a later observation), duplicates and redeliveries
    ingest.write_batch(first[:20], t.labels(first[:250:3], T0 + 5 * hour) + t.labels(first[:10], T0 + 5 * hour))
    ingest.write_batch([], t.labels(first[:250:3], T0 + 2 * hour))  # older than the labels held: ignored
    assert _assert_same(ingest) > 0

    _new_period(ingest, T0 + 2 * hour)
    third = t.predictions(300, T0 + 2 * hour, hour)
    late = t.predictions(60, T0 + hour, hour)  # out of order: they belong to the first period
    ingest.write_batch(third + late, t.labels(third[:200] + late + second[120:], T0 + 4 * hour))
    t.shadow(third + late)
    ingest.write_batch([], t.labels(second[::2], T0 + 6 * hour))  # corrections of the first period's
    assert _assert_same(ingest) > 0

    with ingest.pool.connection() as conn:
        # a ledger row per routed request that did not fail; the placeholders left are labels of other requests
        held = conn.execute("SELECT count(*) FROM ramp_rows WHERE rollout_id IS NOT NULL").fetchone()[0]
        routed = conn.execute("SELECT count(*) FROM predictions WHERE model_version IN ('v1', 'v2')"
                              " AND predicted_at > %s AND error IS NULL", (T0,)).fetchone()[0]
        waiting = conn.execute("SELECT count(*) FROM ramp_rows r JOIN predictions p USING (prediction_id)"
                               " WHERE r.rollout_id IS NULL AND p.model_version IN ('v1', 'v2')"
                               " AND p.error IS NULL").fetchone()[0]
    assert (held, waiting) == (routed, 0)


@pytest.mark.parametrize("first", ["label", "prediction"])
def test_a_label_racing_its_prediction_in_another_transaction_counts_once(services: Any, ingest: FeedbackStore,
                                                                          first: str) -> None:
    _ramp(ingest)
    t = Traffic(ingest)
    base = [e for e in t.predictions(80, T0, timedelta(hours=1)) if e.model_version in ("v1", "v2")]
    ingest.write_batch(base, t.labels(base, T0 + timedelta(hours=2)))
    racing = PredictionEvent(prediction_id="race", model_name="churn", model_version="v2",
                             predicted_at=T0 + timedelta(minutes=30), features={}, prediction=1, routing_key="u3",
                             segment={"region": "eu"}, latency_ms=5.0)
    label = OutcomeEvent(prediction_id="race", label=0, observed_at=T0 + timedelta(hours=2))

    with psycopg.connect(services.database_url, options=f"-c search_path={ingest.schema}") as a, \
            psycopg.connect(services.database_url, options=f"-c search_path={ingest.schema}") as b:
        def write_label(conn: psycopg.Connection[Any]) -> None:
            conn.execute("INSERT INTO current_labels (prediction_id, label, observed_at) VALUES (%s, %s, %s)",
                         (label.prediction_id, Jsonb(label.label), label.observed_at))

        def write_prediction(conn: psycopg.Connection[Any]) -> None:
            conn.execute("INSERT INTO predictions (prediction_id, model_name, model_version, predicted_at, features,"
                         " prediction, routing_key, segment, latency_ms) VALUES (%s, %s, %s, %s, '{}', %s, %s, %s, %s)",
                         (racing.prediction_id, racing.model_name, racing.model_version, racing.predicted_at,
                          Jsonb(racing.prediction), racing.routing_key, Jsonb(racing.segment), racing.latency_ms))

        one, other = (write_label, write_prediction) if first == "label" else (write_prediction, write_label)
        one(a)  # uncommitted: the other transaction cannot see it, and meets it on the ledger's key
        second = threading.Thread(target=lambda: (other(b), b.commit()))
        second.start()
        second.join(timeout=1.0)
        assert second.is_alive(), "the second writer should wait for the first on the ledger's key"
        a.commit()
        second.join(timeout=30)
        assert not second.is_alive()

    _assert_same(ingest)
    with ingest.pool.connection() as conn:
        assert conn.execute("SELECT err FROM ramp_rows WHERE prediction_id = 'race'").fetchone()[0] == 1.0


def test_a_ramp_under_way_without_figures_builds_them_once_from_its_rows(ingest: FeedbackStore) -> None:
    _ramp(ingest)
    t = Traffic(ingest)
    first = t.predictions(1_200, T0, timedelta(hours=2))
    ingest.write_batch(first, t.labels(first[:1_000], T0 + timedelta(hours=3)))
    t.shadow(first)
    _new_period(ingest, T0 + timedelta(hours=1))  # the figures above all sit in period 0, wrongly for the later rows
    with ingest.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        arms.cut(cur, "churn")
        starts = cur.execute("SELECT period_starts FROM rollouts WHERE rollout_id = %s", (RID,)).fetchone()[0]
        arms.build(cur, RID, starts, "classification", ["region"])
    assert _assert_same(ingest) > 0
    with ingest.pool.connection() as conn:
        kept = conn.execute("SELECT requests FROM ramp_arms WHERE rollout_id = %s AND period = 1 AND part = ''"
                            " AND version = 'v1'", (RID,)).fetchone()[0]
        raw = conn.execute("SELECT count(*) FROM predictions WHERE model_version = 'v1' AND predicted_at > %s",
                           (T0 + timedelta(hours=1),)).fetchone()[0]
    assert kept == raw > 0


def test_placeholders_go_once_no_transaction_can_meet_them(ingest: FeedbackStore) -> None:
    _ramp(ingest)
    t = Traffic(ingest)
    waiting = t.predictions(40, T0, timedelta(hours=1))
    ingest.write_batch([], t.labels(waiting, T0 + timedelta(hours=2)))  # labels first: placeholders
    with ingest.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("UPDATE ramp_rows SET placed_at = now() - interval '1 hour'"
                    " WHERE prediction_id IN ('r1', 'r2', 'r3')")
        arms.tidy(cur)
        left = {r[0] for r in cur.execute("SELECT prediction_id FROM ramp_rows WHERE rollout_id IS NULL")}
    assert len(left) == 37 and not left & {"r1", "r2", "r3"}
    ingest.write_batch(waiting, [])  # the predictions come: their labels count, the old placeholders' too
    _assert_same(ingest)
    with ingest.pool.connection() as conn:
        held = conn.execute("SELECT count(*) FROM ramp_rows WHERE err IS NOT NULL").fetchone()[0]
    routed = [e for e in waiting if e.model_version in ("v1", "v2") and e.error is None]
    assert held == len(routed)
    with ingest.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        cur.execute("UPDATE rollouts SET state = 'rolled_back'")
        arms.tidy(cur)  # no ramp under way: none is kept
        assert cur.execute("SELECT count(*) FROM ramp_rows WHERE rollout_id IS NULL").fetchone()[0] == 0


def test_values_at_their_extremes_are_counted_or_left_out_never_fail_the_write(store: FeedbackStore) -> None:
    """A regression prediction of 1.7e308 against a label of -1.7e308 (an error past float8), a latency of 1.7e308 ms
    and of 0: valid events, written and counted as the raw rows' figures count them, and the look reads them."""
    model = parse_config('[models.churn]\ntask = "regression"\nsegments = ["region"]').models["churn"]
    _ramp(store, task="regression")
    big = 1.7e308
    events, labels = [], []
    for i, (prediction, label, latency) in enumerate(
            [(big, -big, big), (-big, big, 0.0), (big, big, 5.0), (1e150, -1e150, 1e-300), (2.5, 1.0, None)] * 30):
        events.append(PredictionEvent(prediction_id=f"x{i}", model_name="churn", model_version=("v1", "v2")[i % 2],
                                      predicted_at=T0 + timedelta(seconds=i + 1), features={}, prediction=prediction,
                                      routing_key=f"u{i % 25}", segment={"region": "eu"}, latency_ms=latency))
        labels.append(OutcomeEvent(prediction_id=f"x{i}", label=label, observed_at=T0 + timedelta(hours=1)))
    store.write_batch(events, labels)
    _assert_same(store, model)
    with store.pool.connection() as conn, conn.cursor() as cur:
        whole = arms.read(cur, RID).arms(arms.WHOLE, ["v1", "v2"])
        held = cur.execute("SELECT count(*) FILTER (WHERE err IS NOT NULL), count(*) FROM ramp_rows").fetchone()
    assert whole["v1"].latency_p99_ms is not None and whole["v1"].latency_p99_ms > 1e299
    assert held == (60, 150)  # 2e150 and past are none (the raw rows' figures agree: above)


#: what PostgreSQL's text holds: no NUL, no lone surrogate
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=300)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(TEXT, min_size=1, max_size=40))
def test_the_ramps_sql_keys_a_segment_value_as_python_does(ingest: FeedbackStore, values: list[str]) -> None:
    """``ramp_part`` (the triggers' key of a request's segment value, migration 023) equals what ``arm_stats`` keys
    from the raw rows (``segment_value``), at the 128-byte bound in one to four bytes a character and beyond."""
    edges = ["", "eu", "x" * 128, "x" * 129, "é" * 64, "é" * 65, "漢" * 42, "漢" * 43, "😀" * 32, "😀" * 33,
             "ab" * 5_000]
    every = [*edges, *values]
    got = [k for (k,) in ingest.rows(
        "SELECT ramp_part(jsonb_build_object('region', v), 'region') FROM unnest(%s::text[]) WITH ORDINALITY AS t(v, i)"
        " ORDER BY i", (every,))]
    assert got == [f"region={segment_value(v)}" for v in every]
