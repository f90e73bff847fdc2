"""Classifier-free guidance: the (1 + w) eps(x, c) - w eps(x, 0) mix and the number of UNet calls."""

import pytest
import torch

from pvdm_fast.diffusion.guidance import guided_eps, guided_eps_fn


class CountingModel(torch.nn.Module):
    """eps depends on x, t and cond so the mix can be checked exactly; counts calls and batch sizes."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, cond=None):
        self.batches.append(x.shape[0])
        c = torch.zeros_like(x) if cond is None else cond
        return torch.sin(x) + 0.01 * t.view(-1, 1, 1).float() + 2.0 * c ** 2


def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 4, 10, generator=g), torch.tensor([5, 10, 900]), torch.randn(3, 4, 10, generator=g)


def test_w_zero_is_one_plain_call():
    model = CountingModel()
    x, t, c = data()
    out = guided_eps(model, x, t, c, 0.0)
    assert model.batches == [3]
    torch.testing.assert_close(out, CountingModel()(x, t, c))
    guided_eps(model, x, t, None, 2.0)  # no condition: nothing to guide against
    assert model.batches == [3, 3]


def test_positive_w_is_one_batched_call_with_the_right_mix():
    model = CountingModel()
    x, t, c = data()
    w = 1.5
    out = guided_eps(model, x, t, c, w)
    assert model.batches == [6]
    ref = CountingModel()
    expected = (1 + w) * ref(x, t, c) - w * ref(x, t, torch.zeros_like(c))
    torch.testing.assert_close(out, expected)


def test_eps_fn_and_errors():
    model = CountingModel()
    x, t, c = data()
    fn = guided_eps_fn(model, c, 0.5)
    torch.testing.assert_close(fn(x, t), guided_eps(CountingModel(), x, t, c, 0.5))
    assert guided_eps(model, x, torch.tensor(7), c, 1.0).shape == x.shape  # scalar t is broadcast
    for bad in (-1.0, float("nan"), float("inf")):  # NaN used to pass and give black videos
        with pytest.raises(ValueError, match="guidance weight"):
            guided_eps(model, x, t, c, bad)
        with pytest.raises(ValueError, match="guidance weight"):
            guided_eps_fn(model, c, bad)


def test_guidance_with_the_triplane_unet():
    from pvdm_fast.models.unet import TriplaneUNet, UNetConfig

    torch.manual_seed(0)
    unet = TriplaneUNet(UNetConfig(frames=4, height=4, width=4, model_channels=32, channel_mult=(1,),
                                   num_res_blocks=1, attention_resolutions=(1,), num_heads=2)).double()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.2)
    calls = []
    unet.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, unet.config.latent_length, generator=g, dtype=torch.float64)
    c = torch.randn(2, 4, unet.config.latent_length, generator=g, dtype=torch.float64)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        out = guided_eps(unet, x, t, c, 2.0)
        assert calls == [4]
        expected = 3.0 * unet(x, t, c) - 2.0 * unet(x, t)
        torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
        guided_eps(unet, x, t, c, 0.0)
        assert calls[-1] == 2 and len(calls) == 4
