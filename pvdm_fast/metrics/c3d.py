"""C3D fine-tuned on UCF-101: the classifier of the video Inception Score (TGAN / TGANv2 / StyleGAN-V).

The network is TGANv2's `C3DVersion1UCF101` (Caffe C3D fine-tuned on UCF-101, 101 classes):
input RGB in [-1, 1] -> BGR scaled by 128 -> each frame resized to 112 x 112 (bilinear, corners
aligned as Chainer's resize_images) -> + (128 - mean) where `mean` is the Sports-1M BGR pixel mean
clip (3, 16, 112, 112), the centre crop [8:120] of `mean2.npz` -> 8 conv3d 3x3x3 + ReLU with
max-pools (1,2,2) then 2x2x2 (ceil mode, so 7 -> 4) -> fc6, fc7 (ReLU), fc8 -> softmax.

Files accepted by `load_c3d`: StyleGAN-V's TorchScript `c3d_ucf101.pt` (run as is: it takes uint8
(B, 3, T, H, W) and returns the class probabilities), a state dict with this module's names
(`conv1a.weight` ... `fc8.bias` and the `mean` buffer), or TGANv2's Chainer `conv3d_deepnetA_ucf.npz`
(`conv1a/W` ...) together with `mean2.npz`.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

C3D_SIZE = 112
C3D_FRAMES = 16  # TGANv2's mean clip (mean2.npz) and StyleGAN-V's IS protocol
C3D_FILE_HELP = ("the UCF-101 fine-tuned C3D of the TGAN / StyleGAN-V Inception Score: StyleGAN-V's TorchScript "
                 "`c3d_ucf101.pt`, a state dict with pvdm_fast's C3D names, or TGANv2's Chainer "
                 "`conv3d_deepnetA_ucf.npz` plus its `mean2.npz`")
_CONVS = (("conv1a", 64), ("conv2a", 128), ("conv3a", 256), ("conv3b", 256), ("conv4a", 512), ("conv4b", 512),
          ("conv5a", 512), ("conv5b", 512))
_POOL_AFTER = {"conv1a": (1, 2, 2), "conv2a": (2, 2, 2), "conv3b": (2, 2, 2), "conv4b": (2, 2, 2),
               "conv5b": (2, 2, 2)}


class C3D(nn.Module):
    """(B, 3, T, H, W) RGB in [-1, 1] -> (B, num_classes) probabilities; T must equal the mean's length."""

    def __init__(self, num_classes: int = 101, frames: int = 16, size: int = C3D_SIZE, hidden: int = 4096,
                 widths: tuple[int, ...] = tuple(w for _, w in _CONVS)):
        super().__init__()
        cin = 3
        for (name, _), cout in zip(_CONVS, widths):
            setattr(self, name, nn.Conv3d(cin, cout, 3, padding=1))
            cin = cout
        temporal, spatial = frames, size
        for k in _POOL_AFTER.values():  # ceil-mode pools
            temporal, spatial = -(-temporal // k[0]), -(-spatial // k[1])
        self.fc6 = nn.Linear(cin * temporal * spatial * spatial, hidden)
        self.fc7 = nn.Linear(hidden, hidden)
        self.fc8 = nn.Linear(hidden, num_classes)
        self.register_buffer("mean", torch.zeros(3, frames, size, size))
        self.size = size

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] != self.mean.shape[1]:
            raise ValueError(f"C3D expects (B, 3, {self.mean.shape[1]}, H, W) in [-1, 1], got {tuple(x.shape)}")
        b, _, t, h, w = x.shape
        x = x.flip(1) * 128.0  # RGB -> BGR on the Caffe 0..255 scale (centred on 128)
        x = x.transpose(1, 2).reshape(b * t, 3, h, w)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=True)
        x = x.reshape(b, t, 3, self.size, self.size).transpose(1, 2) + (128.0 - self.mean)
        for name, _ in _CONVS:
            x = F.relu(getattr(self, name)(x))
            if name in _POOL_AFTER:
                k = _POOL_AFTER[name]
                x = F.max_pool3d(x, k, k, ceil_mode=True)  # Chainer's cover_all
        x = F.relu(self.fc6(x.flatten(1)))
        x = F.relu(self.fc7(x))  # dropout is the identity at evaluation
        return self.fc8(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.logits(x).double(), dim=1)


class TorchScriptC3D(nn.Module):
    """StyleGAN-V's `c3d_ucf101.pt`: uint8-valued (B, 3, T, H, W) -> probabilities, called with no flags."""

    def __init__(self, scripted):
        super().__init__()
        self.detector = scripted

    def forward(self, videos_bcthw_uint8: torch.Tensor) -> torch.Tensor:
        return self.detector(videos_bcthw_uint8).double()


def _from_chainer(z: dict) -> dict:
    return {k.replace("/W", ".weight").replace("/b", ".bias"): v for k, v in z.items() if "/" in k}


def _read_mean(mean: np.ndarray, size: int) -> torch.Tensor:
    mean = torch.as_tensor(np.asarray(mean, dtype=np.float32))
    if mean.ndim == 5:
        mean = mean[0]
    if mean.ndim != 4 or mean.shape[0] != 3:
        raise ValueError(f"C3D mean must be (3, T, H, W), got {tuple(mean.shape)}")
    top, left = (mean.shape[2] - size) // 2, (mean.shape[3] - size) // 2  # mean2.npz: 128 -> [8:120]
    return mean[:, :, top:top + size, left:left + size].contiguous()


