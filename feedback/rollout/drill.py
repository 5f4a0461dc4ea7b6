"""The rollback drill's deliberately bad challenger: a model that fails every request, registered like any other
version so that routers load it from the registry (digest checked) and serve it to their first ramp step."""

from __future__ import annotations

from typing import Any

import numpy as np


class FailingModel:
    """Raises on every prediction: the drill checks that the controller rolls it back and every router switches.

    >>> FailingModel().predict(np.zeros((1, 2)))
    Traceback (most recent call last):
    ...
    RuntimeError: pitstop drill: this model fails every request on purpose
    """

    def predict(self, X: Any) -> np.ndarray:
        msg = "pitstop drill: this model fails every request on purpose"
        raise RuntimeError(msg)

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.predict(X)

    def __repr__(self) -> str:
        return "FailingModel()"
