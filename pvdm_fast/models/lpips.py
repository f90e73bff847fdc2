"""LPIPS (VGG16 variant) perceptual distance, built without torchvision.

Weights come from the user, in the two files the field ships: a torchvision-format VGG16 state dict
(`vgg16-397923af.pth`: `features.N.weight/bias`; its `classifier.*` entries are ignored) and the
LPIPS linear heads (`vgg.pth` of the lpips package or taming-transformers: `lin0.model.1.weight` ...
`lin4.model.1.weight`), or one file holding both. Loading is strict on everything else.

Distance (inputs RGB in [-1, 1], (B, 3, H, W)): scale by the fixed ImageNet shift/scale, take
relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16, unit-normalise each over channels, square the
difference, weight channels with the non-negative linear head, average over space, sum over layers.
"""

from __future__ import annotations

import os
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F

LPIPS_FILE_HELP = ("LPIPS needs the torchvision VGG16 weights (`vgg16-397923af.pth`, keys features.N.*) and the "
                   "LPIPS linear heads (`vgg.pth`, keys lin0.model.1.weight ... lin4.model.1.weight), as two files "
                   "or merged into one")
# VGG16 configuration "D": conv widths, "M" = 2x2 max pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 in `features`


def vgg16_features() -> nn.Sequential:
    """torchvision's `vgg16().features` layer for layer, so `features.N.*` names match (no final pool)."""
    layers: list[nn.Module] = []
    cin = 3
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, item, 3, padding=1), nn.ReLU(inplace=False)]
            cin = item
    return nn.Sequential(*layers)


class _Head(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        widths = [self.features[i - 1].out_channels for i in _TAPS]
        for i, c in enumerate(widths):
            setattr(self, f"lin{i}", _Head(c))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        x = (x - self.shift) / self.scale
        for i, layer in enumerate(self.features[:_TAPS[-1] + 1]):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) x 2 in [-1, 1] -> (B, 1, 1, 1) distances."""
        if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
            raise ValueError(f"LPIPS takes two (B, 3, H, W) images in [-1, 1], got {tuple(a.shape)} and "
                             f"{tuple(b.shape)}")
        total = 0.0
        for i, (fa, fb) in enumerate(zip(self._taps(a), self._taps(b))):
            fa = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}").model((fa - fb).pow(2)).mean((2, 3), keepdim=True)
        return total

    @classmethod
    def from_file(cls, path: str | os.PathLike | dict, heads: str | os.PathLike | dict | None = None) -> "LPIPS":
        """Strictly loaded, eval-mode, frozen LPIPS from one merged file or (VGG16 file, heads file)."""
        from pvdm_fast.convert import load_strict

        sd = _read(path, "VGG16 / LPIPS")
        if heads is not None:
            sd.update(_read(heads, "LPIPS linear heads"))
        sd = {k: v.float() for k, v in sd.items() if not k.startswith("classifier.")}
        model = cls()
        missing_heads = [f"lin{i}.model.1.weight" for i in range(len(_TAPS)) if f"lin{i}.model.1.weight" not in sd]
        if missing_heads and not any(k.startswith("lin") for k in sd):
            raise ValueError(f"{path}: no LPIPS linear heads ({', '.join(missing_heads)}); {LPIPS_FILE_HELP}")
        if not any(k.startswith("features.") for k in sd):
            raise ValueError(f"{path}: no VGG16 weights (features.N.*); {LPIPS_FILE_HELP}")
        load_strict(model, sd, "LPIPS")
        return model.eval().requires_grad_(False)


def _read(source, what: str) -> dict:
    if isinstance(source, dict):
        return dict(source)
    path = pathlib.Path(os.fspath(source)).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file {path} not found; {LPIPS_FILE_HELP}")
    from pvdm_fast.convert import read_official, strip_prefixes

    return strip_prefixes(read_official(path), ("module.", "net.", "perceptual_loss."))
