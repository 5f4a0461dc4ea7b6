"""The trainers the retrain worker calls: a small protocol, the defaults, and fitting in a killable process.

A trainer is named by a spec, ``"module:callable"``; the callable, given ``task=``, returns a :class:`Trainer`.
The defaults are ``retrain_worker.trainers:gradient_boosting``, ``:linear`` and ``:online_forest``. Each takes
the rows' weights and the features as logged (numbers, strings, booleans, None), and the model it returns
remembers the columns it was fitted on: at predict time extra columns are ignored, the order does not matter,
a missing column is missing values, and a category not seen in training is a missing value.

The sklearn models are saved with skops, which loads only the types it is told to trust
(:func:`artifact_types` lists them; :class:`TabularModel` is one); the river model is pickled.

    TrainerError   a trainer could not be loaded, raised, passed its time budget, or its process died
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import pickle
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import pandas as pd
import psutil
import sklearn
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.metaestimators import available_if

TASKS = ("classification", "regression")
#: HistGradientBoosting bins a categorical feature into at most max_bins (255) categories; rarer ones are missing
HGB_MAX_CATEGORIES = 255


class TrainerError(Exception):
    """A trainer could not be loaded, raised, passed its time budget, or its process died.

    ``str()`` is one line naming the spec; ``spec`` and ``reason`` are kept apart for the worker's record.

    >>> str(TrainerError("mypkg.x:make", "cannot import mypkg.x (No module named 'mypkg')"))
    "trainer 'mypkg.x:make': cannot import mypkg.x (No module named 'mypkg')"
    """

    def __init__(self, spec: str, reason: str, *, message: str | None = None) -> None:
        self.spec, self.reason = spec, reason
        super().__init__(message or f"trainer {spec!r}: {reason}")


class TrainedModel(Protocol):
    """A fitted model. Classification models also have ``predict_proba(X)`` (one column per label, in the
    order of ``classes_``) and ``classes_``, and may have ``predict_and_proba(X)``, both answers in one pass
    (:func:`feedback.features.model_answers`)."""

    #: the columns the model was fitted on, in order
    feature_names: tuple[str, ...]

    def predict(self, X: pd.DataFrame) -> np.ndarray: ...


class Trainer(Protocol):
    """Fits a model on feature rows, their labels and their weights."""

    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> TrainedModel: ...


# --- columns as logged --------------------------------------------------------------------------------------


def column_categories(X: pd.DataFrame, max_categories: int | None = None) -> dict[str, list[str]]:
    """The categorical columns of ``X`` and the categories seen in each, as sorted strings (only the
    ``max_categories`` most frequent when capped); every other column is numeric.

    A column is numeric when its values are numbers (booleans are not) or missing; anything else is
    categorical, its values compared as strings (``True`` is ``"True"``).

    >>> X = pd.DataFrame({"x": [1.5, None, 2.0], "plan": ["a", "b", None], "vip": [True, None, False]})
    >>> column_categories(X)
    {'plan': ['a', 'b'], 'vip': ['False', 'True']}
    >>> column_categories(pd.DataFrame({"c": ["a", "b", "b"]}), max_categories=1)
    {'c': ['b']}
    """
    categories: dict[str, list[str]] = {}
    for name in X.columns:
        column = X[name]
        if _is_numeric(column):
            continue
        counts = _as_strings(column).value_counts()
        if max_categories is not None and len(counts) > max_categories:
            kept = counts.sort_index().sort_values(ascending=False, kind="stable").index[:max_categories]
        else:
            kept = counts.index
        categories[str(name)] = sorted(str(c) for c in kept)
    return categories


def conform(X: pd.DataFrame, feature_names: Sequence[str], categories: dict[str, list[str]]) -> pd.DataFrame:
    """``X`` as a model fitted on ``feature_names`` reads it: those columns in that order (a missing one all
    missing), numbers as floats (anything else missing), categoricals as pandas categories of the training
    categories (an unseen one missing).

    >>> X = pd.DataFrame({"plan": ["b", "new", None], "extra": [0, 0, 0]})
    >>> out = conform(X, ["x", "plan"], {"plan": ["a", "b"]})
    >>> out.columns.tolist(), out["x"].tolist(), out["plan"].astype(object).tolist()
    (['x', 'plan'], [nan, nan, nan], ['b', nan, nan])
    """
    columns: dict[str, Any] = {}
    for name in feature_names:
        column = X[name] if name in X.columns else pd.Series(np.nan, index=X.index, dtype=object)
        if name in categories:
            # each value's place among the training categories, an unseen or missing one -1: missing (built from
            # codes, the categories hashed once; a model server conforms one row at a time)
            known = pd.Index(categories[name], dtype=object)
            codes = known.get_indexer(_string_values(column))
            columns[name] = pd.Categorical.from_codes(codes, dtype=pd.CategoricalDtype(known))
        elif pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(column.dtype):
            columns[name] = column.to_numpy(dtype=np.float64)
        else:  # as logged: a string, or a boolean, where a number was seen in training is missing
            values = column.astype(object)
            values = values.where(~values.map(lambda v: isinstance(v, bool | np.bool_)).astype(bool))
            columns[name] = pd.to_numeric(values, errors="coerce").astype(np.float64)
    # column names of numpy's object dtype, not pandas' string dtype: sklearn checks them at every step of a
    # pipeline, and pandas' Arrow strings made a one-row prediction half again as long
    return pd.DataFrame(columns, index=X.index, columns=pd.Index(list(columns), dtype=object))


def _is_numeric(column: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(column.dtype):
        return False
    if pd.api.types.is_numeric_dtype(column.dtype):
        return True
    values = column.dropna()
    return all(isinstance(v, int | float | np.number) and not isinstance(v, bool | np.bool_) for v in values)


def _as_strings(column: pd.Series) -> pd.Series:
    """Each present value as its string, missing values as NaN, in an object column."""
    return pd.Series(_string_values(column), index=column.index, dtype=object)


def _string_values(column: pd.Series) -> np.ndarray:
    """:func:`_as_strings` as an object array (without a Series' construction: a model server conforms one row at
    a time)."""
    values = column.to_numpy(dtype=object)
    strings = np.empty(len(values), dtype=object)
    strings[:] = [str(v) for v in values]
    strings[pd.isna(values)] = np.nan
    return strings


def _labels(y: pd.Series | np.ndarray, task: str) -> np.ndarray:
    """Labels as logged, as sklearn and river read them: numbers for regression; for classification the
    column's own type (an object column of ints, as JSON gives, is ints: sklearn rejects object ints)."""
    series = pd.Series(y).reset_index(drop=True)
    if task == "regression":
        return series.astype(np.float64).to_numpy()
    return series.infer_objects().to_numpy()


