"""The run folder's own files: metrics.jsonl holds each step once across crashes and resumes, and a
failed (re)start leaves run.json and config.yaml as they were."""

import json

import pytest
import torch

from pvdm_fast.train.autoencoder_trainer import AutoencoderTrainer
from pvdm_fast.train.checkpoint import load_checkpoint
from pvdm_fast.train.commands import train
from pvdm_fast.train.logging import read_metrics


class Crash(Exception):
    pass


def _crash_at(monkeypatch, step):
    """The step loop dies (as under kill -9: no final save) when it reaches `step` steps."""
    original = AutoencoderTrainer.train_step

    def train_step(self, batches):
        if self.step == step:
            raise Crash(f"killed at step {step}")
        return original(self, batches)

    monkeypatch.setattr(AutoencoderTrainer, "train_step", train_step)


def test_metrics_hold_each_step_once_after_a_crash_and_resume(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config(train_autoencoder={"gan_start_step": -1, "checkpoint_every": 4, "total_clips": 36})
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _crash_at(m, 7)
        with pytest.raises(Crash):
            train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False)
    assert load_checkpoint(run).step == 4 and [r["step"] for r in read_metrics(run)] == list(range(1, 8))
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 8, "clo')  # a cut line
    train("autoencoder", resume=str(run), progress=False)
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 10))


def test_a_fresh_run_over_a_run_without_checkpoint_starts_new_metrics(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config(train_autoencoder={"gan_start_step": -1, "total_clips": 8})
    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _crash_at(m, 1)
        with pytest.raises(Crash):
            train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False)
    assert [r["step"] for r in read_metrics(run)] == [1]
    train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False)
    assert [r["step"] for r in read_metrics(run)] == [1, 2]


def test_auto_resume_starts_then_continues_with_one_command(tmp_path, tiny_config, monkeypatch):
    # A preemptible job runs the same command at every start: the first starts the run, a later one
    # (after a kill without a final save) resumes from the last checkpoint, and each step is logged once.
    from pvdm_fast.cli import build_parser

    cfg = tiny_config(train_autoencoder={"gan_start_step": -1, "checkpoint_every": 4, "total_clips": 36})
    run = tmp_path / "run"
    command = dict(config=str(cfg), out=str(run), data="synthetic:6", progress=False, auto_resume=True)
    with monkeypatch.context() as m:
        _crash_at(m, 7)
        with pytest.raises(Crash):
            train("autoencoder", **command)
    assert load_checkpoint(run).step == 4
    with pytest.raises(ValueError, match="already holds a training run.*--auto-resume"):
        train("autoencoder", **{**command, "auto_resume": False})
    summary = train("autoencoder", **command)
    assert summary["step"] == 9 and [r["step"] for r in read_metrics(run)] == list(range(1, 10))
    assert train("autoencoder", **{**command, "overrides": ["total_clips=44"]})["step"] == 11
    # without --config the run's own config is resumed, as with --resume
    assert train("autoencoder", **{**command, "config": None, "overrides": ["total_clips=48"]})["step"] == 12
    with pytest.raises(ValueError, match="drop --resume"):
        train("autoencoder", **{**command, "resume": str(run)})
    with pytest.raises(ValueError, match="needs --out"):
        train("autoencoder", **{**command, "out": None})
    with pytest.raises(ValueError, match="--config"):  # a new run needs a config
        train("autoencoder", **{**command, "out": str(tmp_path / "new"), "config": None})
    for stage in ("train-autoencoder", "train-diffusion"):
        assert build_parser().parse_args([stage, "--out", "r", "--auto-resume"]).auto_resume


def test_a_failed_resume_keeps_the_runs_saved_arguments(tmp_path, tiny_config, tiny_autoencoder):
    cfg = tiny_config(train_diffusion={"total_clips": 8})
    run = tmp_path / "run"
    train("diffusion", config=str(cfg), out=str(run), data="synthetic:6", autoencoder=str(tiny_autoencoder),
          progress=False, overrides=["total_clips=4"])
    before = {name: (run / name).read_text() for name in ("run.json", "config.yaml", "metrics.jsonl")}
    with pytest.raises(FileNotFoundError, match="lat_typo"):
        train("diffusion", resume=str(run), latents=str(tmp_path / "lat_typo"), progress=False,
              overrides=["total_clips=44"])
    assert {name: (run / name).read_text() for name in before} == before
    assert json.loads(before["run.json"])["latents"] is None
    summary = train("diffusion", resume=str(run), progress=False, overrides=["total_clips=8"])  # a plain resume
    assert summary["step"] == 2


