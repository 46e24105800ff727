"""N-way K-shot episodes, reproducible from a seed.

An episode draws ``ways`` classes, then ``shots + queries`` distinct drawings
of each.  Support and query labels are ``0 … ways-1`` in the order the classes
were drawn, so an algorithm never sees the global class ids.
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

    def __init__(self, data: FewShotImages, ways: int, shots: int, queries: int, seed: int = 0) -> None:
        drawers = data.images.shape[1]
        if ways > data.num_classes:
            raise ValueError(f"{ways}-way episodes need {ways} classes, the data has {data.num_classes}")
        if shots + queries > drawers:
            raise ValueError(f"{shots} shots + {queries} queries exceed the {drawers} drawings per class")
        self.data, self.ways, self.shots, self.queries = data, ways, shots, queries
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
        picks = np.stack([self.rng.choice(drawers, size=self.shots + self.queries, replace=False) for _ in classes])
        images = self.data.images[classes[:, None], picks]  # [total_ways, shots+queries, 28, 28]
        known, unknown = images[: self.ways], images[self.ways :, self.shots :]
        labels = np.repeat(np.arange(self.ways)[:, None], picks.shape[1], axis=1)
        episode = Episode(
            support=known[:, : self.shots].reshape(-1, *images.shape[2:]),
            support_labels=labels[:, : self.shots].reshape(-1),
            query=known[:, self.shots :].reshape(-1, *images.shape[2:]),
            query_labels=labels[:, self.shots :].reshape(-1),
            classes=classes[: self.ways],
        )
        return episode, unknown.reshape(-1, *images.shape[2:])

    def __iter__(self) -> Iterator[Episode]:
        while True:
            yield self.sample()
