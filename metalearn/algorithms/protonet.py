"""Prototypical Networks (Snell, Swersky & Zemel, 2017).

Each class k is represented by the mean of its support embeddings (eq. 1)

    c_k = 1/|S_k| · Σ_{x_i ∈ S_k} f(x_i)

and a query x is classified by a softmax over negative squared euclidean
distances to the prototypes (eq. 2)

    p(y = k | x) = softmax_k( −‖f(x) − c_k‖² / T )

trained by minimising the negative log-probability of the true class.  T is a
temperature; T = 1 is the paper.  Cosine similarity is the usual alternative
distance and is offered for serving.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def prototypes(support: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means ``[ways, D]`` of support embeddings ``[S, D]``; shots may be unequal."""
    one_hot = F.one_hot(labels, ways).to(support.dtype)  # [S, ways]
    return (one_hot.T @ support) / one_hot.sum(0, keepdim=True).T


def squared_euclidean(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``‖q − c‖²`` for every query and prototype: ``[Q, ways]``.

    Expanded as ``‖q‖² − 2 q·c + ‖c‖²`` so the work is one matrix product: the
    broadcast difference ``q − c`` would materialise a ``[Q, ways, D]`` tensor
    (240 × 120 × 576 in a default training episode), which took a third of an
    episode's time with its backward.  Clamped at 0 against rounding.
    """
    return ((queries * queries).sum(-1, keepdim=True) - 2 * queries @ protos.T
            + (protos * protos).sum(-1)).clamp_min(0)


def logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Eq. 2's unnormalised log-probabilities, before the temperature."""
    return -squared_euclidean(queries, protos)


def loss(support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor,
         query_labels: torch.Tensor, ways: int, temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode loss and query accuracy from embeddings."""
    scores = logits(queries, prototypes(support, support_labels, ways)) / temperature
    return F.cross_entropy(scores, query_labels), (scores.argmax(-1) == query_labels).float().mean()
