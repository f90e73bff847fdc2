"""Exact resume: N steps straight == N/2 steps, resume, N/2 steps (both stages, on the CPU)."""

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


def test_autoencoder_resume_is_exact(tmp_path, tiny_config):
    # 4 steps of 4 clips (batch 2 x accumulation 2); the GAN stage starts at step 2, so the resumed
    # half runs the discriminators with optimizer state that was saved before they ever stepped.
    cfg = tiny_config()
    names = ["autoencoder", "discriminators"]
    train("autoencoder", config=str(cfg), out=str(tmp_path / "straight"), data="synthetic:6", progress=False)
    train("autoencoder", config=str(cfg), out=str(tmp_path / "split"), data="synthetic:6", progress=False,
          overrides=["total_clips=8"])
    summary = train("autoencoder", resume=str(tmp_path / "split"), progress=False, overrides=["total_clips=16"])
    assert summary["step"] == 4
    step_a, a = _weights(tmp_path / "straight", names)
    step_b, b = _weights(tmp_path / "split", names)
    assert step_a == step_b == 4
    _assert_same(a, b)
    # and the run really trained: the discriminators moved once the GAN stage began
    first = load_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000002").weights("discriminators")[0]
    assert any(not torch.equal(first[k], b["discriminators"][k]) for k in first)


def test_diffusion_resume_is_exact(tmp_path, tiny_config, tiny_autoencoder):
    cfg = tiny_config()
    names = ["unet", "ema"]
    common = dict(config=str(cfg), data="synthetic:6", autoencoder=str(tiny_autoencoder), progress=False)
    train("diffusion", out=str(tmp_path / "straight"), **common)
    train("diffusion", out=str(tmp_path / "split"), overrides=["total_clips=8"], **common)
    train("diffusion", resume=str(tmp_path / "split"), progress=False, overrides=["total_clips=16"])
    step_a, a = _weights(tmp_path / "straight", names)
    step_b, b = _weights(tmp_path / "split", names)
    assert step_a == step_b == 4
    _assert_same(a, b)
    assert (tmp_path / "split" / "diffusion.safetensors").is_file()
