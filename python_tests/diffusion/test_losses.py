"""Training losses: eps-prediction L2/L1, and the joint conditional/unconditional objective."""

import pytest
import torch

from pvdm_fast.diffusion.losses import diffusion_loss, draw_conditioned, eps_loss, joint_loss
from pvdm_fast.diffusion.schedule import NoiseSchedule, make_betas


class Recorder(torch.nn.Module):
    """A stand-in eps model that predicts a fixed fraction of its input and records what it was given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, cond=None):
        self.calls.append((x.clone(), t.clone(), None if cond is None else cond.clone()))
        return 0.5 * x


def schedule():
    return NoiseSchedule(make_betas("linear", 1000))


def test_eps_loss_l2_l1():
    pred = torch.tensor([[1.0, -2.0], [0.0, 3.0]])
    target = torch.zeros(2, 2)
    assert eps_loss(pred, target, "l2").item() == pytest.approx((1 + 4 + 0 + 9) / 4)
    assert eps_loss(pred, target, "l1").item() == pytest.approx((1 + 2 + 0 + 3) / 4)
    with pytest.raises(ValueError, match="unknown loss"):
        eps_loss(pred, target, "huber")


def test_diffusion_loss_uses_q_sample_and_noise_target():
    sched, model = schedule(), Recorder()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 20, generator=g)
    loss, t = diffusion_loss(model, sched, x0, None, loss="l2", generator=torch.Generator().manual_seed(5))
    x_t, t_seen, cond = model.calls[0]
    assert cond is None and torch.equal(t, t_seen) and t.dtype == torch.int64
    # Recover the noise the loss drew from x_t and check the loss value against it.
    noise = sched.predict_eps(x_t, t, x0)
    assert loss.item() == pytest.approx(((0.5 * x_t - noise) ** 2).mean().item(), rel=1e-5)
    # The same generator seed reproduces the step exactly.
    loss2, t2 = diffusion_loss(model, sched, x0, None, generator=torch.Generator().manual_seed(5))
    assert torch.equal(t, t2) and loss.item() == loss2.item()


def test_timesteps_and_noise_statistics():
    sched, model = schedule(), Recorder()
    x0 = torch.zeros(4000, 1, 8)
    _, t = diffusion_loss(model, sched, x0, None, generator=torch.Generator().manual_seed(1))
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    assert abs(t.float().mean().item() - 499.5) < 15  # uniform: std of the mean is ~4.6
    noise = sched.predict_eps(model.calls[0][0], t, x0)
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02


def test_per_batch_coin_matches_cond_prob():
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw_conditioned(4, 0.3, generator=g) for _ in range(4000)])
    assert bool((draws == draws[:, :1]).all())  # one coin per batch, as the official trainer
    assert abs(draws[:, 0].float().mean().item() - 0.3) < 0.025  # std ~0.007
    per = draw_conditioned(20000, 0.3, per_sample=True, generator=g)
    assert abs(per.float().mean().item() - 0.3) < 0.015
    assert not bool(draw_conditioned(10, 0.0, generator=g).any())
    assert bool(draw_conditioned(10, 1.0, generator=g).all())
    with pytest.raises(ValueError, match="cond_prob"):
        draw_conditioned(2, -0.1)


def test_joint_loss_keeps_condition_only_when_drawn_and_valid():
    sched, model = schedule(), Recorder()
    x0, cond = torch.randn(4, 2, 6), torch.randn(4, 2, 6) + 3.0
    valid = torch.tensor([True, False, True, True])
    out = joint_loss(model, sched, x0, cond, valid, conditioned=torch.tensor([True, True, False, True]))
    seen = model.calls[-1][2]
    assert out.conditioned.tolist() == [True, False, False, True]
    torch.testing.assert_close(seen[[0, 3]], cond[[0, 3]], rtol=0, atol=0)
    assert bool((seen[[1, 2]] == 0).all())
    # Invalid conditions are zeroed even if they hold non-finite values.
    bad = cond.clone()
    bad[1] = float("inf")
    joint_loss(model, sched, x0, bad, valid, conditioned=torch.ones(4, dtype=torch.bool))
    assert bool((model.calls[-1][2][1] == 0).all())


def test_joint_loss_cond_prob_statistics():
    sched, model = schedule(), Recorder()
    x0, cond = torch.randn(2, 1, 4), torch.ones(2, 1, 4)
    g = torch.Generator().manual_seed(3)
    kept = []
    for _ in range(2000):
        out = joint_loss(model, sched, x0, cond, torch.tensor([True, False]), cond_prob=0.3, generator=g)
        kept.append(out.conditioned)
        assert bool((model.calls[-1][2].flatten(1).any(1) == out.conditioned).all())
    kept = torch.stack(kept).float()
    assert abs(kept[:, 0].mean().item() - 0.3) < 0.035  # std ~0.01
    assert kept[:, 1].sum().item() == 0  # never conditioned on an invalid (all-padding) condition


def test_joint_loss_shape_error():
    with pytest.raises(ValueError, match="cond must have"):
        joint_loss(Recorder(), schedule(), torch.zeros(2, 1, 4), torch.zeros(2, 1, 5))