def _read_npz(path: pathlib.Path, kind: str, expected: str) -> dict:
    """All arrays of an .npz file; an unreadable one raises ValueError naming it."""
    import zipfile
    import zlib

    from pvdm_fast.metrics.weights import unreadable

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise unreadable(path, kind, exc, expected) from None


def _load_torchscript(path: pathlib.Path, device) -> "TorchScriptC3D":
    from pvdm_fast.metrics.weights import load_torchscript, torchscript_arguments

    scripted = load_torchscript(path, "C3D", C3D_FILE_HELP, device)
    if "return_features" in torchscript_arguments(scripted):
        raise ValueError(f"{path} looks like StyleGAN-V's TorchScript I3D (`i3d_torchscript.pt`, the FVD network: "
                         f"pass it as --i3d), not the C3D; expected {C3D_FILE_HELP}")
    return TorchScriptC3D(scripted)


def _state_dict(path) -> dict:
    from pvdm_fast.metrics.weights import read_state_dict

    if isinstance(path, dict):
        return dict(path)
    if path.suffix == ".npz":
        z = _read_npz(path, "C3D", C3D_FILE_HELP)
        sd = {k: torch.as_tensor(v) for k, v in _from_chainer(z).items()}
        if "mean" in z:
            sd["mean"] = torch.as_tensor(z["mean"])
        return sd
    return read_state_dict(path, "C3D", C3D_FILE_HELP, ("state_dict.", "module."))


def load_c3d(path, mean_path=None, device: str | torch.device = "cpu") -> nn.Module:
    """An eval-mode C3D (returns probabilities) from one of the files listed in the module docstring.

    Raises FileNotFoundError naming a missing file, ValueError for a file that is unreadable or holds
    another network (with what it looks like)."""
    from pvdm_fast.metrics.i3d import is_torchscript
    from pvdm_fast.metrics.weights import describe_state_dict

    if not isinstance(path, dict):
        path = pathlib.Path(os.fspath(path)).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"C3D weights file {path} not found; it must be {C3D_FILE_HELP}")
        if is_torchscript(path):
            return _load_torchscript(path, device).eval().requires_grad_(False)
    sd = _state_dict(path)
    where = "" if isinstance(path, dict) else f"{path}: "
    if "fc8.weight" not in sd:
        raise ValueError(f"{where}not a C3D state dict (no fc8.weight; {describe_state_dict(sd)}); expected "
                         f"{C3D_FILE_HELP}")
    if mean_path is not None:
        mean_path = pathlib.Path(mean_path).expanduser()
        if not mean_path.is_file():
            raise FileNotFoundError(f"C3D mean file {mean_path} not found; it is TGANv2's `mean2.npz` (key 'mean', "
                                    "the Sports-1M BGR mean clip (3, 16, 128, 128))")
        z = _read_npz(mean_path, "C3D pixel mean", "TGANv2's `mean2.npz`")
        if not z:
            raise ValueError(f"{mean_path} holds no array; expected TGANv2's `mean2.npz`")
        sd["mean"] = torch.as_tensor(z["mean"] if "mean" in z else next(iter(z.values())))
    if "mean" not in sd:
        raise ValueError(f"{where}the C3D weights carry no pixel mean: pass TGANv2's `mean2.npz` (--c3d-mean) with "
                         "the Chainer weights")
    sd = {k: v.float() for k, v in sd.items()}
    sd["mean"] = _read_mean(sd["mean"].numpy(), C3D_SIZE)
    hidden = sd["fc7.weight"].shape[0] if "fc7.weight" in sd else 4096  # else load_strict names what is missing
    model = C3D(num_classes=sd["fc8.weight"].shape[0], frames=sd["mean"].shape[1], hidden=hidden,
                widths=tuple(sd[f"{n}.weight"].shape[0] if f"{n}.weight" in sd else w for n, w in _CONVS))
    from pvdm_fast.convert import load_strict

    load_strict(model, sd, "C3D")
    return model.to(device).eval().requires_grad_(False)


def c3d_frames(model: nn.Module) -> int:
    """The clip length `model` takes: its pixel mean's (TGANv2's mean clip: 16 frames, which StyleGAN-V's
    TorchScript C3D has built in)."""
    return int(model.mean.shape[1]) if isinstance(model, C3D) else C3D_FRAMES


def check_c3d_frames(model: nn.Module, frames: int) -> None:
    need = c3d_frames(model)
    if frames != need:
        raise ValueError(f"the Inception Score's C3D takes clips of exactly {need} frames (the length of its pixel "
                         f"mean clip), got --frames {frames}")


@torch.no_grad()
def c3d_probabilities(model: nn.Module, videos_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float64 (B, classes) class probabilities."""
    from pvdm_fast.metrics.i3d import module_device

    x = torch.as_tensor(videos_uint8).to(module_device(model)).permute(0, 4, 1, 2, 3)
    if isinstance(model, TorchScriptC3D):
        return model(x).cpu()
    return model(x.float() / 127.5 - 1.0).cpu()
