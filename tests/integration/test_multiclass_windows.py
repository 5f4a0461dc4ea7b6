"""A multiclass model's windows through the ingest's write: the stored aggregates against raw SQL over the stored
rows, the metrics against scikit-learn, and the monitor round's results."""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
from sklearn import metrics as skm

from feedback.config import parse_config
from feedback.monitoring import performance
from feedback.monitoring.incremental import exact_stats
from feedback.monitoring.profile import build_profile
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater, install_profile, reference_columns, series_kinds
from feedback.store import FeedbackStore
from tests.factories import T0, outcome, prediction

CONFIG = parse_config("""
[models.mode]
task = "classification"
metric = "macro_f1"
window = "1h"
min_rows = 50
min_labels = 50
min_label_coverage = 0.1
reference_rows = 100
""")
MODE = CONFIG.models["mode"]
CLASSES = ("bike", "bus", "car")


def _event(i: int, rng: random.Random, *, shifted: bool = False):
    """A 3-class prediction with its probabilities (the argmax predicted) and the label the world gives it."""
    weights = [1.0, 1.0, 4.0] if shifted else [1.0, 1.0, 1.0]
    truth = rng.choices(range(3), weights)[0]
    logits = [rng.gauss(0, 1) + (1.5 if k == truth else 0.0) for k in range(3)]
    total = sum(np.exp(logits))
    proba = {c: round(float(np.exp(v) / total), 6) for c, v in zip(CLASSES, logits, strict=True)}
    guess = max(proba, key=proba.__getitem__)
    return prediction(i, model_name="mode", predicted_at=T0 + timedelta(seconds=30 * i), features={"x": truth},
                      prediction=guess, probabilities=proba, segment={}), CLASSES[truth]


@pytest.fixture
def monitored(services, db_schema) -> Iterator[FeedbackStore]:
    rng = random.Random(0)
    ref = [_event(i, rng) for i in range(300)]
    columns = reference_columns(MODE, features=[e.features for e, _ in ref], predictions=[e.prediction for e, _ in ref],
                                scores=[e.probabilities[e.prediction] for e, _ in ref], labels=[y for _, y in ref])
    profile = build_profile("mode", "v1", columns, series_kinds(MODE), source="test")
    with FeedbackStore(services.database_url, db_schema, windows=WindowUpdater(CONFIG)) as s:
        with s.pool.connection() as conn:
            install_profile(conn, s.windows, profile)
        yield s


def test_multiclass_windows_equal_raw_sql_and_sklearn(monitored: FeedbackStore) -> None:
    """Predictions and outcomes of a 3-class model written in shuffled batches (labels before and after their
    predictions, some corrected) leave window aggregates equal to raw SQL over the stored rows, and the pooled
    window metrics equal scikit-learn's on the rows read back."""
    rng = random.Random(7)
    made = [_event(i, rng) for i in range(600)]
    preds = [e for e, _ in made]
    labels = [outcome(i, label=y, after_s=rng.uniform(-900, 86_400)) for i, (_, y) in enumerate(made) if i % 7]
    corrections = [outcome(i, label=CLASSES[(CLASSES.index(made[i][1]) + 1) % 3], after_s=200_000)
                   for i in range(0, 600, 35) if i % 7]
    stream = [*preds, *labels, *corrections]
    rng.shuffle(stream)
    for i in range(0, len(stream), 97):
        part = stream[i:i + 97]
        monitored.write_batch([e for e in part if hasattr(e, "features")], [e for e in part if hasattr(e, "label")])

    stored = {start: exact_stats(s) for start, s in monitored.rows(
        "SELECT window_start, stats::text FROM window_performance WHERE segment = '*'")}
    rows = monitored.rows("""
        SELECT date_bin('1 hour', p.predicted_at, '2000-01-01'), l.label, p.prediction, p.probabilities
        FROM predictions p JOIN current_labels l USING (prediction_id) WHERE l.label IS NOT NULL""")
    expected: dict = defaultdict(Counter)
    for start, label, guess, proba in rows:
        e = expected[start]
        e["n"] += 1
        e["correct"] += label == guess
        e[performance.confusion_key(label, guess)] += 1
        e["n_scored"] += proba is not None
    assert len(rows) == len(labels) and len(expected) >= 5
    assert set(stored) == set(expected)
    for start, e in expected.items():
        got = {k: v for k, v in stored[start].items() if k in e}
        assert got == {k: v for k, v in e.items() if v}, start
        assert not any(k.startswith("cm:") and k not in e for k in stored[start])

    acc: dict[str, int] = {}
    for s in stored.values():
        performance.add(acc, s)
    m = performance.multiclass_metrics(acc)
    y = [r[1] for r in rows]
    yhat = [r[2] for r in rows]
    proba = np.array([[r[3][c] for c in CLASSES] for r in rows])
    proba = proba / proba.sum(axis=1, keepdims=True)  # rounded to 6 places: sklearn wants rows summing to 1
    assert m["accuracy"].value == pytest.approx(skm.accuracy_score(y, yhat), abs=1e-12)
    assert m["macro_f1"].value == pytest.approx(skm.f1_score(y, yhat, average="macro"), abs=1e-12)
    assert m["weighted_f1"].value == pytest.approx(skm.f1_score(y, yhat, average="weighted"), abs=1e-12)
    for c, r in zip(CLASSES, skm.recall_score(y, yhat, average=None, labels=list(CLASSES)), strict=True):
        assert m[f"recall[{c}]"].value == pytest.approx(r, abs=1e-12)
    assert m["log_loss"].value == pytest.approx(skm.log_loss(y, proba, labels=list(CLASSES)), abs=1e-4)


def test_the_monitor_judges_a_multiclass_model_and_flags_its_predicted_class_drift(monitored: FeedbackStore) -> None:
    """A monitor round over a 3-class model stores macro F1 with its interval per window and per-class recall, and
    flags the predicted-class distribution (chi-square) once the world shifts to one class."""
    rng = random.Random(3)
    made = [_event(i, rng, shifted=i >= 600) for i in range(1200)]
    monitored.write_batch([e for e, _ in made], [outcome(i, label=y, after_s=60) for i, (_, y) in enumerate(made)])
    Monitor(monitored, monitored.windows).run_once()
    perf = monitored.rows("SELECT window_start, metric, value, ci_low, ci_high, status FROM monitor_results "
                          "WHERE kind = 'performance' AND segment = '*'")
    macro = [r for r in perf if r[1] == "macro_f1"]
    assert macro and all(r[3] <= r[2] <= r[4] for r in macro if r[2] is not None)
    assert {"recall[bike]", "recall[bus]", "recall[car]", "accuracy", "log_loss", "ece"} <= {r[1] for r in perf}
    drift = {(r[0], r[1]): r[2] for r in monitored.rows(
        "SELECT window_start, feature, status FROM monitor_results WHERE kind = 'drift' AND metric = 'drift' "
        "AND segment = '*' AND feature = '__prediction__'")}
    first_shifted = T0 + timedelta(seconds=30 * 600)
    before = [s for (start, _), s in drift.items() if start + timedelta(hours=1) <= first_shifted]
    after = [s for (start, _), s in drift.items() if start >= first_shifted]
    assert before and set(before) == {"stable"}
    assert "drift" in after, json.dumps({str(k): v for k, v in drift.items()})
