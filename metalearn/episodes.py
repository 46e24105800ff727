"""N-way K-shot episodes, reproducible from a seed.

An episode draws ``ways`` classes, then ``shots + queries`` distinct drawings
of each; ``shots`` may be a range ``(fewest, most)``, drawn for each class
uniformly, for episodes with unequal shots.  Support and query labels are
``0 … ways-1`` in the order the classes were drawn, so an algorithm never sees
the global class ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from metalearn.data import FewShotImages


@dataclass(frozen=True)
class Episode:
    """One few-shot problem: uint8 images and labels ``0 … ways-1``."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray
    classes: np.ndarray  # the global class index of each way


class EpisodeSampler:
    """Draws episodes from ``data``; the same seed gives the same episodes."""

    def __init__(self, data: FewShotImages, ways: int, shots: int | tuple[int, int], queries: int,
                 seed: int = 0) -> None:
        drawers = data.images.shape[1]
        fewest, most = (shots, shots) if isinstance(shots, int) else shots
        if ways > data.num_classes:
            raise ValueError(f"{ways}-way episodes need {ways} classes, the data has {data.num_classes}")
        if not 1 <= fewest <= most:
            raise ValueError(f"shots {shots}: expected at least 1, and fewest <= most")
        if most + queries > drawers:
            raise ValueError(f"{most} shots + {queries} queries exceed the {drawers} drawings per class")
        self.data, self.ways, self.shots, self.queries = data, ways, shots, queries
        self.fewest, self.most = fewest, most
        self.rng = np.random.default_rng(seed)

    def sample(self) -> Episode:
        return self._draw(self.ways)[0]

    def sample_open_set(self, unknown_ways: int) -> tuple[Episode, np.ndarray]:
        """An episode, and ``queries`` drawings of each of ``unknown_ways`` further classes
        that are not in its support set: queries a classifier should reject as unknown."""
        return self._draw(self.ways + unknown_ways)

    def _draw(self, total_ways: int) -> tuple[Episode, np.ndarray]:
        classes = self.rng.choice(self.data.num_classes, size=total_ways, replace=False)
        drawers = self.data.images.shape[1]
        shots = np.full(self.ways, self.fewest) if self.fewest == self.most else \
            self.rng.integers(self.fewest, self.most + 1, size=self.ways)
        # Outside classes draw as many as the most shots and drop them, so equal-shot episodes are drawn as before.
        shots_drawn = [*shots, *[self.most] * (total_ways - self.ways)]
        picks = [self.rng.choice(drawers, size=n + self.queries, replace=False) for n in shots_drawn]
        images = [self.data.images[c, pick] for c, pick in zip(classes, picks)]  # [shots+queries, 28, 28] each
        known, unknown = images[: self.ways], [drawings[self.most :] for drawings in images[self.ways :]]
        episode = Episode(
            support=np.concatenate([drawings[:n] for drawings, n in zip(known, shots)]),
            support_labels=np.repeat(np.arange(self.ways), shots),
            query=np.concatenate([drawings[n:] for drawings, n in zip(known, shots)]),
            query_labels=np.repeat(np.arange(self.ways), self.queries),
            classes=classes[: self.ways],
        )
        return episode, np.concatenate(unknown) if unknown else self.data.images[:0, 0]

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()
