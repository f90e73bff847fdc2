"""Official PVDM checkpoints -> pvdm_fast modules (strict: every official key is used exactly once)."""

from __future__ import annotations

import os
import pathlib

import torch

# Prefixes official checkpoints carry: DDP's `module.`, the LDM wrapper's `diffusion_model.`.
OFFICIAL_PREFIXES = ("module.", "diffusion_model.", "model.diffusion_model.")


def read_official(source) -> dict:
    """A state dict from a dict or an official `.pth`/`.pt`/`.safetensors` path (weights_only load).

    Accepts files that wrap the weights under 'state_dict' / 'model' / 'ema'.
    """
    if isinstance(source, dict):
        sd = source
    else:
        path = pathlib.Path(os.fspath(source))
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint file at {path}")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model", "ema"):
        if isinstance(sd.get(wrapper), dict) and not any(torch.is_tensor(v) for v in sd.values()):
            sd = sd[wrapper]
    return {k: v for k, v in sd.items() if torch.is_tensor(v)}


def strip_prefixes(sd: dict, prefixes=OFFICIAL_PREFIXES) -> dict:
    """Drop each known wrapper prefix when every key carries it."""
    for prefix in prefixes:
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def load_strict(module: torch.nn.Module, sd: dict, what: str) -> torch.nn.Module:
    """load_state_dict(strict=True) with an error that names the missing/unexpected keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    bad_shape = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or bad_shape:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        parts = [f"missing keys: {show(missing)}" if missing else "",
                 f"unexpected keys: {show(unexpected)}" if unexpected else "",
                 "shape mismatch: " + show([f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in bad_shape])
                 if bad_shape else ""]
        raise ValueError(f"{what}: checkpoint does not match the model; " + "; ".join(p for p in parts if p))
    module.load_state_dict(sd, strict=True)
    return module


# ---- autoencoder (models/autoencoder.py) ----


# ---- UNet (models/unet.py) ----
