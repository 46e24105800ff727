"""Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, 2020).

MAML with the inner loop removed from everything but the final linear layer.
The backbone f_φ is shared by all episodes; only the head's parameters w adapt:

    z = f_φ(x)
    w_0 = w,   w_{k+1} = w_k − α·∇_w L_support(h_{w_k}(z))
    min_{φ, w}  L_query(h_{w_K}(f_φ(x_query)))

The paper finds this as accurate as MAML, evidence that MAML's inner loop
mostly reuses features rather than learning new ones.  Because φ does not move
during adaptation, support and queries are embedded once, in one pass (batch
norm sees the whole episode, as in :mod:`metalearn.train`), and the inner loop
is MAML's on the head over those embeddings; the query loss still trains the
backbone, through the embeddings.
"""
from __future__ import annotations

import torch
from torch import nn

from metalearn.algorithms import maml


def episode_loss(backbone: nn.Module, head: nn.Module, support_x: torch.Tensor, support_y: torch.Tensor,
                 query_x: torch.Tensor, query_y: torch.Tensor, steps: int, inner_lr: float,
                 first_order: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Query loss and accuracy after adapting ``head`` alone; its backward trains ``backbone`` and ``head``."""
    embeddings = backbone(torch.cat([support_x, query_x]))
    support, queries = embeddings[: len(support_x)], embeddings[len(support_x) :]
    return maml.episode_loss(head, support, support_y, queries, query_y, steps, inner_lr, first_order)
