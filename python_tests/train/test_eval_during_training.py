"""Held-out evaluation during training (eval_every): eval/* rows at the expected steps, the numbers
`pvdm eval` / `pvdm sample` give for the exported weights, no effect on training (weights, RNG streams,
exact resume), config errors before the first step, and 2 gloo processes == 1.

The I3D at 224x224 takes about a second per clip on a CPU core, so most tests replace it with a cheap
stand-in feature network (`fake_i3d`); one test runs a real (random-weight) I3D file end to end.
"""

import os
import subprocess

import numpy as np
import pytest
import torch

from pvdm_fast.train import evaluation
from pvdm_fast.train.checkpoint import load_checkpoint
from pvdm_fast.train.commands import train
from pvdm_fast.train.logging import read_metrics
from torchrun_launch import torchrun

EVAL_KEYS_AE = {"eval/psnr", "eval/ssim", "eval/rfvd"}

# The stand-in feature network, also written into the torchrun script below (a subprocess cannot be
# monkeypatched from here).
FAKE_NETWORK = '''
import torch

def fake_features(videos):
    """uint8 (B, T, H, W, 3) -> (B, 9): per-channel mean, spread and frame-to-frame change."""
    x = torch.as_tensor(videos).double() / 255
    return torch.cat([x.mean((1, 2, 3)), x.std((1, 2, 3)), (x[:, 1:] - x[:, :-1]).abs().mean((1, 2, 3))], 1)

def fake_load(path, device, frames, seen=None):
    def extract(videos):
        if seen is not None:
            seen.append(len(videos))
        return fake_features(videos)
    return extract, {"network": "test-features", "network_sha256": "0" * 64, "preprocessing": "none"}
'''
_namespace: dict = {}
exec(FAKE_NETWORK, _namespace)
fake_features = _namespace["fake_features"]


@pytest.fixture
def fake_i3d(monkeypatch, tmp_path):
    """eval_i3d=<path> runs the stand-in features; `.seen` lists the batch sizes extracted."""

    class Fake:
        path = str(tmp_path / "stand-in-i3d.pt")
        seen: list = []

    monkeypatch.setattr(evaluation, "load_fvd_network",
                        lambda path, device, frames: _namespace["fake_load"](path, device, frames, Fake.seen))
    return Fake


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    """A random-weight pytorch-i3d state dict (16 classes), as test_cli_eval makes one."""
    from pvdm_fast.metrics.i3d import InceptionI3D

    path = tmp_path_factory.mktemp("i3d") / "i3d.pt"
    torch.manual_seed(0)
    torch.save(InceptionI3D(num_classes=16).state_dict(), path)
    return path


def _rows(run_dir):
    """metrics.jsonl by step, checked to hold each step once (an evaluation joins its step's row)."""
    records = read_metrics(run_dir)
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), steps
    return {r["step"]: r for r in records}


def _clips(num, frames=4, as_uint8=False, batch_size=2):
    from pvdm_fast.metrics.features import iter_dataset_batches

    return iter_dataset_batches("synthetic:6", num=num, frames=frames, stride=1, resolution=16, batch_size=batch_size,
                                seed=0, as_uint8=as_uint8)


def _frechet(a, b):
    from pvdm_fast.metrics.fvd import frechet_distance

    return frechet_distance(torch.cat(a).numpy(), torch.cat(b).numpy())


