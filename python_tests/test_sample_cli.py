"""`pvdm sample`: output formats, resume without redoing, settings guard, and the CLI end to end on a
tiny random-weight model saved with save_weights."""
import dataclasses
import json
import pathlib

import numpy as np
import pytest

from pvdm_fast import cli
from pvdm_fast.sample_job import (is_done, model_identity, output_path, parse_formats, resolve_sampler,
                                  run_sample_job, write_video_outputs)

T, H, W = 4, 16, 16


def fake_generate(calls: list):
    """Deterministic per seed, like the real pipeline: video content is a function of its seed."""
    def generate(seeds):
        calls.append(list(seeds))
        return np.stack([np.full((T, H, W, 3), (s * 37) % 256, dtype=np.uint8) for s in seeds])
    return generate


def test_every_format_is_written_and_readable(tmp_path):
    from PIL import Image

    from pvdm_fast.data.video_io import read_all_frames

    video = np.random.default_rng(0).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    write_video_outputs(tmp_path, 7, video, ("mp4", "gif", "png", "npz"), fps=8)
    assert np.array_equal(np.load(output_path(tmp_path, 7, "npz"))["video"], video)  # lossless
    frames = sorted(output_path(tmp_path, 7, "png").iterdir())
    assert len(frames) == T and np.array_equal(np.asarray(Image.open(frames[2])), video[2])
    assert read_all_frames(output_path(tmp_path, 7, "mp4")).shape == (T, H, W, 3)
    assert Image.open(output_path(tmp_path, 7, "gif")).n_frames == T
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_resume_keeps_and_counts_existing_videos(tmp_path):
    calls = []
    first = run_sample_job(fake_generate(calls), tmp_path, num=3, batch_size=2, seed=10, formats=("npz",),
                           progress=False)
    assert first == {"existing": 0, "generated": 3, "total": 3} and calls == [[10, 11], [12]]
    output_path(tmp_path, 1, "npz").unlink()  # as if the run died before writing video 1
    before = output_path(tmp_path, 0, "npz").stat().st_mtime_ns
    calls.clear()
    again = run_sample_job(fake_generate(calls), tmp_path, num=5, batch_size=2, seed=10, formats=("npz",),
                           progress=False)
    assert again == {"existing": 2, "generated": 3, "total": 5}
    assert calls == [[11, 13], [14]]  # only the missing ones, each with its own seed
    assert output_path(tmp_path, 0, "npz").stat().st_mtime_ns == before
    assert all(is_done(tmp_path, i, ("npz",)) for i in range(5))


def test_a_video_missing_one_requested_format_is_redone(tmp_path):
    calls = []
    run_sample_job(fake_generate(calls), tmp_path, num=2, batch_size=2, seed=0, formats=("npz",), progress=False)
    calls.clear()
    run_sample_job(fake_generate(calls), tmp_path, num=2, batch_size=2, seed=0, formats=("npz", "gif"),
                   progress=False)
    assert calls == [[0, 1]]


def test_resuming_with_other_settings_is_refused(tmp_path):
    run_sample_job(fake_generate([]), tmp_path, 1, 1, seed=0, formats=("npz",), settings={"steps": 10},
                   progress=False)
    with pytest.raises(ValueError, match="steps"):
        run_sample_job(fake_generate([]), tmp_path, 1, 1, seed=0, formats=("npz",), settings={"steps": 20},
                       progress=False)
    with pytest.raises(ValueError, match="seed"):
        run_sample_job(fake_generate([]), tmp_path, 1, 1, seed=1, formats=("npz",), settings={"steps": 10},
                       progress=False)


def test_model_identity_follows_file_content_not_names(tmp_path):
    (tmp_path / "a").write_bytes(b"weights")
    (tmp_path / "b").write_bytes(b"weights")
    (tmp_path / "c").write_bytes(b"retrained")
    assert model_identity([tmp_path / "a"]) == model_identity([tmp_path / "b"])
    assert model_identity([tmp_path / "a"]) != model_identity([tmp_path / "c"])
    assert model_identity([tmp_path / "a"], "demo") != model_identity([tmp_path / "a"], "sky-256")


