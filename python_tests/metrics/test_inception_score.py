"""Video Inception Score: the split / shuffle protocol and the C3D's input normalisation."""

import numpy as np
import pytest
import torch

from pvdm_fast.metrics.c3d import C3D, C3D_SIZE, c3d_probabilities, load_c3d
from pvdm_fast.metrics.inception_score import inception_score

TINY = dict(widths=(4, 4, 8, 8, 8, 8, 8, 8), hidden=16)


def test_is_closed_forms():
    n, k = 40, 8
    uniform = np.full((n, k), 1.0 / k)
    assert inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0))
    onehot = np.eye(k)[np.arange(n) % k]  # confident and diverse: IS = number of classes seen in a split
    mean, std = inception_score(onehot, splits=1)
    assert mean == pytest.approx(k) and std == 0.0


def test_is_splits_follow_the_seeded_shuffle():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(5, 0.3), size=30)
    shuffled = p.copy()
    np.random.RandomState(42).shuffle(shuffled)
    scores = []
    for i in range(3):
        part = shuffled[i * 10:(i + 1) * 10]
        kl = (part * (np.log(part) - np.log(part.mean(0, keepdims=True)))).sum(1).mean()
        scores.append(np.exp(kl))
    assert inception_score(p, splits=3) == pytest.approx((np.mean(scores), np.std(scores)), rel=1e-12)
    assert inception_score(p, splits=3, shuffle_seed=None) != inception_score(p, splits=3)


def test_is_zero_probabilities_and_errors():
    p = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    assert np.isfinite(inception_score(p, splits=2)[0])
    with pytest.raises(ValueError, match="probabilities"):
        inception_score(np.ones((4, 3)), splits=2)
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.eye(3), splits=4)


def test_c3d_input_normalisation_and_shape():
    torch.manual_seed(0)
    model = C3D(num_classes=101, **TINY).eval()
    model.mean.uniform_(80, 120)
    seen = {}
    model.conv1a.register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0]))
    video = torch.randint(0, 256, (2, 16, 40, 50, 3), dtype=torch.uint8)
    probs = c3d_probabilities(model, video)
    assert probs.shape == (2, 101) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(2, dtype=torch.float64))
    # By hand: [-1, 1] RGB -> BGR * 128, frames resized to 112 (corners aligned), + 128 - mean.
    x = video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    frames = x.flip(1).transpose(1, 2).reshape(32, 3, 40, 50) * 128
    frames = torch.nn.functional.interpolate(frames, size=(C3D_SIZE, C3D_SIZE), mode="bilinear", align_corners=True)
    expected = frames.reshape(2, 16, 3, C3D_SIZE, C3D_SIZE).transpose(1, 2) + 128 - model.mean
    torch.testing.assert_close(seen["x"], expected, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="16"):
        model(torch.zeros(1, 3, 8, 112, 112))


def test_c3d_files(tmp_path):
    from safetensors.torch import save_file

    model = C3D(**TINY)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "c3d.safetensors"))
    assert isinstance(load_c3d(tmp_path / "c3d.safetensors"), C3D)
    # Chainer npz names + a separate 128x128 mean, centre-cropped to 112.
    chainer = {k.replace(".weight", "/W").replace(".bias", "/b"): v.numpy() for k, v in sd.items() if k != "mean"}
    np.savez(tmp_path / "conv3d_deepnetA_ucf.npz", **chainer)
    mean = np.random.default_rng(0).uniform(0, 255, (3, 16, 128, 128)).astype(np.float32)
    np.savez(tmp_path / "mean2.npz", mean=mean)
    loaded = load_c3d(tmp_path / "conv3d_deepnetA_ucf.npz", tmp_path / "mean2.npz")
    np.testing.assert_allclose(loaded.mean.numpy(), mean[:, :, 8:120, 8:120])
    with pytest.raises(ValueError, match="mean2.npz"):
        load_c3d(tmp_path / "conv3d_deepnetA_ucf.npz")
    with pytest.raises(FileNotFoundError, match="c3d_ucf101.pt"):
        load_c3d(tmp_path / "missing.pt")


class _FakeI3D(torch.nn.Module):
    """StyleGAN-V's I3D calling convention (rescale / resize / return_features)."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        return x.mean((2, 3, 4))


def test_c3d_corrupt_and_foreign_files(tmp_path):
    from pvdm_fast.metrics.i3d import InceptionI3D

    (tmp_path / "text.pt").write_text("not weights\n")
    with pytest.raises(ValueError, match="text.pt is not a readable C3D weight file.*c3d_ucf101.pt"):
        load_c3d(tmp_path / "text.pt")
    np.savez(tmp_path / "chainer.npz", **{"conv1a/W": np.zeros((2, 3, 3, 3, 3), np.float32)})
    data = (tmp_path / "chainer.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match="cut.npz is not a readable C3D weight file"):
        load_c3d(tmp_path / "cut.npz")
    # An I3D passed as the C3D says so (it used to ask for mean2.npz).
    torch.save(InceptionI3D(num_classes=2).state_dict(), tmp_path / "i3d_pretrained_400.pt")
    with pytest.raises(ValueError, match="not a C3D state dict.*looks like the Kinetics I3D of FVD.*--i3d"):
        load_c3d(tmp_path / "i3d_pretrained_400.pt")
    torch.jit.save(torch.jit.script(_FakeI3D()), str(tmp_path / "i3d_torchscript.pt"))
    with pytest.raises(ValueError, match="looks like StyleGAN-V's TorchScript I3D.*--i3d"):
        load_c3d(tmp_path / "i3d_torchscript.pt")
    # A corrupt mean file.
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in C3D(**TINY).state_dict().items() if k != "mean"},
              str(tmp_path / "c3d.safetensors"))
    (tmp_path / "mean2.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="mean2.npz is not a readable C3D pixel mean"):
        load_c3d(tmp_path / "c3d.safetensors", tmp_path / "mean2.npz")


def test_c3d_clip_length():
    from pvdm_fast.metrics.c3d import TorchScriptC3D, c3d_frames, check_c3d_frames

    model = C3D(frames=12, **TINY)
    assert c3d_frames(model) == 12 and c3d_frames(TorchScriptC3D(torch.nn.Identity())) == 16
    check_c3d_frames(model, 12)
    with pytest.raises(ValueError, match="exactly 12 frames.*got --frames 8"):
        check_c3d_frames(model, 8)
