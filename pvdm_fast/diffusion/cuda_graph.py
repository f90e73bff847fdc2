"""CUDA-graph replay of the denoising step: one capture per (model function, batch shape, plan length).

The captured step reads its timestep and coefficients from device tables at a device-side step
counter that the step itself increments, so a whole sampler run is `len(plan)` graph replays with
no host synchronisation and no host-to-device copies. Per-sample noise is drawn eagerly into a
static buffer before each replay (CUDA generators advance without a sync), which keeps the noise
identical to the eager loop's for the same seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from pvdm_fast.diffusion.samplers import EpsFn, NoiseSource, SamplingPlan, denoise_step


@dataclass
class _Captured:
    replay: Callable[[], None]
    x: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    step: torch.Tensor
    timesteps: torch.Tensor
    coefs: torch.Tensor


class CudaGraphLoop:
    """Drop-in for `EagerLoop` on CUDA. `eps_fn` must read any per-run input (the condition) from
    tensors whose storage stays fixed, since the graph replays the kernels on the captured buffers;
    pass the same `eps_fn` object again to reuse a capture.

    `capture=False` runs the same static-buffer step eagerly (on any device): for debugging, and so
    the step-counter logic is tested where there is no GPU."""

    def __init__(self, warmup_steps: int = 2, capture: bool = True):
        self.warmup_steps = warmup_steps
        self.capture = capture
        self._graphs: dict[tuple, _Captured] = {}
        self._pool = None

    def __call__(self, eps_fn: EpsFn, plan: SamplingPlan, x: torch.Tensor, noise: NoiseSource | None,
                 clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
        if self.capture and x.device.type != "cuda":
            raise ValueError("CUDA-graph sampling needs the model and latents on a CUDA device")
        key = (id(eps_fn), tuple(x.shape), x.device, len(plan), clip_x0, plan.needs_noise)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(eps_fn, plan, x, clip_x0)
        plan = plan.to(x.device)
        cap.timesteps.copy_(plan.timesteps)
        cap.coefs.copy_(plan.coefs)
        cap.x.copy_(x)
        cap.x0.zero_()
        cap.step.zero_()
        for _ in tqdm(range(len(plan)), desc="denoising (graph)", leave=False, disable=not progress):
            if plan.needs_noise:
                noise.fill_(cap.noise)
            cap.replay()
        return cap.x.clone()

    def _capture(self, eps_fn: EpsFn, plan: SamplingPlan, x: torch.Tensor, clip_x0: bool) -> _Captured:
        plan = plan.to(x.device)
        cap = _Captured(lambda: None, x.clone(), torch.zeros_like(x), torch.zeros_like(x),
                        torch.zeros((1,), dtype=torch.int64, device=x.device),
                        plan.timesteps.clone(), plan.coefs.clone())
        batch, use_noise = x.shape[0], plan.needs_noise

        def body() -> None:
            t = cap.timesteps.index_select(0, cap.step).expand(batch)
            coef = cap.coefs.index_select(0, cap.step)[0]
            x_next, x0 = denoise_step(eps_fn, cap.x, cap.x0, cap.noise if use_noise else None, t, coef, clip_x0)
            cap.x.copy_(x_next)
            cap.x0.copy_(x0)
            cap.step.add_(1)

        if not self.capture:
            cap.replay = body
            return cap
        # Warm-up on a side stream (cuBLAS/cuDNN handles, autotuning, torch.compile) as capture needs.
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_steps):
                cap.step.zero_()
                body()
        torch.cuda.current_stream(x.device).wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # Graphs share one memory pool: they are never replayed concurrently.
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            body()
        cap.replay = graph.replay
        return cap
