"""Checks that turn a bad request into a message the caller can act on.

Everything here runs before any model work, so a malformed request costs
almost nothing and never reaches ONNX Runtime.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from metalearn_server.errors import InvalidArgument, ResourceExhausted, excerpt
from metalearn_server.execution.item_input import require_kind
from metalearn_server.execution.model import FewShotModel
from metalearn_server.execution.model_config import Adaptation
from metalearn_server.execution.model_config import DISTANCES, METHODS
from metalearn_server.requests import AdaptationRequest, Items


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; the server flags set them (``--help`` lists the defaults)."""

    max_support_items: int = 2048
    max_query_items: int = 4096
    max_classes: int = 512
    max_label_length: int = 256
    max_adaptation_steps: int = 100
    max_learning_rate: float = 100.0
    max_top_k: int = 512
    max_image_bytes: int = 4 * 1024 * 1024
    #: UTF-8 bytes of one text: far more than any text model reads (its max_tokens), little enough that
    #: tokenizing a maximal request stays cheap.
    max_text_bytes: int = 4096
    max_image_pixels: int = 4096 * 4096
    #: Pixels decoded per request, all images together: 16 images of the largest size, or 24,000 of 105².
    max_request_pixels: int = 256 * 1024 * 1024


#: More dimensions than any model's items have; NumPy itself stops at 64.
MAX_DIMENSIONS = 32


def dimensions(shape: tuple[int, ...], what: str) -> None:
    """A tensor shape the server can represent at all (what a model takes is checked later)."""
    if len(shape) > MAX_DIMENSIONS:
        raise InvalidArgument(f"{what} has {len(shape)} dimensions; items take a few (GetModel's input shape), "
                              f"and no tensor may have more than {MAX_DIMENSIONS}")


def require_items(items: Items, what: str, limit: int) -> None:
    if items.count == 0:  # no tensor, images or texts, or a tensor with no rows (the v2 protocol allows shape [0, …])
        raise InvalidArgument(f"{what} is empty: send at least one item as a tensor, as encoded_images or as texts")
    if items.count > limit:
        raise InvalidArgument(f"{what} has {items.count} items, more than the limit of {limit}; split the request")


def model_items(model: FewShotModel, limits: Limits, *inputs: tuple[Items, str]) -> None:
    """Items of the kind the model takes, all of one kind, each passing its input adapter's checks
    (an image tensor's dtype and shape, a file's or a text's size; values are checked at conversion)."""
    require_kind(model.input, model.name, list(inputs))
    for items, what in inputs:
        model.input.check(items, what, limits)


def class_index(labels: tuple[str, ...], item_count: int, limits: Limits) -> tuple[tuple[str, ...], np.ndarray]:
    """Distinct labels in order of first appearance, and the class of each support item."""
    if len(labels) != item_count:
        raise InvalidArgument(
            f"support has {item_count} items but {len(labels)} labels; give exactly one label per support item"
        )
    classes: dict[str, int] = {}
    for position, label in enumerate(labels):
        if not label:
            raise InvalidArgument(f"support.labels[{position}] is empty; every support item needs a class label")
        if len(label) > limits.max_label_length:
            raise InvalidArgument(f"support.labels[{position}] is longer than {limits.max_label_length} characters")
        classes.setdefault(label, len(classes))
    if len(classes) < 2:
        raise InvalidArgument(
            f"support has a single class ({excerpt(next(iter(classes)))}); few-shot classification needs at least two"
        )
    if len(classes) > limits.max_classes:
        raise InvalidArgument(f"support has {len(classes)} classes, more than the limit of {limits.max_classes}")
    return tuple(classes), np.fromiter((classes[label] for label in labels), np.int64, len(labels))


def method(requested: str, model: FewShotModel) -> str:
    chosen = requested or model.config.default_method
    if chosen not in METHODS:
        raise InvalidArgument(f"unknown method {excerpt(requested)}; use one of {', '.join(METHODS)}")
    return chosen


