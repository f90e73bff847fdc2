"""I3D: the golden vectors of the official evaluation network, strict loading, the TorchScript call."""

import json

import pytest
import torch

from pvdm_fast.metrics.i3d import (I3D_SIZE, InceptionI3D, TorchScriptI3D, i3d_features, i3d_protocol, load_i3d,
                                   preprocess_for_i3d)


@pytest.fixture(scope="module")
def golden_i3d():
    """Golden tensors and one forward of the converted network (the expensive part, done once)."""
    from conftest import golden_dir
    from safetensors.torch import load_file

    path = golden_dir() / "i3d_k400.safetensors"
    if not path.is_file():
        pytest.skip(f"golden vectors not found at {path} (set PVDM_GOLDEN_DIR)")
    tensors = load_file(str(path))
    meta = json.loads((golden_dir() / "i3d_k400.json").read_text())
    state = {k: v for k, v in tensors.items() if k.startswith("state_dict.")}
    model = load_i3d(state)  # strips `state_dict.` and loads strictly
    x = preprocess_for_i3d(tensors["videos_uint8_bthwc"])
    logits = i3d_features(model, tensors["videos_uint8_bthwc"])  # preprocess + forward, float64: FVD's entry
    return {"tensors": tensors, "meta": meta, "model": model, "x": x, "logits": logits}


