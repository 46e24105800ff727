"""Embedding networks.  Any ``nn.Module`` mapping images to vectors will do.

Conv-4 is the backbone of the published Omniglot results (Vinyals et al. 2016,
Snell et al. 2017, Finn et al. 2017): four blocks of 3×3 convolution with 64
filters, batch norm, ReLU and 2×2 max-pooling.  A 28×28 image leaves it as
64×1×1, a 64-d embedding.

``conv4-3x3`` is the same network without the last max-pooling: the final
3×3×64 map is flattened into a 576-d embedding.  Same convolutions, same cost,
but the metric space keeps where on the page a stroke sits, which a 64-d
vector has to pool away; that lifts 20-way accuracy, where classes crowd.

:class:`RotationEnsemble` wraps any of them for serving: it embeds an image
and its three quarter-turns and concatenates the four embeddings.
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


class RotationEnsemble(nn.Module):
    """Test-time augmentation as one backbone: ``x ↦ [f(x); f(rot90 x); f(rot180 x); f(rot270 x)]``.

    Why concatenating is an ensemble: a prototype of concatenated embeddings is
    the concatenation of the per-view prototypes, so the squared euclidean
    distance to it is the *sum* of the four per-view squared distances; the
    prototype head's logits become the sum of four views' logits, with no
    change to any head, to the server or to the protocol.  Training treats each
    quarter-turn of a character as a class of its own (see
    :mod:`metalearn.data`), so every view lands in familiar territory and casts
    a partly independent vote.  It costs four backbone passes per image.
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.backbone(torch.cat(quarter_turns(images))).chunk(4), dim=1)


def quarter_turns(images: torch.Tensor) -> list[torch.Tensor]:
    """``images`` rotated by 0, 90, 180 and 270 degrees (as ``torch.rot90`` on the last two dims), written
    with flips and transposes because the ONNX exporter has no ``rot90``."""
    return [images, images.flip(3).transpose(2, 3), images.flip(2).flip(3), images.flip(2).transpose(2, 3)]


BACKBONES = {"conv4": Conv4, "conv4-3x3": lambda: Conv4(pool_last=False)}
