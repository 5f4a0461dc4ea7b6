"""The default trainers on features as logged, skops round trips, loading by spec, and fitting under a budget."""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Callable, Iterator
from multiprocessing import active_children, resource_tracker
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import skops.io
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from skops.io.exceptions import UntrustedTypesFoundException
from threadpoolctl import threadpool_limits

from retrain_worker.trainers import (
    SklearnTrainer,
    TrainerError,
    artifact_types,
    gradient_boosting,
    linear,
    load_trainer,
    online_forest,
    remove_dead_servers_folders,
    start_trainer_server,
    train_with_budget,
)
from tests import trainer_fixtures

DEFAULTS: dict[str, Callable[..., object]] = {
    "gradient_boosting": gradient_boosting, "linear": linear, "online_forest": online_forest}
SKLEARN_DEFAULTS = ("gradient_boosting", "linear")
TASKS = ("classification", "regression")


@pytest.fixture(autouse=True)
def one_openmp_thread() -> Iterator[None]:
    """HistGradientBoosting's OpenMP threads, on rows this few, spin for seconds on a busy machine."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def features(n: int, seed: int) -> pd.DataFrame:
    """Features as the dataset builder gives them from logged JSON: a number, a string category, a boolean,
    each missing in about a tenth of the rows, and a number that does not matter."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    plan = [None if m else p for p, m in zip(rng.choice(["basic", "plus", "pro"], size=n), rng.random(n) < 0.1,
                                                strict=True)]
    vip = [None if m else bool(v) for v, m in zip(rng.random(n) < 0.3, rng.random(n) < 0.1, strict=True)]
    return pd.DataFrame.from_records(
        [{"x": None if np.isnan(a) else float(a), "plan": p, "vip": v, "noise": float(z)}
         for a, p, v, z in zip(x, plan, vip, rng.normal(size=n), strict=True)])


def concept(X: pd.DataFrame, task: str, flipped: bool) -> pd.Series:
    """Labels as logged: ints 0/1 in an object column (as JSON gives them), or numbers; ``flipped`` is the
    drifted concept, which reverses the old one."""
    score = X["x"].fillna(0.0) + 1.5 * (X["plan"] == "pro") - 1.0 * (X["vip"] == True)  # noqa: E712
    score = -score if flipped else score
    if task == "regression":
        return pd.Series(2.0 * score + 1.0, dtype=np.float64)
    return pd.Series([int(s > 0.2) for s in score], dtype=object)


def drifting(task: str, n: int = 800) -> tuple[pd.DataFrame, pd.Series]:
    """``n`` rows oldest first: the old concept in the first half, the flipped one in the second."""
    X = features(n, seed=1)
    half = n // 2
    y = pd.concat([concept(X.iloc[:half], task, flipped=False), concept(X.iloc[half:], task, flipped=True)],
                  ignore_index=True)
    return X, y


def error(model: object, X: pd.DataFrame, y: pd.Series, task: str) -> float:
    """Misclassification rate or mean absolute error."""
    predicted = model.predict(X)  # type: ignore[attr-defined]
    if task == "regression":
        return float(np.mean(np.abs(predicted - y.to_numpy(dtype=np.float64))))
    return float(np.mean(predicted != y.to_numpy()))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", SKLEARN_DEFAULTS)
