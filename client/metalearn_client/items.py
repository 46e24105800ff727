"""Building ``Items`` from what a caller has: NumPy arrays, image files or image bytes, or texts."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
from metalearn.v1 import tensor_pb2

#: An image file's path or its bytes.
ImageSource = Union[str, os.PathLike, bytes]


class Texts(tuple):
    """Items that are texts, for a text model: ``Texts(["how do I reset my password", ...])``.

    A plain sequence of strings means image paths, so texts say what they are."""

    def __new__(cls, texts: Sequence[str]) -> "Texts":
        if isinstance(texts, str):
            raise TypeError("Texts takes a sequence of strings, one per item, not a single string")
        return super().__new__(cls, texts)


#: What the API accepts as a batch of items.
ItemsLike = Union[np.ndarray, Texts, Sequence[ImageSource]]

_DTYPES = {
    np.dtype("float32"): tensor_pb2.DATA_TYPE_FLOAT32,
    np.dtype("float16"): tensor_pb2.DATA_TYPE_FLOAT16,
    np.dtype("float64"): tensor_pb2.DATA_TYPE_FLOAT64,
    np.dtype("uint8"): tensor_pb2.DATA_TYPE_UINT8,
}
_NUMPY = {value: key for key, value in _DTYPES.items()}
#: One of these where a sequence is expected is a caller's slip: iterating it would send one item per
#: character (or per byte), so it is refused instead of guessed at.
_SINGLE = (str, bytes, bytearray, os.PathLike)


def to_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    """A NumPy array as raw little-endian bytes, first axis the item count."""
    dtype = array.dtype.newbyteorder("=")
    if dtype not in _DTYPES:
        raise TypeError(f"arrays of dtype {array.dtype} cannot be sent; use float32")
    data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
    return tensor_pb2.Tensor(dtype=_DTYPES[dtype], shape=array.shape, data=data)


def from_tensor(tensor: tensor_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype=_NUMPY[tensor.dtype].newbyteorder("<")).reshape(tuple(tensor.shape))


def refuse_single(value: object, what: str, example: str) -> None:
    """A bare str, bytes or path given as ``what`` (a sequence) raises a TypeError saying how to wrap it."""
    if isinstance(value, _SINGLE):
        raise TypeError(f"{what} must be a sequence, not a single {type(value).__name__}: "
                        f"wrap one in a list ({example})")


def to_items(items: ItemsLike, what: str = "items") -> tensor_pb2.Items:
    """An array becomes a tensor, :class:`Texts` texts, and a sequence of paths or bytes encoded images."""
    if isinstance(items, np.ndarray):
        return tensor_pb2.Items(tensor=to_tensor(items))
    if isinstance(items, Texts):
        return tensor_pb2.Items(texts=list(items))
    refuse_single(items, what, '["one.png"]')
    encoded = [source if isinstance(source, bytes) else Path(source).read_bytes() for source in items]
    return tensor_pb2.Items(encoded_images=encoded)


def to_labels(labels: Sequence[str]) -> list[str]:
    """Support labels as a list, one per support item."""
    refuse_single(labels, "labels", '["a", "a", "b"], one per support item')
    return list(labels)
