"""`pitstop reference import` and `pitstop monitor` against a real store, and the monitoring event's schema."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest

from feedback.config import load_config
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater
from feedback.store import FeedbackStore
from tests.factories import T0, outcome, prediction

TOML = """
[models.churn]
task = "classification"
positive_class = 1
window = "1h"
span = 6
min_rows = 300
min_labels = 100
reference_rows = 500
[models.churn.performance]
baseline_windows = 2
"""
SCHEMA = json.loads((Path(__file__).parents[2] / "schemas" / "monitoring.schema.json").read_text())


def frame(rng: np.random.Generator, n: int, shift: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({
        "age": rng.normal(40 + shift * 10, 10, n).round(1),
        "income": rng.lognormal(8, 0.5, n),
        "plan": rng.choice(["basic", "pro", "max"], n, p=[0.5, 0.3, 0.2]),
    })


def publish_windows(store: FeedbackStore, rng: np.random.Generator, hours: int, per_hour: int) -> None:
    """``hours`` windows of predictions with labels; age shifts by one sd from the fourth hour."""
    i = 0
    for h in range(hours):
        f = frame(rng, per_hour, shift=1.0 if h >= 3 else 0.0)
        preds, labels = [], []
        for row in f.itertuples(index=False):
            p1 = float(rng.random())
            preds.append(prediction(i, predicted_at=T0 + timedelta(hours=h, seconds=int(rng.integers(0, 3600))),
                                    features={"age": row.age, "income": row.income, "plan": row.plan},
                                    prediction=int(p1 > 0.5), probabilities={"0": 1 - p1, "1": p1}))
            # accurate before the shift, a coin after it
            truth = int(p1 > 0.5) if h < 3 or rng.random() < 0.5 else int(rng.random() < 0.5)
            labels.append(outcome(i, label=truth))
            i += 1
        store.write_batch(preds, labels)


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pitstop.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def cli_env(services, db_schema, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "pitstop.toml"
    config.write_text(TOML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTOP_")}
    env.update(PITSTOP_DATABASE_URL=services.database_url, PITSTOP_DB_SCHEMA=db_schema, PITSTOP_CONFIG=str(config),
               PITSTOP_STATE_DIR=str(tmp_path / "state"))
    return env


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_imported_reference_flags_the_shifted_feature(services, db_schema, cli_env, tmp_path: Path,
                                                      suffix: str) -> None:
    """A training set imported as CSV or Parquet becomes the profile; monitor --json flags only the shifted age."""
    rng = np.random.default_rng(11)
    training = frame(rng, 5000)
    training["label"] = rng.integers(0, 2, 5000)
    path = tmp_path / f"train{suffix}"
    training.to_csv(path, index=False) if suffix == ".csv" else training.to_parquet(path)
    done = run_cli(cli_env, "reference", "import", "--model", "churn", "--version", "v1", str(path), "--json")
    assert done.returncode == 0, done.stderr
    imported = json.loads(done.stdout)
    assert f"reference from train{suffix} (5000 rows" in imported["sentence"]
    assert (imported["rows"], imported["recounted"], imported["file"]) == (5000, 0, str(path))
    assert {"age", "income", "plan", "__label__"} <= set(imported["series"]), imported["series"]
    with FeedbackStore(services.database_url, db_schema,
                       windows=WindowUpdater(load_config(cli_env["PITSTOP_CONFIG"]))) as store:
        publish_windows(store, rng, hours=6, per_hour=600)
    done = run_cli(cli_env, "monitor", "--model", "churn", "--json")
    assert done.returncode == 0, done.stderr
    [report] = json.loads(done.stdout)
    assert report["reference"] == {"source": f"import:train{suffix}", "rows": 5000}
    verdicts = {d["feature"]: d["status"] for d in report["drift"] if not d["feature"].startswith("__")}
    assert verdicts == {"age": "drift", "income": "stable", "plan": "stable"}
    statuses = [p["status"] for p in report["performance"]]
    assert statuses.count("baseline") == 2 and "degraded" in statuses, report["performance"]


def test_monitor_summary_follows_its_schema(services, db_schema, cli_env) -> None:
    """The event a monitor round publishes validates against schemas/monitoring.schema.json."""
    updater = WindowUpdater(load_config(cli_env["PITSTOP_CONFIG"]))
    with FeedbackStore(services.database_url, db_schema, windows=updater) as store:
        publish_windows(store, np.random.default_rng(3), hours=5, per_hour=400)
        result = Monitor(store, updater).run_once()
        stored = store.scalar("SELECT count(*) FROM drift_latest WHERE feature = 'age' AND metric = 'drift'")
    assert result is not None and result.profiles_built == [("churn", "v1")]
    [summary] = result.summaries
    jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker()).validate(summary)
    assert summary["drift"]["status"] == "drift" and summary["drift"]["flagged"][0] == "age"
    assert stored == 1


def test_monitor_errors_are_one_line(cli_env, tmp_path: Path) -> None:
    """An unknown model, a missing file, and a bad config each fail with one line saying what to do."""
    done = run_cli(cli_env, "monitor", "--model", "nope")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "configured models: churn" in done.stderr
    done = run_cli(cli_env, "reference", "import", "--model", "churn", "--version", "v1", str(tmp_path / "x.csv"))
    assert done.returncode == 1 and "no such file" in done.stderr and done.stderr.count("\n") == 1
    (tmp_path / "pitstop.toml").write_text(TOML.replace('window = "1h"', 'window = "7m"'))
    done = run_cli(cli_env, "monitor", "--model", "churn")
    assert done.returncode == 1 and "models.churn.window = '7m'" in done.stderr and done.stderr.count("\n") == 1