def test_format_and_protocol_parsing():
    assert parse_formats("mp4, npz,mp4") == ("mp4", "npz")
    for bad in ("", "avi", "mp4,webp"):
        with pytest.raises(ValueError, match="format"):
            parse_formats(bad)
    assert resolve_sampler("official", None, None, None) == ("ddim", 400, 1.0)
    assert resolve_sampler("official", "ddim", 400, None) == ("ddim", 400, 1.0)
    assert resolve_sampler(None, None, 50, 0.0) == ("ddim", 50, 0.0)
    with pytest.raises(ValueError, match="steps"):
        resolve_sampler("official", None, 100, None)


# ---- end to end on a tiny random-weight model --------------------------------------------------


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from pipeline_fixtures import tiny_models

    from pvdm_fast.models.io import save_weights

    ae, unet, diffusion = tiny_models()
    root = tmp_path_factory.mktemp("ckpt")
    save_weights(root / "ae.safetensors", ae.state_dict(), "autoencoder", dataclasses.asdict(ae.config))
    save_weights(root / "diffusion.safetensors", unet.state_dict(), "diffusion",
                 {"unet": dataclasses.asdict(unet.config), "diffusion": dataclasses.asdict(diffusion)})
    return root


def torch_equal_plans(a, b) -> bool:
    import torch

    return torch.equal(a.timesteps, b.timesteps) and torch.equal(a.coefs, b.coefs)


def _argv(ckpt: pathlib.Path, out: pathlib.Path, *extra: str) -> list[str]:
    return ["sample", "--autoencoder", str(ckpt / "ae.safetensors"), "--diffusion",
            str(ckpt / "diffusion.safetensors"), "--out", str(out), "--device", "cpu", "--quiet",
            "--sampler", "dpm++2m", "--steps", "2", *extra]


