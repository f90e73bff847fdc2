"""Samplers against an analytic denoiser: Gaussian data N(mu, s^2) has a closed-form optimal eps.

For x_t = sqrt(a) x0 + sqrt(1 - a) eps with x0 ~ N(mu, s^2), the optimal predictor is
E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). Every sampler ends by returning
E[x0 | x_{t_min}], which is distributed as N(mu, s^2 * a s^2 / (a s^2 + 1 - a)) with a = abar(t_min)
for an exact sampler: that is the target each sampler is held to.
"""
import math

import pytest
import torch

from pvdm_fast.diffusion import samplers as S

T = 1000
BETAS = torch.linspace(0.0015**0.5, 0.0195**0.5, T, dtype=torch.float64) ** 2
ABAR = torch.cumprod(1 - BETAS, 0)
# Two channels with different statistics, so a channel mix-up or a wrong variance shows.
MU = torch.tensor([0.25, -0.1]).view(1, 2, 1)
STD = torch.tensor([0.3, 0.6]).view(1, 2, 1)
SHAPE = (48, 2, 512)  # 24k values per channel: standard error of the std ~0.5 %


def gaussian_eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    a = ABAR.float()[t].view(-1, 1, 1)
    return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * STD**2 + 1 - a)


def exact_target_std(plan: S.SamplingPlan) -> torch.Tensor:
    a = ABAR[plan.timesteps[-1]].float()
    s2 = STD.flatten() ** 2
    return (s2 * a * s2 / (a * s2 + 1 - a)).sqrt()


# (sampler, steps, eta, tolerated relative error of the std). DDPM/DDIM tolerances cover the
# discretisation error of the official uniform-in-t grid (largest near the data); DPM-Solver++ is
# second order on a log-SNR grid and is held tighter.
CASES = [
    ("ddpm", None, None, 0.03),
    ("ddim", 400, 1.0, 0.06),       # the official protocol (the beta-tilde variance runs low)
    ("ddim", 100, 0.0, 0.04),
    ("dpm++2m", 25, None, 0.015),
    ("dpm++2m", 10, None, 0.03),
]


