"""Training checkpoints: one folder per save, written whole or not at all.

Layout of `RUN_DIR/checkpoints/`:
  step-00001000/           <name>.safetensors per model (weights + kind + config, see models/io.py),
                           state.pt (optimizers, schedulers, scaler, per-rank RNG, data position),
                           manifest.json (config, step, clips seen, versions, files)
  latest.json              {"dir": "step-00001000", "step": 1000}

A checkpoint is assembled in a hidden temporary folder (every file fsynced), renamed into place in one
`os.replace`, and only then published through `latest.json` (itself replaced atomically). A crash at
any point leaves the previous checkpoint and pointer untouched; stale temporary folders are removed
by the next save. `state.pt` holds only tensors and plain containers, so it is read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from pvdm_fast._atomic import atomic_write, mkdtemp_beside
from pvdm_fast.models.io import load_weights, save_weights

CHECKPOINT_FORMAT = "pvdm_fast.checkpoint.v1"
LATEST = "latest.json"
STATE = "state.pt"
MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"


def versions() -> dict[str, str]:
    import pvdm_fast

    return {"pvdm_fast": pvdm_fast.__version__, "torch": torch.__version__, "python": platform.python_version()}


def _fsync_file(path: pathlib.Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: pathlib.Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a folder.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=str)))


@dataclass
class Weights:
    """One model file of a checkpoint: state dict, model kind and its config (for the metadata)."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    config: dict


@dataclass
class Checkpoint:
    dir: pathlib.Path
    manifest: dict
    _state: dict | None = field(default=None, repr=False)

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    def weights(self, name: str, device: str | torch.device = "cpu") -> tuple[dict, str, dict]:
        if name not in self.manifest["weights"]:
            raise ValueError(f"checkpoint {self.dir} has no weights named {name!r} "
                             f"(it has {', '.join(self.manifest['weights'])})")
        return load_weights(self.dir / f"{name}.safetensors", device)

    def state(self) -> dict:
        if self._state is None:
            self._state = torch.load(self.dir / STATE, map_location="cpu", weights_only=True)
        return self._state


def save_checkpoint(run_dir: str | os.PathLike, step: int, weights: dict[str, Weights], state: dict,
                    manifest: dict | None = None, keep: int = 2) -> pathlib.Path:
    """Write checkpoint `step` atomically and point latest.json at it; keep the newest `keep`."""
    root = pathlib.Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(_TMP_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    tmp = mkdtemp_beside(root / name, prefix=f"{_TMP_PREFIX}{name}-")
    try:
        for key, w in weights.items():
            save_weights(tmp / f"{key}.safetensors", w.state_dict, w.kind, w.config)
        torch.save(state, tmp / STATE)
        _fsync_file(tmp / STATE)
        info = {"format": CHECKPOINT_FORMAT, "step": step, "time": time.time(), "versions": versions(),
                "weights": {k: w.kind for k, w in weights.items()}, **(manifest or {})}
        write_json_atomic(tmp / MANIFEST, info)
        _fsync_dir(tmp)
        final = root / name
        if final.exists():  # saving the same step again (e.g. a signal right after a periodic save)
            old = root / f"{_TMP_PREFIX}old-{name}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(root / LATEST, {"dir": name, "step": step})
    _prune(root, keep, protect=name)
    return root / name


def _complete(folder: pathlib.Path) -> bool:
    return (folder / MANIFEST).is_file() and (folder / STATE).is_file()


def _prune(root: pathlib.Path, keep: int, protect: str) -> None:
    if keep < 1:
        return
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        if old.name != protect:
            shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(path: str | os.PathLike) -> pathlib.Path | None:
    """The checkpoint folder for a run folder (its latest) or a checkpoint folder itself; None if the
    run has none yet. Raises FileNotFoundError when `path` does not exist."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no run folder or checkpoint at {path}")
    if _complete(path):
        return path
    root = path / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        target = root / json.loads(pointer.read_text())["dir"]
        if _complete(target):
            return target
    # latest.json lost or pointing at a deleted folder: fall back to the newest complete folder.
    done = sorted(p for p in root.glob("step-*") if p.is_dir() and _complete(p)) if root.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    folder = find_checkpoint(path)
    if folder is None:
        raise FileNotFoundError(f"{path} holds no checkpoint yet (expected {path}/checkpoints/{LATEST})")
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{folder} is not a pvdm_fast training checkpoint (format {manifest.get('format')!r})")
    return Checkpoint(folder, manifest)