def test_weights_on_the_new_concept_learn_the_new_concept(name: str, task: str) -> None:
    """A model with nearly all weight on the second, drifted half of its rows predicts the drifted concept far
    better than one trained unweighted (a model that ignored its weights would be no better)."""
    X, y = drifting(task)
    weights = np.r_[np.full(len(X) // 2, 1e-3), np.ones(len(X) - len(X) // 2)]
    weighted = DEFAULTS[name](task=task).fit(X, y, weights)
    unweighted = DEFAULTS[name](task=task).fit(X, y, np.ones(len(X)))
    X_new = features(400, seed=2)
    y_new = concept(X_new, task, flipped=True)
    new, mixed = error(weighted, X_new, y_new, task), error(unweighted, X_new, y_new, task)
    assert new < 0.6 * mixed, (new, mixed)


@pytest.mark.parametrize("task", TASKS)
def test_online_forest_skips_rows_of_weight_zero(task: str) -> None:
    """river's forest does not learn a row of weight 0: zero weights on the old half give the forest that
    learned the new half alone."""
    X, y = drifting(task, n=400)
    weighted = online_forest(task=task).fit(X, y, np.r_[np.zeros(200), np.ones(200)])
    new_only = online_forest(task=task).fit(X.iloc[200:], y.iloc[200:], np.ones(200))
    X_new = features(100, seed=2)
    np.testing.assert_array_equal(weighted.predict(X_new), new_only.predict(X_new))
    assert not np.array_equal(weighted.predict(X_new), online_forest(task=task).fit(X, y, np.ones(400)).predict(X_new))


def test_online_forest_ignores_positive_weights() -> None:
    """river's ARF drops learn_one's weight, so positive weights of any size give the same forest (documented)."""
    X, y = drifting("classification", n=300)
    ones = online_forest(task="classification").fit(X, y, np.ones(len(X)))
    varied = online_forest(task="classification").fit(X, y, np.linspace(0.01, 5.0, len(X)))
    np.testing.assert_array_equal(ones.predict_proba(X), varied.predict_proba(X))


@pytest.mark.parametrize("name", DEFAULTS)
def test_predict_proba_sums_to_one_in_label_order(name: str) -> None:
    """Classification gives one probability column per label in the order of classes_ (the sorted labels),
    each row summing to 1, and predict is the most probable label."""
    X = features(400, seed=3)
    labels = {0: "churned", 1: "stayed"}
    y = pd.Series([labels[v] for v in concept(X, "classification", flipped=False)], dtype=object)
    model = DEFAULTS[name](task="classification").fit(X, y, np.ones(len(X)))
    proba = model.predict_proba(X)
    assert model.classes_.tolist() == ["churned", "stayed"]
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.classes_[proba.argmax(axis=1)], model.predict(X))
    assert error(model, X, y, "classification") < 0.2


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", DEFAULTS)
def test_columns_are_read_by_name_and_unseen_values_are_missing(name: str, task: str) -> None:
    """Extra and reordered columns change nothing, a missing column reads as missing values, and a category
    (or boolean) not seen in training reads as a missing value instead of raising."""
    X, y = drifting(task, n=400)
    model = DEFAULTS[name](task=task).fit(X, y, np.ones(len(X)))
    assert model.feature_names == ("x", "plan", "vip", "noise")
    X_new = features(50, seed=4)
    expected = model.predict(X_new)
    np.testing.assert_array_equal(model.predict(X_new[["noise", "vip", "plan", "x"]].assign(extra="z")), expected)
    np.testing.assert_array_equal(model.predict(X_new.drop(columns="x")), model.predict(X_new.assign(x=None)))
    unseen = X_new.assign(plan="enterprise", vip="maybe")
    np.testing.assert_array_equal(model.predict(unseen), model.predict(X_new.assign(plan=None, vip=None)))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", SKLEARN_DEFAULTS)
def test_sklearn_defaults_round_trip_through_skops(name: str, task: str) -> None:
    """A default sklearn model loads back from skops with exactly artifact_types trusted (none fewer) and
    predicts the same."""
    X, y = drifting(task, n=400)
    model = DEFAULTS[name](task=task).fit(X, y, np.ones(len(X)))
    data = skops.io.dumps(model)
    trusted = artifact_types(model)
    assert "retrain_worker.trainers.TabularModel" in trusted
    loaded = skops.io.loads(data, trusted=trusted)
    X_new = features(100, seed=5).assign(plan=lambda f: f["plan"].where(f.index % 7 > 0, "enterprise"))
    np.testing.assert_array_equal(loaded.predict(X_new), model.predict(X_new))
    if task == "classification":
        np.testing.assert_array_equal(loaded.predict_proba(X_new), model.predict_proba(X_new))
        np.testing.assert_array_equal(loaded.classes_, model.classes_)
    for left_out in trusted:
        with pytest.raises(UntrustedTypesFoundException):
            skops.io.loads(data, trusted=[t for t in trusted if t != left_out])


@pytest.mark.parametrize("task", TASKS)
def test_online_forest_pickles(task: str) -> None:
    """The river model survives pickle (the registry's format for it) and predicts the same."""
    X, y = drifting(task, n=300)
    model = online_forest(task=task).fit(X, y, np.ones(len(X)))
    loaded = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))


