"""Early warning on a model version's per-event error stream: river's ADWIN and Page-Hinkley.

Errors arrive in label arrival order (a late label is an error known late). Classification
errors are 0/1, regression errors absolute. Both are divided by the standard deviation of the
version's first ``SCALE_SAMPLES`` errors, so Page-Hinkley's delta and threshold are in standard
deviations whatever the unit or the error rate: with river's defaults (delta 0.005, threshold
50) on raw regression errors it fires every 1-2k labels on stable stretches, and on 0/1
errors it cannot see a rise from 20% to 40% for thousands of labels.
"""

from __future__ import annotations

import pickle
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from river import drift

from feedback.config import DetectorConfig

SCALE_SAMPLES = 200
#: the layout of :meth:`ErrorStreamDetectors.dumps`; state of another layout is rebuilt from the store
STATE_VERSION = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Detection:
    """A detector fired on the ``label_index``-th error; ``change_index`` is where it puts the change."""

    detector: str
    label_index: int
    change_index: int | None
    mean_before: float | None
    mean_after: float | None


class ErrorStreamDetectors:
    """ADWIN and Page-Hinkley over one version's error stream, with state that pickles.

    >>> import random
    >>> rng = random.Random(1)
    >>> d = ErrorStreamDetectors(DetectorConfig())
    >>> hits = [h for i in range(4000) for h in d.update(float(rng.random() < (0.1 if i < 2000 else 0.5)))]
    >>> sorted({h.detector for h in hits}), 2000 < hits[0].label_index < 2100
    (['adwin', 'page_hinkley'], True)
    """

    def __init__(self, config: DetectorConfig, *, scaled: bool = True) -> None:
        self.config = config
        self.scaled = scaled
        self._reset()

    def _reset(self) -> None:
        self.n = 0
        self.scale: float | None = None if self.scaled else 1.0
        self._warmup: list[float] = []
        self.adwin = _drift().ADWIN(delta=self.config.adwin_delta)
        self.page_hinkley = self._new_page_hinkley()
        self._ph_sum = 0.0
        self._ph_count = 0

    def _new_page_hinkley(self) -> drift.PageHinkley:
        c = self.config
        return _drift().PageHinkley(
            min_instances=c.page_hinkley_min_instances,
            delta=c.page_hinkley_delta,
            threshold=c.page_hinkley_threshold,
            alpha=c.page_hinkley_alpha,
            mode="up",  # errors rising is the warning; errors falling is not
        )

    def update(self, error: float) -> list[Detection]:
        """Feed one error; returns the detections it caused."""
        self.n += 1
        if self.scale is None:
            # the scale is learnt from the first errors; they are fed once it is known
            self._warmup.append(error)
            if len(self._warmup) < SCALE_SAMPLES:
                return []
            mean = sum(self._warmup) / len(self._warmup)
            sd = (sum((e - mean) ** 2 for e in self._warmup) / (len(self._warmup) - 1)) ** 0.5
            self.scale = sd if sd > 0 else 1.0
            pending, self._warmup = self._warmup, []
            first = self.n - len(pending) + 1
            return [d for i, e in enumerate(pending) for d in self._feed(e / self.scale, first + i)]
        return self._feed(error / self.scale, self.n)

    def _feed(self, x: float, index: int) -> list[Detection]:
        found = []
        before = self.adwin.estimation
        width_before = self.adwin.width
        self.adwin.update(x)
        if self.adwin.drift_detected:
            kept = int(self.adwin.width)
            found.append(Detection(
                detector="adwin", label_index=index, change_index=index - kept + 1,
                mean_before=float(before) if width_before else None, mean_after=float(self.adwin.estimation),
            ))
        ph_before = self._ph_sum / self._ph_count if self._ph_count else None
        self.page_hinkley.update(x)
        self._ph_sum += x
        self._ph_count += 1
        if self.page_hinkley.drift_detected:
            found.append(Detection(
                detector="page_hinkley", label_index=index, change_index=None, mean_before=ph_before,
                mean_after=None,
            ))
            # river resets Page-Hinkley itself after a detection; so does the running mean
            self._ph_sum, self._ph_count = 0.0, 0
        return found

    def dumps(self) -> bytes:
        """The learnt state, to checkpoint with the batch that produced it.

        The configuration is not in it: it is stored beside the state (:func:`config_document`), so a
        changed ``pitstop.toml`` is noticed and the state rebuilt under the new parameters.
        """
        state = {
            "state_version": STATE_VERSION, "n": self.n, "scale": self.scale, "warmup": self._warmup,
            "adwin": self.adwin, "page_hinkley": self.page_hinkley, "ph_sum": self._ph_sum, "ph_count": self._ph_count,
        }
        return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def loads(cls, state: bytes, config: DetectorConfig) -> ErrorStreamDetectors:
        """Detectors with ``config`` continuing from ``state``; raises when the state cannot be read.

        Only state this process family wrote into its own table (detector_state) is ever read.
        """
        doc = pickle.loads(state)  # noqa: S301
        if not isinstance(doc, dict) or doc.get("state_version") != STATE_VERSION:
            msg = f"detector state is not version {STATE_VERSION} of ErrorStreamDetectors' state"
            raise TypeError(msg)
        river = _drift()
        if not isinstance(doc["adwin"], river.ADWIN) or not isinstance(doc["page_hinkley"], river.PageHinkley):
            msg = "detector state does not hold river's ADWIN and PageHinkley"
            raise TypeError(msg)
        detectors = cls(config, scaled=True)
        detectors.n, detectors.scale, detectors._warmup = int(doc["n"]), doc["scale"], list(doc["warmup"])
        detectors.adwin, detectors.page_hinkley = doc["adwin"], doc["page_hinkley"]
        detectors._ph_sum, detectors._ph_count = float(doc["ph_sum"]), int(doc["ph_count"])
        return detectors


def config_document(config: DetectorConfig) -> dict[str, Any]:
    """What a stored state was built with: compared with the current config before the state is used.

    >>> config_document(DetectorConfig())["adwin_delta"]
    0.002
    """
    return {"state_version": STATE_VERSION, **asdict(config)}


def _drift() -> Any:
    """river's drift detectors, imported when first used: `river.drift` imports river's datasets, and with them
    scikit-learn and pandas (about 0.9 s at every worker's start, most of which never count a label)."""
    from river import drift

    return drift
