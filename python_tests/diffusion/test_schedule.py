"""Noise schedule: the official linear betas (golden), cosine option, q_sample and x0 <-> eps."""

import pytest
import torch
from safetensors.torch import load_file

from pvdm_fast.diffusion.schedule import DiffusionConfig, NoiseSchedule, make_betas


def test_linear_schedule_matches_golden_float64(golden):
    data = load_file(str(golden / "ddpm_schedule.safetensors"))
    sched = NoiseSchedule.from_config(DiffusionConfig())
    assert sched.betas.dtype == torch.float64 and sched.num_timesteps == data["betas"].numel()
    torch.testing.assert_close(sched.betas, data["betas"].double(), rtol=1e-12, atol=0)
    torch.testing.assert_close(sched.alphas_cumprod, data["alphas_cumprod"].double(), rtol=1e-12, atol=0)


def test_linear_schedule_endpoints_and_other_lengths():
    betas = make_betas("linear", 7, 0.001, 0.02)
    assert betas.shape == (7,)
    torch.testing.assert_close(betas[[0, -1]], torch.tensor([0.001, 0.02], dtype=torch.float64))
    # Linear in sqrt(beta), not in beta.
    roots = betas.sqrt()
    torch.testing.assert_close(roots[1:] - roots[:-1], (roots[1] - roots[0]).expand(6))


def test_cosine_schedule():
    betas = make_betas("cosine", 50)
    assert betas.shape == (50,) and bool((betas > 0).all()) and float(betas.max()) <= 0.999
    abar = NoiseSchedule(betas).alphas_cumprod
    s = 8e-3
    f = torch.cos((torch.arange(51, dtype=torch.float64) / 50 + s) / (1 + s) * torch.pi / 2) ** 2
    torch.testing.assert_close(abar[:-1], (f / f[0])[1:-1])  # last beta is clipped


def test_q_sample_and_conversions_are_consistent():
    sched = NoiseSchedule(make_betas("linear", 100))
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    eps = torch.randn(3, 4, 10, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 50, 99])
    xt = sched.q_sample(x0, t, eps)
    a = sched.alphas_cumprod[t].view(3, 1, 1)
    torch.testing.assert_close(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps)
    torch.testing.assert_close(sched.predict_x0(xt, t, eps), x0)
    torch.testing.assert_close(sched.predict_eps(xt, t, x0), eps)
    assert sched.q_sample(x0.float(), t, eps.float()).dtype == torch.float32


def test_bad_schedule_inputs():
    with pytest.raises(ValueError, match="schedule must be one of"):
        NoiseSchedule.from_config(DiffusionConfig(schedule="quadratic"))
    with pytest.raises(ValueError, match="cond_prob"):
        DiffusionConfig(cond_prob=1.5).validate()
    sched = NoiseSchedule(make_betas("linear", 10))
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 9\]"):
        sched.q_sample(torch.zeros(1, 2), torch.tensor([10]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="t must be"):
        sched.q_sample(torch.zeros(2, 2), torch.tensor([1, 2, 3]), torch.zeros(2, 2))
