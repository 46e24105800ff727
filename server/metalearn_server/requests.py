"""What the transport hands to the data plane: requests as plain Python values.

The gRPC servicers translate protobuf messages into these (and results back),
so the data plane and everything below it know nothing of the wire format.
An empty string means "the model's default" wherever a name is optional.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Items:
    """A batch of items: a decoded tensor, encoded image files, or texts (at most one is set)."""

    tensor: np.ndarray | None = None
    encoded_images: tuple[bytes, ...] = ()
    texts: tuple[str, ...] = ()

    @property
    def form(self) -> str:
        """Which field carries the items: ``tensor``, ``encoded_images`` or ``texts`` ("" if none)."""
        if self.tensor is not None:
            return "tensor"
        return "encoded_images" if self.encoded_images else "texts" if self.texts else ""

    @property
    def count(self) -> int:
        if self.tensor is not None:
            return len(self.tensor)
        return len(self.encoded_images) or len(self.texts)

    @property
    def nbytes(self) -> int:
        """The bytes received for these items, which stay in memory until the request is answered."""
        if self.tensor is not None:
            return self.tensor.nbytes
        return sum(map(len, self.encoded_images)) + sum(len(text.encode()) for text in self.texts)

    def part(self, part: slice) -> "Items":
        if self.tensor is not None:
            return Items(self.tensor[part])
        return Items(encoded_images=self.encoded_images[part], texts=self.texts[part])


#: What one step of embedding works on: a slice of one of the request's inputs, its name for errors
#: ("support.items", "queries"), and the index of its first item there.
Piece = tuple[Items, str, int]


@dataclass(frozen=True)
class AdaptationRequest:
    """Fast-adaptation settings as asked; ``None`` takes the model's default."""

    steps: int | None = None
    learning_rate: float | None = None
    l2: float | None = None


@dataclass(frozen=True)
class SupportRequest:
    """The episode settings shared by Classify and CreateTask."""

    model: str
    model_version: str
    items: Items
    labels: tuple[str, ...]
    method: str = ""  # "", "prototype", "finetune" or "transductive"
    distance: str = ""  # "", "euclidean" or "cosine"
    adaptation: AdaptationRequest = field(default_factory=AdaptationRequest)


@dataclass(frozen=True)
class QueryRequest:
    """The query side of Classify, ClassifyTask and StreamClassifyTask."""

    items: Items
    top_k: int = 0
    rejection_threshold: float | None = None  # None: the model's default


@dataclass(frozen=True)
class Classification:
    """Probabilities ``[queries, classes]`` with the classes in support order, and the open-set verdict."""

    model: str
    model_version: str
    classes: tuple[str, ...]
    probabilities: np.ndarray
    known: np.ndarray  # [queries] known-scores
    rejection_threshold: float
    method: str
    distance: str
    top_k: int

    @property
    def unknown(self) -> np.ndarray:
        return self.known < self.rejection_threshold