def _check_task(task: str) -> None:
    if task not in TASKS:
        msg = f"task must be one of {', '.join(TASKS)}, got {task!r}"
        raise ValueError(msg)


# --- the sklearn defaults -----------------------------------------------------------------------------------


class TabularModel:
    """A fitted sklearn estimator behind the columns it was fitted on (see :func:`conform`).

    Saved with skops: its qualified name, ``retrain_worker.trainers.TabularModel``, is one of the trusted types.
    """

    def __init__(self, estimator: Any, feature_names: Sequence[str], categories: dict[str, list[str]]) -> None:
        self.estimator = estimator
        self.feature_names = tuple(feature_names)
        self.categories = categories

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict(conform(X, self.feature_names, self.categories))

    @available_if(lambda self: hasattr(self.estimator, "predict_proba"))
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        return self.estimator.predict_proba(conform(X, self.feature_names, self.categories))

    @available_if(lambda self: hasattr(self.estimator, "predict_proba"))
    def predict_and_proba(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """``predict(X)`` and ``predict_proba(X)`` in one pass: ``X`` conformed once and, for a pipeline, its
        transforms run once (as :meth:`sklearn.pipeline.Pipeline.predict` runs them) for both of the last step's
        answers. A one-row request of the default linear pipeline costs about 40 % less (bench/serving.py)."""
        Xt, final = conform(X, self.feature_names, self.categories), self.estimator
        if isinstance(final, Pipeline):
            if len(final.steps) > 1:
                Xt = final[:-1].transform(Xt)
            final = final.steps[-1][1]
        if type(final) is HistGradientBoostingClassifier and _BOOSTING_ONE_PASS:
            return _boosting_answers(final, Xt)
        return final.predict(Xt), final.predict_proba(Xt)

    @property
    def classes_(self) -> np.ndarray:
        return self.estimator.classes_

    def __repr__(self) -> str:
        return f"TabularModel({self.estimator!r}, {len(self.feature_names)} features)"


#: the scikit-learn versions whose gradient-boosting classifier :func:`_boosting_answers` was read against (any
#: other answers through ``predict`` and ``predict_proba``, one pass each)
_BOOSTING_ONE_PASS = sklearn.__version__.split(".")[:2] == ["1", "9"]


def _boosting_answers(model: HistGradientBoostingClassifier, X: Any) -> tuple[np.ndarray, np.ndarray]:
    """``model.predict(X)`` and ``model.predict_proba(X)`` from one pass over the trees: each of the two computes
    the raw predictions on its own, categorical encoding included (10 of a one-row request's 24 ms). The two lines
    below are scikit-learn 1.9's own ``predict`` and ``predict_proba`` after their ``_raw_predict`` (private: used on
    1.9 only, see :data:`_BOOSTING_ONE_PASS`); a test holds them equal to the two calls."""
    raw = model._raw_predict(X)
    encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
    return model.classes_[encoded], model._loss.predict_proba(raw)


@dataclass(frozen=True, slots=True)
class SklearnTrainer:
    """Fits the estimator ``build(numeric, categorical)`` returns (a Pipeline's weights go to its last step)."""

    task: str
    build: Callable[[list[str], list[str]], BaseEstimator]
    max_categories: int | None = None

    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> TabularModel:
        categories = column_categories(X, self.max_categories)
        names = [str(c) for c in X.columns]
        estimator = self.build([n for n in names if n not in categories], [n for n in names if n in categories])
        weight_key = f"{estimator.steps[-1][0]}__sample_weight" if isinstance(estimator, Pipeline) else "sample_weight"
        estimator.fit(conform(X, names, categories), _labels(y, self.task),
                      **{weight_key: np.asarray(sample_weight, dtype=np.float64)})
        return TabularModel(estimator, names, categories)


def gradient_boosting(task: str) -> SklearnTrainer:
    """Histogram gradient boosting, categoricals handled natively (at most 255 categories a feature: rarer ones
    are missing). Early stopping is off: its random 10% holdout would drop recent rows under recency weights.

    >>> X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0], "c": ["a", "a", "b", "b"]})
    >>> model = gradient_boosting("regression").fit(X, pd.Series([0.0, 0.0, 1.0, 1.0]), np.ones(4))
    >>> model.feature_names, model.predict(X[["c", "x"]]).shape
    (('x', 'c'), (4,))
    """
    _check_task(task)
    estimator = HistGradientBoostingClassifier if task == "classification" else HistGradientBoostingRegressor

    def build(numeric: list[str], categorical: list[str]) -> BaseEstimator:
        return estimator(early_stopping=False, random_state=0, categorical_features="from_dtype")

    return SklearnTrainer(task, build, HGB_MAX_CATEGORIES)


def linear(task: str) -> SklearnTrainer:
    """Logistic regression or ridge on median-imputed (with missing indicators), scaled numbers and one-hot
    categoricals (a missing category is a category; an unseen one is missing).

    >>> X = pd.DataFrame({"x": [0.0, 1.0, None, 3.0], "c": ["a", "a", "b", None]})
    >>> model = linear("classification").fit(X, pd.Series(["no", "no", "yes", "yes"]), np.ones(4))
    >>> model.classes_.tolist(), model.predict_proba(X).shape
    (['no', 'yes'], (4, 2))
    """
    _check_task(task)

    def build(numeric: list[str], categorical: list[str]) -> BaseEstimator:
        numbers = Pipeline([("impute", SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True)),
                            ("scale", StandardScaler())])
        columns = ColumnTransformer([("numeric", numbers, numeric),
                                     ("categorical", OneHotEncoder(handle_unknown="ignore"), categorical)])
        model = LogisticRegression(max_iter=1_000) if task == "classification" else Ridge()
        return Pipeline([("columns", columns), ("model", model)])

    return SklearnTrainer(task, build)


