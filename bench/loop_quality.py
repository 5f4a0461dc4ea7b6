"""Retraining strategies on drifting streams: does a strategy keep a model good when the data drift?

What it measures: for each stream (river's synthetic generators, 40,000 samples, known drift points) and each
strategy, the prequential quality of the deployed model's predictions under a label delay D (``--delay``,
default 500): at step t the labels of samples 0..t-D are known and the model deployed at t predicts x_t. The
protocol, the streams and the baseline figures are those of ``/work/shared/LOOP-ANCHORS.md`` (measured with
river 0.26.1 and scikit-learn 1.9.1 before Pitstop had a retrain path); the code is in
``bench/_loop_streams.py``.

* Streams. S1 SEA 0 -> 3 at 20,000 (abrupt). S2 Agrawal 0 -> 2 at 15,000 -> 0 at 30,000 (abrupt, recurring).
  S3 Hyperplane with 5 of 10 features rotating (drift everywhere: no drift point, no stable stretch). S4
  STAGGER 0 -> 2 at 20,000 (abrupt). S5 FriedmanDrift "gra" (regression; abrupt at 14,000, the first concept
  returns at 28,000). S6 FriedmanDrift "gsg" (regression; gradual, transitions 14,000-15,000 and
  28,000-29,000). S7 RandomRBF with 4 classes (10 centroids, 8 features; ``seed_model`` 7 -> 8 at 20,000:
  abrupt, the centroids and so the features and every class's region change; the first model falls from about
  97% to 22%, a model on the 1,000 labels after the drift reaches about 94%): a multiclass stream, monitored
  without ``positive_class`` (accuracy, macro F1, log loss of the class probabilities), and not in the anchors.
  S8 SEA 0 -> 3 at 12,000 -> 0 at 28,000 (abrupt, recurring: the old concept returns just as the refit
  ladder's last rung, 16,000 labels after the first change, trains on the leaving one). S9 Agrawal 0 -> 2,
  gradual: river's sigmoid of width 10,000 centred on 22,000, counted from 17,000 (12% of the samples from the
  new concept) to 27,000 (88%); no feature drift under either. S8 and S9 are not in the anchors.
  ``path/to/file.py:callable`` adds a stream of your own (see ``load_stream``).
* Strategies. Every batch strategy starts from one model, ``HistGradientBoosting{Classifier,Regressor}
  (max_iter=100, early_stopping=False, random_state=0)`` fitted on the first 5,000 labels and deployed at
  t0 = 5,000 + D - 1, when the 5,000th label is known. (a) never retrain. (b) calendar: refit on all labels
  known every 5,000 labels (at 10,000, 15,000, ... labels). (c) the same with recency weights
  ``0.5 ** (age / 3000)``, age in labelled samples (the newest label has age 0). (d) Pitstop's retrain loop,
  ``bench/_pitstop_loop.py:run_pitstop`` (imported only when asked for; skipped with a message while that
  module does not exist). (e) river ``ARFClassifier(seed=1)`` / ``ARFRegressor(seed=1)`` online, test then
  train: at step t it predicts x_t, then learns sample t-D. (f) oracle: one refit on the first 1,000 labels
  after each true drift's end (the drift point for abrupt drifts), deployed when the 1,000th is known; not
  defined for S3. A deployed batch model predicts its whole block of steps at once. (d1) is (d) without the
  refit ladder's later rungs. (ds) and (dsf) are (d) with ``promotion = "shadow"``: each candidate goes
  through the shadow gate, the ramp (5, 10, 25, 50, 100% of the users by the router's hash) and the hold, in
  event time (``bench/_pitstop_loop.py:run_pitstop_staged``); (ds) with Pitstop's rollout defaults, (dsf)
  with a shadow of 6 h, dwells of 1 h and a hold of 6 h (the stream's 250 samples an event-hour make the
  defaults 26,500 samples).
* Figures, every strategy scored on every step t >= t0: whole-stream accuracy % (MAE for regression); the same over
  the 5,000 steps from each drift point; over the last 10,000 steps; the number of retrains (new models deployed
  after the initial one); for each drift point, the labels after the drift that the first retrain decision after it
  had (t_trigger - D - p + 1, counting decisions whose labelled data reach the drift, before the next drift point;
  "-" if none); false triggers, decisions on stable stretches (before the first drift point, or from 5,000 steps
  after a drift's end to the next drift point; "-" for S3); and the strategy's wall time. Each drift's "error rise
  significant at" (``significant_rise``: a model of the concept before errs significantly more, one-sided Welch
  t-test p < 0.01, on the 1,000 samples before t than on the 1,000 before the drift point) and, for Pitstop, the
  labels from it to the detection. For Pitstop's strategies also the figure from each drift point to the next one
  (or the end), and for the staged ones what the rollout did: candidates, how their shadows ended (passed, failed,
  expired, superseded by a newer candidate), how their ramps ended (promoted, rolled back, champion kept, abandoned,
  still open), and the samples from each candidate to its ramp's start and to 100%. Beside each baseline's
  whole-stream figure, the anchor's figure and the difference (only with the anchors' protocol: 40,000 samples, D =
  500).
* The plot (``--plot``, default bench/loop_quality.png; needs matplotlib): rolling mean error over 1,000
  steps (error rate, or absolute error) per strategy, one panel per stream, dashed lines at drift points and
  grey bands over gradual transitions.

Progress goes to stderr, the tables to stdout. ARF is the slow part (minutes per stream on 40,000 rows).

Run from the repository root::

    .venv/bin/python bench/loop_quality.py                                # S1..S9, all but ds, dsf
    .venv/bin/python bench/loop_quality.py --strategies a,b,c,e,f         # the baselines: check the anchors
    .venv/bin/python bench/loop_quality.py S2 S5 --strategies a,c,d --delay 2000
    .venv/bin/python bench/loop_quality.py --strategies d,ds,dsf --no-plot   # direct against staged promotion
    .venv/bin/python bench/loop_quality.py --stream my_streams.py:make --json /tmp/loop.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._loop_streams import (  # noqa: E402
    BASELINES,
    PROTOCOL,
    STREAMS,
    StrategyRun,
    Stream,
    _figure,
    errors,
    load_stream,
    plot_errors,
    run_baseline,
    score,
    significant_rise,
)

STRATEGIES = ("a", "b", "c", "d", "e", "f", "d1", "ds", "dsf")
DEFAULT_STRATEGIES = ("a", "b", "c", "d", "e", "f", "d1")
#: strategy d1: Pitstop's loop with the refit ladder's later rungs off (measures what the ladder buys)
NO_LADDER = "[models.loop.triggers]\nrefit_ladder = [1]\n"
#: the staged strategies: (d) with promotion = "shadow", candidates through the shadow gate and the ramp
STAGED = ("ds", "dsf")
PITSTOP = ("d", "d1", *STAGED)
LABELS = {**BASELINES, "ds": "(ds) Pitstop staged, default rollout", "dsf": "(dsf) Pitstop staged, fast rollout"}
DEFAULT_PLOT = ROOT / "bench" / "loop_quality.png"

# LOOP-ANCHORS.md, "Results": whole-stream accuracy % (MAE for S5, S6), 40,000 samples, D = 500.
# (d) there is ADWIN + an immediate recency-weighted refit, (g) ADWIN + a refit on the 1,000 labels after the
# detection: measured strategies that are not run here, shown under the tables for reference.
ANCHORS: dict[str, dict[str, float | None]] = {
    "S1": {"a": 92.19, "b": 92.57, "c": 96.75, "d": 92.14, "g": 97.97, "e": 98.58, "f": 97.87},
    "S2": {"a": 76.85, "b": 74.45, "c": 80.63, "d": 62.22, "g": 95.39, "e": 92.10, "f": 95.51},
    "S3": {"a": 74.43, "b": 81.47, "c": 83.93, "d": 82.42, "g": 82.82, "e": 82.00, "f": None},
    "S4": {"a": 54.77, "b": 54.77, "c": 87.52, "d": 54.77, "g": 96.48, "e": 98.80, "f": 96.57},
    "S5": {"a": 2.265, "b": 2.323, "c": 2.106, "d": 3.269, "g": 1.363, "e": 2.011, "f": 1.367},
    "S6": {"a": 3.129, "b": 2.629, "c": 2.046, "d": 2.930, "g": 2.039, "e": 2.052, "f": 1.432},
}
ANCHOR_DELAY = 500
ANCHOR_SAMPLES = 40_000


def _log(text: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {text}", file=sys.stderr, flush=True)


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(p.strip() for p in v.split(",") if p.strip())
    return out


def _run_pitstop(stream: Stream, delay: int, database_url: str | None, extra_toml: str) -> StrategyRun:
    if importlib.util.find_spec("bench._pitstop_loop") is None:
        msg = "bench/_pitstop_loop.py (run_pitstop) does not exist yet"
        raise ModuleNotFoundError(msg)
    from bench._pitstop_loop import run_pitstop

    return run_pitstop(stream, delay=delay, database_url=database_url, extra_toml=extra_toml)


def _run_staged(stream: Stream, strategy: str, delay: int, database_url: str | None, extra_toml: str) -> StrategyRun:
    from bench._pitstop_loop import run_pitstop_staged

    run = run_pitstop_staged(stream, delay=delay, database_url=database_url, extra_toml=extra_toml, name=strategy)
    run.label = LABELS[strategy]
    return run


def run_strategy(stream: Stream, strategy: str, delay: int, database_url: str | None,
                 extra_toml: str = "") -> StrategyRun:
    if strategy in STAGED:
        return _run_staged(stream, strategy, delay, database_url, extra_toml)
    if strategy == "d":
        return _run_pitstop(stream, delay, database_url, extra_toml)
    if strategy == "d1":
        run = _run_pitstop(stream, delay, database_url, NO_LADDER + extra_toml)
        run.name, run.label = "d1", LABELS["d1"]
        return run
    return run_baseline(stream, strategy, delay=delay)


def _fmt(value: float | None, task: str) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if task == "classification" else f"{value:.3f}"


def _anchor(stream: Stream, strategy: str, delay: int) -> float | None:
    if delay != ANCHOR_DELAY or len(stream.samples) != ANCHOR_SAMPLES:
        return None
    return ANCHORS.get(stream.name, {}).get(strategy)


def _diff(value: float | None, anchor: float | None, task: str) -> str:
    if value is None or anchor is None:
        return ""
    if task == "classification":
        return f"{round(value - anchor, 2) + 0.0:+.2f}"
    return f"{round(100 * (value - anchor) / anchor, 1) + 0.0:+.1f}%"


def after_significance(stream: Stream, s: dict[str, Any], rise: list[int | None]) -> list[int | None] | None:
    """Per drift point, the labels from the point where the error rise became significant
    (``significant_rise``) to the strategy's detection (or its trigger, when it reports no detection);
    negative: before it. None where either is missing."""
    found = s.get("labels_to_detection") or s.get("labels_to_trigger")
    if not found or not rise:
        return None
    return [None if n is None or r is None else p + n - 1 - r
            for p, n, r in zip(stream.drift_points, found, rise, strict=True)]


def print_stream(stream: Stream, rows: list[dict[str, Any]], delay: int, rise: list[int | None] = ()) -> None:
    task = stream.task
    metric = "accuracy %" if task == "classification" else "MAE"
    if stream.drifts_everywhere:
        drifts = "drift everywhere"
    elif not stream.drift_points:
        drifts = "no drift"
    else:
        drifts = "drifts at " + ", ".join(
            f"{p:,}" if p == e else f"{p:,}-{e:,}" for p, e in zip(stream.drift_points, stream.drift_ends, strict=True)
        )
    significant = ("; error rise significant at " + ", ".join("-" if r is None else f"{r:,}" for r in rise)
                   if rise else "")
    print(f"\n{stream.name} ({task}, {len(stream.samples):,} samples, {drifts}{significant}; {metric} over t >= "
          f"{PROTOCOL.t0(delay):,}, delay {delay})")
    after_head = " / ".join(f"@{p:,}" for p in stream.drift_points) or "-"
    header = ["strategy", "whole", f"after drift {after_head}", "last 10k", "retrains",
              "labels to (detection ->) trigger",
              "false trig", "seconds", "anchor", "diff"]
    table = [header]
    for row in rows:
        if "error" in row:
            table.append([row["label"], row["error"]])
            continue
        s = row["score"]
        after = " / ".join(_fmt(v, task) for v in s["after_drift"]) or "-"
        ltt = " / ".join("-" if v is None else f"{v:,}" for v in s["labels_to_trigger"]) or "-"
        if s.get("labels_to_detection") is not None:  # detected (decision recorded) -> fired
            ltt = " / ".join(f"{'-' if d is None else f'{d:,}'} -> {'-' if t is None else f'{t:,}'}"
                             for d, t in zip(s["labels_to_detection"], s["labels_to_trigger"], strict=True)) or "-"
            if s.get("detection_after_significance"):
                ltt += " (" + " / ".join("-" if v is None else f"{v:+,}" for v in s["detection_after_significance"]
                                         ) + " after significance)"
        false = "-" if s["false_triggers"] is None else str(s["false_triggers"])
        table.append([row["label"], _fmt(s["whole"], task), after, _fmt(s["last"], task), str(s["retrains"]), ltt,
                      false, f"{s['seconds']:.1f}", _fmt(row["anchor"], task) if row["anchor"] is not None else "",
                      _diff(s["whole"], row["anchor"], task)])
    _print_table(table)
    anchors = ANCHORS.get(stream.name) if _anchor(stream, "a", delay) is not None else None
    if anchors:
        print(f"  anchors of ADWIN strategies (not run here): (d) refit at trigger {_fmt(anchors['d'], task)}, "
              f"(g) wait, refit on new {_fmt(anchors['g'], task)}")


def _print_table(table: list[list[str]]) -> None:
    """Aligned columns; a row of two cells (label, message) is a note that spans the row."""
    full = [r for r in table if len(r) == len(table[0])]
    widths = [max(len(r[i]) for r in full) for i in range(len(table[0]))]
    widths[0] = max(widths[0], *(len(r[0]) for r in table))
    for k, row in enumerate(table):
        if len(row) != len(table[0]):
            print(f"  {row[0].ljust(widths[0])}  {row[1]}")
            continue
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        print("  " + "  ".join(cells).rstrip())
        if k == 0:
            print("  " + "  ".join("-" * w for w in widths))


def episode_figures(stream: Stream, run: StrategyRun, delay: int) -> list[float | None]:
    """Accuracy % (MAE) from each drift point to the next one (or the stream's end): a drift's whole episode."""
    errs = errors(stream, run)
    n, t0 = len(stream.samples), PROTOCOL.t0(delay)
    points = list(stream.drift_points)
    return [_figure(stream.task, errs[max(p, t0) : points[k + 1] if k + 1 < len(points) else n])
            for k, p in enumerate(points)]


def rollout_summary(notes: dict[str, Any]) -> dict[str, Any]:
    """A staged run's rollout in figures: candidates, how their shadows and ramps ended, the samples each took."""
    rollout = notes["rollout"]
    counts = rollout["counts"]
    return {
        "candidates": counts["candidates"],
        "shadows": {k: counts.get(f"shadows_{k}", 0) for k in ("passed", "failed", "expired", "superseded", "open")},
        "rollouts": {k: counts.get(f"rollouts_{k}", 0) for k in ("promoted", "rolled_back", "kept_champion",
                                                                "abandoned", "superseded", "ramping", "holding",
                                                                "paused")},
        "candidate_to_ramp": [r["samples"] for r in rollout["candidate_to_ramp"]],
        "candidate_to_full": [r["samples"] for r in rollout["to_full"]],
        "shadow_failures": [s["sentence"] for s in rollout["shadows"] if s["status"] == "failed"],
        "ramp_endings": [r["sentence"] for r in rollout["rollouts"] if r["state"] in ("rolled_back", "kept_champion",
                                                                                     "abandoned", "superseded")],
        "errors": len(rollout["errors"]),
    }


def print_rollouts(stream: Stream, rows: list[dict[str, Any]]) -> None:
    """The direct loop against the staged ones: after each drift, and what the rollout did."""
    rows = [r for r in rows if r["strategy"] in PITSTOP and "score" in r]
    if not any(r["strategy"] in STAGED for r in rows):
        return
    task = stream.task
    print(f"\n  {stream.name}: direct promotion against the staged rollout (shadow, ramp, hold)")
    header = ["strategy", "after drift 5k", "drift to next", "candidates", "shadow pass/fail/expired/superseded",
              "ramps promoted/rolled back/kept/abandoned/superseded/open", "candidate -> ramp", "candidate -> 100%",
              "errors"]
    table = [header]
    for row in rows:
        s = row["score"]
        after = " / ".join(_fmt(v, task) for v in s["after_drift"]) or "-"
        episode = " / ".join(_fmt(v, task) for v in s["after_drift_episode"]) or "-"
        if row["strategy"] not in STAGED:
            table.append([row["label"], after, episode, str(s["retrains"]), "-", "-", "-", "-", "-"])
            continue
        r = row["rollout"]
        sh, ro = r["shadows"], r["rollouts"]
        table.append([row["label"], after, episode, str(r["candidates"]),
                      f"{sh['passed']}/{sh['failed']}/{sh['expired']}/{sh['superseded']}",
                      f"{ro['promoted']}/{ro['rolled_back']}/{ro['kept_champion']}/{ro['abandoned']}/"
                      f"{ro['superseded']}/{ro['ramping'] + ro['holding'] + ro['paused']}",
                      ", ".join(f"{v:,}" for v in r["candidate_to_ramp"]) or "-",
                      ", ".join(f"{v:,}" for v in r["candidate_to_full"]) or "-", str(r["errors"])])
    _print_table(table)
    for row in rows:
        if row["strategy"] in STAGED:
            for sentence in dict.fromkeys(row["rollout"]["shadow_failures"] + row["rollout"]["ramp_endings"]):
                print(f"    {row['strategy']}: {sentence[:200]}")


def print_summary(results: list[tuple[Stream, list[dict[str, Any]]]], strategies: list[str], delay: int) -> None:
    print(f"\nwhole-stream accuracy % (MAE for regression), delay {delay}; [anchor]; seconds")
    header = ["stream"] + [LABELS[s] for s in strategies]
    table = [header]
    for stream, rows in results:
        by = {r["strategy"]: r for r in rows}
        line = [stream.name + (" (MAE)" if stream.task == "regression" else "")]
        for s in strategies:
            r = by.get(s)
            if r is None or "error" in r:
                line.append("-")
                continue
            anchor = f" [{_fmt(r['anchor'], stream.task)}]" if r["anchor"] is not None else ""
            line.append(f"{_fmt(r['score']['whole'], stream.task)}{anchor}; {r['score']['seconds']:.0f} s")
        table.append(line)
    _print_table(table)
    pitstop = [s for s in strategies if s in PITSTOP]
    if not any(s in STAGED for s in pitstop):
        return
    print(f"\nafter each drift: the 5,000 steps from it | from it to the next drift (or the end); delay {delay}")
    table = [["stream"] + [LABELS[s] for s in pitstop]]
    for stream, rows in results:
        by = {r["strategy"]: r for r in rows}
        line = [stream.name + (" (MAE)" if stream.task == "regression" else "")]
        for s in pitstop:
            r = by.get(s)
            if r is None or "error" in r or not r["score"]["after_drift"]:
                line.append("-")
                continue
            line.append(" / ".join(_fmt(v, stream.task) for v in r["score"]["after_drift"]) + " | "
                        + " / ".join(_fmt(v, stream.task) for v in r["score"]["after_drift_episode"]))
        table.append(line)
    _print_table(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("streams", nargs="*", help="S1..S9 or path/to/file.py:callable (comma lists allowed)")
    parser.add_argument("--stream", action="append", help="the same as the positional streams; repeatable")
    parser.add_argument("--delay", type=int, default=500, help="label delay D in samples")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help="comma list of a..f, d1 (d, no ladder), ds, dsf (d, staged rollout; not run by default)")
    parser.add_argument("--samples", type=int, default=40_000, help="samples per stream")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="error-over-time plot (PNG)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument("--database-url", default=os.environ.get("PITSTOP_DATABASE_URL"),
                        help="passed to strategy (d); default $PITSTOP_DATABASE_URL")
    parser.add_argument("--pitstop-toml", type=Path,
                        help="pitstop.toml settings added to strategy (d)'s model 'loop' (e.g. [models.loop.triggers])")
    args = parser.parse_args(argv)

    specs = _split(args.streams) + _split(args.stream) or list(STREAMS)
    strategies = _split([args.strategies])
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        parser.error(f"--strategies: unknown {unknown}; choose from {','.join(STRATEGIES)}")
    if args.delay < 1:
        parser.error("--delay must be at least 1")
    if args.samples < PROTOCOL.t0(args.delay) + 1:
        parser.error(f"--samples must exceed the first deployment, {PROTOCOL.t0(args.delay):,}")

    extra_toml = args.pitstop_toml.read_text() if args.pitstop_toml else ""
    started = time.perf_counter()
    results: list[tuple[Stream, list[dict[str, Any]]]] = []
    runs_for_plot: list[tuple[Stream, list[StrategyRun]]] = []
    rises: dict[str, list[int | None]] = {}
    for spec in specs:
        t = time.perf_counter()
        stream = load_stream(spec, args.samples)
        _log(f"{stream.name}: {len(stream.samples):,} samples ({stream.task}) in {time.perf_counter() - t:.1f} s")
        rise = significant_rise(stream) if not stream.drifts_everywhere else []
        rises[stream.name] = rise
        rows: list[dict[str, Any]] = []
        runs: list[StrategyRun] = []
        for strategy in strategies:
            label = LABELS[strategy]
            if strategy == "f" and stream.drifts_everywhere:
                _log(f"{stream.name} {label}: not defined (drift everywhere)")
                rows.append({"strategy": "f", "label": label, "error": "- (not defined: drift everywhere)",
                             "anchor": None})
                continue
            _log(f"{stream.name} {label} ...")
            try:
                run = run_strategy(stream, strategy, args.delay, args.database_url, extra_toml)
            except Exception as exc:  # one failing strategy must not stop the others
                message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                _log(f"{stream.name} {label}: failed: {message}")
                rows.append({"strategy": strategy, "label": label, "error": f"failed: {message}", "anchor": None})
                continue
            s = score(stream, run, delay=args.delay)
            s["after_drift_episode"] = episode_figures(stream, run, args.delay)
            s["detection_after_significance"] = after_significance(stream, s, rise)
            anchor = _anchor(stream, strategy, args.delay) if strategy not in PITSTOP else None
            rows.append({"strategy": strategy, "label": run.label, "score": s, "anchor": anchor,
                         "notes": run.notes})
            if strategy in STAGED:
                rows[-1]["rollout"] = rollout_summary(run.notes)
            runs.append(run)
            _log(f"{stream.name} {run.label}: whole {_fmt(s['whole'], stream.task)}, {len(run.deployed_at)} "
                 f"retrains, {run.seconds:.1f} s")
        print_stream(stream, rows, args.delay, rise)
        print_rollouts(stream, rows)
        sys.stdout.flush()
        results.append((stream, rows))
        runs_for_plot.append((stream, runs))

    wall = time.perf_counter() - started
    print_summary(results, strategies, args.delay)
    import river
    import sklearn

    info = {
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "river": river.__version__,
        "sklearn": sklearn.__version__,
        "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "wall_s": wall,
    }
    load = ", ".join(f"{v:.1f}" for v in info["loadavg"]) if info["loadavg"] else "?"
    print(f"\nmachine: {info['nproc']} cpu, Python {info['python']}, river {info['river']}, scikit-learn "
          f"{info['sklearn']}, load average {load}; {info['date']}; whole run {wall:.0f} s")

    if args.json:
        payload = {
            "machine": info,
            "protocol": {"delay": args.delay, "samples": args.samples, "initial": PROTOCOL.initial,
                         "t0": PROTOCOL.t0(args.delay), "calendar_every": PROTOCOL.calendar_every,
                         "half_life": PROTOCOL.half_life, "oracle_labels": PROTOCOL.oracle_labels,
                         "after_drift": PROTOCOL.after_drift, "last": PROTOCOL.last,
                         "stable_gap": PROTOCOL.stable_gap},
            "streams": [
                {"name": s.name, "task": s.task, "samples": len(s.samples), "drift_points": list(s.drift_points),
                 "drift_ends": list(s.drift_ends), "drifts_everywhere": s.drifts_everywhere,
                 "significant_rise": rises.get(s.name),
                 "anchors": ANCHORS.get(s.name) if _anchor(s, "a", args.delay) is not None else None,
                 "strategies": rows}
                for s, rows in results
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        _log(f"json: {args.json}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            print("plot skipped: matplotlib is not installed (pip install 'matplotlib>=3.8,<4')", file=sys.stderr)
        else:
            try:
                plot_errors([(s, r) for s, r in runs_for_plot if r], args.plot, delay=args.delay)
            except Exception as exc:  # the tables and the JSON are already out
                _log(f"plot failed: {type(exc).__name__}: {exc}".splitlines()[0])
            else:
                _log(f"plot: {args.plot}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
