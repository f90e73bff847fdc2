"""Epsilon-prediction training losses, including PVDM's joint conditional/unconditional objective.

Randomness (timesteps, noise, the conditioning coin) comes from an optional `torch.Generator`, so a
training step is reproducible; draws are made on the generator's device and moved to the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from pvdm_fast.diffusion.schedule import LOSSES, NoiseSchedule

EpsModel = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]
"""(x_t, t, cond or None) -> predicted noise; a TriplaneUNet fits."""


def _draw_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    return generator.device if generator is not None else like.device


def eps_loss(pred: Tensor, target: Tensor, kind: str = "l2") -> Tensor:
    """Mean squared (l2) or absolute (l1) error over every element (official per-sample mean, then mean)."""
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; choose one of {LOSSES}")
    diff = pred.float() - target.float()
    return (diff * diff).mean() if kind == "l2" else diff.abs().mean()


def sample_timesteps(schedule: NoiseSchedule, batch: int, like: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """Uniform integer timesteps in [0, T) for a batch, on like's device."""
    t = torch.randint(0, schedule.num_timesteps, (batch,), generator=generator, device=_draw_device(generator, like))
    return t.to(like.device)


def diffusion_loss(model: EpsModel, schedule: NoiseSchedule, x_start: Tensor, cond: Tensor | None = None, *,
                   t: Tensor | None = None, noise: Tensor | None = None, loss: str = "l2",
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Noise x_start at random (or given) timesteps, predict the noise, return (loss, t)."""
    if t is None:
        t = sample_timesteps(schedule, x_start.shape[0], x_start, generator)
    if noise is None:
        noise = torch.randn(x_start.shape, generator=generator, device=_draw_device(generator, x_start),
                            dtype=x_start.dtype).to(x_start.device)
    x_t = schedule.q_sample(x_start, t, noise)
    return eps_loss(model(x_t, t, cond), noise, loss), t


def draw_conditioned(batch: int, cond_prob: float, *, per_sample: bool = False,
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Tensor:
    """Which samples train conditionally: (batch,) bool.

    The official trainer flips one coin per iteration (the whole batch is conditional with probability
    cond_prob); `per_sample=True` flips one per sample, the same objective with less variance per step.
    The data side needs this before it picks clips (an unconditional sample uses a random window).
    """
    if not 0.0 <= cond_prob <= 1.0:
        raise ValueError(f"cond_prob must be in [0, 1], got {cond_prob}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand((batch if per_sample else 1,), generator=generator, device=gen_device)
    return (u < cond_prob).expand(batch).to(device)


@dataclass
class JointLoss:
    loss: Tensor          # scalar
    t: Tensor             # (B,) timesteps used
    conditioned: Tensor   # (B,) bool: the condition was kept (drawn conditional and valid)


def joint_loss(model: EpsModel, schedule: NoiseSchedule, x_start: Tensor, cond: Tensor, cond_valid: Tensor | None = None,
               *, cond_prob: float = 0.3, conditioned: Tensor | None = None, per_sample: bool = False,
               loss: str = "l2", generator: torch.Generator | None = None, t: Tensor | None = None,
               noise: Tensor | None = None) -> JointLoss:
    """PVDM's joint objective: eps loss given the previous clip's latent, or given a zero condition.

    cond (B, C, L) is the condition latent; cond_valid (B,) bool marks conditions that are real (a
    condition made only of padding frames is zeroed, as officially). `conditioned` (B,) bool, if given,
    is the coin already drawn with `draw_conditioned`; otherwise it is drawn here with cond_prob.
    """
    b = x_start.shape[0]
    if cond.shape != x_start.shape:
        raise ValueError(f"cond must have x_start's shape {tuple(x_start.shape)}, got {tuple(cond.shape)}")
    if conditioned is None:
        conditioned = draw_conditioned(b, cond_prob, per_sample=per_sample, generator=generator,
                                       device=x_start.device)
    keep = conditioned.to(x_start.device, torch.bool).reshape(b)
    if cond_valid is not None:
        keep = keep & cond_valid.to(x_start.device, torch.bool).reshape(b)
    # where(), not a multiply: a zeroed condition must be exactly zero even if the latent held inf/NaN.
    cond = torch.where(keep.view(b, *([1] * (cond.dim() - 1))), cond, torch.zeros_like(cond))
    value, t = diffusion_loss(model, schedule, x_start, cond, t=t, noise=noise, loss=loss, generator=generator)
    return JointLoss(value, t, keep)
