"""FORMAT:PATH parsing and the crop / resize / range transform."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pvdm_fast.data.specs import DataSpec, parse_spec
from pvdm_fast.data.transforms import center_square_crop, to_model_input, to_uint8_frames


def test_parse_spec():
    assert parse_spec("ucf101:/data/UCF-101") == DataSpec("ucf101", __import__("pathlib").Path("/data/UCF-101"))
    assert parse_spec("videos:C:/x").path.as_posix() == "C:/x"  # only the first colon separates
    assert parse_spec("synthetic").count == 64 and parse_spec("synthetic:5").count == 5
    for bad, message in [("imagenet:/x", "unknown data format"), ("ucf101", "needs a path"),
                         ("sky:", "needs a path"), ("synthetic:many", "video count"), ("synthetic:0", ">= 1")]:
        with pytest.raises(ValueError, match=message):
            parse_spec(bad)


def test_center_crop_uses_the_official_offsets():
    frames = torch.arange(2 * 5 * 8 * 3).reshape(2, 5, 8, 3)
    assert torch.equal(center_square_crop(frames), frames[:, :, 1:6])  # (8 - 5) // 2 = 1
    tall = frames.transpose(1, 2)  # (2, 8, 5, 3)
    assert torch.equal(center_square_crop(tall), tall[:, 1:6])


def test_official_resize_is_plain_bilinear():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    out = to_model_input(frames, 16, antialias=False)
    assert out.shape == (3, 3, 16, 16) and out.dtype == torch.float32
    crop = torch.from_numpy(frames[:, :, 5:35]).permute(0, 3, 1, 2).float()
    expected = F.interpolate(crop, size=16, mode="bilinear", align_corners=False) / 127.5 - 1
    torch.testing.assert_close(out, expected.permute(1, 0, 2, 3), atol=1e-6, rtol=0)
    smooth = to_model_input(frames, 16, antialias=True)
    assert (smooth - out).abs().max() > 0.05  # shrinking noise: antialiasing must change the result
    assert smooth.std() < out.std()


def test_range_and_round_trip():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[0] = 255
    out = to_model_input(frames, 8)
    assert out[:, 0].eq(1).all() and out[:, 1].eq(-1).all()
    assert np.array_equal(to_uint8_frames(out).numpy(), frames)
    with pytest.raises(ValueError, match="T, H, W, 3"):
        to_model_input(np.zeros((8, 8, 3), np.uint8), 8)
