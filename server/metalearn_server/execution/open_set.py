"""Open-set scoring: is a query one of the support classes at all?

A query far from every class prototype is probably none of them.  The model's
config carries, per distance, a logistic calibration of the squared distance
``d`` to the nearest class (fitted on held-out validation episodes by
:mod:`metalearn.calibration`):

    known(d) = 1 / (1 + exp((d − midpoint) / width))

a probability a caller can threshold: below the threshold, "unknown".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OpenSetCalibration:
    midpoint: float
    width: float
    threshold: float  # the default rejection threshold

    def known_score(self, distance: np.ndarray) -> np.ndarray:
        z = np.clip((distance - self.midpoint) / self.width, -60.0, 60.0)
        return (1.0 / (1.0 + np.exp(z))).astype(np.float32)