@pytest.mark.parametrize("name,steps,eta,rtol", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_sampler_reaches_the_gaussian_mean_and_variance(name, steps, eta, rtol):
    plan = S.make_plan(name, ABAR, steps, eta)
    noise = S.PerSampleNoise(range(SHAPE[0]))
    x = S.run_plan(gaussian_eps, plan, SHAPE, noise=noise, clip_x0=False)
    mean, std = x.mean((0, 2)), x.std((0, 2))
    target = exact_target_std(plan)
    assert torch.allclose(mean, MU.flatten(), atol=0.01), (mean, MU.flatten())
    rel = (std / target - 1).abs()
    assert (rel < rtol).all(), f"std {std.tolist()} vs {target.tolist()} (relative error {rel.tolist()})"


def test_dpm_solver_converges_with_steps():
    """Second order: the error at 10 steps is well above the error at 40."""
    errs = []
    for steps in (5, 40):
        x = S.dpm_solver_pp(gaussian_eps, SHAPE, ABAR, steps, noise=S.PerSampleNoise(range(SHAPE[0])),
                            clip_x0=False)
        errs.append((x.std((0, 2)) / STD.flatten() - 1).abs().max().item())
    assert errs[1] < 0.02 and errs[1] < errs[0] / 2, errs


def test_ddim_eta1_equals_ddpm_on_the_same_grid_without_clipping():
    """With eta = 1 the DDIM update is the DDPM posterior of the respaced chain (same noise)."""
    kw = dict(clip_x0=False)
    a = S.ddim(gaussian_eps, (4, 2, 16), ABAR, 50, eta=1.0, noise=S.PerSampleNoise(range(4)), **kw)
    b = S.ddpm(gaussian_eps, (4, 2, 16), ABAR, 50, noise=S.PerSampleNoise(range(4)), **kw)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _official_ddim(eps_fn, shape, eta, steps, gens):
    """The official ddim_sample loop, written out: clipped x0, raw eps, x0 returned at the end."""
    abar = ABAR.float()
    times = list(reversed(torch.linspace(-1, T - 1, steps + 1).int().tolist()))
    draw = lambda: torch.stack([torch.randn(shape[1:], generator=g) for g in gens])  # noqa: E731
    img = draw()
    for time, time_next in zip(times[:-1], times[1:]):
        t = torch.full((shape[0],), time, dtype=torch.long)
        pred = eps_fn(img, t)
        x_start = ((1 / abar[t]).sqrt().view(-1, 1, 1) * img
                   - (1 / abar[t] - 1).sqrt().view(-1, 1, 1) * pred).clamp(-1, 1)
        if time_next < 0:
            img = x_start
            continue
        alpha, alpha_next = abar[time], abar[time_next]
        sigma = eta * ((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha)).sqrt()
        c = (1 - alpha_next - sigma**2).sqrt()
        noise = draw()
        img = x_start * alpha_next.sqrt() + c * pred + sigma * noise
    return img


@pytest.mark.parametrize("eta", [1.0, 0.3])
def test_ddim_matches_the_official_loop_including_x0_clipping(eta):
    # Data far outside [-1, 1] so that clipping is active at most steps.
    def eps_fn(x, t):
        a = ABAR.float()[t].view(-1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * 1.5) / (a * 0.25 + 1 - a)

    shape = (3, 2, 8)
    ours = S.ddim(eps_fn, shape, ABAR, 40, eta=eta, noise=S.PerSampleNoise([5, 6, 7]))
    ref = _official_ddim(eps_fn, shape, eta, 40, [torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)
    assert ours.max() <= 1.0  # the final sample is the clipped x0


def test_ddim_eta0_is_deterministic_and_invertible():
    x_T = torch.randn(SHAPE[0], 2, 64, generator=torch.Generator().manual_seed(0))
    run = lambda: S.ddim(gaussian_eps, x_T.shape, ABAR, 200, eta=0.0, noise=None, x_T=x_T,  # noqa: E731
                         clip_x0=False)
    x0 = run()
    assert torch.equal(x0, run())
    back = S.ddim_invert(gaussian_eps, x0, ABAR, 200, refine=2)
    err = (back - x_T).abs()
    assert err.mean() < 2e-4 and err.max() < 2e-3, (err.mean().item(), err.max().item())
    # and the inversion is not trivially close: a different x_T is far away
    assert (back - torch.randn_like(x_T)).abs().mean() > 0.5


def test_the_same_seed_gives_the_same_sample_whatever_the_batch():
    seeds = [11, 12, 13, 14, 15]
    for name, steps in (("ddim", 20), ("ddpm", 20), ("dpm++2m", 8)):
        plan = S.make_plan(name, ABAR, steps)
        full = S.run_plan(gaussian_eps, plan, (5, 2, 32), noise=S.PerSampleNoise(seeds))
        part = torch.cat([S.run_plan(gaussian_eps, plan, (2, 2, 32), noise=S.PerSampleNoise(seeds[:2])),
                          S.run_plan(gaussian_eps, plan, (3, 2, 32), noise=S.PerSampleNoise(seeds[2:]))])
        torch.testing.assert_close(full, part, rtol=0, atol=1e-6, msg=name)
        other = S.run_plan(gaussian_eps, plan, (1, 2, 32), noise=S.PerSampleNoise([99]))
        assert not torch.allclose(other[0], full[0]), name


def test_plans_are_well_formed():
    plan = S.make_plan("ddim", ABAR, 400)
    ts = plan.timesteps.tolist()
    assert len(ts) == 400 and ts[0] == T - 1 and ts[-1] == 1  # official grid: ..., 4, 1, then x0
    assert all(a > b for a, b in zip(ts, ts[1:]))
    assert plan.needs_noise and not S.make_plan("ddim", ABAR, 10, 0.0).needs_noise
    dpm = S.make_plan("dpm++2m", ABAR, 25).timesteps.tolist()
    assert dpm[0] == T - 1 and dpm[-1] == 0 and len(set(dpm)) == 25
    assert S.OFFICIAL_PRESET == {"sampler": "ddim", "steps": 400, "eta": 1.0}


def test_log_snr_grid_is_valid_for_every_step_count():
    # Many steps used to push the first timesteps past T-1 (an IndexError from 811 steps on).
    for steps in range(1, T + 1):
        ts = [t for t, _ in S.log_snr_pairs(ABAR, steps)]
        assert len(ts) == steps and ts[0] == T - 1 and 0 <= ts[-1], steps
        assert all(a > b for a, b in zip(ts, ts[1:])), steps
    assert [t for t, _ in S.log_snr_pairs(ABAR, T)] == list(range(T - 1, -1, -1))
    assert S.make_plan("dpm++2m", ABAR, 900).timesteps.max().item() == T - 1


@pytest.mark.parametrize("bad", [
    dict(name="euler", steps=10), dict(name="ddim", steps=0), dict(name="ddim", steps=T + 1),
    dict(name="dpm++2m", steps=10, eta=0.5), dict(name="ddim", steps=10, eta=-1.0),
    dict(name="ddim", steps=10, eta=float("nan")), dict(name="ddim", steps=10, eta=float("inf")),
])
def test_bad_arguments_raise_value_errors(bad):
    with pytest.raises(ValueError):
        S.make_plan(bad["name"], ABAR, bad["steps"], bad.get("eta"))


def test_noise_is_required_when_the_sampler_needs_it():
    with pytest.raises(ValueError, match="noise"):
        S.ddim(gaussian_eps, (1, 2, 4), ABAR, 5, eta=1.0, noise=None, x_T=torch.zeros(1, 2, 4))


def test_loop_calls_the_model_once_per_step_with_the_plan_timesteps():
    seen = []

    def eps_fn(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    plan = S.make_plan("dpm++2m", ABAR, 7)
    S.run_plan(eps_fn, plan, (2, 1, 3), noise=S.PerSampleNoise([0, 1]))
    assert [int(t[0]) for t in seen] == plan.timesteps.tolist()
    assert all(t.shape == (2,) and t.dtype == torch.int64 for t in seen)
    assert math.isfinite(float(plan.coefs.abs().max()))
