"""Samplers for the epsilon-predicting latent diffusion model: DDPM, DDIM (eta), DPM-Solver++(2M).

Every sampler is a free function with the shared signature
`sampler(eps_fn, shape, schedule, steps, *, noise, clip_x0=True, x_T=None, progress=False, loop=None)`
(DDIM adds `eta`). Each one only builds a `SamplingPlan`: the descending timesteps and a table of
per-step coefficients for one fixed-shape update

    x0     = clip(rx * x - re * eps)                       (eps -> x0, clipped to [-1, 1] as official)
    x_next = cx * x + c0 * x0 + ce * eps + cp * x0_prev + cn * noise

so one step function serves all samplers. That step reads its coefficients from a device table, so
the loop never synchronises with the host and the step can be CUDA-graph captured
(`diffusion/cuda_graph.py`).

Time grid: the official DDIM grid `linspace(-1, T-1, steps+1)` truncated to integers; the last step
goes from the smallest timestep to "-1", where the sample is the (clipped) x0 prediction.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import torch
from tqdm.auto import tqdm

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x (B, C, L) float32, t (B,) int64) -> predicted noise, same shape as x."""

# Columns of the coefficient table (see the module docstring).
RX, RE, CX, C0, CE, CP, CN = range(7)
NUM_COEFS = 7

OFFICIAL_PRESET = {"sampler": "ddim", "steps": 400, "eta": 1.0}
"""The sampler behind the paper's numbers (PVDM_SPEC.md): DDIM-style with eta = 1, 400 steps."""


class NoiseSource(Protocol):
    def randn(self, shape: Sequence[int]) -> torch.Tensor: ...


