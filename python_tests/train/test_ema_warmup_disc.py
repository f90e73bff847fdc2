"""EMA update interval and decay, the diffusion warm-up, the PatchGAN discriminators."""

import pytest
import torch
from torch import nn

from pvdm_fast.models.discriminators import DiscriminatorConfig, PatchDiscriminator
from pvdm_fast.train.autoencoder_trainer import feature_matching
from pvdm_fast.train.diffusion_trainer import warmup_factor
from pvdm_fast.train.ema import EMA


def test_ema_updates_only_every_k_steps():
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5, every=3, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert [ema.maybe_update(model, s) for s in range(1, 7)] == [False, False, True, False, False, True]
    # two averages with decay 0.5 toward 1 from 0: 0.5, then 0.75
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 0.75))
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)
    with pytest.raises(ValueError):
        EMA(model, every=0)


def test_ema_warmup_is_litema_decay():
    """The official LitEma: update k (1-based) averages with min(decay, (1 + k) / (10 + k))."""
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5, every=1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay 2/11: 0 -> 9/11
    assert ema.updates == 1
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 9 / 11))
    ema.update(model)  # decay 3/12: 9/11 -> 1 - (2/11)(3/12)
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 1 - 6 / 132))
    # the warm-up ends where (1 + k) / (10 + k) reaches the configured decay: k = 80 for 0.9
    slow = EMA(model, decay=0.9, every=1)
    assert slow.current_decay(79) < 0.9 == slow.current_decay(80) == slow.current_decay(10**6)
    assert EMA(model, decay=0.9, warmup=False).current_decay(1) == 0.9


def test_warmup_factor_is_linear_then_flat():
    f = warmup_factor(4)
    assert [f(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0)(0) == 1.0


@pytest.mark.parametrize("dims,shape", [(2, (2, 3, 16, 16)), (3, (2, 3, 4, 16, 16)), (3, (1, 3, 2, 8, 8))])
def test_patch_discriminator_shapes_and_features(dims, shape):
    d = PatchDiscriminator(DiscriminatorConfig(channels=4, layers=3), dims)
    logits, feats = d(torch.randn(shape))
    assert logits.shape[:2] == (shape[0], 1) and logits.ndim == len(shape)
    assert len(feats) == 4 and all(f.shape[0] == shape[0] for f in feats)
    assert sum(isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)) for m in d.modules()) == 3
    with pytest.raises(ValueError, match="expects"):
        d(torch.randn(shape[:-1]))


@pytest.mark.parametrize("dims", [2, 3])
def test_patch_discriminator_official_init(dims):
    """pix2pix's weights_init, as the official discriminators: conv weights N(0, 0.02), BatchNorm
    weights N(1, 0.02) and biases 0 (torch's defaults would give conv weights of std ~0.08 to 0.006)."""
    torch.manual_seed(0)
    d = PatchDiscriminator(DiscriminatorConfig(channels=64, layers=3), dims)
    convs = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    norms = [m for m in d.modules() if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d))]
    assert len(convs) == 5 and len(norms) == 3
    for m in convs:
        if m.weight.numel() >= 10_000:  # enough values for a tight estimate
            assert m.weight.mean().abs() < 1e-3 and abs(m.weight.std().item() - 0.02) < 1e-3, m
    everything = torch.cat([m.weight.flatten() for m in convs])
    assert abs(everything.std().item() - 0.02) < 2e-4
    weights = torch.cat([m.weight for m in norms])
    assert abs(weights.mean().item() - 1.0) < 5e-3 and 0.015 < weights.std().item() < 0.025
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in norms)


def test_feature_matching_sums_layers():
    """The official loss adds the per-layer L1 terms (4 layers: 4x an average)."""
    torch.manual_seed(0)
    fake = [torch.randn(2, 3, 4, 4) for _ in range(4)]
    real = [torch.randn(2, 3, 4, 4) for _ in range(4)]
    expected = sum((f - r).abs().mean() for f, r in zip(fake, real))
    assert torch.allclose(feature_matching(fake, real), expected)


def test_ema_position_on_resume():
    """Saved count wins; a run that had no EMA starts the warm-up now; a checkpoint written before the
    count was saved updated every ema_every steps with a constant decay, and keeps it."""
    from types import SimpleNamespace

    from pvdm_fast.train.loop import Trainer

    def trainer(ema_weights="ema"):
        return SimpleNamespace(step=100, ema=SimpleNamespace(every=25, warmup=True), ctx=SimpleNamespace(is_main=True),
                               EMA_WEIGHTS=ema_weights)

    def checkpoint(*weights):
        return SimpleNamespace(manifest={"weights": dict.fromkeys(weights, "diffusion")})

    t = trainer()
    assert Trainer._ema_updates(t, {"ema_updates": 7}, checkpoint("unet", "ema")) == 7 and t.ema.warmup
    assert Trainer._ema_updates(t, {"ema_updates": None}, checkpoint("unet")) == 0
    assert Trainer._ema_updates(t, {}, checkpoint("unet")) == 0  # an older run without EMA: it starts now
    # an older run with a constant-decay EMA goes on as it was: no warm-up from its 4 updates on
    assert Trainer._ema_updates(t, {}, checkpoint("unet", "ema")) == 4 and t.ema.warmup is False
    assert Trainer._ema_updates(trainer("autoencoder_ema"), {}, checkpoint("autoencoder", "autoencoder_ema")) == 4
    assert Trainer._ema_updates(trainer("autoencoder_ema"), {}, checkpoint("autoencoder")) == 0
