"""`pitstop monitor` and `pitstop reference import`: the operator's view of drift and performance."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from feedback.config import ModelConfig
from feedback.monitoring.profile import ReferenceProfile, build_profile
from feedback.monitoring.round import Monitor
from feedback.monitoring.windows import WindowUpdater, install_profile, reference_columns, series_kinds
from feedback.store import FeedbackStore
from pitstop.errors import PitstopError
from pitstop.output import Progress, json_default, reply
from pitstop.settings import Settings

_DRIFT = """
SELECT d.feature, d.status, d.value AS psi, js.value AS js, e.metric AS effect_metric, e.value AS effect,
       d.p_value, d.sample_size, d.window_start, d.sentence
FROM monitor_results d
LEFT JOIN monitor_results js ON js.model_name = d.model_name AND js.model_version = d.model_version
     AND js.segment = d.segment AND js.window_start = d.window_start AND js.kind = 'drift'
     AND js.feature = d.feature AND js.metric = 'js'
LEFT JOIN monitor_results e ON e.model_name = d.model_name AND e.model_version = d.model_version
     AND e.segment = d.segment AND e.window_start = d.window_start AND e.kind = 'drift'
     AND e.feature = d.feature AND e.metric IN ('ks', 'cohens_w')
WHERE d.model_name = %s AND d.model_version = %s AND d.segment = %s AND d.kind = 'drift' AND d.metric = 'drift'
  AND d.window_start = (
      SELECT max(window_start) FROM monitor_results
      WHERE model_name = %s AND model_version = %s AND segment = %s AND kind = 'drift' AND metric = 'drift'
        AND status <> 'unjudged' AND left(feature, 2) <> '__')
