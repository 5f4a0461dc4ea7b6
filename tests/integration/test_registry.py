"""The model registry on the real database: artifacts checked by sha256 before loading, stages moved only along
allowed transitions with a row per move, one champion per model, gate records kept."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from feedback.registry.artifacts import DigestMismatch, serialise
from feedback.registry.versions import GateRecord, ModelVersion, Registry, StageError
from feedback.store import FeedbackStore


def _model() -> HistGradientBoostingClassifier:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    return HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(x, (x[:, 0] > 0).astype(int))


def _register(registry: Registry, cur, version: str, stage: str = "candidate") -> ModelVersion:
    return registry.register(cur, ModelVersion(model_name="churn", version=version, stage=stage,  # type: ignore[arg-type]
                                               trigger_id=f"churn/drift/v1/{version}", trainer="x:y",
                                               lineage={"train_rows": 400}),
                             serialise(_model()), reason="gates passed",
                             gates=[GateRecord(name="log_loss_vs_champion", set_name="recent", passed=True,
                                               observed=0.2, threshold=0.3, sample_size=200,
                                               sentence="challenger log loss 0.2 <= 1.05 x champion 0.29 = 0.3")])


def test_a_stored_model_loads_only_when_its_digest_matches(store: FeedbackStore) -> None:
    """A registered model loads and predicts as before; its bytes altered in the table are refused, unread."""
    registry = Registry()
    x = np.random.default_rng(1).normal(size=(50, 3))
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        v = _register(registry, cur, "v2")
        loaded = registry.load(cur, registry.get(cur, "churn", "v2"))
        assert np.array_equal(loaded.predict_proba(x), _model().predict_proba(x))
        assert v.artifact is not None
        assert cur.execute("SELECT sha256 = sha256(data) FROM model_artifacts").fetchone()[0]  # PostgreSQL agrees
        cur.execute("UPDATE model_artifacts SET data = data || '\\x00'::bytea")
        with pytest.raises(DigestMismatch, match="does not match the registered"):
            registry.load(cur, registry.get(cur, "churn", "v2"))


def test_stages_move_only_along_allowed_transitions(store: FeedbackStore) -> None:
    """candidate -> champion makes the old champion previous; a rejected version cannot be champion; every move
    is a row with its reason, and one champion per model holds."""
    registry = Registry()
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        _register(registry, cur, "v1", "champion")
        _register(registry, cur, "v2")
        _register(registry, cur, "v3")
        registry.move(cur, "churn", "v2", "champion", reason="gates passed (promotion after-gates)")
        registry.move(cur, "churn", "v3", "rejected", reason="challenger MAE 4.6 > 1.05 x champion 4.0 = 4.2")
        with pytest.raises(StageError, match="a rejected version cannot become champion"):
            registry.move(cur, "churn", "v3", "champion", reason="no")
        assert registry.champion(cur, "churn").version == "v2"  # type: ignore[union-attr]
        stages = dict(cur.execute("SELECT version, stage FROM model_versions").fetchall())
        moves = cur.execute("SELECT version, from_stage, to_stage, reason FROM model_stage_changes "
                            "ORDER BY change_id").fetchall()
        gates = cur.execute("SELECT count(*) FROM model_gate_results").fetchone()[0]
    assert stages == {"v1": "previous", "v2": "champion", "v3": "rejected"}
    assert [m[:3] for m in moves] == [("v1", None, "champion"), ("v2", None, "candidate"), ("v3", None, "candidate"),
                                      ("v1", "champion", "previous"), ("v2", "candidate", "champion"),
                                      ("v3", "candidate", "rejected")]
    assert moves[3][3] == "replaced by v2: gates passed (promotion after-gates)"
    assert gates == 3


def test_models_list_and_show_print_the_registry(services, db_schema, store: FeedbackStore) -> None:
    """`pitstop models list` shows every version with its stage and gates; `models show` the stage history, the
    gate table and the lineage; an unknown version is one line saying what to do."""
    import os
    import subprocess
    import sys

    registry = Registry()
    with store.pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
        _register(registry, cur, "v1", "champion")
        _register(registry, cur, "v2")
        registry.move(cur, "churn", "v2", "rejected", reason="challenger log loss 0.4 > 1.05 x champion 0.3")
        _register(registry, cur, "20261111T1800Z-refit-6b29ab")  # a retrained version's name: 27 characters
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pitstop.cli", *args], env=env, capture_output=True, text=True,
                              timeout=60, check=False)

    listed = cli("models", "list", "--model", "churn")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[1].split()[:3] == ["churn", "v2", "rejected"] and lines[2].split()[:3] == ["churn", "v1", "champion"]
    assert "1 of 1" in lines[1]
    column = lines[0].index("stage")  # a long version name widens its column: every row still lines up
    assert [line[column:].split()[0] for line in lines[1:]] == ["rejected", "champion", "candidate"], lines
    shown = cli("models", "show", "churn", "v2")
    assert shown.returncode == 0, shown.stderr
    assert "candidate -> rejected: challenger log loss 0.4 > 1.05 x champion 0.3" in shown.stdout
    assert "pass recent   log_loss_vs_champion" in shown.stdout and "(n=200)" in shown.stdout
    assert 'train_rows: 400' in shown.stdout
    missing = cli("models", "show", "churn", "v9")
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "pitstop models list" in missing.stderr


def test_models_show_prints_the_trainings_under_way(services, db_schema, store: FeedbackStore) -> None:
    """A training's latest step (written by the retrain worker as it goes) is shown until its outcome is
    recorded; a model with no version yet shows it too."""
    import os
    import subprocess
    import sys

    with store.pool.connection() as conn:
        conn.execute("INSERT INTO retrain_progress (trigger_id, model_name, worker, step, detail) VALUES "
                     "('churn/drift/v1/a', 'churn', 'host:1', 'training', 'training g:b on 120,000 rows'), "
                     "('churn/drift/v1/b', 'churn', 'host:1', 'loading', '40,000 rows loaded'), "
                     "('churn/drift/v1/c', 'churn', 'host:2', 'done', 'rejected: data checks failed')")
        conn.execute("INSERT INTO retrain_outcomes (trigger_id, model_name, outcome, sentence) "
                     "VALUES ('churn/drift/v1/b', 'churn', 'failed', 'worker gave up')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema)
    shown = subprocess.run([sys.executable, "-m", "pitstop.cli", "models", "show", "churn"], env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "churn: no registered version yet"
    assert lines[1].startswith("training now for trigger churn/drift/v1/a on host:1: training: training g:b on "
                               "120,000 rows (started ")
    assert len(lines) == 2  # b has an outcome, c is done
