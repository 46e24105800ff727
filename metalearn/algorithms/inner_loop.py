"""Gradient descent on a dict of tensors: the inner loop of MAML, ANIL and Proto-MAML.

    θ_0 = θ,   θ_{k+1} = θ_k − α·∇_θ L(θ_k),   k = 0 … K−1

``torch.func.grad`` turns the loss into a function that returns its gradient as
an ordinary tensor, so each step is a differentiable expression of ``θ_0``: an
outer loss on ``θ_K`` backpropagates through all K steps, second derivatives
included, and no module's parameters are ever overwritten.

``first_order`` detaches every inner gradient (the first-order approximation of
Finn et al. 2017): ``θ_K`` is then ``θ_0`` minus constants, so the outer
gradient is the outer loss's gradient at ``θ_K`` and skips the second
derivatives.
"""
from __future__ import annotations

from typing import Callable

import torch

Params = dict[str, torch.Tensor]


def sgd_steps(loss: Callable[[Params], torch.Tensor], params: Params, steps: int, lr: float,
              first_order: bool) -> Params:
    """``θ_K`` after ``steps`` steps of size ``lr`` down ``loss``, starting from ``params``."""
    gradient = torch.func.grad(loss)
    for _ in range(steps):
        grads = gradient(params)
        if first_order:
            grads = {name: g.detach() for name, g in grads.items()}
        params = {name: value - lr * grads[name] for name, value in params.items()}
    return params
