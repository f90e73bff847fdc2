"""Inception-3D (Kinetics-400) for FVD, and the two weight files the field uses.

`i3d_pretrained_400.pt` (official PVDM, VideoGPT, TATS) is a state dict of the pytorch-i3d port;
`InceptionI3D` uses the same parameter names so it loads strictly. Its input is the output of
`preprocess_for_i3d` (short side to 224, centre crop, [-1, 1]).

StyleGAN-V's `i3d_torchscript.pt` is a TorchScript archive run as is. Its forward is
`detector(videos, rescale: bool, resize: bool, return_features: bool)` with videos (B, 3, T, H, W);
StyleGAN-V passes uint8 values and `rescale=True, resize=True, return_features=True`: rescale maps
[0, 255] to [-1, 1] (x / 255 * 2 - 1), resize brings frames to 224 x 224 (the whole frame, no crop,
like the TensorFlow FVD reference), return_features returns the 400 logits before the softmax.
`TorchScriptI3D.forward` takes our preprocessed [-1, 1] 224 batch (both flags off), while
`i3d_features` runs each network with its own protocol on raw uint8 videos.
"""

from __future__ import annotations

import os
import pathlib
import zipfile

import torch
import torch.nn as nn
import torch.nn.functional as F

I3D_SIZE = 224
# The fewest frames each I3D takes. Three temporal stride-2 stages (Conv3d_1a, MaxPool3d_4a,
# MaxPool3d_5a) precede the final 2x7x7 average pool, which needs 2 frames. pytorch-i3d computes TF
# 'SAME' padding from the input size, so each stage gives ceil(T / 2): 9 -> 5 -> 3 -> 2, 8 -> 1.
# StyleGAN-V's TorchScript (`src.i3dpt_jit.I3D`, scripted from the kinetics_i3d_pytorch port) pads
# statically (max(k - s, 0), whatever the size) before a floor convolution and ceil-mode pools, so
# odd lengths lose a frame at the first stage: 9 -> 4 -> 2 -> 1, 10 -> 5 -> 3 -> 2. (Derived from the
# port's code; 10 is also the floor that common FVD tool-kits enforce for this file.)
I3D_MIN_FRAMES = {"pvdm": 9, "stylegan-v": 10}
_TORCHSCRIPT_ARGS = ("rescale", "resize", "return_features")
I3D_FILE_HELP = ("the Kinetics-400 I3D weights: `i3d_pretrained_400.pt` (pytorch-i3d state dict used by the "
                 "official PVDM, VideoGPT and TATS) or StyleGAN-V's TorchScript `i3d_torchscript.pt`")