def test_autoencoder_eval_rows_are_the_exported_weights_numbers(tmp_path, tiny_config, fake_i3d):
    # 5 steps of 4 clips, eval every 2 and at the last step, logs every 3: eval rows join steps 2 and 4
    # (no loss log there otherwise) and the last step; the EMA (not the trained weights) is evaluated,
    # LPIPS loaded for the evaluation alone (lpips_weight=0 in the loss).
    from pvdm_fast.metrics.evaluate import evaluate_recon
    from pvdm_fast.models.lpips import LPIPS
    from pvdm_fast.pipeline import load_autoencoder, to_uint8

    torch.manual_seed(0)
    lpips = tmp_path / "lpips.pth"
    torch.save({k: v.abs() if k.startswith("lin") else v for k, v in LPIPS().state_dict().items()}, lpips)
    cfg = tiny_config(train_autoencoder={"total_clips": 20, "log_every": 3, "eval_every": 2, "eval_videos": 5,
                                         "eval_i3d": fake_i3d.path, "lpips_weights": str(lpips),
                                         "ema_decay": 0.5, "ema_every": 1})
    run = tmp_path / "run"
    train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False)
    rows = _rows(run)
    assert list(rows) == [2, 3, 4, 5]
    keys = EVAL_KEYS_AE | {"eval/lpips"}
    assert [s for s, r in rows.items() if keys <= set(r)] == [2, 4, 5] and not keys & set(rows[3])
    assert all(np.isfinite(rows[s][k]) for s in (2, 4, 5) for k in keys)
    assert rows[5]["eval/lpips"] > 0 and rows[5]["eval/rfvd"] > 0 and "ae/loss" in rows[2]
    # the last evaluation is `pvdm eval recon` of the exported file on the same clips
    exported = run / "autoencoder.safetensors"
    ref = evaluate_recon(autoencoder=exported, data="synthetic:6", num=5, batch_size=2, lpips=lpips)
    for k in ("psnr", "ssim", "lpips"):
        assert rows[5][f"eval/{k}"] == pytest.approx(ref[k], rel=1e-9, abs=1e-12), k
    # ... which holds the EMA: the trained weights score differently
    trained = load_checkpoint(run).weights("autoencoder")[0]
    assert any(not torch.equal(v, load_autoencoder(exported).state_dict()[k]) for k, v in trained.items())
    # rFVD: the stand-in features of the reconstructions against those of their inputs
    model = load_autoencoder(exported).eval()
    real, fake = [], []
    with torch.no_grad():
        for video in _clips(5):
            real.append(fake_features(((video + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)))
            fake.append(fake_features(to_uint8(model(video))))
    assert rows[5]["eval/rfvd"] == pytest.approx(_frechet(real, fake), rel=1e-6)


def test_diffusion_eval_is_the_fvd_of_pvdm_sample_videos_with_cached_real_statistics(
        tmp_path, tiny_config, tiny_autoencoder, fake_i3d):
    from pvdm_fast.pipeline import Pipeline

    cfg = tiny_config(train_diffusion={"total_clips": 16, "eval_every": 2, "eval_videos": 5, "eval_steps": 8,
                                       "eval_i3d": fake_i3d.path})
    run = tmp_path / "run"
    common = dict(data="synthetic:6", autoencoder=str(tiny_autoencoder), progress=False)
    train("diffusion", config=str(cfg), out=str(run), overrides=["total_clips=12"], **common)
    assert sum(fake_i3d.seen) == 5 + 5 + 5  # the real clips once, 5 samples at step 2 and at the last, 3
    train("diffusion", resume=str(run), overrides=["total_clips=16"], progress=False)
    rows = _rows(run)
    assert list(rows) == [1, 2, 3, 4]
    assert [s for s, r in rows.items() if "eval/fvd" in r] == [2, 3, 4]
    assert all(np.isfinite(rows[s]["eval/fvd"]) and rows[s]["eval/fvd"] >= 0 for s in (2, 3, 4))
    # the real statistics were read from the run folder after the resume: only samples were extracted
    assert sum(fake_i3d.seen) == 5 + 5 + 5 + 5 and (run / "eval" / "real_stats.npz").is_file()
    # step 4 evaluated the exported (EMA) weights: the FVD of `pvdm sample --sampler ddim --steps 8` videos
    pipe = Pipeline.from_checkpoints(tiny_autoencoder, run / "diffusion.safetensors", device="cpu")
    fake = [fake_features(pipe(seeds=list(range(5)), sampler="ddim", steps=8))]
    real = [fake_features(torch.from_numpy(v)) for v in _clips(5, as_uint8=True)]
    assert rows[4]["eval/fvd"] == pytest.approx(_frechet(real, fake), rel=1e-6)


def _run_pair(tmp_path, stage, cfg, **common):
    """The same run without and with evaluation at every step, trainer objects kept."""
    from omegaconf import OmegaConf

    from pvdm_fast.train import distributed as D
    from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer
    from pvdm_fast.train.diffusion_trainer import DiffusionTrainer

    cls = AutoencoderTrainer if stage == "autoencoder" else DiffusionTrainer
    section = f"train_{stage}"
    trainers = {}
    for name, every in (("plain", 0), ("eval", 1)):
        config = OmegaConf.load(cfg)
        config[section]["eval_every"] = every
        trainers[name] = cls(config, tmp_path / name, ctx=D.DistContext(0, 1, 0, torch.device("cpu")),
                             progress=False, **common)
        trainers[name].run()
    return trainers


def _assert_same_training(tmp_path, trainers, names):
    a, b = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "eval")
    assert a.step == b.step
    for name in names:
        wa, wb = a.weights(name)[0], b.weights(name)[0]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    # the global RNG streams (saved for the resume) were not drawn from, nor the data stream
    sa, sb = a.state()["rng"][0], b.state()["rng"][0]
    assert torch.equal(sa["torch"], sb["torch"]) and torch.equal(sa["numpy"]["keys"], sb["numpy"]["keys"])
    assert sa["numpy"]["pos"] == sb["numpy"]["pos"] and sa["python"] == sb["python"]
    losses = [[{k: v for k, v in h.items() if not k.startswith("eval/")} for h in t.history]
              for t in trainers.values()]
    assert losses[0] == losses[1]
    assert all("eval/" in " ".join(h) for h in trainers["eval"].history)


