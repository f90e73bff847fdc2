"""Checkpoints: round trip, weights_only state, atomic publication, pruning, and a crash mid-write."""

import json

import pytest
import torch

from pvdm_fast.train import checkpoint as ckpt
from pvdm_fast.train import rng


def _weights(value: float) -> dict:
    return {"model": ckpt.Weights({"w": torch.full((3, 2), value)}, "toy", {"size": 3})}


def _state(step: int) -> dict:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=1e-3)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    return {"step": step, "optimizers": {"model": opt.state_dict()}, "rng": [rng.capture()]}


def test_round_trip_and_latest(tmp_path):
    ckpt.save_checkpoint(tmp_path, 5, _weights(1.0), _state(5), {"config": {"a": 1}})
    path = ckpt.save_checkpoint(tmp_path, 10, _weights(2.0), _state(10), {"config": {"a": 1}})
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.dir == path and loaded.step == 10
    sd, kind, config = loaded.weights("model")
    assert kind == "toy" and config == {"size": 3} and torch.equal(sd["w"], torch.full((3, 2), 2.0))
    state = loaded.state()  # read with weights_only=True
    assert state["step"] == 10 and "state" in state["optimizers"]["model"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["config"] == {"a": 1} and "torch" in manifest["versions"]
    with pytest.raises(ValueError, match="no weights named"):
        loaded.weights("ema")


def test_keeps_only_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, _weights(step), _state(step), keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert names == ["step-00000003", "step-00000004"]


def test_crash_while_writing_leaves_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(tmp_path, 1, _weights(1.0), _state(1))
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as fh:  # a torn write, then the process "dies"
            fh.truncate(10)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, _weights(2.0), _state(2))
    monkeypatch.undo()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest.json", "step-00000001"]
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded.step == 1 and loaded.state()["step"] == 1
    assert torch.equal(loaded.weights("model")[0]["w"], torch.full((3, 2), 1.0))


def test_same_step_again_replaces(tmp_path):
    ckpt.save_checkpoint(tmp_path, 3, _weights(1.0), _state(3))
    ckpt.save_checkpoint(tmp_path, 3, _weights(5.0), _state(3))
    assert torch.equal(ckpt.load_checkpoint(tmp_path).weights("model")[0]["w"], torch.full((3, 2), 5.0))


def test_missing_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError):
        ckpt.load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path)


def test_rng_states_restore_every_generator():
    import random

    import numpy as np

    state = rng.capture()
    a = (torch.rand(3), np.random.rand(3), random.random())
    rng.restore(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
