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
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path} (expected a .safetensors file written by pvdm_fast)")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a pvdm_fast weights file (metadata format {meta.get('format')!r}); "
                         "convert official checkpoints with `pvdm convert`")
    return load_file(str(path), device=str(device)), meta["kind"], json.loads(meta["config"])