def test_evaluation_does_not_change_autoencoder_training(tmp_path, tiny_config, fake_i3d):
    # GAN stage from step 2, EMA: every part trained as without evaluation, modules left in train mode
    cfg = tiny_config(train_autoencoder={"total_clips": 16, "eval_videos": 3, "eval_i3d": fake_i3d.path,
                                         "ema_decay": 0.5, "ema_every": 1})
    trainers = _run_pair(tmp_path, "autoencoder", cfg, data="synthetic:6")
    _assert_same_training(tmp_path, trainers, ["autoencoder", "discriminators", "autoencoder_ema"])
    t = trainers["eval"]
    assert t.model.training and t.disc.training and all(p.requires_grad for p in t.model.parameters())
    assert torch.is_autocast_enabled("cpu") is False


def test_evaluation_does_not_change_diffusion_training(tmp_path, tiny_config, tiny_autoencoder, fake_i3d):
    cfg = tiny_config(train_diffusion={"total_clips": 12, "eval_videos": 3, "eval_steps": 4,
                                       "eval_i3d": fake_i3d.path})
    trainers = _run_pair(tmp_path, "diffusion", cfg, data="synthetic:6", autoencoder=tiny_autoencoder)
    _assert_same_training(tmp_path, trainers, ["unet", "ema"])
    assert trainers["eval"].model.training and all(p.requires_grad for p in trainers["eval"].model.parameters())


def test_resume_with_evaluation_is_exact(tmp_path, tiny_config, fake_i3d):
    # 4 steps straight vs 2 steps, resume, 2 steps (GAN stage from step 2), evaluating every step
    cfg = tiny_config(train_autoencoder={"eval_every": 1, "eval_videos": 3, "eval_i3d": fake_i3d.path,
                                         "ema_decay": 0.5, "ema_every": 1})
    common = dict(config=str(cfg), data="synthetic:6", progress=False)
    train("autoencoder", out=str(tmp_path / "straight"), **common)
    train("autoencoder", out=str(tmp_path / "split"), overrides=["total_clips=8"], **common)
    train("autoencoder", resume=str(tmp_path / "split"), progress=False, overrides=["total_clips=16"])
    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a.step == b.step == 4
    for name in ("autoencoder", "discriminators", "autoencoder_ema"):
        wa, wb = a.weights(name)[0], b.weights(name)[0]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    straight, split = _rows(tmp_path / "straight"), _rows(tmp_path / "split")
    assert list(straight) == list(split) == [1, 2, 3, 4]  # each step once, eval rows included
    for step in straight:
        assert {k: v for k, v in split[step].items() if k.startswith("eval/")} == \
            {k: v for k, v in straight[step].items() if k.startswith("eval/")}
        assert EVAL_KEYS_AE <= set(split[step])


