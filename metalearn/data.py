"""Omniglot at 28×28, as few-shot classes.

A *class* is one character drawn by 20 people.  Following Vinyals et al. (2016)
and Snell et al. (2017), every character rotated by 90°, 180° and 270° counts
as a further class, which quadruples the classes seen in meta-training.

The data set's own README fixes the splits: ``background`` is for training and
validation, ``evaluation`` is held out.  :func:`load_split` never mixes them, and
:func:`split_by_alphabet` takes validation alphabets out of ``background`` so
that model selection never looks at ``evaluation`` either.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Where the data lies, relative to the working directory or one of its parents,
#: unless ``--data`` or ``METALEARN_DATA`` says otherwise: ``shared/`` beside the checkout.
DEFAULT_DATA_SUBDIR = Path("shared") / "data" / "omniglot"

#: Pixel statistics of ``background`` strokes-on-black at [0, 1]; the served
#: model normalises with the same numbers (they travel in its config).
PIXEL_MEAN = 0.0815
PIXEL_STD = 0.2359


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The Omniglot folder: the argument, else ``$METALEARN_DATA``, else the nearest
    ``shared/data/omniglot`` at or above the working directory (``../shared`` from a checkout)."""
    chosen = explicit or os.environ.get("METALEARN_DATA")
    candidates = [Path(chosen)] if chosen else [p / DEFAULT_DATA_SUBDIR for p in (Path.cwd(), *Path.cwd().parents)]
    for path in candidates:
        if (path / "omniglot28_background.npz").is_file():
            return path
    raise FileNotFoundError(
        f"no omniglot28_background.npz in {chosen or 'shared/data/omniglot above ' + str(Path.cwd())}: "
        "pass --data DIR or set METALEARN_DATA (the README says where to get the data)"
    )


@dataclass(frozen=True)
class FewShotImages:
    """Images grouped by class: ``images[c]`` holds every drawing of class ``c``.

    ``images`` is uint8 ``[classes, drawers, 28, 28]``, strokes 255 on 0.
    ``alphabets[c]`` names the alphabet of class ``c`` (rotations keep it).
    """

    images: np.ndarray
    alphabets: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.images.shape[0])

    def with_rotations(self) -> "FewShotImages":
        """Add each class rotated by 90°, 180° and 270° as three new classes."""
        rotated = [np.rot90(self.images, k, axes=(2, 3)) for k in range(4)]
        return FewShotImages(
            images=np.ascontiguousarray(np.concatenate(rotated)),
            alphabets=np.concatenate([self.alphabets] * 4),
        )

    def subset(self, keep: np.ndarray) -> "FewShotImages":
        return FewShotImages(images=self.images[keep], alphabets=self.alphabets[keep])


def load_split(split: str, directory: str | os.PathLike | None = None) -> FewShotImages:
    """Load ``background`` or ``evaluation`` as classes × drawers × 28 × 28."""
    if split not in ("background", "evaluation"):
        raise ValueError(f"split must be 'background' or 'evaluation', not {split!r}")
    with np.load(data_dir(directory) / f"omniglot28_{split}.npz") as npz:
        images, characters, alphabets = npz["images"], npz["characters"], npz["alphabets"]
    # Rows are ordered by character, then drawer: a reshape groups them.
    order = np.argsort(characters, kind="stable")
    images, characters, alphabets = images[order], characters[order], alphabets[order]
    _, counts = np.unique(characters, return_counts=True)
    drawers = int(counts[0])
    if not np.all(counts == drawers):
        raise ValueError(f"{split}: characters have unequal numbers of drawings")
    return FewShotImages(
        images=images.reshape(-1, drawers, *images.shape[1:]),
        alphabets=alphabets[::drawers],
    )


def split_by_alphabet(data: FewShotImages, validation_alphabets: int, seed: int = 0) -> tuple[FewShotImages, FewShotImages]:
    """Hold out whole alphabets for validation, as the Lake split does for testing."""
    names = np.unique(data.alphabets)
    chosen = np.random.default_rng(seed).choice(names, size=validation_alphabets, replace=False)
    is_val = np.isin(data.alphabets, chosen)
    return data.subset(~is_val), data.subset(is_val)


def file_sha256(split: str, directory: str | os.PathLike | None = None) -> str:
    """Checksum of a split's file, recorded in the model card."""
    digest = hashlib.sha256()
    with open(data_dir(directory) / f"omniglot28_{split}.npz", "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 strokes-on-black ``[..., 28, 28]`` to the backbone's normalised float32 ``[..., 1, 28, 28]``."""
    pixels = images.astype(np.float32) / 255.0
    return ((pixels - PIXEL_MEAN) / PIXEL_STD)[..., None, :, :]
