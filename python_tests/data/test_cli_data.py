"""`pvdm data check` and `pvdm encode` through the CLI entry point."""

import dataclasses
import json

import pytest
import torch

from pvdm_fast.cli import main

from .conftest import write_coded, write_png_folder


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


def test_data_check_decodes_every_clip_when_asked_for_more(sky_tree, tmp_path, capsys):
    from pvdm_fast.data.check import spread

    assert spread(3, 2) == [0, 1] and spread(100, 5) == list(range(5)) and spread(3, 9) == [0, 4, 8]
    assert spread(1, 7) == [0] and spread(0, 7) == [] and spread(4, 0) == []
    # 12, 20 and 16 frames: 1 + 2 + 2 non-overlapping 8-frame clips
    assert main(["data", "check", f"sky:{sky_tree}", "--resolution", "8", "--frames", "8", "--decode", "100",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == 5 and report["decoded"] == 5
    write_png_folder(tmp_path / "two", 8)
    assert main(["data", "check", f"frames:{tmp_path / 'two'}", "--resolution", "8", "--frames", "4",
                 "--decode", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["clips"] == 2 and report["decoded"] == 2
    assert main(["data", "check", f"frames:{tmp_path / 'two'}", "--decode", "-1"]) == 2
    assert "--decode" in capsys.readouterr().err


def test_data_check_without_usable_clips_reports_then_fails(tmp_path, capsys):
    from pvdm_fast.data.dataset import open_dataset

    write_coded(tmp_path / "v/short.avi", 5)
    (tmp_path / "v/junk.avi").write_bytes(b"not a video" * 10)
    assert main(["data", "check", f"videos:{tmp_path / 'v'}", "--frames", "4", "--stride", "2"]) == 2
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "no usable clips" in err and "run `pvdm data check" not in err  # no advice to run itself
    assert "videos      2 found, 0 usable" in out and "skipped     2" in out  # the report, on stdout
    assert "short.avi: too short: 5 frames, a clip of 4 frames with stride 2 needs 7" in out
    assert "junk.avi: unreadable" in out
    assert main(["data", "check", f"videos:{tmp_path / 'v'}", "--frames", "4", "--stride", "2", "--json"]) == 2
    report = json.loads(capsys.readouterr().out)  # --json still prints one JSON object
    assert report["videos"] == 2 and report["usable_videos"] == 0 and len(report["skipped"]) == 2
    # training and encoding point at the check with the same clip settings
    with pytest.raises(ValueError, match=f"run `pvdm data check videos:{tmp_path / 'v'} --frames 4 --stride 2`"):
        open_dataset(f"videos:{tmp_path / 'v'}", resolution=8, frames=4, stride=2)


def save_tiny_autoencoder(path):
    autoencoder = pytest.importorskip("pvdm_fast.models.autoencoder")
    from pvdm_fast.models.io import save_weights

    config = autoencoder.AutoencoderConfig(resolution=16, frames=4, patch_size=4, channels=16, encoder_depth=1,
                                           decoder_depth=1, heads=2, dim_head=8, axis_depth=1, axis_heads=2,
                                           axis_mlp_dim=16)
    model = autoencoder.Autoencoder(config)
    save_weights(path, model.state_dict(), "autoencoder", dataclasses.asdict(config))
    return model


def test_encode_cli_builds_a_cache_for_the_autoencoder(tmp_path, capsys):
    from pvdm_fast.data.latents import LatentDataset, file_sha256

    model = save_tiny_autoencoder(tmp_path / "ae.safetensors")
    args = ["encode", "--autoencoder", str(tmp_path / "ae.safetensors"), "--data", "synthetic:2",
            "--out", str(tmp_path / "cache"), "--workers", "0", "--store-dtype", "float32", "--device", "cpu"]
    assert main(args) == 0
    assert "latents in 1 shards" in capsys.readouterr().out
    cache = LatentDataset(tmp_path / "cache", autoencoder_id=file_sha256(tmp_path / "ae.safetensors"))
    # synthetic videos hold two clips' worth of frames: one item per video, its pair of windows
    assert len(cache) == 2 and len(cache.keys) == 2 * 2
    from pvdm_fast.data.dataset import open_dataset

    clips = open_dataset("synthetic:2", resolution=16, frames=4, mode="windows", clips_per_video=0)
    with torch.no_grad():
        first, second = (model.eval().encode(clips[i]["video"][None])[0] for i in (0, 1))
    assert cache[0]["cond_valid"]
    torch.testing.assert_close(cache[0]["cond"], first, rtol=0, atol=1e-5)
    torch.testing.assert_close(cache[0]["latent"], second, rtol=0, atol=1e-5)


@pytest.mark.parametrize("flags, message", [
    (["--shard-size", "0"], r"shard_size \(--shard-size\) must be an integer >= 1, got 0"),
    (["--shard-size", "-3"], r"shard_size \(--shard-size\) must be an integer >= 1, got -3"),
    (["--batch-size", "0"], r"batch_size \(--batch-size\) must be an integer >= 1, got 0"),
    (["--workers", "-1"], r"num_workers \(--workers\) must be an integer >= 0, got -1"),
    (["--clips-per-video", "-1"], "clips per video must be >= 0"),
    (["--device", "cuda"], "CUDA is not available.*pass --device cpu"),
    (["--device", "gpu0"], "'gpu0' is not a device"),
])
def test_encode_cli_rejects_bad_arguments(tmp_path, capsys, monkeypatch, flags, message):
    import re

    save_tiny_autoencoder(tmp_path / "ae.safetensors")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answer on a GPU machine
    args = ["encode", "--autoencoder", str(tmp_path / "ae.safetensors"), "--data", "synthetic:2",
            "--out", str(tmp_path / "cache"), "--workers", "0", "--device", "cpu", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and "Traceback" not in err
    assert not (tmp_path / "cache/manifest.json").exists()