def test_golden_preprocessing(golden_i3d):
    t, x = golden_i3d["tensors"], golden_i3d["x"]
    assert x.shape == (*t["videos_uint8_bthwc"].shape[:1], 3, t["videos_uint8_bthwc"].shape[1], I3D_SIZE, I3D_SIZE)
    torch.testing.assert_close(x[:, :, 0], t["preprocessed_frame0"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.mean((1, 3, 4)), t["preprocessed_frame_means"], rtol=1e-5, atol=1e-6)


def test_golden_logits(golden_i3d):
    t, logits = golden_i3d["tensors"], golden_i3d["logits"]
    assert logits.shape == (t["logits"].shape[0], golden_i3d["meta"]["num_classes"])
    assert logits.dtype == torch.float64 and i3d_protocol(golden_i3d["model"]) == "pvdm"
    scale = t["logits"].abs().max()
    assert (logits.float() - t["logits"]).abs().max() <= 1e-4 * scale


def test_strict_load_names_missing_and_unexpected():
    sd = InceptionI3D(num_classes=7).state_dict()
    sd.pop("Mixed_4c.b1b.conv3d.weight")
    sd["Mixed_4c.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match="Mixed_4c.b1b.conv3d.weight.*Mixed_4c.extra|missing keys"):
        load_i3d(sd)


def test_class_count_from_logits_and_prefixes():
    sd = {f"module.{k}": v for k, v in InceptionI3D(num_classes=5).state_dict().items()}
    assert load_i3d(sd).num_classes == 5


def test_missing_file_says_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match="i3d_pretrained_400.pt.*i3d_torchscript.pt"):
        load_i3d(tmp_path / "i3d_pretrained_400.pt")


def test_wrong_file_kind(tmp_path):
    torch.save({"conv.weight": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a pytorch-i3d state dict"):
        load_i3d(tmp_path / "x.pt")


def test_preprocess_portrait_and_bad_shape():
    v = torch.randint(0, 256, (1, 2, 300, 240, 3), dtype=torch.uint8)
    x = preprocess_for_i3d(v, size=32)
    assert x.shape == (1, 3, 2, 32, 32) and x.min() >= -1 and x.max() <= 1
    with pytest.raises(ValueError, match=r"\(B, T, H, W, 3\)"):
        preprocess_for_i3d(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


class _FakeDetector(torch.nn.Module):
    """Records StyleGAN-V's calling convention: (B, 3, T, H, W), rescale / resize / return_features."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        if rescale:
            x = x / 255.0 * 2 - 1
        if resize:
            x = torch.nn.functional.interpolate(x, size=(x.shape[2], 4, 4), mode="trilinear", align_corners=False)
        out = (x.mean((2, 3, 4)) * self.w).repeat(1, 2)
        return out if return_features else out.softmax(1)


def test_torchscript_file_runs_as_is(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_FakeDetector()), str(path))
    model = load_i3d(path)
    assert isinstance(model, TorchScriptI3D) and i3d_protocol(model) == "stylegan-v"
    v = torch.randint(0, 256, (2, 3, 6, 8, 3), dtype=torch.uint8)
    raw = v.permute(0, 4, 1, 2, 3).float()
    resized = torch.nn.functional.interpolate(raw / 255.0 * 2 - 1, size=(6, 4, 4), mode="trilinear",
                                              align_corners=False)
    expected = resized.mean((2, 3, 4)).repeat(1, 2)
    torch.testing.assert_close(i3d_features(model, v).float(), expected)  # uint8 values, rescale on, features
    pre = preprocess_for_i3d(v, size=8)
    torch.testing.assert_close(model(pre), pre.mean((2, 3, 4)).repeat(1, 2))  # our [-1, 1] input, flags off


def test_minimum_frames_per_network(tmp_path):
    """pytorch-i3d halves T (ceil) three times before a 2-frame pool: 9 frames at least; StyleGAN-V's
    TorchScript port pads statically and needs 10. Checked before a forward, with a ValueError."""
    from pvdm_fast.metrics.i3d import check_i3d_frames, i3d_min_frames

    model = InceptionI3D(num_classes=3).eval()
    assert i3d_min_frames(model) == 9
    check_i3d_frames(model, 9)
    with pytest.raises(ValueError, match="at least 9 frames.*got 8; raise --frames"):
        check_i3d_frames(model, 8)
    with pytest.raises(ValueError, match="at least 9 frames"):  # not conv3d's "smaller than kernel size"
        model(torch.zeros(1, 3, 8, I3D_SIZE, I3D_SIZE))
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_FakeDetector()), str(path))
    scripted = load_i3d(path)
    assert i3d_min_frames(scripted) == 10
    with pytest.raises(ValueError, match="TorchScript I3D need clips of at least 10 frames"):
        check_i3d_frames(scripted, 9)


def test_pytorch_i3d_temporal_sizes_match_the_stated_minimum():
    """The arithmetic behind I3D_MIN_FRAMES, on the model's own padding rule (no 224x224 forward)."""
    import math

    from pvdm_fast.metrics.i3d import I3D_MIN_FRAMES, _same_pad

    def frames_left(t: int) -> int:
        for kernel, stride in (((7, 1, 1), (2, 1, 1)), ((3, 1, 1), (2, 1, 1)), ((2, 1, 1), (2, 1, 1))):
            x = _same_pad(torch.zeros(1, 1, t, 1, 1), kernel, stride)
            t = math.floor((x.shape[2] - kernel[0]) / stride[0]) + 1
        return t

    assert frames_left(I3D_MIN_FRAMES["pvdm"]) == 2 and frames_left(I3D_MIN_FRAMES["pvdm"] - 1) == 1


class _FakeC3D(torch.nn.Module):
    """StyleGAN-V's C3D convention: only the video."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3, 4)).softmax(1)


def test_corrupt_and_foreign_weight_files(tmp_path):
    """Unreadable files and other networks' files are ValueErrors naming the file and what it looks like."""
    from pvdm_fast.metrics.c3d import C3D

    (tmp_path / "text.pt").write_text("<html>404 not found</html>\n")  # a failed download
    torch.save(InceptionI3D(num_classes=2).state_dict(), tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 3])
    for name in ("text.pt", "cut.pt"):
        with pytest.raises(ValueError, match=f"{name} is not a readable I3D weight file.*i3d_pretrained_400.pt"):
            load_i3d(tmp_path / name)
    torch.save(C3D(widths=(4, 4, 8, 8, 8, 8, 8, 8), hidden=16).state_dict(), tmp_path / "c3d.pt")
    with pytest.raises(ValueError, match="c3d.pt: not a pytorch-i3d state dict.*looks like the UCF-101 C3D.*--c3d"):
        load_i3d(tmp_path / "c3d.pt")
    torch.jit.save(torch.jit.script(_FakeC3D()), str(tmp_path / "c3d_ucf101.pt"))
    with pytest.raises(ValueError, match="forward takes \\(x\\), not StyleGAN-V's I3D.*pass it as --c3d"):
        load_i3d(tmp_path / "c3d_ucf101.pt")