def artifact_types(model: Any) -> list[str]:
    """The types skops must be told to trust to load ``model`` (for the registry to record with the artifact).

    >>> X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0]})
    >>> artifact_types(linear("regression").fit(X, pd.Series([0.0, 1.0, 2.0, 3.0]), np.ones(4)))
    ['numpy.dtype', 'retrain_worker.trainers.TabularModel']
    """
    import skops.io

    return skops.io.get_untrusted_types(data=skops.io.dumps(model))


# --- the river default --------------------------------------------------------------------------------------


class OnlineModel:
    """A river model that learned rows one at a time, behind the TrainedModel protocol (pickled, not skops)."""

    def __init__(self, model: Any, task: str, feature_names: Sequence[str], categories: dict[str, list[str]],
                 classes: np.ndarray | None) -> None:
        self.model = model
        self.task = task
        self.feature_names = tuple(feature_names)
        self.categories = categories
        if classes is not None:
            self.classes_ = classes

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        if self.task == "classification":
            return self.classes_[self.predict_proba(X).argmax(axis=1)]
        return np.array([self.model.predict_one(x) for x in self._rows(X)], dtype=np.float64)

    @available_if(lambda self: self.task == "classification")
    def predict_and_proba(self, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)], proba

    @available_if(lambda self: self.task == "classification")
    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        labels = self.classes_.tolist()
        proba = np.array([[p.get(c, 0.0) for c in labels] for p in map(self.model.predict_proba_one, self._rows(X))],
                         dtype=np.float64).reshape(-1, len(labels))
        total = proba.sum(axis=1, keepdims=True)
        return np.divide(proba, total, out=np.full_like(proba, 1.0 / len(labels)), where=total > 0)

    def _rows(self, X: pd.DataFrame) -> list[dict[str, Any]]:
        return _river_rows(conform(X, self.feature_names, self.categories), one_hot=self.task == "regression")

    def __repr__(self) -> str:
        return f"OnlineModel({self.model!r}, {len(self.feature_names)} features)"


