"""`pvdm demo --quick`: both stages, a long sample, every promised file, sane metrics."""

import json

from pvdm_fast.cli import main


def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    for name in ("samples.gif", "samples.mp4", "reconstructions.png", "loss_curves.png", "autoencoder.safetensors",
                 "diffusion.safetensors", "metrics.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("recon_psnr_db", "autoencoder_final_loss", "diffusion_final_loss", "frechet_samples",
                "frechet_heldout_real", "frechet_noise", "wall_seconds"):
        assert isinstance(metrics[key], float), key
    assert metrics["sample_clips_per_video"] >= 4
    assert metrics["frechet_noise"] > metrics["frechet_heldout_real"]
    assert metrics["frechet_samples"] < metrics["frechet_noise"]
    # The demo's model files are what `pvdm sample` takes.
    from pvdm_fast.pipeline import Pipeline

    pipe = Pipeline.from_checkpoints(out / "autoencoder.safetensors", out / "diffusion.safetensors", device="cpu")
    video = pipe(1, steps=2, seed=0)
    assert video.shape[1] == pipe.clip_frames