def test_tensorboard_videos_without_moviepy_are_one_note_not_a_message_per_step(tmp_path, monkeypatch, capsys):
    # torch's add_video prints a message and logs nothing without moviepy (it raises nothing): without
    # moviepy the logger writes one note and skips the call; with it, the video goes at the clip count.
    import importlib.util

    import torch

    from pvdm_fast.train.logging import RunLogger

    pytest.importorskip("tensorboard")
    real_find_spec = importlib.util.find_spec
    for have in (False, True):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: (object() if have else None) if name == "moviepy" else real_find_spec(name, *a))
        logger = RunLogger(tmp_path / f"run{have}", total_clips=8, tensorboard=True, progress=False)
        calls = []
        monkeypatch.setattr(logger._tb, "add_video", lambda tag, v, step, fps: calls.append((tag, step)))
        for clips in (4, 8):
            logger.add_video("samples", torch.zeros(1, 3, 2, 4, 4), clips)
        logger.close()
        notes = capsys.readouterr().out.count("need the moviepy package")
        assert (notes, calls) == ((0, [("samples", 4), ("samples", 8)]) if have else (1, []))


def test_auto_resume_refuses_a_run_on_other_data_and_diffusion_refuses_another_autoencoder(tmp_path, tiny_config):
    # A job script reused with other data but the same --out must not take up that run; a diffusion run
    # (resumed either way) continues only on its autoencoder's latents.
    from dataclasses import asdict

    from pvdm_fast.configs import load_config
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import save_weights

    cfg = tiny_config(train_autoencoder={"gan_start_step": -1, "total_clips": 8},
                      train_diffusion={"total_clips": 8})
    run = tmp_path / "ae"
    train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False)
    before = (run / "run.json").read_text()
    with pytest.raises(ValueError, match=r"trained with --data synthetic:6.*gives --data synthetic:9.*--resume"):
        train("autoencoder", config=str(cfg), out=str(run), data="synthetic:9", progress=False, auto_resume=True,
              overrides=["total_clips=16"])
    assert (run / "run.json").read_text() == before and load_checkpoint(run).step == 2
    # the same data: the same run, continued
    assert train("autoencoder", config=str(cfg), out=str(run), data="synthetic:6", progress=False,
                 auto_resume=True, overrides=["total_clips=16"])["step"] == 4

    config = AutoencoderConfig(**dict(load_config(str(cfg)).autoencoder))
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(tmp_path / f"ae{seed}.safetensors")
        save_weights(files[-1], Autoencoder(config).state_dict(), "autoencoder", asdict(config))
    dm = tmp_path / "dm"
    train("diffusion", config=str(cfg), out=str(dm), data="synthetic:6", autoencoder=str(files[0]), progress=False)
    for how in ({"auto_resume": True, "config": str(cfg), "out": str(dm)}, {"resume": str(dm)}):
        with pytest.raises(ValueError, match="another latent space"):
            train("diffusion", data="synthetic:6", autoencoder=str(files[1]), progress=False,
                  overrides=["total_clips=16"], **how)
    assert load_checkpoint(dm).step == 2
    copy = tmp_path / "moved.safetensors"  # the same file elsewhere is the same autoencoder
    copy.write_bytes(files[0].read_bytes())
    assert train("diffusion", resume=str(dm), autoencoder=str(copy), progress=False,
                 overrides=["total_clips=16"])["step"] == 4
    from pvdm_fast.models.io import load_weights  # the export records the clips it was trained on

    assert load_weights(dm / "diffusion.safetensors")[2]["data"]["frame_stride"] == 1


def test_same_source_compares_places_not_spellings(tmp_path):
    from pvdm_fast.train.commands import _same_source

    (tmp_path / "d").mkdir()
    assert _same_source(f"ucf101:{tmp_path}/d", f"ucf101:{tmp_path}/x/../d")
    assert not _same_source(f"ucf101:{tmp_path}/d", f"sky:{tmp_path}/d")
    assert not _same_source("synthetic:6", "synthetic:9") and _same_source("synthetic", "synthetic")
    assert _same_source(str(tmp_path / "d"), f"{tmp_path}/./d")