# Branch widths of each Inception block: b0, b1a, b1b, b2a, b2b, b3b (the Kinetics I3D architecture).
_MIXED = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32), "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64), "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64), "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128), "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """TensorFlow 'SAME' padding computed from the input size, the extra pixel at the end (as the port)."""
    pad = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pad += [total // 2, total - total // 2]
    return F.pad(x, pad)


class Unit3D(nn.Module):
    """Conv3d (same padding) + BatchNorm + ReLU; the logits unit has a bias and neither BN nor ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), *, bn: bool = True,
                 relu: bool = True, bias: bool = False, eps: float = 1e-5):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=eps) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Zero padding (not -inf) as in the port; inputs are post-ReLU so the two agree.
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    def __init__(self, cin: int, widths: tuple[int, ...], eps: float):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3 = widths
        self.b0 = Unit3D(cin, w0, eps=eps)
        self.b1a = Unit3D(cin, w1a, eps=eps)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3), eps=eps)
        self.b2a = Unit3D(cin, w2a, eps=eps)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3), eps=eps)
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, w3, eps=eps)
        self.out_channels = w0 + w1b + w2b + w3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class InceptionI3D(nn.Module):
    """(B, 3, T, 224, 224) in [-1, 1] -> (B, num_classes) logits averaged over time (eval mode)."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3, eps: float = 1e-5):
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), eps=eps)
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, eps=eps)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3), eps=eps)
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        cin = 192
        for name in ("Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
                     "Mixed_5b", "Mixed_5c"):
            if name == "Mixed_4b":
                self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
            if name == "Mixed_5b":
                self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
            block = Inception(cin, _MIXED[name], eps)
            setattr(self, name, block)
            cin = block.out_channels
        self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)
        self.num_classes = num_classes
        self._order = [n for n, _ in self.named_children() if n != "logits"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1024, T', 1, 1): the 2x7x7 average pool of Mixed_5c (stride 1, as the port)."""
        for name in self._order:
            x = getattr(self, name)(x)
        return F.avg_pool3d(x, (2, 7, 7), stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"I3D expects (B, 3, T, {I3D_SIZE}, {I3D_SIZE}) from preprocess_for_i3d, got "
                             f"{tuple(x.shape)}")
        check_i3d_frames(self, x.shape[2])
        logits = self.logits(self.features(x))  # dropout is the identity in eval mode
        return logits.mean(dim=(2, 3, 4))  # spatially 1x1 at 224: the mean over time


def preprocess_for_i3d(videos, size: int = I3D_SIZE) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float32 (B, 3, T, size, size) in [-1, 1].

    Short side to `size` (bilinear, align_corners=False, long side ceil(long * size / short)), centre
    crop with offset (long - size) // 2, then x / 255 * 2 - 1: the official PVDM / VideoGPT protocol.
    """
    import math

    v = torch.as_tensor(videos)
    if v.ndim != 5 or v.shape[-1] != 3:
        raise ValueError(f"preprocess_for_i3d expects uint8 videos (B, T, H, W, 3), got {tuple(v.shape)}")
    b, t, h, w, _ = v.shape
    x = v.reshape(b * t, h, w, 3).permute(0, 3, 1, 2).float() / 255.0
    scale = size / min(h, w)
    target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    top, left = (x.shape[2] - size) // 2, (x.shape[3] - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    x = (x - 0.5) * 2.0
    return x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


class TorchScriptI3D(nn.Module):
    """StyleGAN-V's `i3d_torchscript.pt`, run as is. forward: preprocessed [-1, 1] batch (flags off)."""

    protocol = "stylegan-v"

    def __init__(self, scripted: torch.jit.ScriptModule):
        super().__init__()
        self.detector = scripted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector(x, rescale=False, resize=False, return_features=True)

    def raw(self, videos_bcthw: torch.Tensor) -> torch.Tensor:
        """uint8-valued (B, 3, T, H, W): the detector's own rescale and resize (StyleGAN-V's call)."""
        return self.detector(videos_bcthw, rescale=True, resize=True, return_features=True)


def is_torchscript(path: str | os.PathLike) -> bool:
    """TorchScript archives are zip files with a `code/` folder; torch.save state dicts have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.startswith("code/") for n in z.namelist())


def _i3d_state_dict(source) -> dict:
    from pvdm_fast.convert import read_official, strip_prefixes
    from pvdm_fast.metrics.weights import read_state_dict

    prefixes = ("state_dict.", "module.", "model.")
    if isinstance(source, dict):
        return strip_prefixes(read_official(source), prefixes)
    return read_state_dict(source, "I3D", I3D_FILE_HELP, prefixes)


def _load_torchscript(path: pathlib.Path, device) -> TorchScriptI3D:
    from pvdm_fast.metrics.weights import load_torchscript, torchscript_arguments

    scripted = load_torchscript(path, "I3D", I3D_FILE_HELP, device)
    args = torchscript_arguments(scripted)
    if not all(a in args for a in _TORCHSCRIPT_ARGS):
        hint = " (StyleGAN-V's C3D `c3d_ucf101.pt` takes only the video: pass it as --c3d)" if len(args) == 1 else ""
        raise ValueError(f"{path} is a TorchScript file whose forward takes ({', '.join(args)}), not StyleGAN-V's "
                         f"I3D (videos, {', '.join(_TORCHSCRIPT_ARGS)}){hint}; expected {I3D_FILE_HELP}")
    return TorchScriptI3D(scripted)


def load_i3d(path_or_state_dict, device: str | torch.device = "cpu") -> nn.Module:
    """An eval-mode I3D from a pytorch-i3d state dict (dict, .pt, .safetensors) or a TorchScript file.

    State dicts load strictly (float32 weights; `state_dict.` / `module.` prefixes are stripped); the
    class count comes from the logits layer. Raises FileNotFoundError naming the file that is needed,
    ValueError for a file that is unreadable or holds another network.
    """
    from pvdm_fast.metrics.weights import describe_state_dict

    if not isinstance(path_or_state_dict, dict):
        path = pathlib.Path(os.fspath(path_or_state_dict)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"I3D weights file {path} not found; it must be {I3D_FILE_HELP}")
        if is_torchscript(path):
            return _load_torchscript(path, device).eval().requires_grad_(False)
        path_or_state_dict = path
    from pvdm_fast.convert import load_strict

    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in _i3d_state_dict(path_or_state_dict).items()}
    if "logits.conv3d.weight" not in sd:
        where = "" if isinstance(path_or_state_dict, dict) else f"{path_or_state_dict}: "
        raise ValueError(f"{where}not a pytorch-i3d state dict (no logits.conv3d.weight; {describe_state_dict(sd)}); "
                         f"expected {I3D_FILE_HELP}")
    model = InceptionI3D(num_classes=sd["logits.conv3d.weight"].shape[0])
    load_strict(model, sd, "I3D")
    return model.to(device).eval().requires_grad_(False)


def i3d_min_frames(model: nn.Module) -> int:
    """The fewest frames per clip `model` can take (see I3D_MIN_FRAMES)."""
    return I3D_MIN_FRAMES[i3d_protocol(model)]


def check_i3d_frames(model: nn.Module, frames: int) -> None:
    """ValueError unless clips of `frames` frames fit through `model` (checked before any video is read)."""
    need = i3d_min_frames(model)
    if frames < need:
        kind = "StyleGAN-V's TorchScript I3D" if i3d_protocol(model) == "stylegan-v" else "the pytorch-i3d I3D"
        raise ValueError(f"FVD / KVD with {kind} need clips of at least {need} frames (its temporal downsampling "
                         f"leaves too few frames for the final pooling), got {frames}; raise --frames")


def module_device(model: nn.Module) -> torch.device:
    """Device of the first parameter or buffer (TorchScript modules included); CPU when there is none."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def i3d_features(model: nn.Module, videos_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float64 (B, D) FVD features with the protocol of `model`'s file."""
    videos = torch.as_tensor(videos_uint8).to(module_device(model))
    if isinstance(model, TorchScriptI3D):
        return model.raw(videos.permute(0, 4, 1, 2, 3).float()).double().cpu()
    return model(preprocess_for_i3d(videos)).double().cpu()


def i3d_protocol(model: nn.Module) -> str:
    """'pvdm' (short side 224 + centre crop, pytorch-i3d) or 'stylegan-v' (TorchScript rescale + resize)."""
    return "stylegan-v" if isinstance(model, TorchScriptI3D) else "pvdm"