@pytest.mark.parametrize("make", [
    *(DEFAULTS[name] for name in DEFAULTS),
    # a team's pipelines through SklearnTrainer: one step only, and a step left as passthrough
    lambda task: SklearnTrainer(task, lambda num, cat: Pipeline([("model", HistGradientBoostingClassifier(
        categorical_features="from_dtype", max_iter=20))])),
    lambda task: SklearnTrainer(task, lambda num, cat: Pipeline([
        ("columns", ColumnTransformer([("numbers", SimpleImputer(), num), ("categories", "drop", cat)])),
        ("nothing", "passthrough"), ("model", LogisticRegression())])),
], ids=[*DEFAULTS, "one_step_pipeline", "passthrough_step"])
@pytest.mark.parametrize("labels", [2, 3])
def test_predict_and_proba_is_predict_and_predict_proba_in_one_pass(make: Callable[..., object], labels: int) -> None:
    """The one-pass answer the serving router asks for equals ``predict`` and ``predict_proba`` asked apart,
    exactly: on rows with unseen categories and missing columns, on one row, with two labels and three."""
    X = features(300, seed=6)
    y = pd.Series(np.where(X["plan"] == "pro", "b", np.where(X["x"].fillna(0.0) > 0, "a", "c")), dtype=object)
    if labels == 2:
        y = pd.Series(np.where(X["x"].fillna(0.0) > 0, "a", "b"), dtype=object)
    model = make(task="classification").fit(X, y, np.ones(len(X)))  # type: ignore[attr-defined]
    X_new = features(60, seed=7).assign(plan=lambda f: f["plan"].where(f.index % 5 > 0, "enterprise"))
    for frame in (X_new, X_new.drop(columns="x"), X_new.iloc[3:4]):
        predicted, proba = model.predict_and_proba(frame)
        np.testing.assert_array_equal(predicted, model.predict(frame))
        np.testing.assert_array_equal(proba, model.predict_proba(frame))
    assert len(np.unique(model.predict(X_new))) > 1
    regression = make(task="regression") if make in DEFAULTS.values() else None
    if regression is not None:
        X_r, y_r = drifting("regression", n=200)
        assert not hasattr(regression.fit(X_r, y_r, np.ones(len(X_r))), "predict_and_proba")


def test_regression_models_have_no_predict_proba() -> None:
    """A regression model does not claim predict_proba, so the worker can tell the tasks apart by it."""
    X, y = drifting("regression", n=200)
    for make in DEFAULTS.values():
        assert not hasattr(make(task="regression").fit(X, y, np.ones(len(X))), "predict_proba")


@pytest.mark.parametrize(("spec", "message"), [
    ("mypkg.x:make", "trainer 'mypkg.x:make': cannot import mypkg.x (No module named 'mypkg')"),
    ("retrain_worker.trainers:boosting",
     "trainer 'retrain_worker.trainers:boosting': module retrain_worker.trainers has no attribute 'boosting'"),
    ("tests.trainer_fixtures:NOT_CALLABLE",
     "trainer 'tests.trainer_fixtures:NOT_CALLABLE': tests.trainer_fixtures.NOT_CALLABLE is not callable "
     "(type int)"),
    ("tests.trainer_fixtures:not_a_trainer",
     "trainer 'tests.trainer_fixtures:not_a_trainer': tests.trainer_fixtures.not_a_trainer(task='regression') "
     "returned a value of type int, which has no fit method"),
    ("retrain_worker.trainers:linear.nope",
     "trainer 'retrain_worker.trainers:linear.nope': <function linear at"),
    ("retrain_worker.trainers", "trainer 'retrain_worker.trainers': expected 'module:callable'"),
])
def test_load_trainer_errors_are_one_line_naming_the_spec(spec: str, message: str) -> None:
    """A spec that cannot give a trainer raises TrainerError with one line that names the spec and the reason."""
    with pytest.raises(TrainerError) as caught:
        load_trainer(spec, task="regression")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)
    assert caught.value.spec == spec


def test_load_trainer_wraps_a_factory_that_rejects_the_task() -> None:
    """A factory raising for its task (an unknown task) is a TrainerError naming the call."""
    with pytest.raises(TrainerError, match=r"linear\(task='ranking'\) raised ValueError: task must be one of"):
        load_trainer("retrain_worker.trainers:linear", task="ranking")


def descendants() -> set[int]:
    """This process's descendants, with multiprocessing's resource tracker and the trainer server already among
    them (each is started once and lives as long as this process; the trainings are the server's children)."""
    resource_tracker.ensure_running()
    start_trainer_server()
    return {p.pid for p in psutil.Process().children(recursive=True)}


def test_train_with_budget_returns_the_fitted_model() -> None:
    """A default trainer fitted in its own process comes back as the same model an in-process fit gives."""
    X, y = drifting("classification", n=300)
    before = descendants()
    model = train_with_budget("retrain_worker.trainers:gradient_boosting", "classification", X, y, np.ones(len(X)),
                              budget_s=60)
    here = gradient_boosting(task="classification").fit(X, y, np.ones(len(X)))
    np.testing.assert_array_equal(model.predict_proba(X), here.predict_proba(X))
    assert descendants() <= before
    assert not active_children()


def test_train_with_budget_reports_a_raising_trainer_in_one_line() -> None:
    """A trainer that raises gives a one-line TrainerError with its exception type and message, well within the
    budget, and leaves no process behind."""
    X, y = drifting("classification", n=50)
    before = descendants()
    started = time.monotonic()
    with pytest.raises(TrainerError) as caught:
        train_with_budget("tests.trainer_fixtures:raising", "classification", X, y, np.ones(len(X)), budget_s=60)
    assert time.monotonic() - started < 30  # the error ends it, not the budget (spawning takes 1-3 s)
    assert str(caught.value) == "trainer 'tests.trainer_fixtures:raising': fit raised RuntimeError: no good at all"
    assert descendants() <= before
    assert not active_children()


