"""Run one existing drift tool on the ``bench/_drift_data.py`` frames and print one JSON line.

Runs inside that tool's own virtualenv (made by ``bench/setup_drift_tools.sh``), not the
project venv: the tools pin numpy/pandas versions the project has moved past::

    .bench-venvs/alibi/bin/python     bench/_drift_tools.py --tool alibi     --rows 50000
    .bench-venvs/evidently/bin/python bench/_drift_tools.py --tool evidently --rows 50000 --repeat 3 --warmup 1

Output (stdout, one line)::

    {"tool", "version", "rows", "fit_s", "detect_s", "total_s", "flagged", "settings", "scores"}

``rows`` is the size of each frame (reference and current alike). Times are medians over
``--repeat`` runs of ``time.perf_counter``, after ``--warmup`` untimed runs (default 1: Evidently
imports much of itself lazily on its first report, which would otherwise land in the first timed
run); data generation is excluded, the conversion of the frames into what the tool takes is
included (a user of the tool has to do it too). Per-run times go to stderr.

* ``alibi``: ``fit_s`` = turning the reference frame into arrays + constructing ``KSDrift`` on
  the 15 numeric columns and ``ChiSquareDrift`` on the 5 categorical ones (integer codes);
  ``detect_s`` = turning the current frame into arrays + ``predict(x, drift_type="feature")``
  on both. Flagged = per-feature ``is_drift == 1``. Note that in alibi-detect 0.13.0 the
  per-feature verdict is ``p < p_val`` with NO multiple-testing correction; the default
  ``correction="bonferroni"`` only applies to the batch-level verdict (``drift_type="batch"``).
* ``evidently``: Evidently has no separate fit, so ``fit_s`` is null and ``detect_s`` covers
  ``Dataset.from_pandas`` of both frames (column types declared, nothing inferred) and
  ``Report([DataDriftPreset()], include_tests=True).run(current, reference)``. The preset is at
  its defaults; ``include_tests=True`` only attaches each column's drift verdict (a test that
  FAILs when the column drifted) to the snapshot, where it is read from. ``snapshot.dict()`` is
  not timed.

``scores`` maps each column to the tool's own statistic: the p-value for alibi, the drift
score (normed Wasserstein distance / Jensen-Shannon distance at these sizes) for Evidently.
Anything the tools print goes to stderr, so stdout carries only the JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _drift_data  # noqa: E402


def _run_alibi(ref: Any, cur: Any) -> tuple[dict[str, Any], float, float]:
    import numpy as np
    import pandas as pd
    from alibi_detect.cd import ChiSquareDrift, KSDrift

    num, cat = _drift_data.NUMERIC, _drift_data.CATEGORICAL

    t0 = time.perf_counter()
    x_ref_num = ref[num].to_numpy(dtype=np.float64)
    ref_cats = {c: sorted(ref[c].unique()) for c in cat}
    x_ref_cat = np.column_stack([pd.Categorical(ref[c], categories=ref_cats[c]).codes.astype(np.int64) for c in cat])
    ks = KSDrift(x_ref_num, p_val=0.05)
    chi = ChiSquareDrift(x_ref_cat, p_val=0.05, categories_per_feature={i: len(ref_cats[c]) for i, c in enumerate(cat)})
    t1 = time.perf_counter()
    x_cur_num = cur[num].to_numpy(dtype=np.float64)
    cols = []
    for c in cat:
        # same codes as the reference; a category the reference never saw gets a new code after them
        seen = set(ref_cats[c])
        categories = ref_cats[c] + sorted(v for v in cur[c].unique() if v not in seen)
        cols.append(pd.Categorical(cur[c], categories=categories).codes.astype(np.int64))
    x_cur_cat = np.column_stack(cols)
    p_num = ks.predict(x_cur_num, drift_type="feature", return_p_val=True, return_distance=True)
    p_cat = chi.predict(x_cur_cat, drift_type="feature", return_p_val=True, return_distance=True)
    t2 = time.perf_counter()

    flags = list(p_num["data"]["is_drift"]) + list(p_cat["data"]["is_drift"])
    pvals = list(p_num["data"]["p_val"]) + list(p_cat["data"]["p_val"])
    result = {
        "flagged": sorted(c for c, f in zip(num + cat, flags, strict=True) if int(f) == 1),
        "scores": {c: float(p) for c, p in zip(num + cat, pvals, strict=True)},
    }
    return result, t1 - t0, t2 - t1


def _run_evidently(ref: Any, cur: Any) -> tuple[dict[str, Any], float | None, float]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    t0 = time.perf_counter()
    definition = DataDefinition(
        numerical_columns=list(_drift_data.NUMERIC), categorical_columns=list(_drift_data.CATEGORICAL)
    )
    ref_ds = Dataset.from_pandas(ref, data_definition=definition)
    cur_ds = Dataset.from_pandas(cur, data_definition=definition)
    snapshot = Report([DataDriftPreset()], include_tests=True).run(cur_ds, ref_ds)
    t1 = time.perf_counter()

    out = snapshot.dict()
    scores: dict[str, float] = {}
    methods: dict[str, str] = {}
    count = None
    for m in out["metrics"]:
        cfg = m["config"]
        if cfg["type"].endswith(":ValueDrift"):
            scores[cfg["column"]] = float(m["value"])
            methods[cfg["column"]] = f"{cfg['method']} >= {cfg['threshold']:g}"
        elif cfg["type"].endswith(":DriftedColumnsCount"):
            count = int(m["value"]["count"])
    flagged = []
    for t in out["tests"]:
        params = t.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith(":ValueDrift") and t["status"] == "FAIL":
            flagged.append(params["column"])
    if count is not None and count != len(flagged):
        print(f"warning: DriftedColumnsCount={count} but {len(flagged)} ValueDrift tests failed", file=sys.stderr)
    if sorted(scores) != sorted(_drift_data.COLUMNS):
        print(f"warning: Evidently scored {sorted(scores)}", file=sys.stderr)
    result = {"flagged": sorted(flagged), "scores": scores, "methods": methods}
    return result, None, t1 - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", choices=["alibi", "evidently"], required=True)
    ap.add_argument("--rows", type=int, required=True, help="rows in each of the reference and current frames")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    args = ap.parse_args(argv)

    real_stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        ref, cur, _shifted = _drift_data.make_frames(args.rows, args.rows, seed=args.seed)
        if args.tool == "alibi":
            import alibi_detect  # noqa: F401  (imports outside the timed region)

            run, dist = _run_alibi, "alibi-detect"
        else:
            import evidently  # noqa: F401

            run, dist = _run_evidently, "evidently"
        fits: list[float] = []
        detects: list[float] = []
        totals: list[float] = []
        results = []
        for _ in range(max(0, args.warmup)):
            run(ref, cur)  # untimed: pays the tools' lazy imports and first-call costs
        for i in range(max(1, args.repeat)):
            res, fit_s, detect_s = run(ref, cur)
            print(f"run {i + 1}: fit_s={fit_s} detect_s={detect_s:.4f}", file=sys.stderr)
            results.append(res)
            detects.append(detect_s)
            if fit_s is not None:
                fits.append(fit_s)
            totals.append((fit_s or 0.0) + detect_s)
        if any(r["flagged"] != results[0]["flagged"] for r in results):
            print("warning: flagged columns differ between repeats", file=sys.stderr)

    if args.tool == "alibi":
        settings = (
            "KSDrift(p_val=0.05, correction='bonferroni' [default], alternative='two-sided') on the 15 numeric "
            "columns + ChiSquareDrift(p_val=0.05, categories_per_feature from reference codes) on the 5 "
            "categorical columns; flagged = predict(drift_type='feature') is_drift == 1, i.e. per-feature "
            "p < 0.05 uncorrected (Bonferroni only applies to drift_type='batch')"
        )
    else:
        per_method = sorted(set(results[0]["methods"].values()))
        settings = (
            "Report([DataDriftPreset()] [defaults, drift_share=0.5], include_tests=True) with "
            "DataDefinition(15 numerical, 5 categorical columns); flagged = ValueDrift tests FAILed; "
            f"methods chosen: {'; '.join(per_method)}"
        )
    settings += f"; median of {max(1, args.repeat)} runs after {max(0, args.warmup)} untimed warm-up, seed {args.seed}"
    record = {
        "tool": args.tool,
        "version": metadata.version(dist),
        "rows": args.rows,
        "fit_s": round(statistics.median(fits), 4) if fits else None,
        "detect_s": round(statistics.median(detects), 4),
        "total_s": round(statistics.median(totals), 4),
        "flagged": results[0]["flagged"],
        "settings": settings,
        "scores": {c: float(f"{v:.4g}") for c, v in results[0]["scores"].items()},
    }
    print(json.dumps(record), file=real_stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
