"""Protobuf messages ↔ the data plane's plain values.

Tensors arrive as raw little-endian bytes and become NumPy arrays with
``np.frombuffer``: no per-element copy, unlike ``repeated float``.  Only wire
checks live here (a dtype is set, the byte count matches the shape); what a
model accepts is the data plane's business.
"""
from __future__ import annotations

import asyncio
import math
from typing import TypeVar

import numpy as np
from metalearn.v1 import fewshot_pb2, tensor_pb2

from metalearn_server import validation
from metalearn_server.errors import InvalidArgument
from metalearn_server.requests import AdaptationRequest, Classification, Items, QueryRequest, SupportRequest


DTYPES = {
    tensor_pb2.DATA_TYPE_FLOAT32: np.dtype("<f4"),
    tensor_pb2.DATA_TYPE_FLOAT16: np.dtype("<f2"),
    tensor_pb2.DATA_TYPE_FLOAT64: np.dtype("<f8"),
    tensor_pb2.DATA_TYPE_UINT8: np.dtype("u1"),
}
METHODS = {fewshot_pb2.METHOD_UNSPECIFIED: "", fewshot_pb2.METHOD_PROTOTYPE: "prototype",
           fewshot_pb2.METHOD_FINETUNE: "finetune", fewshot_pb2.METHOD_TRANSDUCTIVE: "transductive"}
DISTANCES = {fewshot_pb2.DISTANCE_UNSPECIFIED: "", fewshot_pb2.DISTANCE_EUCLIDEAN: "euclidean",
             fewshot_pb2.DISTANCE_COSINE: "cosine"}
METHOD_ENUMS = {name: value for value, name in METHODS.items() if name}
DISTANCE_ENUMS = {name: value for value, name in DISTANCES.items() if name}


def tensor_to_array(tensor: tensor_pb2.Tensor, what: str) -> np.ndarray:
    """A read-only view of the tensor's bytes, shaped."""
    dtype = DTYPES.get(tensor.dtype)
    if dtype is None:
        known = tensor.dtype in tensor_pb2.DataType.values()
        name = tensor_pb2.DataType.Name(tensor.dtype) if known else str(tensor.dtype)
        raise InvalidArgument(f"{what}.dtype is {name}; set a supported type, e.g. DATA_TYPE_FLOAT32")
    shape = tuple(tensor.shape)
    validation.dimensions(shape, f"{what}.shape")
    if len(shape) < 2 or any(d <= 0 for d in shape):
        raise InvalidArgument(f"{what}.shape is {list(shape)}; give the item count first, then the item's "
                              "dimensions, all positive (e.g. [N, 1, 28, 28])")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(f"{what}.data has {len(tensor.data)} bytes; shape {list(shape)} of {dtype.name} "
                              f"needs {expected} (row-major, little-endian)")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def items_from_proto(items: tensor_pb2.Items, what: str) -> Items:
    forms = [name for name, given in (("tensor", items.HasField("tensor")), ("encoded_images", bool(items.encoded_images)),
                                      ("texts", bool(items.texts))) if given]
    if len(forms) > 1:
        raise InvalidArgument(f"{what} sets {'both ' if len(forms) == 2 else ''}{' and '.join(forms)}; send one "
                              "of them (a request's items are all of one kind)")
    if forms == ["tensor"]:
        return Items(tensor=tensor_to_array(items.tensor, f"{what}.tensor"))
    return Items(encoded_images=tuple(items.encoded_images), texts=tuple(items.texts))


def array_to_tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    array = np.ascontiguousarray(array, dtype="<f4")
    return tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=array.shape, data=array.tobytes())


def enum_value(mapping: dict[int, str], value: int, field: str) -> str:
    if value not in mapping:
        raise InvalidArgument(f"{field} has the unknown value {value}; use one of the enum's named values")
    return mapping[value]


def support_request(message: fewshot_pb2.ClassifyRequest | fewshot_pb2.CreateTaskRequest) -> SupportRequest:
    adaptation = message.adaptation
    return SupportRequest(
        model=message.model,
        model_version=message.model_version,
        items=items_from_proto(message.support.items, "support.items"),
        labels=tuple(message.support.labels),
        method=enum_value(METHODS, message.method, "method"),
        distance=enum_value(DISTANCES, message.distance, "distance"),
        adaptation=AdaptationRequest(
            steps=adaptation.steps if adaptation.HasField("steps") else None,
            learning_rate=adaptation.learning_rate if adaptation.HasField("learning_rate") else None,
            l2=adaptation.l2 if adaptation.HasField("l2") else None,
        ),
    )


QueryMessage = fewshot_pb2.ClassifyRequest | fewshot_pb2.ClassifyTaskRequest | fewshot_pb2.StreamClassifyTaskRequest


def query_request(message: QueryMessage) -> QueryRequest:
    return QueryRequest(
        items=items_from_proto(message.queries, "queries"),
        top_k=message.top_k,
        rejection_threshold=message.rejection_threshold if message.HasField("rejection_threshold") else None,
    )


#: The three responses that carry a classification; each has ``classes`` and ``predictions``.
ClassificationResponse = TypeVar("ClassificationResponse", fewshot_pb2.ClassifyResponse,
                                 fewshot_pb2.ClassifyTaskResponse, fewshot_pb2.StreamClassifyTaskResponse)


#: Above this many scores (queries × classes) a response is built in a thread, off the event loop: one Prediction
#: message per query costs about 75 µs at 512 classes, so a maximal answer (4,096 × 512) held the loop, and every
#: other call on it, for 0.3 s.  In a thread the loop gets the interpreter back every switch interval (5 ms).
OFF_LOOP_SCORES = 32_768


async def classification(response: ClassificationResponse, result: Classification) -> ClassificationResponse:
    """:func:`fill_classification`, in a thread when the answer is large."""
    if result.probabilities.size <= OFF_LOOP_SCORES:
        return fill_classification(response, result)
    return await asyncio.to_thread(fill_classification, response, result)


def fill_classification(response: ClassificationResponse, result: Classification) -> ClassificationResponse:
    """``response`` with the classes and one Prediction per query: best label (none if unknown), scores
    aligned with the classes, top k.

    Written in place with ``add()``: building Prediction objects first and handing them to the response
    constructor copies every one again, which doubled this function's cost at 75 queries."""
    classes = result.classes
    response.classes.extend(classes)
    k = min(result.top_k, len(classes))
    best = np.argsort(-result.probabilities, axis=1, kind="stable")[:, :k]
    rows = zip(result.probabilities.tolist(), best.tolist(), result.known.tolist(), result.unknown.tolist())
    for scores, ranked, known, unknown in rows:
        prediction = response.predictions.add(label="" if unknown else classes[ranked[0]], scores=scores,
                                              known_score=known, unknown=unknown)
        for i in ranked:
            prediction.top_k.add(label=classes[i], score=scores[i])
    return response
