"""The input adapter a model's config chooses: how its items become backbone feeds.

One adapter per item kind (``input.kind``), each a small class with the same
four duties, so the data plane handles images and texts with one code path:

* ``check(items, what, limits)``: the cheap checks before admission;
* ``converter(limits)``: a per-request function from a chunk's pieces to the
  backbone's feeds (name → array), run in the model-work steps;
* ``feeds(...)``: the feeds of already-converted items;
* ``synthetic(count, rng)``: feeds of made-up items for the load-time self-check.
"""
from __future__ import annotations

from pathlib import Path

from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.image_input import ImageAdapter
from metalearn_server.execution.model_config import ModelConfig
from metalearn_server.execution.text_input import TextAdapter
from metalearn_server.requests import Items

InputAdapter = ImageAdapter | TextAdapter

#: How each field of Items is named in messages.
FORMS = {"tensor": "a tensor", "encoded_images": "encoded images", "texts": "texts"}


def input_adapter(config: ModelConfig, directory: Path) -> InputAdapter:
    return TextAdapter(config.text, directory) if config.kind == "text" else ImageAdapter(config)


def require_kind(adapter: InputAdapter, model: str, inputs: list[tuple[Items, str]]) -> None:
    """Every input of a request in a form the model takes, and all of one kind."""
    forms = [(items.form, what) for items, what in inputs if items.form]
    kinds = {form == "texts" for form, _ in forms}
    if len(kinds) > 1:
        described = " and ".join(f"{what} are {FORMS[form]}" for form, what in forms)
        raise InvalidArgument(f"{described}; one request takes one kind of item (model {model} takes "
                              f"{adapter.description})")
    for form, what in forms:
        if form not in adapter.accepts:
            raise InvalidArgument(f"{what} are {FORMS[form]}, but model {model} takes {adapter.description}; "
                                  "see GetModel's item_kind")
