"""Open-set scoring: is a query one of the support classes at all?

A query far from every class prototype is probably none of them.  How far is
far depends on the shots: a prototype averaged from ``n`` drawings sits nearer
its class's centre than one drawing does, so a known query's squared distance
to it shrinks as ``n`` grows (by about ``1 + 1/n`` for independent noise).  One
logistic of the raw distance for every episode shape therefore rejected 4% of
legitimate 1-shot queries and 0.4% of 5-shot ones.  The score divides the
distance ``d`` to the nearest class by that growth first, with ``n`` the
nearest class's own shot count (so unequal shots are scored per class):

    u = d / (1 + shot_scale / n),    known(u) = 1 / (1 + exp((u − midpoint) / width))

``shot_scale``, ``midpoint`` and ``width`` come from the model's config, fitted
on held-out validation episodes of 1 to 10 shots and 5 and 20 ways by
:mod:`metalearn.calibration`, and so is the default threshold: with ``u`` the
known queries' distances look alike at every shot count, so one threshold keeps
the same share of them whatever the episode's shape.  A config without
``shot_scale`` (exported before it existed) scores the raw distance, as it was
fitted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OpenSetCalibration:
    midpoint: float
    width: float
    threshold: float  # the default rejection threshold
    shot_scale: float = 0.0  # 0: the distance is scored as it is, whatever the shots

    def known_score(self, distance: np.ndarray, shots: np.ndarray) -> np.ndarray:
        """Known-scores of queries at squared ``distance`` from their nearest class, which has ``shots``
        support items."""
        normalised = distance / (1.0 + self.shot_scale / np.asarray(shots, np.float64))
        z = np.clip((normalised - self.midpoint) / self.width, -60.0, 60.0)
        return (1.0 / (1.0 + np.exp(z))).astype(np.float32)
