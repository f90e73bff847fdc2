"""The warm-up + decay learning-rate option of both training sections."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from pvdm_fast.train.config import section
from pvdm_fast.train.loop import lr_factor


def factors(total, **kw):
    return [lr_factor(s, total_steps=total, **kw) for s in range(total)]


def test_warmup_then_constant_matches_the_diffusion_warmup():
    assert factors(6, warmup_steps=4, decay="none", min_ratio=0.0) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decay_starts_at_one_after_warmup_and_falls_to_min_ratio(decay):
    f = factors(103, warmup_steps=2, decay=decay, min_ratio=0.1)
    assert f[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(f[2:], f[3:]))  # strictly falling after the warm-up
    assert f[-1] == pytest.approx(0.1, abs=1e-12)  # the last update (102) uses min_ratio, as the config says
    assert f[-2] == pytest.approx(0.1 + 0.9 * (0.01 if decay == "linear" else 0.5 * (1 + math.cos(math.pi * 0.99))))
    middle = f[52]  # half-way through the decay (updates 2..102): both shapes are at the midpoint
    assert middle == pytest.approx(0.55)


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_first_and_last_update_factors_of_a_short_run(decay):
    # 10 updates, 2 of warm-up: the decay runs over updates 2..9 and ends exactly at min_ratio.
    f = factors(10, warmup_steps=2, decay=decay, min_ratio=0.1)
    assert f[0] == 0.5 and f[1] == 1.0 and f[2] == 1.0
    assert f[9] == pytest.approx(0.1, abs=1e-12)
    # no warm-up: the first update uses lr itself
    g = factors(10, warmup_steps=0, decay=decay, min_ratio=0.25)
    assert g[0] == 1.0 and g[9] == pytest.approx(0.25, abs=1e-12)
    # a decay of a single update has nothing to fall over: it keeps lr
    assert factors(3, warmup_steps=2, decay=decay, min_ratio=0.1) == [0.5, 1.0, 1.0]


def test_bad_schedule_values_are_rejected():
    for key, value in (("lr_decay", "exp"), ("min_lr_ratio", 1.5), ("warmup_steps", -1),
                       ("sample_every", -1), ("keep_checkpoints", 0)):  # -1 sampled every step; 0 kept all
        cfg = OmegaConf.create({"train_autoencoder": {key: value}})
        with pytest.raises(ValueError, match=key):
            section(cfg, "train_autoencoder")


def test_autoencoder_run_applies_warmup_and_cosine(tiny_config, tmp_path):
    from pvdm_fast.configs import load_config
    from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer

    torch.manual_seed(0)
    cfg = load_config(str(tiny_config(train_autoencoder={
        "batch_size": 2, "grad_accum": 1, "total_clips": 12, "lr": 1e-3, "gan_start_step": -1,
        "warmup_steps": 2, "lr_decay": "cosine", "min_lr_ratio": 0.0})))
    trainer = AutoencoderTrainer(cfg, tmp_path / "run", data="synthetic:4", progress=False)
    trainer.run()
    used = [h["ae/lr"] for h in trainer.history]
    expected = [1e-3 * lr_factor(s, warmup_steps=2, total_steps=6, decay="cosine", min_ratio=0.0) for s in range(6)]
    assert used == pytest.approx(expected)
    assert used[0] < used[1] and used[1] > used[-2] > 0 and used[-1] == pytest.approx(0.0)  # min_lr_ratio=0


def test_diffusion_decay_keeps_the_warmup(tiny_config, tiny_autoencoder, tmp_path):
    from pvdm_fast.configs import load_config
    from pvdm_fast.train.diffusion_trainer import DiffusionTrainer

    cfg = load_config(str(tiny_config(train_diffusion={"total_clips": 16, "warmup_steps": 2, "lr_decay": "linear",
                                                       "min_lr_ratio": 0.5})))
    trainer = DiffusionTrainer(cfg, tmp_path / "run", autoencoder=tiny_autoencoder, data="synthetic:4", progress=False)
    trainer.run()
    # 4 updates, 2 of warm-up: the last one is at min_lr_ratio * lr
    assert [h["unet/lr"] for h in trainer.history] == pytest.approx([5e-4, 1e-3, 1e-3, 5e-4])


def test_adamw_is_fused_where_it_can_be_and_updates_as_the_reference():
    from pvdm_fast.train.loop import adamw

    torch.manual_seed(0)
    a = torch.nn.Linear(7, 5)
    b = torch.nn.Linear(7, 5)
    b.load_state_dict(a.state_dict())
    opt_a = adamw(a.parameters(), lr=1e-2, betas=(0.5, 0.9), weight_decay=0.01)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=(0.5, 0.9), weight_decay=0.01, foreach=False)
    assert opt_a.defaults["fused"] is True
    for _ in range(5):
        x = torch.randn(3, 7)
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            m(x).square().sum().backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6)
    # the state dicts share a layout: a fused optimizer resumes from a plain one
    opt_c = adamw(b.parameters(), lr=1e-2, betas=(0.5, 0.9), weight_decay=0.01)
    opt_c.load_state_dict(opt_b.state_dict())
    # float64 parameters (the exactness tests) take the fused path too
    assert adamw([torch.zeros(2, dtype=torch.float64, requires_grad=True)], lr=1e-3).defaults["fused"] is True
