"""The DDPM noise schedule: betas, cumulative alphas, forward noising and x0 <-> eps conversions.

Tables are float64 (the official code builds them in float64 and stores float32 copies; we keep
float64 and cast the gathered coefficients to the data's dtype, which is at least as accurate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("linear", "cosine")
LOSSES = ("l2", "l1")


@dataclass
class DiffusionConfig:
    timesteps: int = 1000
    schedule: str = "linear"      # official: betas = linspace(sqrt(start), sqrt(end), T)^2
    linear_start: float = 0.0015
    linear_end: float = 0.0195
    loss: str = "l2"              # the official code trains with L2 (its config's "l1" is never read)
    cond_prob: float = 0.3        # probability that a training batch is conditioned on the previous clip
    guidance: float = 0.0         # w in eps = (1 + w) eps(x, c) - w eps(x, 0)

    def validate(self) -> None:
        if self.timesteps <= 0:
            raise ValueError(f"DiffusionConfig.timesteps must be positive, got {self.timesteps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"DiffusionConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "linear" and not 0.0 < self.linear_start <= self.linear_end < 1.0:
            raise ValueError(f"linear schedule needs 0 < linear_start <= linear_end < 1, got "
                             f"{self.linear_start}, {self.linear_end}")
        if self.loss not in LOSSES:
            raise ValueError(f"DiffusionConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if not 0.0 <= self.cond_prob <= 1.0:
            raise ValueError(f"DiffusionConfig.cond_prob must be in [0, 1], got {self.cond_prob}")
        if self.guidance < 0:
            raise ValueError(f"DiffusionConfig.guidance must be >= 0, got {self.guidance}")


def make_betas(schedule: str, timesteps: int, linear_start: float = 0.0015, linear_end: float = 0.0195,
               cosine_s: float = 8e-3) -> Tensor:
    """float64 (timesteps,) betas for the official 'linear' or the improved-DDPM 'cosine' schedule."""
    if schedule == "linear":
        return torch.linspace(linear_start ** 0.5, linear_end ** 0.5, timesteps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps + cosine_s
        abar = torch.cos(steps / (1 + cosine_s) * math.pi / 2) ** 2
        abar = abar / abar[0]
        return (1 - abar[1:] / abar[:-1]).clamp(0.0, 0.999)
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


class NoiseSchedule:
    """Holds `betas` and `alphas_cumprod` (float64, on `device`) and the closed-form q(x_t | x_0)."""

    def __init__(self, betas: Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or betas.numel() == 0 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a non-empty 1D sequence of values in (0, 1)")
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()

    @classmethod
    def from_config(cls, config: DiffusionConfig) -> "NoiseSchedule":
        config.validate()
        return cls(make_betas(config.schedule, config.timesteps, config.linear_start, config.linear_end))

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.numel())

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        out = NoiseSchedule.__new__(NoiseSchedule)
        for name, value in vars(self).items():
            setattr(out, name, value.to(device))
        return out

    def _coef(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """table[t] broadcast over like's non-batch dims, in like's dtype and device."""
        t = torch.as_tensor(t, device=table.device).long()
        if t.dim() == 0:
            t = t.expand(like.shape[0])
        if t.shape != (like.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({like.shape[0]},), got {tuple(t.shape)}")
        # Range check only for host tensors: on a GPU it would stall the training loop on a sync.
        if t.device.type == "cpu" and bool(((t < 0) | (t >= table.numel())).any()):
            raise ValueError(f"timesteps must be in [0, {table.numel() - 1}]")
        return table[t].to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps."""
        return (self._coef(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
        return ((x_t - self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_t) * eps)
                / self._coef(self.sqrt_alphas_cumprod, t, x_t))

    def predict_eps(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)."""
        return ((x_t - self._coef(self.sqrt_alphas_cumprod, t, x_t) * x0)
                / self._coef(self.sqrt_one_minus_alphas_cumprod, t, x_t))
