"""Training-time augmentation: random translations of each drawing.

Two people rarely put a character at the same spot in the 28×28 box, and a
Conv-4 sees only a few thousand drawings per epoch of classes.  Shifting each
training image by up to ``max_shift`` pixels (zero padding, since the
background is 0) teaches the backbone that position is noise.  Rotations are
*not* used here: on Omniglot a rotated character is a different class
(:meth:`metalearn.data.FewShotImages.with_rotations`).
"""
from __future__ import annotations

import numpy as np


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each ``[N, H, W]`` image by its own offset in ``[-max_shift, max_shift]²``."""
    if max_shift <= 0:
        return images
    count, height, width = images.shape
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    offsets = rng.integers(0, 2 * max_shift + 1, size=(count, 2))
    rows = offsets[:, 0, None] + np.arange(height)  # [N, H]
    cols = offsets[:, 1, None] + np.arange(width)  # [N, W]
    return padded[np.arange(count)[:, None, None], rows[:, :, None], cols[:, None, :]]
