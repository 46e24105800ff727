"""Texts to token tensors and to embeddings, the way the server does it.

Training, export, calibration and evaluation tokenize with the same
``tokenizers`` library and the same ``tokenizer.json`` as the server's text
adapter (:mod:`metalearn_server.execution.text_input`), truncated to the same
number of tokens, so what was measured is what is served.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from metalearn_server.execution.text_input import text_tokenizer

#: Texts per forward pass when embedding a whole split.
BATCH = 128


def token_tensors(tokenizer, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``[N, L]`` int64, padded to the longest text."""
    encodings = tokenizer.encode_batch(list(texts))
    ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
    return ids, mask


def make_tokenizer(tokenizer_json: str, max_tokens: int):
    return text_tokenizer(tokenizer_json, max_tokens)


@torch.no_grad()
def embed_texts(encoder: torch.nn.Module, tokenizer, texts: Sequence[str]) -> np.ndarray:
    """float32 ``[N, D]`` embeddings of ``texts`` by the torch encoder, in batches."""
    encoder.eval()
    parts = [encoder(*token_tensors(tokenizer, texts[i: i + BATCH])).numpy() for i in range(0, len(texts), BATCH)]
    return np.concatenate(parts).astype(np.float32)


def onnx_embedder(model_path: str, tokenizer, threads: int = 2) -> Callable[[Sequence[str]], np.ndarray]:
    """Embeddings by an exported backbone graph in ONNX Runtime (what a served version computes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_path, sess_options=options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def embed(texts: Sequence[str]) -> np.ndarray:
        parts = []
        for i in range(0, len(texts), BATCH):
            ids, mask = token_tensors(tokenizer, texts[i: i + BATCH])
            feeds = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
            parts.append(session.run(None, {k: v for k, v in feeds.items() if k in names})[0])
        return np.concatenate(parts).astype(np.float32)

    return embed
