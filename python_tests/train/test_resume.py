"""Exact resume: N steps straight == N/2 steps, resume, N/2 steps (both stages, on the CPU)."""

import pytest
import torch

from pvdm_fast.train.checkpoint import load_checkpoint
from pvdm_fast.train.commands import train


def _weights(run_dir, names):
    ckpt = load_checkpoint(run_dir)
    return ckpt.step, {n: ckpt.weights(n)[0] for n in names}


def _assert_same(a: dict, b: dict):
    for name in a:
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.allclose(a[name][key].float(), b[name][key].float(), rtol=0, atol=1e-6), (name, key)


def _straight_vs_split(tmp_path, stage, names, **common):
    """The same 16-clip run straight through and stopped after 8 clips then resumed: equal weights."""
    train(stage, out=str(tmp_path / "straight"), **common)
    train(stage, out=str(tmp_path / "split"), overrides=["total_clips=8"], **common)
    train(stage, resume=str(tmp_path / "split"), progress=False, overrides=["total_clips=16"])
    step_a, a = _weights(tmp_path / "straight", names)
    step_b, b = _weights(tmp_path / "split", names)
    assert step_a == step_b == 4
    _assert_same(a, b)
    return a, b


def test_autoencoder_resume_is_exact(tmp_path, tiny_config):
    # 4 steps of 4 clips (batch 2 x accumulation 2); the GAN stage starts at step 2, so the resumed
    # half runs the discriminators with optimizer state that was saved before they ever stepped.
    _, b = _straight_vs_split(tmp_path, "autoencoder", ["autoencoder", "discriminators"],
                              config=str(tiny_config()), data="synthetic:6", progress=False)
    # and the run really trained: the discriminators moved once the GAN stage began
    first = load_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000002").weights("discriminators")[0]
    assert any(not torch.equal(first[k], b["discriminators"][k]) for k in first)


def test_diffusion_resume_is_exact(tmp_path, tiny_config, tiny_autoencoder):
    _straight_vs_split(tmp_path, "diffusion", ["unet", "ema"], config=str(tiny_config()), data="synthetic:6",
                       autoencoder=str(tiny_autoencoder), progress=False)
    assert (tmp_path / "split" / "diffusion.safetensors").is_file()


def test_diffusion_resume_on_a_latent_cache_is_exact(tmp_path, tiny_config, tiny_autoencoder):
    # 6 videos of 16 frames encoded at offsets 0 and 2 (hop 4): 5 pairs per video, one window between
    # each, so the resumed half must redraw the same pairs (epoch 1 starts mid-run) and targets.
    from pvdm_fast.data.dataset import open_dataset
    from pvdm_fast.data.latents import encode_dataset, file_sha256
    from pvdm_fast.pipeline import load_autoencoder

    clips = open_dataset("synthetic:6", resolution=16, frames=4, mode="windows", offsets=(0, 2), clips_per_video=0,
                         substitute=False, synthetic_frames=16)
    encode_dataset(load_autoencoder(tiny_autoencoder), clips, tmp_path / "lat", device="cpu", progress=False,
                   autoencoder_id=file_sha256(tiny_autoencoder))
    _straight_vs_split(tmp_path, "diffusion", ["unet", "ema"], config=str(tiny_config()),
                       latents=str(tmp_path / "lat"), autoencoder=str(tiny_autoencoder), progress=False)
    # every video has a pair: a conditional step conditions every clip, as the official 2T clips do
    conditioned = _logged(tmp_path / "straight", "unet/conditioned")
    assert set(conditioned.values()) <= {0.0, 1.0} and 1.0 in conditioned.values(), conditioned


def _logged(run_dir, key):
    from pvdm_fast.train.logging import read_metrics

    return {r["step"]: r[key] for r in read_metrics(run_dir) if key in r}


def test_resume_with_a_new_lr_uses_it(tmp_path, tiny_config):
    # The checkpoint's optimizer state must not bring the old rates back: lr and disc_lr given with
    # --resume apply from the next update on (the GAN stage starts at step 2, right after the resume, and
    # alternates: the autoencoder updates at logged steps 3 and 5, the discriminators at 4; every row
    # carries each part's latest rate).
    cfg = tiny_config()
    run = tmp_path / "run"
    train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False, overrides=["total_clips=8"])
    assert set(_logged(run, "ae/lr").values()) == {1e-3}
    train("autoencoder", resume=str(run), progress=False, overrides=["total_clips=20", "lr=1e-5", "disc_lr=1e-7"])
    assert _logged(run, "ae/lr") == {1: 1e-3, 2: 1e-3, 3: 1e-5, 4: 1e-5, 5: 1e-5}
    assert _logged(run, "disc/lr") == {4: 1e-7, 5: 1e-7}
    groups = {k: v["param_groups"][0] for k, v in load_checkpoint(run).state()["optimizers"].items()}
    assert groups["ae"]["lr"] == 1e-5 and groups["disc"]["lr"] == 1e-7


def test_resume_that_drops_the_warm_up_runs_at_the_configured_lr(tmp_path, tiny_config, tiny_autoencoder):
    # No scheduler after the resume (warmup_steps=0, no decay): the lr is the config's, not the warm-up
    # scaled rate left in the checkpoint's optimizer state.
    cfg = tiny_config(train_diffusion={"warmup_steps": 4})
    run = tmp_path / "run"
    train("diffusion", config=str(cfg), out=str(run), data="synthetic:6", autoencoder=str(tiny_autoencoder),
          progress=False, overrides=["total_clips=4"])
    assert _logged(run, "unet/lr") == pytest.approx({1: 1e-3 / 4})
    train("diffusion", resume=str(run), progress=False, overrides=["total_clips=12", "warmup_steps=0",
                                                                   "lr_decay=none"])
    assert _logged(run, "unet/lr") == pytest.approx({1: 1e-3 / 4, 2: 1e-3, 3: 1e-3})


def test_resume_with_a_new_lr_keeps_the_schedule_position(tmp_path, tiny_config, tiny_autoencoder):
    # warm-up over 4 updates; the resume after update 1 scales the new base rate by the factors 2/4, 3/4, 1
    cfg = tiny_config(train_diffusion={"warmup_steps": 4, "lr_decay": "linear", "min_lr_ratio": 1.0})
    run = tmp_path / "run"
    train("diffusion", config=str(cfg), out=str(run), data="synthetic:6", autoencoder=str(tiny_autoencoder),
          progress=False, overrides=["total_clips=4"])
    train("diffusion", resume=str(run), progress=False, overrides=["total_clips=16", "lr=4e-4"])
    used = _logged(run, "unet/lr")
    assert used == pytest.approx({1: 1e-3 / 4, 2: 4e-4 * 2 / 4, 3: 4e-4 * 3 / 4, 4: 4e-4})
    # and a later plain resume keeps the new rate (it is in the checkpoint now)
    train("diffusion", resume=str(run), progress=False, overrides=["total_clips=20"])
    assert _logged(run, "unet/lr")[5] == pytest.approx(4e-4)