class PerSampleNoise:
    """One seeded generator per sample, so a sample's noise does not depend on its batch.

    `randn(shape)` returns (B, *shape[1:]) where row j is drawn from generator j only; generators
    advance with every draw, so the same seed gives the same sample whatever the batch size.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu"):
        if len(seeds) == 0:
            raise ValueError("PerSampleNoise needs at least one seed")
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(device=self.device).manual_seed(s) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        out = torch.empty(tuple(shape), device=self.device, dtype=torch.float32)
        self.fill_(out)
        return out

    def fill_(self, out: torch.Tensor) -> torch.Tensor:
        """Fill `out` (B, ...) in place; row j from generator j (no host synchronisation)."""
        if out.shape[0] != len(self.generators):
            raise ValueError(f"noise for a batch of {out.shape[0]} requested from {len(self)} generators")
        for row, gen in zip(out, self.generators):
            row.normal_(generator=gen)
        return out


@dataclass
class SamplingPlan:
    """Descending timesteps (N,) int64 and coefficients (N, 7) float32 of one sampler run."""

    timesteps: torch.Tensor
    coefs: torch.Tensor
    needs_noise: bool

    def __len__(self) -> int:
        return int(self.timesteps.numel())

    def to(self, device: torch.device | str) -> "SamplingPlan":
        return SamplingPlan(self.timesteps.to(device), self.coefs.to(device), self.needs_noise)


def alphas_cumprod_of(schedule) -> torch.Tensor:
    """float64 (T,) cumulative alphas from a tensor or any object with `alphas_cumprod` or `betas`."""
    if torch.is_tensor(schedule):
        abar = schedule
    elif getattr(schedule, "alphas_cumprod", None) is not None:
        abar = torch.as_tensor(schedule.alphas_cumprod)
    elif getattr(schedule, "betas", None) is not None:
        abar = torch.cumprod(1.0 - torch.as_tensor(schedule.betas, dtype=torch.float64), 0)
    else:
        raise ValueError(f"cannot read alphas_cumprod from a {type(schedule).__name__}; pass the tensor")
    abar = abar.detach().to("cpu", torch.float64).flatten()
    if abar.numel() == 0 or not bool(((abar > 0) & (abar <= 1)).all()):
        raise ValueError("alphas_cumprod must be a non-empty sequence of values in (0, 1]")
    return abar


def timestep_pairs(num_timesteps: int, steps: int) -> list[tuple[int, int]]:
    """[(t, t_next), ...] of the official DDIM grid, ending with (t_min, -1)."""
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and the schedule's {num_timesteps} timesteps, got {steps}")
    # float32 linspace truncated toward zero, exactly as the official sampler builds it.
    times = list(reversed(torch.linspace(-1, num_timesteps - 1, steps + 1).int().tolist()))
    if len(set(times)) != len(times):
        raise ValueError(f"{steps} steps over {num_timesteps} timesteps repeat a timestep; use fewer steps")
    return list(zip(times[:-1], times[1:]))


def log_snr_pairs(abar: torch.Tensor, steps: int) -> list[tuple[int, int]]:
    """Timesteps uniform in log-SNR from T-1 down to 0, then -1; spaced at least one apart.

    DPM-Solver's error is set by the log-SNR step h: a uniform-in-h grid keeps the last steps near
    the data small, where the official (uniform-in-t) grid takes its largest jump in h.
    """
    num = abar.numel()
    if not 1 <= steps <= num:
        raise ValueError(f"steps must be between 1 and the schedule's {num} timesteps, got {steps}")
    lam = 0.5 * torch.log(abar / (1 - abar))
    targets = torch.linspace(lam[-1].item(), lam[0].item(), steps, dtype=torch.float64)
    ts = [int((lam - v).abs().argmin()) for v in targets]
    for i in range(steps - 2, -1, -1):  # strictly decreasing ...
        ts[i] = max(ts[i], ts[i + 1] + 1)
    for i in range(steps):  # ... and inside [0, T-1] (with many steps the pass above overshoots T-1)
        ts[i] = min(ts[i], num - 1 - i)
    ts.append(-1)
    return list(zip(ts[:-1], ts[1:]))


def _table(abar: torch.Tensor, pairs: list[tuple[int, int]], update) -> SamplingPlan:
    """Plan with rows [rx, re, *update(a, a_next, i)] computed in float64, one per step."""
    rows = []
    for i, (t, t_next) in enumerate(pairs):
        a = abar[t].item()
        a_next = abar[t_next].item() if t_next >= 0 else 1.0
        rows.append([1 / math.sqrt(a), math.sqrt(1 / a - 1), *update(a, a_next, i)])
    table = torch.tensor(rows, dtype=torch.float64)
    ts = torch.tensor([t for t, _ in pairs], dtype=torch.int64)
    return SamplingPlan(ts, table.float(), bool((table[:, CN] != 0).any()))


def _x0_only() -> list[float]:
    return [0.0, 1.0, 0.0, 0.0, 0.0]


def ddim_plan(schedule, steps: int, eta: float = 1.0) -> SamplingPlan:
    """DDIM (Song et al. 2021, eq. 12) as the official code runs it: the update uses the clipped x0
    but the raw eps, and sigma = eta * sqrt((1 - a/a_next) (1 - a_next) / (1 - a))."""
    if not 0 <= eta < math.inf:  # NaN too: it would silently turn every video black
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    abar = alphas_cumprod_of(schedule)
    pairs = timestep_pairs(abar.numel(), steps)

    def update(a, a_next, i):
        if pairs[i][1] < 0:
            return _x0_only()
        sigma = eta * math.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
        c = math.sqrt(max(1 - a_next - sigma**2, 0.0))
        return [0.0, math.sqrt(a_next), c, 0.0, sigma]

    return _table(abar, pairs, update)


def ddpm_plan(schedule, steps: int | None = None) -> SamplingPlan:
    """Ancestral DDPM (Ho et al. 2020): the posterior q(x_next | x, x0) with the clipped x0 and the
    variance beta-tilde; on a grid coarser than the schedule, the betas of the respaced chain."""
    abar = alphas_cumprod_of(schedule)
    pairs = timestep_pairs(abar.numel(), abar.numel() if steps is None else steps)

    def update(a, a_next, i):
        if pairs[i][1] < 0:
            return _x0_only()
        beta, alpha = 1 - a / a_next, a / a_next
        coef_x0 = beta * math.sqrt(a_next) / (1 - a)
        coef_x = (1 - a_next) * math.sqrt(alpha) / (1 - a)
        return [coef_x, coef_x0, 0.0, 0.0, math.sqrt(beta * (1 - a_next) / (1 - a))]

    return _table(abar, pairs, update)


def dpm_solver_pp_plan(schedule, steps: int) -> SamplingPlan:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): multistep second order in log-SNR on the data
    prediction, on a log-SNR-uniform grid; first order on the first step, and the last step
    returns the x0 prediction at t = 0."""
    abar = alphas_cumprod_of(schedule)
    pairs = log_snr_pairs(abar, steps)

    def lam(a: float) -> float:
        return 0.5 * math.log(a / (1 - a))

    def update(a, a_next, i):
        if pairs[i][1] < 0:
            return _x0_only()
        h = lam(a_next) - lam(a)
        cx = math.sqrt((1 - a_next) / (1 - a))
        cd = math.sqrt(a_next) * -math.expm1(-h)
        if i == 0:
            return [cx, cd, 0.0, 0.0, 0.0]
        t_prev = pairs[i - 1][0]
        r = (lam(a) - lam(abar[t_prev].item())) / h
        return [cx, cd * (1 + 0.5 / r), 0.0, -cd * 0.5 / r, 0.0]

    return _table(abar, pairs, update)