def _river_rows(X: pd.DataFrame, one_hot: bool) -> list[dict[str, Any]]:
    """Rows as river reads them: a missing value is an absent key; with ``one_hot`` a categorical is one 0/1
    number per training category (``"plan=a"``: the ARF regressor's linear leaves take numbers only).

    >>> X = conform(pd.DataFrame({"x": [1.0, None], "plan": ["a", None]}), ["x", "plan"], {"plan": ["a", "b"]})
    >>> _river_rows(X, one_hot=False)
    [{'x': 1.0, 'plan': 'a'}, {}]
    >>> _river_rows(X, one_hot=True)
    [{'x': 1.0, 'plan=a': 1.0, 'plan=b': 0.0}, {'plan=a': 0.0, 'plan=b': 0.0}]
    """
    if one_hot:
        X = pd.get_dummies(X, prefix_sep="=", dtype=np.float64)
    columns = [(name, X[name].astype(object).to_numpy()) for name in X.columns]
    return [{name: v for name, values in columns if not pd.isna(v := values[i])} for i in range(len(X))]


@dataclass(frozen=True, slots=True)
class OnlineForestTrainer:
    """river's adaptive random forest, learning the rows one at a time in the order given (oldest first: the
    Dataset's rows are in prediction-time order).

    Weights: river 0.26's ``ARF*.learn_one(x, y, **kwargs)`` drops any ``w`` (each tree learns each row with its
    own Poisson(6) weight), so weights are not honoured, except that a row of weight 0 is not learned (an
    excluded row, as the Dataset's rows before a change point are).
    """

    task: str

    def fit(self, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray) -> OnlineModel:
        from river import forest  # imported when used: a spawned sklearn training need not load river

        categories = column_categories(X)
        names = [str(c) for c in X.columns]
        labels = _labels(y, self.task)
        model = forest.ARFClassifier(seed=1) if self.task == "classification" else forest.ARFRegressor(seed=1)
        learned = np.asarray(sample_weight, dtype=np.float64) > 0
        rows = _river_rows(conform(X, names, categories), one_hot=self.task == "regression")
        for x, label, keep in zip(rows, labels.tolist(), learned, strict=True):
            if keep:
                model.learn_one(x, label)
        classes = np.unique(labels[learned]) if self.task == "classification" else None
        return OnlineModel(model, self.task, names, categories, classes)


