"""`pvdm data check` and `pvdm encode` through the CLI entry point."""

import dataclasses
import json

import pytest
import torch

from pvdm_fast.cli import main


def test_data_check_json_lists_skipped_files(ucf_tree, capsys):
    assert main(["data", "check", f"ucf101:{ucf_tree}", "--resolution", "16", "--frames", "8", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["videos"] == 8 and report["usable_videos"] == 4
    assert report["clips"] == 4 * 3  # 30 frames hold three non-overlapping 8-frame windows
    assert report["decoded"] == 4 and report["decode_failed"] == 0 and report["clip_shape"] == [3, 8, 16, 16]
    by_name = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in report["skipped"]}
    assert sorted(by_name) == ["v_ApplyLipstick_g03_c01.avi", "v_Biking_g03_c01.avi", "v_Biking_g04_c01.avi",
                               "v_Biking_g05_c01.avi"]
    assert by_name["v_ApplyLipstick_g03_c01.avi"].startswith("truncated")


def test_data_check_text_and_errors(sky_tree, tmp_path, capsys):
    assert main(["data", "check", f"sky:{sky_tree}", "--resolution", "8", "--frames", "4"]) == 0
    out = capsys.readouterr().out
    assert "videos      3 found, 3 usable" in out and "skipped     0" in out
    assert main(["data", "check", f"frames:{tmp_path / 'missing'}"]) == 2
    assert "does not exist; expected any folder tree whose leaf folders" in capsys.readouterr().err
    assert main(["data", "check", "nonsense:/x"]) == 2


def test_encode_cli_builds_a_cache_for_the_autoencoder(tmp_path, capsys):
    autoencoder = pytest.importorskip("pvdm_fast.models.autoencoder")
    from pvdm_fast.data.latents import LatentDataset, file_sha256
    from pvdm_fast.models.io import save_weights

    config = autoencoder.AutoencoderConfig(resolution=16, frames=4, patch_size=4, channels=16, encoder_depth=1,
                                           decoder_depth=1, heads=2, dim_head=8, axis_depth=1, axis_heads=2,
                                           axis_mlp_dim=16)
    model = autoencoder.Autoencoder(config)
    save_weights(tmp_path / "ae.safetensors", model.state_dict(), "autoencoder", dataclasses.asdict(config))
    args = ["encode", "--autoencoder", str(tmp_path / "ae.safetensors"), "--data", "synthetic:2",
            "--out", str(tmp_path / "cache"), "--workers", "0", "--store-dtype", "float32", "--device", "cpu"]
    assert main(args) == 0
    assert "latents in 1 shards" in capsys.readouterr().out
    cache = LatentDataset(tmp_path / "cache", autoencoder_id=file_sha256(tmp_path / "ae.safetensors"))
    assert len(cache) == 2 * 2  # synthetic videos hold two clips' worth of frames
    from pvdm_fast.data.dataset import open_dataset

    clip = open_dataset("synthetic:2", resolution=16, frames=4, mode="windows", clips_per_video=0)[0]["video"]
    with torch.no_grad():
        torch.testing.assert_close(cache[0]["latent"], model.eval().encode(clip[None])[0], rtol=0, atol=1e-5)