def test_cli_writes_mp4_and_npz_then_resumes_without_redoing(checkpoints, tmp_path, capsys, monkeypatch):
    from pvdm_fast.data.video_io import read_all_frames
    from pvdm_fast.pipeline import Pipeline

    out = tmp_path / "samples"
    assert cli.main(_argv(checkpoints, out, "--num", "3", "--batch-size", "2", "--frames", "8",
                          "--format", "mp4,npz", "--seed", "5")) == 0
    assert "3 generated" in capsys.readouterr().out
    videos = [np.load(output_path(out, i, "npz"))["video"] for i in range(3)]
    assert all(v.shape == (8, 16, 16, 3) and v.dtype == np.uint8 for v in videos)
    assert read_all_frames(output_path(out, 2, "mp4")).shape == (8, 16, 16, 3)
    assert not np.array_equal(videos[0], videos[1])  # different seeds, different videos
    settings = json.loads((out / "sample_settings.json").read_text())
    assert settings["sampler"] == "dpm++2m" and settings["seed"] == 5

    # Resume with more videos and another batch size: the first three are kept, the new one matches
    # what a fresh single-video run with its seed gives.
    calls = []
    original = Pipeline.__call__

    def counting(self, *args, **kwargs):
        calls.append(list(kwargs["seeds"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__call__", counting)
    assert cli.main(_argv(checkpoints, out, "--num", "4", "--batch-size", "3", "--frames", "8",
                          "--format", "mp4,npz", "--seed", "5")) == 0
    assert "3 already there, 1 generated" in capsys.readouterr().out
    assert calls == [[8]]
    for i in range(3):
        assert np.array_equal(np.load(output_path(out, i, "npz"))["video"], videos[i])
    fresh = tmp_path / "fresh"
    assert cli.main(_argv(checkpoints, fresh, "--num", "1", "--frames", "8", "--format", "npz",
                          "--seed", "8")) == 0
    diff = np.abs(np.load(output_path(fresh, 0, "npz"))["video"].astype(int)
                  - np.load(output_path(out, 3, "npz"))["video"].astype(int))
    assert diff.max() <= 1  # same seed, same video (uint8 truncation may flip a value by one)


def test_cli_errors_are_clean(checkpoints, tmp_path, capsys):
    assert cli.main(["sample", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--autoencoder" in capsys.readouterr().err
    assert cli.main(_argv(checkpoints, tmp_path, "--frames", "6")) == 2  # not a multiple of 4
    assert "multiple" in capsys.readouterr().err
    assert cli.main(["sample", "--autoencoder", str(tmp_path / "nope.safetensors"), "--diffusion",
                     str(tmp_path / "nope.safetensors"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "no weights file" in capsys.readouterr().err
    assert cli.main(_argv(checkpoints, tmp_path, "--protocol", "official")) == 2  # contradicts --steps 2
    assert "protocol" in capsys.readouterr().err


def test_a_first_run_that_failed_does_not_lock_the_folder(checkpoints, tmp_path, capsys):
    out = tmp_path / "samples"
    assert cli.main(_argv(checkpoints, out, "--frames", "6", "--format", "npz")) == 2  # refused before writing
    assert "multiple" in capsys.readouterr().err and not (out / "sample_settings.json").exists()
    # settings left by a run stopped before its first video (or damaged) give way to the new ones
    out.mkdir(exist_ok=True)
    (out / "sample_settings.json").write_text('{"frames": 6, "steps": 99}')
    assert cli.main(_argv(checkpoints, out, "--num", "1", "--frames", "8", "--format", "npz")) == 0
    (out / "sample_settings.json").write_text('{"frames": ')
    assert cli.main(_argv(checkpoints, out, "--num", "1", "--frames", "8", "--format", "npz")) == 2
    assert "damaged" in capsys.readouterr().err  # with a video there, it cannot be matched any more


def test_resume_compares_resolved_settings_and_refuses_another_precision(checkpoints, tmp_path, capsys):
    out = tmp_path / "samples"
    base = ["--num", "1", "--format", "npz", "--precision", "fp32"]
    assert cli.main(_argv(checkpoints, out, *base)) == 0
    settings = json.loads((out / "sample_settings.json").read_text())
    assert settings["guidance"] == 0.0 and settings["precision"] == "fp32" and settings["device"] == "cpu"
    assert cli.main(_argv(checkpoints, out, *base, "--guidance", "0")) == 0  # the config's default, spelled out
    assert "1 already there" in capsys.readouterr().out
    assert cli.main(_argv(checkpoints, out, "--num", "2", "--format", "npz", "--precision", "bf16")) == 2
    assert "precision" in capsys.readouterr().err
    assert cli.main(_argv(checkpoints, out, *base, "--fps", "8")) == 2
    assert "fps" in capsys.readouterr().err
    ddim = ["sample", "--autoencoder", str(checkpoints / "ae.safetensors"), "--diffusion",
            str(checkpoints / "diffusion.safetensors"), "--device", "cpu", "--quiet", "--format", "npz",
            "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "ddim")]
    assert cli.main(ddim) == 0
    assert cli.main(ddim + ["--eta", "1"]) == 0  # DDIM's default eta, spelled out
    # ddpm without --steps is every timestep of the schedule: --steps T is the same plan
    from pvdm_fast.pipeline import Pipeline

    pipe = Pipeline.from_checkpoints(checkpoints / "ae.safetensors", checkpoints / "diffusion.safetensors",
                                     device="cpu")
    n = pipe.alphas_cumprod.numel()
    assert torch_equal_plans(pipe.plan("ddpm", None), pipe.plan("ddpm", n))
    ddpm = ["sample", "--autoencoder", str(checkpoints / "ae.safetensors"), "--diffusion",
            str(checkpoints / "diffusion.safetensors"), "--device", "cpu", "--quiet", "--format", "npz",
            "--sampler", "ddpm", "--out", str(tmp_path / "ddpm"), "--num", "1"]
    assert cli.main(ddpm) == 0
    assert json.loads((tmp_path / "ddpm" / "sample_settings.json").read_text())["steps"] == n
    assert cli.main(ddpm + ["--steps", str(n)]) == 0
    assert "1 already there" in capsys.readouterr().out


def test_config_and_overrides_with_pvdm_fast_checkpoints_are_refused(checkpoints, tmp_path, capsys):
    assert cli.main(_argv(checkpoints, tmp_path, "diffusion.guidance=3")) == 2
    assert "official checkpoints only" in capsys.readouterr().err
    assert cli.main(_argv(checkpoints, tmp_path, "--config", "sky-256")) == 2
    assert "official checkpoints only" in capsys.readouterr().err


def test_pipeline_refuses_non_integer_and_non_positive_arguments(checkpoints):
    from pvdm_fast.pipeline import Pipeline

    pipe = Pipeline.from_checkpoints(checkpoints / "ae.safetensors", checkpoints / "diffusion.safetensors",
                                     device="cpu")
    for bad in (dict(batch_size=-1), dict(batch_size=0), dict(frames=8.7), dict(steps=2.5),
                dict(num_videos=1.5), dict(seeds=["1"]), dict(frames=True)):
        kw = {"sampler": "dpm++2m", "steps": 2, **bad}
        with pytest.raises(ValueError, match="must be"):
            pipe(**kw)
    assert pipe(seeds=np.arange(1), frames=8.0, sampler="dpm++2m", steps=2).shape == (1, 8, 16, 16, 3)


def test_a_folder_from_before_resolved_settings_still_resumes(checkpoints, tmp_path, capsys):
    # The previous version stored None for defaults and no precision/device/fps: its interrupted folders
    # resume (and the file is rewritten in today's form); other settings are still refused.
    out = tmp_path / "samples"
    assert cli.main(_argv(checkpoints, out, "--num", "1", "--format", "npz")) == 0
    now = json.loads((out / "sample_settings.json").read_text())
    legacy = {k: v for k, v in now.items() if k not in ("precision", "device", "fps")}
    legacy.update(guidance=None, eta=None)
    (out / "sample_settings.json").write_text(json.dumps(legacy))
    assert cli.main(_argv(checkpoints, out, "--num", "2", "--format", "npz")) == 0
    assert "1 already there, 1 generated" in capsys.readouterr().out
    assert json.loads((out / "sample_settings.json").read_text()) == now
    (out / "sample_settings.json").write_text(json.dumps(legacy))
    assert cli.main(_argv(checkpoints, out, "--num", "2", "--format", "npz", "--guidance", "2")) == 2
    assert "guidance" in capsys.readouterr().err


def _torchrun(nproc: int, argv: list[str], timeout: float = 240):
    import subprocess

    from torchrun_launch import launch_env, torchrun

    return subprocess.run([*torchrun(nproc), "-m", "pvdm_fast.cli", *argv], env=launch_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_torchrun_processes_share_the_videos_and_make_what_one_process_makes(checkpoints, tmp_path, capsys):
    # Two ranks (gloo on the CPU) split the missing videos: every video is made once, each is the video
    # one process makes from its seed, rank 0 alone reports the count of all ranks; a resume by three
    # ranks with more videos keeps the five and makes the rest.
    out, one = tmp_path / "ranks", tmp_path / "one"
    done = _torchrun(2, _argv(checkpoints, out, "--num-videos", "5", "--batch-size", "2", "--frames", "8",
                              "--format", "npz", "--seed", "3"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("5 videos (0 already there, 5 generated)") == 1, done.stdout
    assert cli.main(_argv(checkpoints, one, "--num", "7", "--batch-size", "2", "--frames", "8",
                          "--format", "npz", "--seed", "3")) == 0
    capsys.readouterr()
    assert sorted(p.name for p in out.glob("video_*")) == [f"video_{i:06d}.npz" for i in range(5)]
    for i in range(5):
        a, b = (np.load(output_path(d, i, "npz"))["video"].astype(int) for d in (out, one))
        assert np.abs(a - b).max() <= 1, i  # same seed, same video (uint8 truncation may flip a value)
    settings = json.loads((out / "sample_settings.json").read_text())
    assert settings == json.loads((one / "sample_settings.json").read_text())
    mtimes = {i: output_path(out, i, "npz").stat().st_mtime_ns for i in range(5)}

    done = _torchrun(3, _argv(checkpoints, out, "--num-videos", "7", "--batch-size", "2", "--frames", "8",
                              "--format", "npz", "--seed", "3"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("7 videos (5 already there, 2 generated)") == 1, done.stdout
    assert {i: output_path(out, i, "npz").stat().st_mtime_ns for i in range(5)} == mtimes  # kept, not redone
    for i in (5, 6):
        a, b = (np.load(output_path(d, i, "npz"))["video"].astype(int) for d in (out, one))
        assert np.abs(a - b).max() <= 1, i


def test_torchrun_refused_folder_stops_every_rank(checkpoints, tmp_path):
    # Rank 0 refuses a folder of other settings; the other rank must stop with the reason too, not wait.
    out = tmp_path / "samples"
    assert cli.main(_argv(checkpoints, out, "--num", "1", "--frames", "8", "--format", "npz")) == 0
    done = _torchrun(2, _argv(checkpoints, out, "--num-videos", "2", "--frames", "8", "--format", "npz",
                              "--seed", "9"), timeout=180)
    assert done.returncode != 0
    assert done.stderr.count("pvdm sample: error:") == 2, done.stderr[-3000:]
    assert "other settings" in done.stderr and "reported by rank 0" in done.stderr
    assert sorted(p.name for p in out.glob("video_*")) == ["video_000000.npz"]


def test_each_rank_makes_every_world_size_th_missing_video(tmp_path, monkeypatch):
    # Rank 1 of 3 with rank 0's list of missing videos [0, 2, 3, 4, 5, 6, 7]: it makes 2 and 5, in
    # batches of its own; the count returned is every rank's.
    from pvdm_fast.train import distributed as D

    monkeypatch.setattr(D, "decided_by_rank0", lambda rank, world, decide: [0, 2, 3, 4, 5, 6, 7])
    monkeypatch.setattr(D, "gather_objects", lambda ctx, obj: [3, obj, 2])
    calls = []
    ctx = D.DistContext(1, 3, 1, None)
    result = run_sample_job(fake_generate(calls), tmp_path, num=8, batch_size=1, seed=10, formats=("npz",),
                            progress=False, ctx=ctx)
    assert calls == [[12], [15]]
    assert sorted(p.name for p in tmp_path.glob("video_*")) == ["video_000002.npz", "video_000005.npz"]
    assert result == {"existing": 1, "generated": 7, "total": 8}
    assert not (tmp_path / "sample_settings.json").exists()  # rank 0 records the settings


def test_every_sample_option_survives_torchruns_parser():
    """torchrun parses the whole command line before ours: an option that abbreviates one of its own
    (--num of --numa-binding) stops it there. Every sample option, spelled as for torchrun, passes."""
    run = pytest.importorskip("torch.distributed.run")
    options = ["--autoencoder", "a", "--diffusion", "d", "--official-autoencoder", "oa", "--official-diffusion",
               "od", "--config", "ucf101-256", "--out", "o", "--num-videos", "8", "--batch-size", "2", "--frames",
               "32", "--protocol", "official", "--sampler", "ddim", "--steps", "400", "--eta", "1", "--guidance",
               "0", "--condition", "latent", "--no-clip", "--seed", "1", "--format", "npz", "--fps", "8",
               "--device", "cuda", "--precision", "bf16", "--compile", "--cuda-graph", "--quiet", "--context", "ucf101:/d",
               "--context-split", "test", "--context-fold", "2", "--context-stride", "1", "--with-context"]
    launched = run.get_args_parser().parse_args(["--nproc_per_node=2", "-m", "pvdm_fast.cli", "sample", *options])
    assert launched.training_script == "pvdm_fast.cli" and launched.training_script_args == ["sample", *options]
    args = cli.build_parser().parse_args(launched.training_script_args)
    assert args.num == 8 and args.cuda_graph and args.no_clip
    with pytest.raises(SystemExit):  # the plain spelling really is refused there
        run.get_args_parser().parse_args(["--nproc_per_node=2", "-m", "pvdm_fast.cli", "sample", "--num", "8"])


def test_context_continues_the_first_clip_of_each_dataset_video(checkpoints, tmp_path, capsys):
    # --context synthetic:5: video i continues the first clip of the dataset's video i; --with-context
    # writes that clip before the new frames; the settings record the context; resume keeps the videos.
    import torch

    from pvdm_fast.data import open_dataset
    from pvdm_fast.pipeline import Pipeline, to_uint8

    out = tmp_path / "continued"
    argv = _argv(checkpoints, out, "--num", "3", "--batch-size", "2", "--frames", "8", "--format", "npz",
                 "--seed", "4", "--context", "synthetic:5", "--with-context")
    assert cli.main(argv) == 0
    assert "3 generated" in capsys.readouterr().out
    data = open_dataset("synthetic:5", resolution=16, frames=4, mode="windows", offsets=(0,), clips_per_video=1,
                        substitute=False)
    pipe = Pipeline.from_checkpoints(checkpoints / "ae.safetensors", checkpoints / "diffusion.safetensors",
                                     device="cpu")
    for i in range(3):
        video = np.load(output_path(out, i, "npz"))["video"]
        context = data[i]["video"][None]
        assert video.shape == (12, 16, 16, 3)
        # the real clip (rounded back to uint8: a round trip of uint8 frames is exact), then the new frames
        real = ((context + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)[0].numpy()
        assert np.array_equal(video[:4], real)
        alone = pipe(seeds=[4 + i], frames=8, sampler="dpm++2m", steps=2, context=context)[0].numpy()
        assert np.abs(video[4:].astype(int) - alone.astype(int)).max() <= 1
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 4, 8, 8).expand(1, 3, 4, 8, 8)
    assert not torch.equal(to_uint8(levels / 127.5 - 1), levels.permute(0, 2, 3, 4, 1))  # why: truncation loses levels
    settings = json.loads((out / "sample_settings.json").read_text())
    assert settings["context"]["data"] == "synthetic:5" and settings["with_context"] is True
    assert cli.main(argv[:argv.index("--num") + 1] + ["4"] + argv[argv.index("--num") + 2:]) == 0
    assert "3 already there, 1 generated" in capsys.readouterr().out
    # without --context the folder is another set of videos
    assert cli.main(_argv(checkpoints, out, "--num", "4", "--frames", "8", "--format", "npz", "--seed", "4")) == 2
    assert "other settings" in capsys.readouterr().err
    # a folder sampled before contexts existed (no context keys) still resumes without one
    plain = tmp_path / "plain"
    assert cli.main(_argv(checkpoints, plain, "--num", "1", "--format", "npz")) == 0
    assert "context" not in json.loads((plain / "sample_settings.json").read_text())


def test_context_errors_are_clean(checkpoints, tmp_path, capsys):
    out = tmp_path / "s"
    for extra, message in [(["--context", "synthetic:2", "--num", "3"], "fewer than --num 3"),
                           (["--with-context"], "--with-context needs --context"),
                           (["--context-split", "test"], "go with --context"),
                           (["--context", f"videos:{tmp_path / 'none'}"], "none")]:
        assert cli.main(_argv(checkpoints, out, "--format", "npz", *extra)) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not any(out.glob("video_*"))


def test_context_clips_are_cut_as_the_diffusion_model_was_trained(checkpoints, tmp_path):
    # A diffusion file records the clips it was trained on (data.frame_stride, antialias): --context
    # follows it rather than the autoencoder file's settings.
    from pvdm_fast.models.io import load_weights, save_weights

    state, kind, config = load_weights(checkpoints / "diffusion.safetensors")
    strided = tmp_path / "diffusion.safetensors"
    save_weights(strided, state, kind, {**config, "data": {"frame_stride": 2, "antialias": False}})
    out = tmp_path / "s"
    argv = ["sample", "--autoencoder", str(checkpoints / "ae.safetensors"), "--diffusion", str(strided), "--out",
            str(out), "--device", "cpu", "--quiet", "--sampler", "dpm++2m", "--steps", "1", "--num", "1",
            "--format", "npz", "--context", "synthetic:2"]
    assert cli.main(argv) == 0
    context = json.loads((out / "sample_settings.json").read_text())["context"]
    assert context["stride"] == 2 and context["antialias"] is False
    assert cli.main([*argv, "--out", str(tmp_path / "t"), "--context-stride", "1"]) == 0
    assert json.loads((tmp_path / "t" / "sample_settings.json").read_text())["context"]["stride"] == 1
