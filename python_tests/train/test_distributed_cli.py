"""torchrun with 2 gloo processes == 1 process on the same global batch; SIGTERM saves a checkpoint;
the CLI's error messages."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pvdm_fast.cli import main
from pvdm_fast.train.checkpoint import load_checkpoint
from pvdm_fast.train.commands import train
from torchrun_launch import torchrun


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_two_gloo_processes_match_one(tmp_path, tiny_config, tiny_autoencoder, stage):
    # The autoencoder before its GAN stage (BatchNorm statistics are per rank on CPUs, so the GAN
    # stage is only equal to one process with SyncBatchNorm on GPUs).
    cfg = tiny_config(train_autoencoder={"gan_start_step": -1, "total_clips": 8},
                      train_diffusion={"total_clips": 8})
    extra = ["--data", "synthetic:6"] + (["--autoencoder", str(tiny_autoencoder)] if stage == "diffusion" else [])
    cmd = [*torchrun(2), "-m", "pvdm_fast.cli", f"train-{stage}", "--config", str(cfg),
           "--out", str(tmp_path / "ddp"), "--no-progress", *extra]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([f"train-{stage}", "--config", str(cfg), "--out", str(tmp_path / "one"), "--no-progress", *extra]) == 0
    name = "autoencoder" if stage == "autoencoder" else "unet"
    ddp, one = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "one")
    assert ddp.step == one.step == 2 and ddp.manifest["world_size"] == 2
    # Every logged loss (averaged over ranks) is the single-process loss on the same clips.
    key = f"{'ae' if stage == 'autoencoder' else 'unet'}/loss"
    ddp_loss, one_loss = ([json.loads(line)[key] for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
                          for r in ("ddp", "one"))
    assert len(ddp_loss) == 2 and ddp_loss == pytest.approx(one_loss, rel=1e-5)
    # Weights agree to a tenth of one Adam step (lr 1e-3). Not to 1e-6: biases that feed a
    # normalisation have a zero gradient up to rounding, which differs between an all-reduce and one
    # batch, and Adam turns that noise into steps of up to lr * |g| / eps.
    a, b = ddp.weights(name)[0], one.weights(name)[0]
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-4), k
    assert len(ddp.state()["rng"]) == 2  # the RNG state of every rank


def test_sigterm_saves_a_checkpoint_then_resume_continues(tmp_path, tiny_config):
    cfg = tiny_config(train_autoencoder={"total_clips": 10**6, "gan_start_step": -1})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pvdm_fast.cli", "train-autoencoder", "--config", str(cfg),
                             "--data", "synthetic:6", "--out", str(run), "--no-progress"], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text().count("\n") >= 2):
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "training never logged a step"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "SIGTERM" in out
    step = load_checkpoint(run).step
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert step >= 2 and step == logged[-1]
    summary = train("autoencoder", resume=str(run), progress=False, overrides=[f"total_clips={4 * (step + 1)}"])
    assert summary["step"] == step + 1 and summary["interrupted"] is None


# Trains, and sends a signal to its whole process group (a terminal's Ctrl-C, or a SIGTERM to the
# group as schedulers and `kill -- -PGID` send it, so the DataLoader workers get it too) while the loop
# waits for the data of steps 2, 4, 6 and 8: the wait (as for a slow video decode) gives a worker that
# dies of the signal the time to do so before its batches are read. Resumes in between.
_STOP_FOUR_TIMES = """
import json, os, pathlib, signal, sys, time
from pvdm_fast.train import loop
from pvdm_fast.train.commands import train

fetch = loop.Trainer._next_batches

def stalled_fetch(self, stream, stop):
    if self.step == target and stop.requested is None:
        os.killpg(0, sig)
        time.sleep(0.5)
    return fetch(self, stream, stop)

loop.Trainer._next_batches = stalled_fetch
cfg, run = sys.argv[1], pathlib.Path(sys.argv[2])
for attempt, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM)):
    target = 2 * (attempt + 1)
    where = dict(config=cfg, data="synthetic:6", out=str(run)) if attempt == 0 else dict(resume=str(run))
    print(json.dumps(train("autoencoder", progress=False, **where)), flush=True)
"""


def test_a_signal_to_the_process_group_with_data_workers_saves_then_resumes(tmp_path, tiny_config):
    # num_workers=2: the workers must neither die of the signal nor take the checkpoint with them.
    cfg = tiny_config(train_autoencoder={"total_clips": 10**6, "gan_start_step": -1, "num_workers": 2})
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", _STOP_FOUR_TIMES, str(cfg), str(run)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    summaries = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [s["interrupted"] for s in summaries] == ["SIGINT", "SIGTERM"] * 2
    assert [s["step"] for s in summaries] == [2, 4, 6, 8] and load_checkpoint(run).step == 8
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 9))  # each step once, the last one in the checkpoint
    summary = train("autoencoder", resume=str(run), progress=False, overrides=["total_clips=36", "num_workers=0"])
    assert summary["step"] == 9 and summary["interrupted"] is None


def _run_cli(args, capsys):
    code = main(args)
    return code, capsys.readouterr().err


def test_cli_errors(tmp_path, tiny_config, tiny_autoencoder, capsys):
    cfg = str(tiny_config())
    out = str(tmp_path / "run")
    code, err = _run_cli(["train-autoencoder", "--config", cfg, "--data", f"videos:{tmp_path}/missing",
                          "--out", out, "--no-progress"], capsys)
    assert code == 2 and "missing" in err and "does not exist" in err
    code, err = _run_cli(["train-autoencoder", "--config", "no-such-preset", "--data", "synthetic", "--out", out],
                         capsys)
    assert code == 2 and "no-such-preset" in err
    code, err = _run_cli(["train-autoencoder", "--config", cfg, "--data", "synthetic", "--out", out,
                          "learning_rate=1"], capsys)
    assert code == 2 and "learning_rate" in err
    # An autoencoder whose latent grid does not fit the UNet: a checkpoint from a different model.
    other = str(tiny_config(unet={"frames": 8, "height": 8, "width": 8}))
    code, err = _run_cli(["train-diffusion", "--config", other, "--autoencoder", str(tiny_autoencoder),
                          "--data", "synthetic:4", "--out", out, "--no-progress"], capsys)
    assert code == 2 and "latent grid" in err
    # Resuming a run with a different model config.
    assert main(["train-autoencoder", "--config", cfg, "--data", "synthetic:6", "--out", out, "--no-progress",
                 "total_clips=4"]) == 0
    code, err = _run_cli(["train-autoencoder", "--resume", out, "--no-progress", "autoencoder.channels=32"], capsys)
    assert code == 2 and "different `autoencoder` config" in err
    code, err = _run_cli(["train-autoencoder", "--config", cfg, "--data", "synthetic", "--out", out], capsys)
    assert code == 2 and "--resume" in err
