"""What an exported autoencoder tells the next stage: the data settings it was trained with reach
`pvdm encode`, and a latent cache cut differently from the diffusion run's data is refused."""

import pytest

from pvdm_fast.cli import main
from pvdm_fast.data.latents import read_manifest
from pvdm_fast.models.io import load_weights
from pvdm_fast.pipeline import load_autoencoder
from pvdm_fast.train.commands import train


def test_encode_takes_the_autoencoders_frame_stride_and_diffusion_checks_the_cache(tmp_path, tiny_config, capsys):
    cfg = tiny_config(data={"frame_stride": 2}, train_autoencoder={"total_clips": 4, "gan_start_step": -1})
    ae_run = tmp_path / "ae"
    train("autoencoder", config=str(cfg), out=str(ae_run), data="synthetic:3", progress=False)
    ae_file = ae_run / "autoencoder.safetensors"
    _, kind, config = load_weights(ae_file)
    assert kind == "autoencoder" and config["data"] == {"resolution": 16, "frames": 4, "frame_stride": 2}
    assert load_autoencoder(ae_file).config.frames == 4  # the extra section does not disturb loading

    encode = ["encode", "--autoencoder", str(ae_file), "--data", "synthetic:3", "--workers", "0", "--device", "cpu"]
    assert main([*encode, "--out", str(tmp_path / "lat2")]) == 0
    assert read_manifest(tmp_path / "lat2")["data"]["stride"] == 2
    assert main([*encode, "--out", str(tmp_path / "lat1"), "--stride", "1"]) == 0  # an explicit --stride wins
    assert read_manifest(tmp_path / "lat1")["data"]["stride"] == 1
    capsys.readouterr()

    common = dict(autoencoder=str(ae_file), progress=False, overrides=["total_clips=4"])
    with pytest.raises(ValueError, match=r"encoded with stride 1.*data\.frame_stride is 2"):
        train("diffusion", config=str(cfg), out=str(tmp_path / "dm"), latents=str(tmp_path / "lat1"), **common)
    assert not (tmp_path / "dm").exists()  # refused before anything was written
    summary = train("diffusion", config=str(cfg), out=str(tmp_path / "dm"), latents=str(tmp_path / "lat2"), **common)
    assert summary["step"] == 1
    # the same through the CLI: exit status 2 and a message naming both values
    other = tiny_config(data={"frame_stride": 1})
    code = main(["train-diffusion", "--config", str(other), "--autoencoder", str(ae_file), "--latents",
                 str(tmp_path / "lat2"), "--out", str(tmp_path / "dm1"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "stride 2" in err and "data.frame_stride is 1" in err
