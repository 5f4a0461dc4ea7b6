"""The retrain's recipe on the real store: recency chosen by the newest labels, the final fit with the recent window
(refused when it is broken), and the scheduled refresh that replaces the champion only when significantly better."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import numpy as np
import pandas as pd

from feedback.config import parse_config
from feedback.registry.versions import Registry
from feedback.store import FeedbackStore
from feedback.triggers.engine import PostgresLedger
from retrain_worker.pipeline import RetrainPipeline
from tests.factories import T0
from tests.integration.test_pipeline import CHANGE, _concept_change, _trigger
from tests.integration.test_pipeline import TOML as PIPELINE_TOML

TOML = PIPELINE_TOML.replace("recency_search = []\n", "")  # the defaults: the search over recency is on
assert TOML != PIPELINE_TOML


def test_a_final_fit_worse_than_the_gated_model_is_refused(store: FeedbackStore, tmp_path, monkeypatch) -> None:
    """A final fit that does worse on the recent window it learnt than the gated model did unseen is broken: the
    gated model is registered, its lineage says why; with final_fit = "train" no second fit runs."""
    from tests.trainer_fixtures import FITS_FILE

    monkeypatch.setenv(FITS_FILE, str(tmp_path / "fits"))
    _concept_change(store)
    toml = TOML.replace('budget = "120s"', 'budget = "120s"\ntrainer = "tests.trainer_fixtures:broken_second_fit"\n'
                        'recency_search = []')  # one fit to gate, one final fit
    result = RetrainPipeline(store, parse_config(toml)).handle(_trigger())
    assert result.result == "candidate", result.sentence
    assert (tmp_path / "fits").read_text() == "2"
    final = result.lineage["final_fit"]
    assert final["recent_window"] is False and final["rows"] == result.lineage["train_rows"]
    assert final["refused"].startswith("the refit's error on the recent window "), final
    with store.pool.connection() as conn, conn.cursor() as cur:
        registered = Registry().load(cur, Registry().champion(cur, "churn"))
    rows = store.rows("SELECT p.features, l.label FROM predictions p JOIN current_labels l USING (prediction_id) "
                      "WHERE p.predicted_at >= %s", (CHANGE,))
    X = pd.DataFrame([f for f, _ in rows])
    accuracy = float(np.mean(registered.predict(X) == np.array([label for _, label in rows])))
    assert accuracy > 0.6, accuracy  # the sound first fit, not the inverted one

    (tmp_path / "fits").unlink()
    only = RetrainPipeline(store, parse_config(toml.replace('promotion = "after-gates"',
                                                            'promotion = "after-gates"\nfinal_fit = "train"')))
    result = only.handle(replace(_trigger(), trigger_id="churn/drift/v1/again"))
    assert result.result == "candidate" and (tmp_path / "fits").read_text() == "1", result.sentence
    assert result.lineage["final_fit"] == {"rows": result.lineage["train_rows"], "recent_window": False}


def test_recency_in_labels_is_chosen_by_the_newest_labels(store: FeedbackStore) -> None:
    """Without a change point (a manual retrain) the rows mix two concepts: a half-life in labels that forgets the
    first predicts the newest labels best and becomes the recipe, its final fit weighted the same way."""
    _concept_change(store)
    result = RetrainPipeline(store, parse_config(TOML)).handle(_trigger("manual"))
    recency = result.lineage["recency"]
    errors = recency["test_errors"]
    assert list(errors) == ["configured", "2610 labels", "1305 labels", "652 labels"]  # of 5,220 training rows
    assert recency["half_life_rows"] is not None and errors[f"{recency['half_life_rows']:.0f} labels"] == min(
        errors.values()) < errors["configured"], recency
    off = RetrainPipeline(store, parse_config(TOML.replace("min_test_rows = 200", "min_test_rows = 200\n"
                                                                                   "recency_search = []")))
    assert "recency" not in off.handle(replace(_trigger("manual"), trigger_id="churn/manual/2")).lineage


def test_a_refresh_replaces_the_champion_only_when_significantly_better(store: FeedbackStore) -> None:
    """A refresh after the change trains on the rows since the episode's change point and, far better than the
    served model of the old concept, replaces it. Three hours later a second refresh, judged on the newest rows
    (after that champion's cutoff: never on rows it learnt), is not significantly better: "unchanged", nothing
    registered or published, and no rejection for the circuit breaker. A third at the same cutoff has no unseen
    row to be judged on: the window falls back to rows the champion learnt, where it wins."""
    _concept_change(store)
    # the champion: the served model of the old concept; one recipe (recency_search = []): the refresh's rule is
    # under test here, the search above
    pipeline = RetrainPipeline(store, parse_config(PIPELINE_TOML))
    refresh = replace(_trigger("drift", hours_after=9), trigger_id="churn/refresh/a", kind="refresh")
    better = pipeline.handle(refresh)
    assert better.result == "candidate" and better.lineage["train_window"][0] >= CHANGE.isoformat(), better.sentence
    later = replace(refresh, trigger_id="churn/refresh/b", decided_at=T0 + timedelta(hours=12))
    same = pipeline.handle(later)
    assert same.result == "unchanged" and same.version is None, same.sentence
    assert same.sentence.startswith("refresh: challenger log loss ") and "not significantly below" in same.sentence
    assert "on 711 recent rows" in same.sentence, same.sentence  # the newest fifth, all after the cutoff
    again = pipeline.handle(replace(later, trigger_id="churn/refresh/c"))
    assert again.result == "unchanged", again.sentence
    assert store.scalar("SELECT count(*) FROM model_versions") == 1
    assert store.scalar("SELECT count(*) FROM outbox WHERE topic = 'candidates'") == 1
    with store.pool.connection() as conn, conn.cursor() as cur:
        assert Registry().champion(cur, "churn").version == better.version  # type: ignore[union-attr]
        history = PostgresLedger(cur, max_training_s={}).history("churn", T0 + timedelta(hours=13))
    assert history.rejected_in_row == 0
