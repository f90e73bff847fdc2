"""Classifier-free guidance for the condition-by-concatenation UNet.

eps = (1 + w) eps(x, c) - w eps(x, 0). With w == 0 (the official default) or no condition this is one
plain UNet call; otherwise the conditional and unconditional halves run as ONE call on a batch of 2B.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

EpsModel = Callable[..., Tensor]


def guided_eps(model: EpsModel, x: Tensor, t: Tensor, cond: Tensor | None = None, w: float = 0.0) -> Tensor:
    """Guided noise prediction; model(x, t, cond) with cond=None meaning a zero condition."""
    if not 0 <= w < math.inf:  # NaN too: it would silently turn every video black
        raise ValueError(f"guidance weight must be a finite number >= 0, got {w}")
    if cond is None or w == 0:
        return model(x, t, cond)
    b = x.shape[0]
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(b) if t.dim() == 0 else t
    eps = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, torch.zeros_like(cond)]))
    eps_cond, eps_uncond = eps[:b], eps[b:]
    return (1 + w) * eps_cond - w * eps_uncond


def guided_eps_fn(model: EpsModel, cond: Tensor | None = None, w: float = 0.0) -> Callable[[Tensor, Tensor], Tensor]:
    """An (x, t) -> eps closure for the samplers, with the condition and weight bound."""
    if not 0 <= w < math.inf:  # NaN too: it would silently turn every video black
        raise ValueError(f"guidance weight must be a finite number >= 0, got {w}")

    def eps_fn(x: Tensor, t: Tensor) -> Tensor:
        return guided_eps(model, x, t, cond, w)

    return eps_fn