def denoise_step(eps_fn: EpsFn, x: torch.Tensor, x0_prev: torch.Tensor, noise: torch.Tensor | None,
                 t: torch.Tensor, coef: torch.Tensor, clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of every sampler. t: (B,) int64; coef: (7,) on x's device. Returns (x_next, x0)."""
    eps = eps_fn(x, t).float()
    x0 = coef[RX] * x - coef[RE] * eps
    if clip_x0:
        x0 = x0.clamp(-1.0, 1.0)
    x_next = coef[CX] * x + coef[C0] * x0 + coef[CE] * eps + coef[CP] * x0_prev
    if noise is not None:
        x_next = x_next + coef[CN] * noise
    return x_next, x0


class EagerLoop:
    """Runs a plan step by step; indexes the device tables, so no host synchronisation."""

    def __call__(self, eps_fn: EpsFn, plan: SamplingPlan, x: torch.Tensor, noise: NoiseSource | None,
                 clip_x0: bool = True, progress: bool = False) -> torch.Tensor:
        plan = plan.to(x.device)
        x0 = torch.zeros_like(x)
        for i in tqdm(range(len(plan)), desc="denoising", leave=False, disable=not progress):
            t = plan.timesteps[i].expand(x.shape[0])
            step_noise = noise.randn(x.shape) if plan.needs_noise else None
            x, x0 = denoise_step(eps_fn, x, x0, step_noise, t, plan.coefs[i], clip_x0)
        return x


def run_plan(eps_fn: EpsFn, plan: SamplingPlan, shape: Sequence[int], *, noise: NoiseSource | None,
             clip_x0: bool = True, x_T: torch.Tensor | None = None, progress: bool = False,
             loop=None, device: torch.device | str | None = None) -> torch.Tensor:
    """Draw x_T from `noise` (unless given) and run the plan; returns the final sample (float32)."""
    if x_T is None:
        if noise is None:
            raise ValueError("pass a noise source (e.g. PerSampleNoise(seeds, device)) or x_T")
        x_T = noise.randn(tuple(shape))
    elif tuple(x_T.shape) != tuple(shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
    if plan.needs_noise and noise is None:
        raise ValueError("this sampler adds noise at every step: pass a noise source")
    x_T = x_T.to(device if device is not None else x_T.device, torch.float32)
    return (loop or EagerLoop())(eps_fn, plan, x_T, noise, clip_x0=clip_x0, progress=progress)


def ddim(eps_fn: EpsFn, shape: Sequence[int], schedule, steps: int, *, noise: NoiseSource | None,
         eta: float = 1.0, clip_x0: bool = True, x_T: torch.Tensor | None = None,
         progress: bool = False, loop=None) -> torch.Tensor:
    """DDIM with eta (eta = 1, 400 steps is the official protocol); returns (B, C, L) float32."""
    return run_plan(eps_fn, ddim_plan(schedule, steps, eta), shape, noise=noise, clip_x0=clip_x0,
                    x_T=x_T, progress=progress, loop=loop)


def ddpm(eps_fn: EpsFn, shape: Sequence[int], schedule, steps: int | None, *, noise: NoiseSource | None,
         clip_x0: bool = True, x_T: torch.Tensor | None = None, progress: bool = False,
         loop=None) -> torch.Tensor:
    """Ancestral DDPM (steps=None: every timestep, the official p_sample_loop)."""
    return run_plan(eps_fn, ddpm_plan(schedule, steps), shape, noise=noise, clip_x0=clip_x0,
                    x_T=x_T, progress=progress, loop=loop)


def dpm_solver_pp(eps_fn: EpsFn, shape: Sequence[int], schedule, steps: int, *,
                  noise: NoiseSource | None, clip_x0: bool = True, x_T: torch.Tensor | None = None,
                  progress: bool = False, loop=None) -> torch.Tensor:
    """DPM-Solver++(2M), deterministic; good results in 20-25 steps."""
    return run_plan(eps_fn, dpm_solver_pp_plan(schedule, steps), shape, noise=noise, clip_x0=clip_x0,
                    x_T=x_T, progress=progress, loop=loop)


SAMPLERS = {"ddim": ddim, "ddpm": ddpm, "dpm++2m": dpm_solver_pp}


def make_plan(sampler: str, schedule, steps: int | None, eta: float | None = None) -> SamplingPlan:
    """The plan of a sampler chosen by name; eta only applies to DDIM (None -> 1, the official)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if sampler == "ddim":
        return ddim_plan(schedule, _need_steps(steps), 1.0 if eta is None else eta)
    if eta is not None:
        raise ValueError(f"eta applies to DDIM only, not to {sampler}")
    if sampler == "ddpm":
        return ddpm_plan(schedule, steps)
    return dpm_solver_pp_plan(schedule, _need_steps(steps))


def _need_steps(steps: int | None) -> int:
    if steps is None:
        raise ValueError("this sampler needs a number of steps")
    return int(steps)


@torch.no_grad()
def ddim_invert(eps_fn: EpsFn, x0: torch.Tensor, schedule, steps: int, refine: int = 2) -> torch.Tensor:
    """The deterministic DDIM (eta = 0) path run backwards: data (B, C, L) -> x_T, no clipping.

    Sampling goes x_to -> x_from with eps(x_to, t); inverting it needs eps at the unknown x_to, so
    each step starts from eps at the current point and refines it with `refine` fixed-point
    iterations (one model call each; the map contracts because sqrt(1 - a) * d eps / dx < 1).
    """
    abar = alphas_cumprod_of(schedule)
    x = x0.float()
    for t, t_next in reversed(timestep_pairs(abar.numel(), steps)):
        a_from = abar[t_next].item() if t_next >= 0 else 1.0
        a_to = abar[t].item()
        t_vec = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        eps = eps_fn(x, t_vec).float()
        for _ in range(refine + 1):
            x_to = math.sqrt(a_to) * (x - math.sqrt(1 - a_from) * eps) / math.sqrt(a_from) \
                + math.sqrt(1 - a_to) * eps
            if _ < refine:
                eps = eps_fn(x_to, t_vec).float()
        x = x_to
    return x
