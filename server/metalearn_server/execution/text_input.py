"""Texts to the backbone's token inputs: the input adapter of ``input.kind: "text"`` models.

A text model's folder holds a ``tokenizer.json`` that the ``tokenizers``
library runs (Rust, no torch), and its config names the maximum number of
tokens and which ONNX inputs the tokens feed (``input_ids``,
``attention_mask``, and ``token_type_ids`` where the graph has it).  A text
longer than that many tokens is truncated, as the model was trained; a text
longer than the server's byte limit per text (``--max-text-bytes``) is
refused before it is tokenized, so the tokenizer's cost per request stays
bounded.  Pooling happens inside the graph: the backbone gives one embedding
per text.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
from tokenizers import Tokenizer

from metalearn_server.errors import InvalidArgument
from metalearn_server.execution.model_config import TextInput
from metalearn_server.requests import Items, Piece

if TYPE_CHECKING:
    from metalearn_server.validation import Limits

def text_tokenizer(tokenizer_json: str, max_tokens: int) -> Tokenizer:
    """The tokenizer of ``tokenizer_json``, truncating to ``max_tokens`` and padding each batch to its
    longest text (with the padding token the file names, else ``[PAD]``)."""
    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.enable_truncation(max_tokens)
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token", "[PAD]")
    pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


class TextAdapter:
    """Request texts → ``{input_ids, attention_mask[, token_type_ids]}`` int64 ``[N, L]``."""

    kind = "text"
    accepts = ("texts",)
    description = "texts (Items.texts, or BYTES tensors over KServe v2)"

    def __init__(self, spec: TextInput, directory: Path) -> None:
        self.spec = spec
        self.tokenizer = text_tokenizer((directory / spec.tokenizer).read_text(), spec.max_tokens)

    def check(self, items: Items, what: str, limits: "Limits") -> None:
        """Every text non-blank and within the byte limit (cheap: before admission, no tokenizing)."""
        for index, text in enumerate(items.texts):
            size = len(text.encode())
            if not text.strip():
                raise InvalidArgument(f"{what}.texts[{index}] is {'empty' if not text else 'only whitespace'}; "
                                      "every item needs some text")
            if size > limits.max_text_bytes:
                raise InvalidArgument(f"{what}.texts[{index}] has {size} bytes of UTF-8, more than the limit of "
                                      f"{limits.max_text_bytes} per text; the model reads only its first "
                                      f"{self.spec.max_tokens} tokens anyway, so send the start of the text")

    def converter(self, limits: "Limits") -> Callable[[list[Piece]], dict[str, np.ndarray]]:
        """The per-request conversion of a chunk's pieces into the backbone's feeds."""
        def convert(pieces: list[Piece]) -> dict[str, np.ndarray]:
            return self.feeds([text for items, _, _ in pieces for text in items.texts])
        return convert

    def feeds(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        values = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        return {name: values[name] for name in self.spec.feeds}

    def synthetic(self, count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Feeds of ``count`` made-up texts of random vocabulary words (for the load-time self-check)."""
        vocabulary = [token for token in self.tokenizer.get_vocab() if token.isalpha()]
        words = rng.choice(sorted(vocabulary), size=(count, 6))
        return self.feeds([" ".join(row) for row in words])