def test_eval_config_errors_come_before_any_training_step(tmp_path, tiny_config, tiny_autoencoder, i3d_file,
                                                          monkeypatch):
    from pvdm_fast.diffusion.samplers import SAMPLERS
    from pvdm_fast.train.config import EVAL_SAMPLERS
    from pvdm_fast.train.loop import Trainer

    assert set(EVAL_SAMPLERS) == set(SAMPLERS)  # the config's copy of the sampler names

    def no_step(*a, **k):
        raise AssertionError("a training step ran before the eval settings were checked")

    monkeypatch.setattr(Trainer, "_next_batches", no_step)
    ae = dict(config=str(tiny_config()), data="synthetic:6", progress=False)
    dm = dict(config=str(tiny_config()), data="synthetic:6", autoencoder=str(tiny_autoencoder), progress=False)
    cases = [
        ("autoencoder", ae, ["eval_every=-1"], r"eval_every must be >= 0"),
        ("autoencoder", ae, ["eval_every=2", "eval_videos=0"], r"eval_videos must be >= 1"),
        ("diffusion", dm, ["eval_every=2"], r"eval_every=2 needs eval_i3d=PATH"),
        ("diffusion", dm, ["eval_every=2", "eval_sampler=euler", f"eval_i3d={i3d_file}"], r"eval_sampler must be"),
        ("autoencoder", ae, ["eval_every=2", f"eval_data=videos:{tmp_path}/missing"], r"eval_data=videos:.*missing"),
        ("autoencoder", ae, ["eval_every=2", "eval_data=synthetic:3", "eval_videos=4"], r"fewer than eval_videos=4"),
        ("autoencoder", ae, ["eval_every=2", "eval_videos=3", f"eval_i3d={tmp_path}/none.pt"],
         r"eval_i3d=.*none\.pt.*not found"),
        # the tiny clips have 4 frames: too few for the I3D, said before training rather than at step 2
        ("diffusion", dm, ["eval_every=2", "eval_videos=3", f"eval_i3d={i3d_file}"],
         r"eval_i3d=.*at least 9 frames.*data\.frames"),
    ]
    for i, (stage, common, overrides, message) in enumerate(cases):
        run = tmp_path / f"run{i}"
        with pytest.raises(ValueError, match=message):
            train(stage, out=str(run), overrides=overrides, **common)
        assert not (run / "metrics.jsonl").exists(), overrides


def test_autoencoder_rfvd_with_an_i3d_weights_file(tmp_path, tiny_config, i3d_file):
    # 9-frame clips (the fewest this I3D takes), one step: one evaluation, at the last step
    cfg = tiny_config(autoencoder={"frames": 9}, data={"frames": 9}, unet={"frames": 9},
                      train_autoencoder={"total_clips": 4, "gan_start_step": -1, "eval_every": 10, "eval_videos": 2,
                                         "eval_i3d": str(i3d_file)})
    run = tmp_path / "run"
    train("autoencoder", config=str(cfg), out=str(run), data="synthetic:4", progress=False)
    rows = _rows(run)
    assert list(rows) == [1] and EVAL_KEYS_AE <= set(rows[1])
    assert np.isfinite(rows[1]["eval/rfvd"]) and rows[1]["eval/rfvd"] >= 0