def test_train_with_budget_stops_a_hanging_trainer_and_what_it_started(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A trainer that sleeps past its budget is stopped at about the budget with a TrainerError saying so, and
    neither its process nor the process it started survives."""
    pid_file = tmp_path / "helper.pid"
    monkeypatch.setenv(trainer_fixtures.HELPER_PID_FILE, str(pid_file))
    X, y = drifting("classification", n=50)
    before = descendants()
    started = time.monotonic()
    with pytest.raises(TrainerError) as caught:
        train_with_budget("tests.trainer_fixtures:hanging", "classification", X, y, np.ones(len(X)), budget_s=6)
    elapsed = time.monotonic() - started
    # a budget long enough for the child to unpickle and start its helper on a loaded machine: forked from the
    # trainer server (started above, by descendants()) it has its imports already; 12 s covered a spawned child's
    # imports (6 s had not, with `make test` beside a benchmark at a load of 5 on 2 cores)
    assert 6 <= elapsed < 14
    assert str(caught.value) == "trainer 'tests.trainer_fixtures:hanging' passed its time budget of 6 s; stopped"
    assert descendants() <= before
    assert not active_children()
    helper = int(pid_file.read_text())
    _, alive = psutil.wait_procs([psutil.Process(helper)] if psutil.pid_exists(helper) else [], timeout=5)
    assert not alive


def test_train_with_budget_runs_the_trainer_in_the_callers_environment_at_the_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trainer server is started before the variable is set; the training still sees it, as a spawned
    process would (a trainer reading its settings from the environment)."""
    start_trainer_server()
    fits = tmp_path / "fits"
    monkeypatch.setenv(trainer_fixtures.FITS_FILE, str(fits))
    X, y = pd.DataFrame({"x": np.arange(40.0)}), pd.Series([0, 1] * 20)
    train_with_budget("tests.trainer_fixtures:broken_second_fit", "classification", X, y, np.ones(len(X)),
                      budget_s=60)
    assert fits.read_text() == "1"
    monkeypatch.delenv(trainer_fixtures.FITS_FILE)
    with pytest.raises(TrainerError, match="fit raised KeyError"):
        train_with_budget("tests.trainer_fixtures:broken_second_fit", "classification", X, y, np.ones(len(X)),
                          budget_s=60)


def test_train_with_budget_reports_a_dead_process() -> None:
    """A trainer whose process exits mid-fit gives a TrainerError with the exit code."""
    X, y = drifting("classification", n=50)
    died = r"^trainer 'tests.trainer_fixtures:dying': its process died \(exit code 3\)$"
    with pytest.raises(TrainerError, match=died):
        train_with_budget("tests.trainer_fixtures:dying", "classification", X, y, np.ones(len(X)), budget_s=30)


def test_train_with_budget_reports_a_trainer_that_cannot_load() -> None:
    """A spec that cannot be loaded in the child gives the same one-line TrainerError as load_trainer."""
    X, y = drifting("classification", n=50)
    with pytest.raises(TrainerError, match=r"^trainer 'mypkg.x:make': cannot import mypkg.x \(No module named"):
        train_with_budget("mypkg.x:make", "classification", X, y, np.ones(len(X)), budget_s=30)


def test_the_folders_of_dead_trainer_servers_are_removed_and_no_other(tmp_path: Path) -> None:
    """A folder recorded by a process that is gone is removed with its record; one recorded by a live process, or
    one that is not a multiprocessing folder, stays."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    records = tmp_path / "records"
    records.mkdir()
    folders = {name: tmp_path / name for name in ("pymp-dead", "pymp-alive", "not-pymp")}
    for folder in folders.values():
        folder.mkdir()
        (folder / "listener-x").write_text("")
    (records / str(dead.pid)).write_text(str(folders["pymp-dead"]))
    (records / str(os.getppid())).write_text(str(folders["pymp-alive"]))
    (records / "not-a-pid").write_text(str(folders["pymp-alive"]))
    gone_too = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_too.wait()
    (records / str(gone_too.pid)).write_text(str(folders["not-pymp"]))
    assert remove_dead_servers_folders(records) == [folders["pymp-dead"]]
    assert [f.name for f in folders.values() if f.exists()] == ["pymp-alive", "not-pymp"]
    assert sorted(r.name for r in records.iterdir()) == sorted([str(os.getppid()), "not-a-pid"])
    assert remove_dead_servers_folders(tmp_path / "nowhere") == []