ORDER BY d.status = 'drift' DESC, d.feature
"""

_PERFORMANCE = """
SELECT window_start, metric, value, ci_low, ci_high, sample_size, label_coverage, status, sentence
FROM performance_by_window
WHERE model_name = %s AND model_version = %s AND segment = %s AND metric = %s
ORDER BY window_start DESC
LIMIT %s
"""

_DETECTIONS = """
SELECT detector, label_index, change_index, predicted_at, observed_at, error_mean_before, error_mean_after
FROM detector_events WHERE model_name = %s AND model_version = %s ORDER BY label_index DESC LIMIT 10
"""

_VERSIONS = "SELECT model_version FROM reference_profiles WHERE model_name = %s ORDER BY created_at, model_version"


def monitor_report(settings: Settings, model: str, *, version: str | None, segment: str, windows: int,
                   as_json: bool, say: Callable[[str], None], database_url: str | None = None) -> int:
    """Run a monitor round for ``model`` (or read the stored one if a worker is running it) and print it."""
    config = settings.require_model(model)
    if database_url is None:
        database_url = settings.require_reachable_database()
    updater = WindowUpdater(settings.monitoring)
    with FeedbackStore(database_url, settings.db_schema, windows=updater) as store:
        # a round of this model's own (skipped when a worker's round holds the model: its results are as fresh)
        Monitor(store, updater).run_once(models=[model])
        versions = [r[0] for r in store.rows(_VERSIONS, (model,))]
        if not versions:
            say(f"{model}: no reference profile yet (import one with `pitstop reference import`, or wait for "
                f"the first {config.reference_rows} predictions of a version)")
            return 1
        chosen = [version] if version else versions
        report = [_version_report(store, config, v, segment, windows) for v in chosen]
    if as_json:
        say(json.dumps(report, default=json_default))
    else:
        for r in report:
            _print_report(r, say)
    return 0


def _version_report(store: FeedbackStore, config: ModelConfig, version: str, segment: str,
                    windows: int) -> dict[str, Any]:
    m = config.name
    profile = store.rows("SELECT source, n_rows FROM reference_profiles WHERE model_name = %s AND model_version = %s",
                         (m, version))
    drift = [
        dict(zip(("feature", "status", "psi", "js", "effect_metric", "effect", "p_value", "sample_size",
                  "window_start", "sentence"), row, strict=True))
        for row in store.rows(_DRIFT, (m, version, segment, m, version, segment))
    ]
    perf = [
        dict(zip(("window_start", "metric", "value", "ci_low", "ci_high", "sample_size", "label_coverage", "status",
                  "sentence"), row, strict=True))
        for row in store.rows(_PERFORMANCE, (m, version, segment, config.metric, windows))
    ]
    detections = [
        dict(zip(("detector", "label_index", "change_index", "predicted_at", "observed_at", "mean_before",
                  "mean_after"), row, strict=True))
        for row in store.rows(_DETECTIONS, (m, version))
    ]
    source, n_rows = profile[0] if profile else (None, None)
    return {"model": m, "version": version, "segment": segment, "reference": {"source": source, "rows": n_rows},
            "drift": drift, "performance": perf, "detections": detections}


def _print_report(r: dict[str, Any], say: Callable[[str], None]) -> None:
    ref = r["reference"]
    say(f"{r['model']} {r['version']}  segment {r['segment']}  reference: {ref['source']} ({ref['rows']} rows)")
    if r["drift"]:
        say(f"drift, window starting {r['drift'][0]['window_start']:%Y-%m-%d %H:%M} UTC:")
        width = max(len("feature"), *(len(d["feature"]) for d in r["drift"]))
        say(f"  {'feature':<{width}} {'status':<9} {'psi':>7} {'js':>7} {'effect':>15} {'p (Holm)':>10} {'rows':>7}")
        for d in r["drift"]:
            effect = "" if d["effect"] is None else f"{d['effect_metric']} {d['effect']:.3f}"
            say(f"  {d['feature']:<{width}} {d['status']:<9} {_num(d['psi'])} {_num(d['js'])} {effect:>15} "
                f"{_p(d['p_value']):>10} {d['sample_size']:>7}")
    else:
        say("drift: no window judged yet")
    if r["performance"]:
        say("performance by window of prediction time (newest first):")
        for p in r["performance"]:
            value = "" if p["value"] is None else f"{p['value']:.4f} [{p['ci_low']:.4f}, {p['ci_high']:.4f}]"
            cov = "" if p["label_coverage"] is None else f"{p['label_coverage']:.0%}"
            say(f"  {p['window_start']:%Y-%m-%d %H:%M}  {p['metric']:<9} {value:<28} labels {p['sample_size']:>6} "
                f"coverage {cov:>4}  {p['status']}")
    for d in r["detections"][:5]:
        say(f"  early warning: {d['detector']} at label {d['label_index']} (prediction of "
            f"{d['predicted_at']:%Y-%m-%d %H:%M})")


def _num(x: float | None) -> str:
    return f"{'':>7}" if x is None else f"{x:7.3f}"


def _p(x: float | None) -> str:
    return "" if x is None else f"{x:.2g}"


def import_reference(settings: Settings, model: str, version: str, path: Path, *, label_column: str | None,
                     prediction_column: str | None, score_column: str | None, say: Callable[[str], None],
                     as_json: bool = False) -> int:
    """Profile a training set (CSV or Parquet) as the version's reference and recount its windows; a progress bar
    on a terminal while the file is read and while the stored predictions are recounted."""
    config = settings.require_model(model)
    if not path.is_file():
        msg = f"{path}: no such file; give a CSV or Parquet training set"
        raise PitstopError(msg)
    bar = Progress(f"import {model} {version}")
    try:  # the bar is cleared however the import ends, so an error's one line starts clean
        n, rows, profile = _import(settings, config, model, version, path, bar, label_column=label_column,
                                   prediction_column=prediction_column, score_column=score_column)
    finally:
        bar.close()
    sentence = (f"{model} {version}: reference from {path.name} ({rows} rows, {len(profile.series)} series); "
                f"{n} stored predictions recounted")
    reply(say, as_json, sentence, model=model, version=version, file=str(path), rows=rows,
          series=sorted(profile.series), recounted=n)
    return 0


def _import(settings: Settings, config: ModelConfig, model: str, version: str, path: Path, bar: Progress, *,
            label_column: str | None, prediction_column: str | None, score_column: str | None,
            ) -> tuple[int, int, ReferenceProfile]:
    """Read, profile and install: the stored predictions recounted, the file's rows and the profile."""
    import pandas as pd

    parquet = path.suffix.lower() in (".parquet", ".pq")
    try:
        if parquet:
            bar.status(f"reading {path.name}")
            frame = pd.read_parquet(path)
        else:
            size_mib = path.stat().st_size >> 20
            with _Read(path, lambda at: bar.update(at >> 20, size_mib, f"MiB of {path.name} read")) as handle:
                frame = pd.read_csv(handle)
    except Exception as exc:  # pandas raises many types; the operator needs the one line
        msg = f"{path}: cannot read as {'Parquet' if parquet else 'CSV'}: {exc}"
        raise PitstopError(msg) from None
    special = {c for c in (label_column, prediction_column, score_column) if c}
    missing = sorted(c for c in special if c not in frame.columns)
    if missing:
        msg = f"{path}: no column {', '.join(missing)}; columns are {', '.join(map(str, frame.columns))}"
        raise PitstopError(msg)
    bar.status(f"profiling {len(frame.columns)} columns of {len(frame):,} rows")
    label = label_column or ("label" if "label" in frame.columns else None)
    prediction = prediction_column or ("prediction" if "prediction" in frame.columns else None)
    features = {str(c): _values(frame[c]) for c in frame.columns if c not in {label, prediction, score_column}}
    columns = reference_columns(
        config, features=features,
        predictions=_values(frame[prediction]) if prediction else None,
        scores=_values(frame[score_column]) if score_column else None,
        labels=_values(frame[label]) if label else None,
    )
    profile = build_profile(model, version, columns, series_kinds(config), source=f"import:{path.name}")
    database_url = settings.require_reachable_database()
    updater = WindowUpdater(settings.monitoring)
    bar.status("recounting the stored predictions")
    with FeedbackStore(database_url, settings.db_schema, windows=updater) as store, store.pool.connection() as conn:
        n = install_profile(conn, updater, profile,
                            progress=lambda done, total: bar.update(done, total, "predictions recounted"))
    return n, len(frame), profile


class _Read(io.FileIO):
    """A file whose reader reports how far it read (pandas reads a CSV from it in blocks of 256 KiB)."""

    def __init__(self, path: Path, seen: Callable[[int], object]) -> None:
        super().__init__(path, "r")
        self.seen = seen

    def read(self, size: int = -1) -> bytes | None:
        data = super().read(size)
        self.seen(self.tell())
        return data

    def readinto(self, buffer: Any) -> int | None:
        n = super().readinto(buffer)
        self.seen(self.tell())
        return n


def _values(column: Any) -> Sequence[Any]:
    return [None if v is None or (isinstance(v, float) and v != v) else v for v in column.tolist()]
