"""RNG state of one process as tensors and plain containers (loadable with weights_only=True).

Trainers draw their per-step randomness from generators seeded by (seed, step), so resuming does not
depend on these states; they are saved so that anything using the global generators (dropout, user
code) also continues exactly.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def capture() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def preserved():
    """Run work that is no part of training (evaluation: network constructors, DataLoader seeds) without
    moving the global torch / CUDA / numpy / python generators: they are put back afterwards."""
    state = capture()
    try:
        yield
    finally:
        restore(state)


def step_generator(seed: int, step: int, micro: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of one micro-step: the same on every rank, so ranks can slice a global draw."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) * 64 + micro)
