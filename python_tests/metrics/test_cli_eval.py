"""`pvdm eval` end to end on tiny data with random-weight networks saved to temporary files."""

import json

import numpy as np
import pytest
import torch

from pvdm_fast.cli import main

FRAMES = 9  # the fewest frames that leave I3D's 2-frame final average pool a full window


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    from pvdm_fast.metrics.c3d import C3D
    from pvdm_fast.metrics.i3d import InceptionI3D

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    torch.save(InceptionI3D(num_classes=16).state_dict(), root / "i3d.pt")
    c3d = C3D(num_classes=5, widths=(4, 4, 8, 8, 8, 8, 8, 8), hidden=16)
    save_file({k: v.contiguous() for k, v in c3d.state_dict().items()}, str(root / "c3d.safetensors"))
    fake = root / "fake"
    fake.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.savez(fake / f"video_{i:06d}.npz", video=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    return root


def _run(*argv) -> int:
    return main(["eval", *argv, "--quiet", "--device", "cpu"])


def test_fvd_cache_kvd_and_protocol_refusal(files, capsys):
    cache = files / "real_stats.npz"
    common = ["--fake", str(files / "fake"), "--i3d", str(files / "i3d.pt"), "--num", "2",
              "--frames", str(FRAMES), "--batch-size", "2"]
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", "--stats-cache", str(cache), *common) == 0
    first = json.loads((files / "fake" / f"fvd{FRAMES}.json").read_text())
    assert np.isfinite(first["fvd"]) and first["fvd"] > 0
    proto = first["protocol"]
    assert proto["frames"] == FRAMES and proto["real"]["num"] == 2 and proto["generated"]["num"] == 2
    assert proto["real"]["data"] == "synthetic:3" and len(proto["network_sha256"]) == 64
    # The written statistics file serves as --real directly (no dataset read) and for KVD.
    out = files / "kvd.json"
    assert _run("kvd", "--real", str(cache), "--subsets", "3", "--subset-size", "2", "--out", str(out), *common) == 0
    second = json.loads(out.read_text())
    assert second["fvd"] == pytest.approx(first["fvd"], rel=1e-12)
    assert second["subset_size"] == 2 and np.isfinite(second["kvd"])
    # Another stride is another protocol: the cache is refused with the differing key named.
    capsys.readouterr()
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", "--stats-cache", str(cache), *common,
                "--stride", "1", "--seed", "1") == 2
    assert "seed: 0 in the file, 1 now" in capsys.readouterr().err


def test_missing_weights_and_samples(files, capsys, tmp_path):
    assert _run("fvd", "--real", "synthetic:2", "--fake", str(files / "fake"), "--i3d", str(tmp_path / "i3d.pt")) == 2
    assert "i3d_pretrained_400.pt" in capsys.readouterr().err
    assert _run("is", "--fake", str(files / "fake"), "--c3d", str(tmp_path / "c3d.pt")) == 2
    assert "c3d_ucf101.pt" in capsys.readouterr().err
    assert _run("fvd", "--real", "synthetic:2", "--fake", str(tmp_path / "none"), "--i3d", str(files / "i3d.pt")) == 2
    assert "sample folder" in capsys.readouterr().err


def test_inception_score(files):
    out = files / "is.json"
    assert _run("is", "--fake", str(files / "fake"), "--c3d", str(files / "c3d.safetensors"), "--num", "4",
                "--splits", "2", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert 1.0 <= result["is"] <= 5.0 and result["is_std"] >= 0 and result["protocol"]["splits"] == 2


def test_recon(tmp_path):
    from dataclasses import asdict

    from pvdm_fast.configs import load_config
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import save_weights

    fields = dict(load_config("tiny").autoencoder)
    config = AutoencoderConfig(**fields)
    save_weights(tmp_path / "ae.safetensors", Autoencoder(config).state_dict(), "autoencoder", asdict(config))
    assert _run("recon", "--autoencoder", str(tmp_path / "ae.safetensors"), "--data", "synthetic:3",
                "--num", "2", "--batch-size", "2") == 0
    result = json.loads((tmp_path / "ae.recon.json").read_text())
    assert result["count"] == 2 and np.isfinite(result["psnr"]) and -1 <= result["ssim"] <= 1
    assert result["protocol"]["frames"] == config.frames and result["protocol"]["resolution"] == config.resolution


def test_reconstruction_identity():
    from pvdm_fast.metrics.recon import evaluate_reconstruction

    videos = [torch.rand(2, 3, 2, 16, 16) * 2 - 1]
    result = evaluate_reconstruction(torch.nn.Identity(), videos)
    assert result["psnr"] == float("inf") and result["psnr_exact_videos"] == 2
    assert result["ssim"] == pytest.approx(1.0)
