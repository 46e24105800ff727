"""The classification heads that run on top of a backbone's embeddings.

Both heads are a linear classifier ``logits = (z·Wᵀ + b) / T`` over embeddings
``z``, initialised from the support set's prototypes as in Proto-MAML
(Triantafillou et al. 2020, eq. 4):

    W_k = 2·c_k,   b_k = −‖c_k‖²

which makes ``z·W_kᵀ + b_k = −‖z − c_k‖² + ‖z‖²``: the same softmax as
Prototypical Networks, because ``‖z‖²`` is shared by every class.  With the
cosine distance, embeddings and prototypes are first scaled to unit length, so
the same formula scores ``2·cos(z, c_k) − 1``.

* :class:`PrototypeHead` builds that initial head from the support set.
* :class:`FineTuneHead` then takes ``steps`` gradient steps on the support
  set's cross-entropy (the ANIL / first-order Proto-MAML inner loop on the
  head), with the gradient written out analytically:

      ∂L/∂W = (P − Y)ᵀ Z / (S·T) + λ·W,     ∂L/∂b = 1ᵀ(P − Y) / (S·T)

  where ``P`` are the support probabilities, ``Y`` the one-hot labels and
  ``S`` the number of support items.  With ``steps = 0`` it equals
  :class:`PrototypeHead` exactly.
* :class:`LinearHead` scores queries with either, and says how far each
  query is from its nearest class (for open-set rejection).

Building the head and scoring queries are separate graphs so that a task
registered once keeps its head and later queries pay only for the scoring.

Both are exported to ONNX (see :mod:`metalearn.export`) and run in ONNX
Runtime next to the backbone, so serving never needs torch.  They are written
for ``torch.jit.script`` because the step count is a run-time input, which the
exporter turns into an ONNX ``Loop``.
"""
from __future__ import annotations

import torch
from torch import nn


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x * x).sum(-1, keepdim=True).sqrt().clamp_min(1e-12)


def as_head_input(z: torch.Tensor, cosine: torch.Tensor) -> torch.Tensor:
    """Embeddings as the head sees them: unit length for the cosine distance."""
    return torch.where(cosine, _unit(z), z)


def prototype_init(support: torch.Tensor, support_onehot: torch.Tensor, cosine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``W = 2c``, ``b = −‖c‖²`` from the class means ``c`` of the support embeddings."""
    support = as_head_input(support, cosine)
    protos = (support_onehot.T @ support) / support_onehot.sum(0).unsqueeze(1)
    protos = torch.where(cosine, _unit(protos), protos)
    return 2.0 * protos, -(protos * protos).sum(1)


class PrototypeHead(nn.Module):
    """Support set → the prototype head ``(W, b)``."""

    def forward(self, support: torch.Tensor, support_onehot: torch.Tensor, cosine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return prototype_init(support, support_onehot, cosine)


class FineTuneHead(nn.Module):
    """Support set → the prototype head adapted by ``steps`` gradient steps on the support cross-entropy."""

    def forward(self, support: torch.Tensor, support_onehot: torch.Tensor, cosine: torch.Tensor,
                temperature: torch.Tensor, steps: torch.Tensor, learning_rate: torch.Tensor,
                l2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = prototype_init(support, support_onehot, cosine)
        support = as_head_input(support, cosine)
        scale = 1.0 / (support.shape[0] * temperature)
        for _ in range(int(steps)):
            error = torch.softmax((support @ weight.T + bias) / temperature, dim=-1) - support_onehot
            weight = weight - learning_rate * (scale * (error.T @ support) + l2 * weight)
            bias = bias - learning_rate * scale * error.sum(0)
        return weight, bias


class LinearHead(nn.Module):
    """Queries and a head ``(W, b)`` → class probabilities ``softmax((z·Wᵀ + b) / T)``, and each
    query's distance to its nearest class, ``‖z‖² − max_k (z·W_kᵀ + b_k)``: for the prototype head
    exactly ``min_k ‖z − c_k‖²``, the open-set score of :mod:`metalearn.calibration`."""

    def forward(self, queries: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                cosine: torch.Tensor, temperature: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = as_head_input(queries, cosine)
        logits = z @ weight.T + bias
        distance = (z * z).sum(-1) - logits.max(-1).values
        return torch.softmax(logits / temperature, dim=-1), distance
