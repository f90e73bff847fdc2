"""EMA update interval and decay, the diffusion warm-up, the PatchGAN discriminators."""

import pytest
import torch
from torch import nn

from pvdm_fast.models.discriminators import DiscriminatorConfig, PatchDiscriminator
from pvdm_fast.train.diffusion_trainer import warmup_factor
from pvdm_fast.train.ema import EMA


def test_ema_updates_only_every_k_steps():
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.5, every=3)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert [ema.maybe_update(model, s) for s in range(1, 7)] == [False, False, True, False, False, True]
    # two averages with decay 0.5 toward 1 from 0: 0.5, then 0.75
    assert torch.allclose(ema.state_dict()["weight"], torch.full((1, 2), 0.75))
    with pytest.raises(ValueError):
        EMA(model, decay=1.0)
    with pytest.raises(ValueError):
        EMA(model, every=0)


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
