"""PSNR / SSIM against hand-computed values; LPIPS weight files load strictly."""

import math

import numpy as np
import pytest
import torch

from pvdm_fast.metrics.recon import gaussian_window, psnr, ssim
from pvdm_fast.models.lpips import LPIPS


def test_psnr_by_hand():
    a = torch.rand(2, 3, 4, 8, 8) * 1.6 - 0.8
    b = a + 0.2  # 0.1 on the [0, 1] scale: MSE 0.01 -> 20 dB
    torch.testing.assert_close(psnr(b, a), torch.full((2,), 20.0, dtype=torch.float64))
    assert torch.isinf(psnr(a, a)).all()


def test_ssim_constant_frames_by_hand():
    a = torch.full((1, 3, 2, 16, 16), 0.0)   # 0.5 on [0, 1]
    b = torch.full((1, 3, 2, 16, 16), -0.5)  # 0.25
    c1 = 0.01 ** 2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5 ** 2 + 0.25 ** 2 + c1)  # variances are 0: the contrast term is 1
    torch.testing.assert_close(ssim(a, b), torch.full((1, 2), expected, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, a), torch.ones(1, 2, dtype=torch.float64))


def _ssim_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Direct definition over every valid 11x11 window of one channel (independent of the separable filter)."""
    g = gaussian_window().numpy()
    w = np.outer(g, g)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i:i + 11, j:j + 11], y[i:i + 11, j:j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_random_against_direct_definition():
    torch.manual_seed(0)
    a = torch.rand(2, 1, 3, 14, 15) * 2 - 1
    b = (a + 0.3 * torch.randn_like(a)).clamp(-1, 1)
    got = ssim(a, b)
    for v in range(2):
        for t in range(3):
            ref = _ssim_loop(((a[v, 0, t] + 1) / 2).double().numpy(), ((b[v, 0, t] + 1) / 2).double().numpy())
            assert got[v, t].item() == pytest.approx(ref, rel=1e-7)
    with pytest.raises(ValueError, match="at least"):
        ssim(torch.zeros(1, 3, 1, 8, 8), torch.zeros(1, 3, 1, 8, 8))


def _random_lpips_state() -> dict:
    torch.manual_seed(0)
    sd = {k: v.clone() for k, v in LPIPS().state_dict().items()}
    for k in sd:
        if k.startswith("lin"):
            sd[k] = sd[k].abs()
    return sd


def test_lpips_loads_two_files_strictly(tmp_path):
    sd = _random_lpips_state()
    vgg = {k: v for k, v in sd.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # torchvision files carry the classifier: ignored
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save({k: v for k, v in sd.items() if k.startswith("lin")}, tmp_path / "vgg.pth")
    model = LPIPS.from_file(tmp_path / "vgg16.pth", tmp_path / "vgg.pth")
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert model(x, x).abs().max() < 1e-6
    d = model(x, y)
    assert d.shape == (2, 1, 1, 1) and (d > 0).all()
    torch.testing.assert_close(LPIPS.from_file(sd)(x, y), d)  # one merged state dict


def test_lpips_missing_keys_and_files(tmp_path):
    sd = _random_lpips_state()
    sd.pop("features.28.weight")
    with pytest.raises(ValueError, match="features.28.weight"):
        LPIPS.from_file(sd)
    vgg_only = {k: v for k, v in _random_lpips_state().items() if k.startswith("features.")}
    with pytest.raises(ValueError, match="linear heads"):
        LPIPS.from_file(vgg_only)
    with pytest.raises(FileNotFoundError, match="vgg16-397923af.pth"):
        LPIPS.from_file(tmp_path / "nothing.pth")
