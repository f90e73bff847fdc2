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
    assert kind == "autoencoder" and config["data"] == {"resolution": 16, "frames": 4, "frame_stride": 2,
                                                          "antialias": True}
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


def test_data_antialias_and_split_reach_training_encode_and_the_cache_check(tmp_path, tiny_config, capsys, monkeypatch):
    """data.antialias (false: the official plain bilinear) is what the trainers resize with, travels in
    the autoencoder file to `pvdm encode`, and a cache resized the other way is refused; data.split and
    data.fold reach the dataset (the official UCF-101 runs trained on split train, fold 1)."""
    import pvdm_fast.data.dataset as dataset_module

    cfg = tiny_config(data={"antialias": False}, train_autoencoder={"total_clips": 4, "gan_start_step": -1})
    opened = []
    real_open = dataset_module.open_dataset
    monkeypatch.setattr(dataset_module, "open_dataset", lambda *a, **k: opened.append(k) or real_open(*a, **k))
    ae_run = tmp_path / "ae"
    train("autoencoder", config=str(cfg), out=str(ae_run), data="synthetic:3", progress=False)
    assert [k["antialias"] for k in opened] == [False] and opened[0]["split"] is None and opened[0]["fold"] == 1
    ae_file = ae_run / "autoencoder.safetensors"
    assert load_weights(ae_file)[2]["data"]["antialias"] is False

    encode = ["encode", "--autoencoder", str(ae_file), "--data", "synthetic:3", "--workers", "0", "--device", "cpu"]
    assert main([*encode, "--out", str(tmp_path / "plain")]) == 0
    assert read_manifest(tmp_path / "plain")["data"]["antialias"] is False
    assert main([*encode, "--out", str(tmp_path / "smooth"), "--antialias"]) == 0  # the flag wins
    assert read_manifest(tmp_path / "smooth")["data"]["antialias"] is True
    capsys.readouterr()

    common = dict(autoencoder=str(ae_file), progress=False, overrides=["total_clips=4"])
    with pytest.raises(ValueError, match=r"encoded with antialias True.*data\.antialias is False"):
        train("diffusion", config=str(cfg), out=str(tmp_path / "dm"), latents=str(tmp_path / "smooth"), **common)
    assert train("diffusion", config=str(cfg), out=str(tmp_path / "dm"), latents=str(tmp_path / "plain"),
                 **common)["step"] == 1

    # split/fold: passed through (synthetic data has no splits, so the dataset refuses one by name)
    opened.clear()
    split_cfg = tiny_config(data={"split": "train", "fold": 2}, train_autoencoder={"total_clips": 4})
    with pytest.raises(ValueError, match="has no splits"):
        train("autoencoder", config=str(split_cfg), out=str(tmp_path / "ae2"), data="synthetic:3", progress=False)
    assert opened[0]["split"] == "train" and opened[0]["fold"] == 2


def test_a_run_from_before_the_new_data_keys_resumes(tmp_path, tiny_config, capsys):
    """Checkpoints and config.yaml written before data.split/fold/antialias existed: those keys take their
    defaults (what the older version did), so the resume is not refused as a different data config."""
    import json

    import yaml

    cfg = tiny_config(train_autoencoder={"total_clips": 4, "gan_start_step": -1})
    run = tmp_path / "ae"
    train("autoencoder", config=str(cfg), out=str(run), data="synthetic:3", progress=False)
    new_keys = ("split", "fold", "antialias")
    import torch

    for state_file in run.glob("checkpoints/*/*.pt"):  # the training state: no EMA count back then
        state = torch.load(state_file, weights_only=True)
        if "ema_updates" in state:
            del state["ema_updates"]
            torch.save(state, state_file)
    for manifest in run.glob("checkpoints/*/manifest.json"):
        info = json.loads(manifest.read_text())
        info["config"]["data"] = {k: v for k, v in info["config"]["data"].items() if k not in new_keys}
        manifest.write_text(json.dumps(info))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"] = {k: v for k, v in saved["data"].items() if k not in new_keys}
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    capsys.readouterr()
    summary = train("autoencoder", resume=str(run), data="synthetic:3", progress=False, overrides=["total_clips=8"])
    assert summary["step"] == 2
    # a setting that changes what the next steps do is named, with how to keep the old behaviour
    assert "older pvdm_fast: the run continues with gan_alternate=True (pass gan_alternate=false" in \
        capsys.readouterr().out
    # a real difference is still refused
    with pytest.raises(ValueError, match="different `data` config"):
        train("autoencoder", resume=str(run), data="synthetic:3", progress=False,
              overrides=["total_clips=12", "data.antialias=false"])
