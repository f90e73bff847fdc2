"""Rotary tables against the spec's formulas written out element by element, and their application."""

import math

import pytest
import torch

from pvdm_fast.ops.rotary import (apply_rotary_reference, rotary_cos_sin, space_angles, space_scales, swap_pairs,
                                  time_angles, time_inv_freqs)


@pytest.mark.parametrize("dim_head", [64, 48, 32])
def test_time_angles_follow_spec_with_duplicated_frequencies(dim_head):
    frames = 7
    a = time_angles(time_inv_freqs(dim_head), frames)
    assert a.shape == (frames, dim_head) and a.dtype == torch.float64
    half = dim_head // 2
    for n in range(frames):
        for i in range(dim_head):
            j = i % half  # the half-width angles laid out twice: slot i and i + d/2 share a frequency
            want = n * float(torch.tensor(10000.0 ** (-2 * j / dim_head), dtype=torch.float32))
            assert a[n, i].item() == pytest.approx(want, rel=1e-12, abs=1e-15)
    # the quirk: an adjacent pair (2i, 2i+1) mixes two different frequencies
    assert a[1, 0] != a[1, 1]


def test_space_angles_follow_spec():
    dim_head, h, w = 64, 3, 5
    scales = space_scales(dim_head)
    assert scales.shape == (16,)
    assert scales[0].item() == pytest.approx(1.0) and scales[-1].item() == pytest.approx(5.0, rel=1e-6)
    a = space_angles(scales, h, w)
    assert a.shape == (h * w, dim_head)
    for y in range(h):
        for x in range(w):
            row = a[y * w + x]                                    # positions row-major over (h, w)
            yc, xc = -1 + 2 * y / (h - 1), -1 + 2 * x / (w - 1)
            for k in range(16):
                s = float(scales[k]) * math.pi
                assert row[2 * k].item() == pytest.approx(yc * s, abs=1e-12)        # each angle twice
                assert row[2 * k + 1].item() == pytest.approx(yc * s, abs=1e-12)
                assert row[32 + 2 * k].item() == pytest.approx(xc * s, abs=1e-12)
                assert row[33 + 2 * k].item() == pytest.approx(xc * s, abs=1e-12)


def test_apply_rotary_is_the_spec_pair_rotation():
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    x = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    angles = torch.randn(6, 8, generator=g, dtype=torch.float64)
    cos, sin = rotary_cos_sin(angles, torch.float64)
    out = apply_rotary_reference(x, cos, sin)
    for i in range(0, 8, 2):
        a0, a1 = angles[:, i], angles[:, i + 1]
        torch.testing.assert_close(out[..., i], x[..., i] * a0.cos() - x[..., i + 1] * a0.sin())
        torch.testing.assert_close(out[..., i + 1], x[..., i + 1] * a1.cos() + x[..., i] * a1.sin())


def test_tables_and_swap():
    cos, sin = rotary_cos_sin(torch.zeros(3, 4))
    assert cos.dtype == torch.float32 and (cos == 1).all() and (sin == 0).all()
    x = torch.arange(6.0)
    assert swap_pairs(x).tolist() == [1.0, 0.0, 3.0, 2.0, 5.0, 4.0]
    # pairs sharing a frequency rotate as a proper rotation: norms of (x_2i, x_2i+1) are kept
    a = space_angles(space_scales(16), 2, 3)
    x = torch.randn(6, 16, dtype=torch.float64)
    y = apply_rotary_reference(x, *rotary_cos_sin(a, torch.float64))
    torch.testing.assert_close(y.unflatten(-1, (-1, 2)).norm(dim=-1), x.unflatten(-1, (-1, 2)).norm(dim=-1))


def test_bad_sizes_raise_value_error():
    with pytest.raises(ValueError, match="multiple of 2"):
        time_inv_freqs(7)
    with pytest.raises(ValueError, match="multiple of 4"):
        space_scales(30)
    with pytest.raises(ValueError, match="even last dim"):
        rotary_cos_sin(torch.zeros(3, 5))
