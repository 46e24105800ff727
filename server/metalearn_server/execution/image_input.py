"""Images to the backbone's input: the input adapter of ``input.kind: "image"`` models.

Encoded files are decoded as the config's preprocessing says
(:mod:`~metalearn_server.execution.preprocessing`, under the request's pixel
budget); preprocessed tensors are checked against the input spec and for
finite values.  The backbone takes one float32 input named by the config.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.model_config import ModelConfig
from metalearn_server.execution.preprocessing import PixelBudget, decode_images
from metalearn_server.requests import Items, Piece

if TYPE_CHECKING:
    from metalearn_server.validation import Limits


class ImageAdapter:
    """Request images (tensor or encoded files) → ``{input_name: float32 [N, *input_shape]}``."""

    kind = "image"
    accepts = ("tensor", "encoded_images")
    description = "images (Items.tensor or Items.encoded_images)"

    def __init__(self, config: ModelConfig) -> None:
        self.config = config

    def check(self, items: Items, what: str, limits: "Limits") -> None:
        """File sizes, and a tensor's dtype and shape against the input spec (its values: at conversion)."""
        for index, image in enumerate(items.encoded_images):
            if len(image) > limits.max_image_bytes:
                raise InvalidArgument(f"{what}.encoded_images[{index}] has {len(image)} bytes, more than the limit "
                                      f"of {limits.max_image_bytes}; send a smaller file")
        tensor, config = items.tensor, self.config
        if tensor is None:
            return
        shape = ", ".join(map(str, config.input_shape))
        if tensor.dtype != np.dtype(config.input_dtype):
            raise InvalidArgument(f"{what}.tensor has dtype {tensor.dtype}, the model takes {config.input_dtype} "
                                  f"of shape [N, {shape}] (see GetModel)")
        if tensor.shape[1:] != config.input_shape:
            raise InvalidArgument(f"{what}.tensor has shape {list(tensor.shape)}, the model takes [N, {shape}] "
                                  "(see GetModel's input and preprocessing)")

    def converter(self, limits: "Limits") -> Callable[[list[Piece]], dict[str, np.ndarray]]:
        """The per-request conversion of a chunk's pieces; every chunk draws on one pixel budget."""
        budget = PixelBudget(limits.max_request_pixels)

        def convert(pieces: list[Piece]) -> dict[str, np.ndarray]:
            batch = [self._array(items, what, first, limits, budget) for items, what, first in pieces]
            return self.feeds(np.concatenate(batch) if len(batch) > 1 else batch[0])
        return convert

    def _array(self, items: Items, what: str, first: int, limits: "Limits", budget: PixelBudget) -> np.ndarray:
        if items.tensor is None:
            return decode_images(items.encoded_images, self.config.preprocessing, what, limits.max_image_pixels,
                                 budget, first)
        if not np.isfinite(items.tensor).all():
            raise InvalidArgument(f"{what}.tensor contains NaN or infinite values; send finite numbers")
        return items.tensor

    def feeds(self, images: np.ndarray) -> dict[str, np.ndarray]:
        return {self.config.input_name: images}

    def synthetic(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Random images as preprocessing makes them (pixels 0-255, normalised as the config says)."""
        pre = self.config.preprocessing
        pixels = rng.integers(0, 256, size=(count, *self.config.input_shape)).astype(np.float32)
        return self.feeds(((pixels / 255.0 - pre.mean) / pre.std).astype(np.float32))
