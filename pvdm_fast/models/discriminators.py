"""PatchGAN discriminators of the autoencoder's GAN stage: 2D on single frames, 3D on whole clips.

The layout of the official GAN stage (inherited from TATS): a stride-2 conv + LeakyReLU(0.2), then
`layers - 1` stride-2 conv + BatchNorm + LeakyReLU blocks doubling the width (capped at 8x), one
stride-1 block, and a stride-1 conv to one logit per patch (convs feeding a BatchNorm have no bias); kernel 4 with padding 2 everywhere (so
even a tiny input keeps a non-empty output). Initialised as officially (pix2pix's `weights_init`):
conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and biases 0; conv biases keep torch's default.
`forward` also returns every intermediate activation for the feature-matching loss. Under DDP, convert BatchNorm with `sync_batchnorm` so the statistics
cover the global batch, as the official (SyncBatchNorm) runs do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DiscriminatorConfig:
    in_channels: int = 3
    channels: int = 64
    layers: int = 3


class PatchDiscriminator(nn.Module):
    """dims=2: input (B, C, H, W); dims=3: input (B, C, T, H, W). Returns (logits, features)."""

    def __init__(self, config: DiscriminatorConfig, dims: int):
        super().__init__()
        if dims not in (2, 3):
            raise ValueError(f"PatchDiscriminator works on 2D frames or 3D clips, got dims={dims}")
        if config.layers < 1 or config.channels < 1:
            raise ValueError(f"discriminator needs layers >= 1 and channels >= 1, got {config}")
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.config, self.dims = config, dims
        c = config.channels
        blocks = [nn.Sequential(conv(config.in_channels, c, 4, 2, 2), nn.LeakyReLU(0.2, True))]
        width = c
        for n in range(1, config.layers + 1):
            prev, width = width, c * min(2 ** n, 8)
            stride = 2 if n < config.layers else 1
            blocks.append(nn.Sequential(conv(prev, width, 4, stride, 2, bias=False), norm(width), nn.LeakyReLU(0.2, True)))
        blocks.append(nn.Sequential(conv(width, 1, 4, 1, 2)))
        self.blocks = nn.ModuleList(blocks)
        self.apply(_official_init)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if x.ndim != self.dims + 2:
            raise ValueError(f"{self.dims}D discriminator expects a {self.dims + 2}D input, got {tuple(x.shape)}")
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return x, features[:-1]


@torch.no_grad()
def _official_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Conv3d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.modules.batchnorm._BatchNorm):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (for DDP on GPUs; gloo/CPU runs keep per-rank statistics)."""
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
