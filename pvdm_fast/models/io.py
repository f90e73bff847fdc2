"""Model weight files: one safetensors file holding the weights, the model kind and its config.

The config travels in the safetensors metadata (JSON), so a file is self-describing: `pvdm convert`,
the trainers and `pvdm encode` / `pvdm sample` all read and write this one format.
"""

from __future__ import annotations

import json
import os
import pathlib

import torch

from pvdm_fast._atomic import atomic_write

FORMAT = "pvdm_fast.weights.v1"


def save_weights(path: str | os.PathLike, state_dict: dict, kind: str, config: dict) -> None:
    """Write atomically: temp file in the same folder, fsync, os.replace."""
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    meta = {"format": FORMAT, "kind": kind, "config": json.dumps(config, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[dict, str, dict]:
    """(state_dict, kind, config) from a file written by `save_weights`."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path} (expected a .safetensors file written by pvdm_fast)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:  # a bad header, an unreadable file
        raise ValueError(f"{path} is not a readable pvdm_fast weights file: {describe_unreadable(path, exc)}"
                         ) from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pvdm_fast weights file (metadata format {meta.get('format')!r}); "
                         "convert official checkpoints with `pvdm convert`")
    try:
        config = json.loads(meta["config"])
        kind = meta["kind"]
        tensors = load_file(str(path), device="cpu")
    except (KeyError, ValueError, SafetensorError, OSError) as exc:  # not MemoryError
        raise ValueError(f"{path} is a damaged pvdm_fast weights file ({type(exc).__name__}: {exc}); "
                         "write it again (an interrupted copy?)") from exc
    # Outside the try: a device error (no CUDA, out of memory) is not the file's fault.
    if torch.device(device).type != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, kind, config


def describe_unreadable(path: pathlib.Path, exc: BaseException) -> str:
    """Why a weights file could not be opened, in words a user can act on."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # a torch.save zip archive or a legacy pickle
        return ("it is a PyTorch checkpoint (.pth), not safetensors; for official PVDM checkpoints pass "
                "--official-autoencoder/--official-diffusion with --config, or convert them once with "
                "`pvdm convert`")
    if len(head) < 8:
        return "it is empty or truncated (an interrupted copy?)"
    return f"truncated or not safetensors ({type(exc).__name__}: {exc})"
