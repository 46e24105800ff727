"""Embedding networks.  Any ``nn.Module`` mapping images to vectors will do.

Conv-4 is the backbone of the published Omniglot results (Vinyals et al. 2016,
Snell et al. 2017, Finn et al. 2017): four blocks of 3×3 convolution with 64
filters, batch norm, ReLU and 2×2 max-pooling.  A 28×28 image leaves it as
64×1×1, a 64-d embedding.

``conv4-3x3`` is the same network without the last max-pooling: the final
3×3×64 map is flattened into a 576-d embedding.  Same convolutions, same cost,
but the metric space keeps where on the page a stroke sits, which a 64-d
vector has to pool away; that lifts 20-way accuracy, where classes crowd.
"""
from __future__ import annotations

import torch
from torch import nn


def conv_block(in_channels: int, out_channels: int, pool: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2) if pool else nn.Identity(),
    )


class Conv4(nn.Module):
    """Four conv blocks, flattened: ``[N, C, H, W] → [N, filters·(H/16)·(W/16)]``."""

    def __init__(self, in_channels: int = 1, filters: int = 64, pool_last: bool = True) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            conv_block(in_channels, filters),
            conv_block(filters, filters),
            conv_block(filters, filters),
            conv_block(filters, filters, pool=pool_last),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images).flatten(1)


BACKBONES = {"conv4": Conv4, "conv4-3x3": lambda: Conv4(pool_last=False)}
