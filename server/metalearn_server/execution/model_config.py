"""The ``config.json`` beside each model version: what the server needs to serve it.

It is the contract between :mod:`metalearn.export` (which writes it) and the
server (which reads it), in the spirit of Triton's ``config.pbtxt``.  Parsing
is strict: a missing or mistyped field refuses the model at load time with a
message naming the field, instead of failing a request later.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from metalearn_server.execution.open_set import OpenSetCalibration
METHODS = ("prototype", "finetune", "transductive")
#: Soft k-means rounds of the transductive method for a config that names none (those exported before
#: the method existed): on validation episodes accuracy stops rising after 3 rounds.
DEFAULT_REFINEMENT_STEPS = 3
DISTANCES = ("euclidean", "cosine")
INPUT_DTYPES = ("float32",)
#: What a model's items are (``input.kind``): a config without one is of images, as all were before texts.
ITEM_KINDS = ("image", "text")
#: The ONNX inputs a text graph may take (``input.feeds``), filled by the text adapter.
TEXT_FEEDS = ("input_ids", "attention_mask", "token_type_ids")


class ConfigError(ValueError):
    """A model folder whose config cannot be served."""


def _field(section: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in section:
        raise ConfigError(f"{where}: missing '{key}'")
    value = section[key]
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Preprocessing:
    """How an encoded image becomes model input: convert, resize, invert, normalise."""

    color_mode: str
    width: int
    height: int
    invert: bool
    mean: float
    std: float


@dataclass(frozen=True)
class TextInput:
    """How texts become backbone input: the tokenizer file, the tokens kept, the ONNX inputs fed."""

    tokenizer: str
    max_tokens: int
    feeds: tuple[str, ...]

    @classmethod
    def from_dict(cls, spec: dict) -> "TextInput":
        feeds = tuple(_field(spec, "feeds", list, "input"))
        if not feeds or len(set(feeds)) != len(feeds) or not set(feeds) <= set(TEXT_FEEDS) or "input_ids" not in feeds:
            raise ConfigError(f"input.feeds: expected distinct names of {TEXT_FEEDS} including 'input_ids', "
                              f"got {list(feeds)}")
        text = cls(tokenizer=_field(spec, "tokenizer", str, "input"),
                   max_tokens=_field(spec, "max_tokens", int, "input"), feeds=feeds)
        if not 2 < text.max_tokens <= 4096:
            raise ConfigError(f"input.max_tokens: {text.max_tokens} must be within 3 to 4096")
        return text


@dataclass(frozen=True)
class Adaptation:
    """Fast-adaptation settings: the model's defaults, or a request's once resolved."""

    steps: int
    learning_rate: float
    l2: float


@dataclass(frozen=True)
class ModelConfig:
    """An image model has ``input_*`` and ``preprocessing``; a text model has ``text`` and no image fields."""

    backbone: str
    prototype_head: str
    finetune_head: str
    linear_head: str
    kind: str  # one of ITEM_KINDS
    input_name: str  # images only, as the three below
    input_dtype: str
    input_shape: tuple[int, ...]  # one item, without the item count
    embedding_size: int
    preprocessing: Preprocessing | None
    text: TextInput | None
    temperature: dict[str, float]
    default_method: str
    default_distance: str
    default_adaptation: Adaptation
    default_refinement_steps: int
    open_set: dict[str, OpenSetCalibration]

    def method_defaults(self, method: str) -> Adaptation:
        """What a request of ``method`` gets for the settings it leaves unset; for the transductive
        method ``steps`` counts its refinement rounds, which have a default of their own."""
        if method == "transductive":
            return replace(self.default_adaptation, steps=self.default_refinement_steps)
        return self.default_adaptation

    @classmethod
    def from_dict(cls, raw: dict) -> "ModelConfig":
        if not isinstance(raw, dict):
            raise ConfigError("config: expected a JSON object")
        heads = _field(raw, "heads", dict, "config")
        spec = _field(raw, "input", dict, "config")
        kind = spec.get("kind", "image")
        if kind not in ITEM_KINDS:
            raise ConfigError(f"input.kind: {kind!r} is not one of {ITEM_KINDS}")
        temps = _field(raw, "temperature", dict, "config")
        defaults = _field(raw, "defaults", dict, "config")
        adapt = _field(defaults, "adaptation", dict, "defaults")
        temperature = {d: float(_field(temps, d, (int, float), "temperature")) for d in DISTANCES}
        open_set_raw = _field(raw, "open_set", dict, "config")
        open_set = {}
        for distance in DISTANCES:
            section = _field(open_set_raw, distance, dict, "open_set")
            where = f"open_set.{distance}"
            calibration = OpenSetCalibration(
                *(float(_field(section, k, (int, float), where)) for k in ("midpoint", "width", "threshold")),
                # Absent from configs exported before the known-score allowed for the shot count.
                shot_scale=float(_field(section, "shot_scale", (int, float), where)) if "shot_scale" in section else 0.0)
            if not (calibration.width > 0 and 0 <= calibration.threshold <= 1 and calibration.shot_scale >= 0):
                raise ConfigError(f"{where}: width must be positive, threshold within [0, 1] and shot_scale >= 0")
            open_set[distance] = calibration
        if not all(t > 0 and math.isfinite(t) for t in temperature.values()):
            raise ConfigError(f"temperature: must be positive, got {temperature}")
        image = _image_input(raw, spec) if kind == "image" else {
            "input_name": "", "input_dtype": "", "input_shape": (), "preprocessing": None}
        config = cls(
            backbone=_field(raw, "backbone", str, "config"),
            prototype_head=_field(heads, "prototype", str, "heads"),
            finetune_head=_field(heads, "finetune", str, "heads"),
            linear_head=_field(heads, "linear", str, "heads"),
            kind=kind,
            **image,
            text=TextInput.from_dict(spec) if kind == "text" else None,
            embedding_size=_field(raw, "embedding_size", int, "config"),
            temperature=temperature,
            default_method=_field(defaults, "method", str, "defaults"),
            default_distance=_field(defaults, "distance", str, "defaults"),
            default_adaptation=Adaptation(
                steps=_field(adapt, "steps", int, "defaults.adaptation"),
                learning_rate=float(_field(adapt, "learning_rate", (int, float), "defaults.adaptation")),
                l2=float(_field(adapt, "l2", (int, float), "defaults.adaptation")),
            ),
            default_refinement_steps=_field(defaults, "refinement_steps", int, "defaults")
            if "refinement_steps" in defaults else DEFAULT_REFINEMENT_STEPS,
            open_set=open_set,
        )
        if config.default_method not in METHODS:
            raise ConfigError(f"defaults.method: {config.default_method!r} is not one of {METHODS}")
        if config.default_refinement_steps < 0:
            raise ConfigError(f"defaults.refinement_steps: {config.default_refinement_steps} must be >= 0")
        if config.default_distance not in DISTANCES:
            raise ConfigError(f"defaults.distance: {config.default_distance!r} is not one of {DISTANCES}")
        return config

    @classmethod
    def load(cls, path: Path) -> "ModelConfig":
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path.name} is missing") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path.name} is not valid JSON: {error}") from None
        return cls.from_dict(raw)


def _image_input(raw: dict, spec: dict) -> dict[str, Any]:
    """The image fields of a config: the input tensor and the preprocessing of encoded images."""
    pre = _field(raw, "preprocessing", dict, "config")
    shape = tuple(_field(spec, "shape", list, "input"))
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ConfigError(f"input.shape: expected positive integers, got {list(shape)}")
    dtype = _field(spec, "dtype", str, "input")
    if dtype not in INPUT_DTYPES:
        raise ConfigError(f"input.dtype: {dtype!r} is not one of {INPUT_DTYPES}")
    preprocessing = Preprocessing(
        color_mode=_field(pre, "color_mode", str, "preprocessing"),
        width=_field(pre, "width", int, "preprocessing"),
        height=_field(pre, "height", int, "preprocessing"),
        invert=_field(pre, "invert", bool, "preprocessing"),
        mean=float(_field(pre, "mean", (int, float), "preprocessing")),
        std=float(_field(pre, "std", (int, float), "preprocessing")),
    )
    if preprocessing.color_mode != "L" or shape[0] != 1 or shape[1:] != (preprocessing.height, preprocessing.width):
        raise ConfigError("preprocessing: only grayscale ('L') images matching input.shape [1, height, width] are supported")
    if preprocessing.std <= 0:
        raise ConfigError("preprocessing.std: must be positive")
    return {"input_name": _field(spec, "name", str, "input"), "input_dtype": dtype, "input_shape": shape,
            "preprocessing": preprocessing}