_TORCHRUN_SCRIPT = FAKE_NETWORK + '''
import sys
from pvdm_fast.train import evaluation
evaluation.load_fvd_network = fake_load
from pvdm_fast.cli import main
sys.exit(main(sys.argv[1:]))
'''


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_two_gloo_processes_evaluate_as_one(tmp_path, tiny_config, tiny_autoencoder, fake_i3d, stage):
    # 5 held-out clips / samples over 2 ranks (3 + 2), the EMA broadcast from rank 0 (both stages have one
    # here): the numbers one process computes, up to the weights' own DDP-vs-one-batch rounding. The
    # autoencoder before its GAN stage (BatchNorm statistics are per rank on CPUs).
    evaluate = {"eval_every": 1, "eval_videos": 5, "eval_i3d": fake_i3d.path, "ema_decay": 0.5, "ema_every": 1}
    cfg = tiny_config(train_autoencoder={"gan_start_step": -1, "total_clips": 8, **evaluate},
                      train_diffusion={"total_clips": 8, "eval_steps": 4, **evaluate})
    extra = ["--data", "synthetic:6"] + (["--autoencoder", str(tiny_autoencoder)] if stage == "diffusion" else [])
    script = tmp_path / "run_with_stand_in_i3d.py"
    script.write_text(_TORCHRUN_SCRIPT)
    args = [f"train-{stage}", "--config", str(cfg), "--no-progress", *extra]
    cmd = [*torchrun(2), str(script), *args, "--out", str(tmp_path / "ddp")]
    done = subprocess.run(cmd, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    train(stage, config=str(cfg), out=str(tmp_path / "one"), progress=False, data="synthetic:6",
          autoencoder=str(tiny_autoencoder) if stage == "diffusion" else None)
    ddp, one = _rows(tmp_path / "ddp"), _rows(tmp_path / "one")
    keys = sorted(EVAL_KEYS_AE) if stage == "autoencoder" else ["eval/fvd"]
    assert list(ddp) == list(one) == [1, 2]
    for step in ddp:
        for key in keys:
            assert ddp[step][key] == pytest.approx(one[step][key], rel=1e-3, abs=1e-6), (step, key)
    if stage == "diffusion":  # the real side: rank 0 wrote the statistics both ranks gathered
        from pvdm_fast.metrics.stats import load_stats

        a, b = (load_stats(tmp_path / r / "eval" / "real_stats.npz")[0] for r in ("ddp", "one"))
        assert a["count"] == b["count"] == 5 and np.allclose(a["cov"], b["cov"], rtol=1e-9, atol=1e-12)


def test_a_failing_or_signalled_evaluation_loses_no_training(tmp_path, tiny_config, monkeypatch):
    # An evaluation that fails (out of memory beside the training, say) at a checkpoint step comes after
    # that step's checkpoint; at the last step, after the final checkpoint, so a resume goes straight
    # to the export. A signal before an evaluation skips it: the run saves and stops first.
    import os
    import signal

    from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer

    cfg = tiny_config(train_autoencoder={"total_clips": 24, "checkpoint_every": 4, "eval_every": 2,
                                         "eval_videos": 2, "gan_start_step": -1})

    def failing(self):
        if self.step in (4, 6):
            raise RuntimeError(f"out of memory (simulated) at step {self.step}")
        return {"eval/psnr": 1.0}

    monkeypatch.setattr(AutoencoderTrainer, "evaluate", failing)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="at step 4"):
        train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False)
    assert load_checkpoint(run).step == 4
    with pytest.raises(RuntimeError, match="at step 6"):  # the last step: checkpoint 6, then the evaluation
        train("autoencoder", resume=str(run), progress=False)
    assert load_checkpoint(run).step == 6 and not (run / "autoencoder.safetensors").exists()
    summary = train("autoencoder", resume=str(run), progress=False)
    assert summary["step"] == 6 and (run / "autoencoder.safetensors").exists()

    # SIGTERM during step 2 (an eval step): no evaluation, a checkpoint at step 2, interrupted
    calls = []
    original = AutoencoderTrainer.train_step

    def signalled(self, batches):
        if self.step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batches)

    monkeypatch.setattr(AutoencoderTrainer, "train_step", signalled)
    monkeypatch.setattr(AutoencoderTrainer, "evaluate", lambda self: calls.append(self.step) or {"eval/psnr": 1.0})
    summary = train("autoencoder", config=str(cfg), out=str(tmp_path / "stopped"), data="synthetic:6", progress=False)
    assert summary["interrupted"] == "SIGTERM" and summary["step"] == 2 and calls == []
    assert load_checkpoint(tmp_path / "stopped").step == 2


def test_evaluating_on_the_training_clips_says_so(tmp_path, tiny_config, capsys):
    cfg = tiny_config(train_autoencoder={"total_clips": 4, "eval_every": 1, "eval_videos": 2, "gan_start_step": -1})
    train("autoencoder", config=str(cfg), out=str(tmp_path / "seen"), data="synthetic:6", progress=False)
    assert "draws its clips from the training data (synthetic:6" in capsys.readouterr().err
    train("autoencoder", config=str(cfg), out=str(tmp_path / "unseen"), data="synthetic:6", progress=False,
          overrides=["eval_data=synthetic:4"])
    assert "training data" not in capsys.readouterr().err
