"""Exponential moving average of model weights, updated every `every` optimizer steps.

The official diffusion recipe averages every 25 iterations with LDM's LitEma, whose decay warms up:
update number k (1-based) uses min(0.9999, (1 + k) / (10 + k)), so the average forgets the random
initial weights within a few updates and reaches 0.9999 only after about 90k updates (2.25M
iterations, longer than the official 850k-iteration runs). A constant decay instead keeps most of the
initialisation for a long time (0.9999 every 25 steps: 67 % of it after 100k steps). All three
(decay, interval, warm-up) are configurable.
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """A float32 shadow of a module's parameters (buffers are copied, not averaged)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, every: int = 25, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if every < 1:
            raise ValueError(f"EMA update interval must be >= 1 step, got {every}")
        self.decay, self.every, self.warmup = decay, every, warmup
        self.updates = 0  # averaging updates so far: the warm-up's k, saved with the training state
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self._params = {k for k, _ in model.named_parameters()}

    @torch.no_grad()
    def maybe_update(self, model: nn.Module, step: int) -> bool:
        """After optimizer step number `step` (1-based): average when step % every == 0."""
        if step % self.every:
            return False
        self.update(model)
        return True

    def current_decay(self, updates: int) -> float:
        """The decay of update number `updates` (1-based)."""
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.current_decay(self.updates)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if k in self._params and v.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - decay)
            else:
                s.copy_(v.detach())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise ValueError(f"EMA state does not match the model (differing keys: {sorted(missing)[:5]})")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> None:
        model.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
