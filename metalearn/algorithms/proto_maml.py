"""First-order Proto-MAML (Triantafillou et al., 2020, Meta-Dataset).

MAML's inner loop on a linear head over the embeddings, with the head started
from the support set's prototypes c_k instead of learned
(:func:`metalearn.heads.prototype_init`, euclidean):

    W_k = 2·c_k,   b_k = −‖c_k‖²

so that before any step it scores ``−‖z − c_k‖² + ‖z‖²``: the softmax of
Prototypical Networks.  The head then takes K steps on the support
cross-entropy of ``softmax((z·Wᵀ + b) / T)``, with the gradients treated as
constants (first order).  The query loss thus trains the backbone through the
query embeddings and through the prototypes the head started from.

With no steps this is :func:`metalearn.algorithms.protonet.loss`.  The steps
are those :class:`metalearn.heads.FineTuneHead` takes when serving (with
``l2 = 0``), so the service adapts the way training did; here torch.func
derives the gradient, and first order keeps the backbone out of it, where
FineTuneHead's written-out steps would backpropagate into the embeddings.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from metalearn.algorithms.inner_loop import Params, sgd_steps
from metalearn.heads import prototype_init


def _logits(embeddings: torch.Tensor, head: Params, temperature: float | torch.Tensor) -> torch.Tensor:
    return F.linear(embeddings, head["weight"], head["bias"]) / temperature


def adapt(support: torch.Tensor, support_labels: torch.Tensor, ways: int, steps: int, inner_lr: float,
          temperature: float | torch.Tensor = 1.0) -> Params:
    """The prototype head ``{"weight": [ways, D], "bias": [ways]}`` after ``steps`` first-order steps."""
    weight, bias = prototype_init(support, F.one_hot(support_labels, ways).to(support.dtype), torch.tensor(False))

    def support_loss(head: Params) -> torch.Tensor:
        return F.cross_entropy(_logits(support, head, temperature), support_labels)

    return sgd_steps(support_loss, {"weight": weight, "bias": bias}, steps, inner_lr, first_order=True)


def episode_loss(support: torch.Tensor, support_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, ways: int, steps: int, inner_lr: float,
                 temperature: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Episode loss and query accuracy from embeddings, like :func:`metalearn.algorithms.protonet.loss`."""
    logits = _logits(queries, adapt(support, support_labels, ways, steps, inner_lr, temperature), temperature)
    return F.cross_entropy(logits, query_labels), (logits.argmax(-1) == query_labels).float().mean()
