"""The error-stream detectors: abrupt changes found quickly, stable streams left alone, state that survives."""

from __future__ import annotations

import numpy as np

from feedback.config import DetectorConfig
from feedback.monitoring.detectors import ErrorStreamDetectors


def run(det: ErrorStreamDetectors, errors: np.ndarray) -> list[tuple[str, int]]:
    return [(h.detector, h.label_index) for e in errors for h in det.update(float(e))]


def test_classification_errors_change_found_quickly_and_not_before() -> None:
    """0/1 errors from 20% to 40% after 5,000 labels: ADWIN fires within 300 labels and never before."""
    rng = np.random.default_rng(4)
    errors = np.concatenate([rng.random(5000) < 0.2, rng.random(2000) < 0.4]).astype(float)
    hits = run(ErrorStreamDetectors(DetectorConfig()), errors)
    assert hits and all(i > 5000 for _, i in hits), hits
    assert min(i for d, i in hits if d == "adwin") <= 5300
    assert min(i for d, i in hits if d == "page_hinkley") <= 5300


def test_regression_errors_are_scaled_so_page_hinkley_stays_quiet_on_stable_data() -> None:
    """Absolute errors in the hundreds: no alarm over 10,000 stable labels; a doubling is found at once."""
    rng = np.random.default_rng(5)
    stable = np.abs(rng.normal(0, 300, 10_000))
    worse = np.abs(rng.normal(0, 600, 3000))
    hits = run(ErrorStreamDetectors(DetectorConfig()), np.concatenate([stable, worse]))
    assert hits and all(i > 10_000 for _, i in hits), hits
    assert min(i for d, i in hits if d == "page_hinkley") <= 10_300
    assert min(i for d, i in hits if d == "adwin") <= 10_300
    # river's defaults on the raw errors cry wolf on the same stable stretch
    river_defaults = DetectorConfig(page_hinkley_threshold=50.0, page_hinkley_delta=0.005,
                                    page_hinkley_min_instances=30)
    raw = run(ErrorStreamDetectors(river_defaults, scaled=False), stable)
    assert sum(d == "page_hinkley" for d, _ in raw) >= 3, raw


def test_checkpointed_state_continues_exactly() -> None:
    """Pickled half way and restored, the detectors find what an uninterrupted run finds."""
    rng = np.random.default_rng(6)
    errors = np.concatenate([rng.random(3000) < 0.1, rng.random(3000) < 0.3]).astype(float)
    whole = run(ErrorStreamDetectors(DetectorConfig()), errors)
    first = ErrorStreamDetectors(DetectorConfig())
    hits = run(first, errors[:2500])
    restored = ErrorStreamDetectors.loads(first.dumps(), DetectorConfig())
    hits += run(restored, errors[2500:])
    assert hits == whole and whole