def online_forest(task: str) -> OnlineForestTrainer:
    """river's ARFClassifier / ARFRegressor (seed 1), learning row by row; weights are not honoured beyond
    skipping rows of weight 0 (see :class:`OnlineForestTrainer`).

    >>> X = pd.DataFrame({"x": [0.0, 1.0, 2.0, 3.0] * 10, "c": ["a", "a", "b", "b"] * 10})
    >>> model = online_forest("classification").fit(X, pd.Series([0, 0, 1, 1] * 10), np.ones(40))
    >>> model.classes_.tolist(), model.predict_proba(X[:2]).sum(axis=1).round(6).tolist()
    ([0, 1], [1.0, 1.0])
    """
    _check_task(task)
    return OnlineForestTrainer(task)


# --- loading and fitting under a budget ---------------------------------------------------------------------


def load_trainer(spec: str, *, task: str) -> Trainer:
    """The trainer ``spec`` (``"module:callable"``, the callable possibly dotted) names, built for ``task``.

    >>> load_trainer("retrain_worker.trainers:linear", task="regression").task
    'regression'
    >>> load_trainer("retrain_worker.trainers:nothing", task="regression")
    Traceback (most recent call last):
    ...
    retrain_worker.trainers.TrainerError: trainer 'retrain_worker.trainers:nothing': module retrain_worker.trainers has no attribute 'nothing'
    """  # noqa: E501
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise TrainerError(spec, "expected 'module:callable'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise TrainerError(spec, f"cannot import {module_name} ({_one_line(exc)})") from exc
    except Exception as exc:
        raise TrainerError(spec, f"cannot import {module_name} ({_described(exc)})") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise TrainerError(spec, f"{_name(target)} has no attribute {part!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TrainerError(spec, f"{module_name}.{attribute} is not callable (type {type(target).__name__})")
    try:
        trainer = target(task=task)
    except Exception as exc:
        raise TrainerError(spec, f"{module_name}.{attribute}(task={task!r}) raised {_described(exc)}") from exc
    if not callable(getattr(trainer, "fit", None)):
        raise TrainerError(spec, f"{module_name}.{attribute}(task={task!r}) returned a value of type "
                                 f"{type(trainer).__name__}, which has no fit method")
    return trainer


#: what the trainer server imports once, so that each training's process starts with it loaded
TRAINER_PRELOAD = ("retrain_worker.trainers",)


def _trainer_context() -> multiprocessing.context.BaseContext:
    """Forks from a server with :data:`TRAINER_PRELOAD` loaded where the platform has one, else spawns."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(TRAINER_PRELOAD))
    return context


def start_trainer_server(records: Path | None = None) -> None:
    """Start the server trainings fork from, if not yet running, without waiting for its imports: a worker calls
    this at its start so that its first training does not wait for them either. The server exits with its
    caller.

    With ``records`` (a folder), the server's temporary folder (``pymp-*``, holding its socket: multiprocessing
    removes it at a normal exit, a SIGKILL leaves it behind) is recorded there under this process's id, after the
    folders recorded by processes no longer alive are removed."""
    context = _trainer_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver, util

        if records is not None:
            remove_dead_servers_folders(records)
        forkserver.ensure_running()
        if records is not None:
            records.mkdir(parents=True, exist_ok=True)
            (records / str(os.getpid())).write_text(util.get_temp_dir())


def remove_dead_servers_folders(records: Path) -> list[Path]:
    """Remove the temporary folders recorded in ``records`` (:func:`start_trainer_server`) by processes no longer
    alive, and their records; returns the folders removed. A process alive under a recorded id (even another one
    that took a dead worker's id) keeps its folder; only a ``pymp-*`` folder is ever removed."""
    removed = []
    for record in records.glob("*") if records.is_dir() else ():
        if not record.name.isdigit() or int(record.name) == os.getpid() or psutil.pid_exists(int(record.name)):
            continue
        with contextlib.suppress(OSError):
            folder = Path(record.read_text().strip())
            if folder.name.startswith("pymp-") and folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
            record.unlink(missing_ok=True)
    return removed


def train_with_budget(trainer_spec: str, task: str, X: pd.DataFrame, y: pd.Series, sample_weight: np.ndarray, *,
                      budget_s: float) -> TrainedModel:
    """Load ``trainer_spec`` and fit it in a process of its own (a hanging trainer can be killed, which a thread
    cannot), within ``budget_s`` seconds from the start; the fitted model comes back pickled.

    The process is forked from a server that has the defaults' imports (numpy, pandas, scikit-learn) loaded
    (:func:`start_trainer_server`), so a training does not pay 2 s of imports; it runs with the caller's
    environment, path and directory as at the call, as a spawned one would. Like a spawned process, it imports
    the caller's main module afresh, so that module must keep its work under ``if __name__ == "__main__":``.

    Raises :class:`TrainerError` when the trainer cannot be loaded, raises, passes its budget, or its process
    dies; the process (and any it started) is stopped and reaped in every case.
    """
    if not budget_s > 0:
        msg = f"budget_s must be > 0, got {budget_s}"
        raise ValueError(msg)
    context = _trainer_context()
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_fit_in_child,
                              args=(sender, dict(os.environ), trainer_spec, task, X, y, sample_weight),
                              name=f"pitstop-trainer {trainer_spec}")
    deadline = time.monotonic() + budget_s
    try:
        process.start()
        sender.close()  # the child holds the only write end now: its death reads as end of file
        if not wait([receiver, process.sentinel], timeout=max(0.0, deadline - time.monotonic())):
            reason = f"passed its time budget of {budget_s:g} s; stopped"
            raise TrainerError(trainer_spec, reason, message=f"trainer {trainer_spec!r} {reason}")
        outcome, payload = "died", None  # the child is exiting without a word (it wrote before it exits, if ever)
        if receiver.poll():
            with contextlib.suppress(EOFError):
                outcome, payload = receiver.recv()
        if outcome == "ok":
            try:
                return pickle.loads(payload)
            except Exception as exc:
                raise TrainerError(trainer_spec, f"its model cannot be unpickled here ({_described(exc)})") from exc
        if outcome == "error":
            raise TrainerError(trainer_spec, payload)
        process.join(timeout=5)
        raise TrainerError(trainer_spec, f"its process died ({_exit_reason(process.exitcode)})")
    finally:
        _stop(process)
        receiver.close()


def _fit_in_child(sender: Connection, environ: dict[str, str], spec: str, task: str, X: pd.DataFrame,
                  y: pd.Series, sample_weight: np.ndarray) -> None:
    """The child's body: its own process group (so that stopping it stops what it started), the caller's
    environment (the server's is as of its start), load, fit, reply."""
    if hasattr(os, "setpgrp"):
        os.setpgrp()
    if environ != os.environ:
        os.environ.clear()
        os.environ.update(environ)
    try:
        trainer = load_trainer(spec, task=task)
    except TrainerError as exc:
        sender.send(("error", exc.reason))
        return
    try:
        model = trainer.fit(X, y, sample_weight)
    except Exception as exc:
        sender.send(("error", f"fit raised {_described(exc)}"))
        return
    try:
        payload = pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        sender.send(("error", f"its model cannot be pickled ({_described(exc)})"))
        return
    sender.send(("ok", payload))
    sender.close()


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    """Kill the child's process group (what it started too) and the child, and reap it; never raises, so that
    a cleanup failure cannot hide the trainer's error."""
    if process.pid is None:  # never started
        return
    with contextlib.suppress(OSError, ValueError):
        if hasattr(os, "killpg"):
            # no such group when the child had not reached setpgrp yet, or it and all it started are gone
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if process.exitcode is None:
            process.kill()
        process.join(timeout=10)
        process.close()


def _exit_reason(code: int | None) -> str:
    """
    >>> _exit_reason(-9), _exit_reason(3)
    ('killed by signal SIGKILL', 'exit code 3')
    """
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _described(exc: BaseException) -> str:
    """
    >>> _described(ValueError("bad\\n value"))
    'ValueError: bad value'
    """
    text = _one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _name(target: Any) -> str:
    return f"module {target.__name__}" if isinstance(target, ModuleType) else repr(target)