def task_method(method: str) -> None:
    """A task's head is built when it is created, before any query exists to refine it with."""
    if method == "transductive":
        raise InvalidArgument("METHOD_TRANSDUCTIVE refines the class means with the queries of the same request, "
                              "so it works with Classify only; create the task with METHOD_PROTOTYPE or "
                              "METHOD_FINETUNE, or send support and queries together to Classify")


def distance(requested: str, model: FewShotModel) -> str:
    chosen = requested or model.config.default_distance
    if chosen not in DISTANCES:
        raise InvalidArgument(f"unknown distance {excerpt(requested)}; use one of {', '.join(DISTANCES)}")
    return chosen


def adaptation(requested: AdaptationRequest, method: str, model: FewShotModel, limits: Limits) -> Adaptation:
    """The request's settings over the model's defaults, each checked against its range.

    For the transductive method only ``steps`` (its soft k-means rounds) means anything, so a
    learning rate or l2 sent with it is refused rather than silently ignored."""
    if method == "transductive":
        for name in ("learning_rate", "l2"):
            if getattr(requested, name) is not None:
                raise InvalidArgument(f"adaptation.{name} applies to METHOD_FINETUNE; METHOD_TRANSDUCTIVE takes "
                                      "only adaptation.steps (its refinement rounds)")
    defaults = model.config.method_defaults(method)
    steps = defaults.steps if requested.steps is None else requested.steps
    rate = defaults.learning_rate if requested.learning_rate is None else requested.learning_rate
    l2 = defaults.l2 if requested.l2 is None else requested.l2
    if not 0 <= steps <= limits.max_adaptation_steps:
        raise InvalidArgument(f"adaptation.steps is {steps}; it must be between 0 and {limits.max_adaptation_steps}")
    if not (math.isfinite(rate) and 0 < rate <= limits.max_learning_rate):
        raise InvalidArgument(
            f"adaptation.learning_rate is {rate}; it must be positive and at most {limits.max_learning_rate}"
        )
    if not (math.isfinite(l2) and l2 >= 0):
        raise InvalidArgument(f"adaptation.l2 is {l2}; it must be a finite number >= 0")
    return Adaptation(steps=steps, learning_rate=rate, l2=l2)


def rejection_threshold(requested: float | None, model: FewShotModel, distance: str) -> float:
    if requested is None:
        return model.config.open_set[distance].threshold
    if not (math.isfinite(requested) and 0 <= requested <= 1):
        raise InvalidArgument(f"rejection_threshold is {requested}; it must be within [0, 1] (0 never rejects)")
    return requested


def top_k(requested: int, limits: Limits) -> int:
    if requested > limits.max_top_k:
        raise InvalidArgument(f"top_k is {requested}; it must be at most {limits.max_top_k}")
    return max(requested, 1)


#: Bytes an answer may take beyond its predictions: model name, version, enums, framing.
RESPONSE_OVERHEAD = 1024


def classification_size(queries: int, classes: tuple[str, ...], top_k: int) -> int:
    """An upper bound on the bytes of a classification answer (ClassifyResponse and its kin, and the KServe
    v2 outputs, which carry less): every class label once, then per query its label, a float per class
    and the ``top_k`` best labels with their scores, with protobuf's tags and lengths at their widest."""
    sizes = sorted((len(label.encode()) for label in classes), reverse=True)
    per_query = (sizes[0] + 3) + (4 * len(classes) + 6) + 7 + sum(size + 10 for size in sizes[:top_k]) + 6
    return sum(size + 3 for size in sizes) + queries * per_query + RESPONSE_OVERHEAD


def response_fits(size: int, limit: int, what: str) -> None:
    """Refuse, before any model work, a request whose answer could not be sent."""
    if size > limit:
        raise ResourceExhausted(f"the answer would take up to {size} bytes ({what}), more than the server's "
                                f"message limit of {limit} bytes; send fewer queries per request, or ask for a "
                                "smaller top_k")
