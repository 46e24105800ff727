"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, 2017).

Every parameter θ of the model (backbone and classifier alike) is adapted to an
episode by K steps of gradient descent on the support set's cross-entropy
(eq. 1, repeated K times)

    θ_0 = θ,   θ_{k+1} = θ_k − α·∇_θ L_support(f_{θ_k})

and θ is meta-trained on the query loss of the adapted model (eqs. 2–3)

    min_θ  L_query(f_{θ_K})

whose gradient runs back through all K steps, second derivatives included.
``first_order=True`` is the paper's first-order approximation, which treats the
inner gradients as constants: cheaper, and nearly as accurate in the paper.

The classifier has one output per way, so a model serves one episode size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metalearn.algorithms.inner_loop import Params, sgd_steps


def adapt(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
          steps: int, inner_lr: float, first_order: bool = False) -> Params:
    """``θ_K``: ``params`` after ``steps`` SGD steps on the support cross-entropy of ``model``."""
    buffers = dict(model.named_buffers())

    def support_loss(theta: Params) -> torch.Tensor:
        # Batch norm updates its running statistics in place, which torch.func.grad
        # forbids on tensors from outside the function: the inner steps use copies
        # and drop those updates; the query pass keeps its own.
        copies = {name: buffer.clone() for name, buffer in buffers.items()}
        return F.cross_entropy(functional_call(model, (theta, copies), (support_x,)), support_y)

    return sgd_steps(support_loss, params, steps, inner_lr, first_order)


def episode_loss(model: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
                 query_y: torch.Tensor, steps: int, inner_lr: float,
                 first_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Query loss and accuracy of ``model`` adapted to the support set; its backward meta-trains ``model``."""
    adapted = adapt(model, dict(model.named_parameters()), support_x, support_y, steps, inner_lr, first_order)
    logits = functional_call(model, adapted, (query_x,))
    return F.cross_entropy(logits, query_y), (logits.argmax(-1) == query_y).float().mean()
