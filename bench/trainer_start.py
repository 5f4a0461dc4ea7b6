"""What a training's process costs before the trainer fits anything: `train_with_budget` with the trainer server
(forked from a process that has numpy, pandas and scikit-learn loaded) against a spawned process (a fresh
interpreter that imports them), on a fit that takes milliseconds.

Each mode runs in a process of its own, so that neither finds the other's server or imports: the first training
of the server mode includes starting the server; the rest are what every later training of a worker pays.

Run from the repository root::

    .venv/bin/python bench/trainer_start.py               # 8 trainings a mode
    .venv/bin/python bench/trainer_start.py --trainings 20 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time

from _modes import each_in_its_own_process  # bench/_modes.py, beside this script

MODES = ("server", "spawn")


def _one_mode(mode: str, trainings: int) -> list[float]:
    import numpy as np
    import pandas as pd

    from retrain_worker import trainers

    if mode == "spawn":
        trainers._trainer_context = lambda: multiprocessing.get_context("spawn")  # the path before the server
    X = pd.DataFrame({"x": np.arange(200.0), "c": ["a", "b"] * 100})
    y = pd.Series([0, 1] * 100)
    times = []
    for _ in range(trainings):
        started = time.perf_counter()
        trainers.train_with_budget("retrain_worker.trainers:linear", "classification", X, y, np.ones(len(X)),
                                   budget_s=120)
        times.append(time.perf_counter() - started)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainings", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # the child's side
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps(_one_mode(args.mode, args.trainings)))
        return 0
    report = {}
    for mode, times in each_in_its_own_process(__file__, MODES, "--trainings", str(args.trainings)).items():
        report[mode] = {"first_s": round(times[0], 3), "later_median_s": round(statistics.median(times[1:]), 3),
                        "later_max_s": round(max(times[1:]), 3), "trainings": len(times)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for mode, r in report.items():
            print(f"{mode:6}  first {r['first_s']:.2f} s  later: median {r['later_median_s']:.3f} s, "
                  f"max {r['later_max_s']:.3f} s  ({r['trainings']} trainings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
