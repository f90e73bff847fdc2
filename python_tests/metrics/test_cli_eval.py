"""`pvdm eval` end to end on tiny data with random-weight networks saved to temporary files."""

import json

import numpy as np
import pytest
import torch

from pvdm_fast.cli import main

FRAMES = 9  # the fewest frames that leave I3D's 2-frame final average pool a full window


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors.torch import save_file

    from pvdm_fast.metrics.c3d import C3D
    from pvdm_fast.metrics.i3d import InceptionI3D

    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    torch.save(InceptionI3D(num_classes=16).state_dict(), root / "i3d.pt")
    c3d = C3D(num_classes=5, widths=(4, 4, 8, 8, 8, 8, 8, 8), hidden=16)
    save_file({k: v.contiguous() for k, v in c3d.state_dict().items()}, str(root / "c3d.safetensors"))
    fake = root / "fake"
    fake.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        np.savez(fake / f"video_{i:06d}.npz", video=rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    return root


def _run(*argv, device: str = "cpu") -> int:
    return main(["eval", *argv, "--quiet", "--device", device])


def test_fvd_cache_kvd_and_protocol_refusal(files, capsys):
    cache = files / "real_stats.npz"
    common = ["--fake", str(files / "fake"), "--i3d", str(files / "i3d.pt"), "--num", "2",
              "--frames", str(FRAMES), "--batch-size", "2"]
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", "--stats-cache", str(cache), *common) == 0
    first = json.loads((files / "fake" / f"fvd{FRAMES}.json").read_text())
    assert np.isfinite(first["fvd"]) and first["fvd"] > 0
    proto = first["protocol"]
    assert proto["frames"] == FRAMES and proto["real"]["num"] == 2 and proto["generated"]["num"] == 2
    assert proto["real"]["data"] == "synthetic:3" and len(proto["network_sha256"]) == 64
    assert proto["generated"]["resolution"] == [32, 32] and proto["real"]["resolution"] == 32
    # The written statistics file serves as --real directly (no dataset read) and for KVD.
    out = files / "kvd.json"
    assert _run("kvd", "--real", str(cache), "--subsets", "3", "--subset-size", "2", "--out", str(out), *common) == 0
    second = json.loads(out.read_text())
    assert second["fvd"] == pytest.approx(first["fvd"], rel=1e-12)
    assert second["subset_size"] == 2 and np.isfinite(second["kvd"])
    # Another stride is another protocol: the cache is refused with the differing key named.
    capsys.readouterr()
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", "--stats-cache", str(cache), *common,
                "--stride", "1", "--seed", "1") == 2
    assert "seed: 0 in the file, 1 now" in capsys.readouterr().err
    # The official plain-bilinear resize of the real clips is another protocol too (recorded only when
    # on, so the cache of the default resize, written before the option, still matches it).
    assert "antialias" not in json.loads(json.dumps(first["protocol"]["real"]))
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", "--stats-cache", str(cache), *common,
                "--no-antialias") == 2
    assert "antialias" in capsys.readouterr().err
    plain = files / "plain.json"
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", *common, "--no-antialias", "--out",
                str(plain)) == 0
    assert json.loads(plain.read_text())["protocol"]["real"]["antialias"] is False
    # Statistics of 32x32 real clips against 16x16 samples: refused, not silently compared.
    small = files / "fake16"
    small.mkdir()
    for i in range(2):
        np.savez(small / f"video_{i}.npz", video=np.zeros((FRAMES, 16, 16, 3), np.uint8))
    assert _run("fvd", "--real", str(cache), *common[:1], str(small), *common[2:]) == 2
    err = capsys.readouterr().err
    assert "are 16x16 but the statistics in" in err and "are of 32x32 real clips" in err and "--resolution 16" in err


def test_missing_weights_and_samples(files, capsys, tmp_path):
    assert _run("fvd", "--real", "synthetic:2", "--fake", str(files / "fake"), "--i3d", str(tmp_path / "i3d.pt")) == 2
    assert "i3d_pretrained_400.pt" in capsys.readouterr().err
    assert _run("is", "--fake", str(files / "fake"), "--c3d", str(tmp_path / "c3d.pt")) == 2
    assert "c3d_ucf101.pt" in capsys.readouterr().err
    assert _run("fvd", "--real", "synthetic:2", "--fake", str(tmp_path / "none"), "--i3d", str(files / "i3d.pt")) == 2
    assert "sample folder" in capsys.readouterr().err


def test_inception_score(files):
    out = files / "is.json"
    assert _run("is", "--fake", str(files / "fake"), "--c3d", str(files / "c3d.safetensors"), "--num", "4",
                "--splits", "2", "--out", str(out)) == 0
    result = json.loads(out.read_text())
    assert 1.0 <= result["is"] <= 5.0 and result["is_std"] >= 0 and result["protocol"]["splits"] == 2


def test_recon(tmp_path, monkeypatch):
    from dataclasses import asdict

    from pvdm_fast.configs import load_config
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import save_weights

    fields = dict(load_config("tiny").autoencoder)
    config = AutoencoderConfig(**fields)
    save_weights(tmp_path / "ae.safetensors", Autoencoder(config).state_dict(), "autoencoder", asdict(config))
    assert _run("recon", "--autoencoder", str(tmp_path / "ae.safetensors"), "--data", "synthetic:3",
                "--num", "2", "--batch-size", "2") == 0
    result = json.loads((tmp_path / "ae.recon.json").read_text())
    assert result["count"] == 2 and np.isfinite(result["psnr"]) and -1 <= result["ssim"] <= 1
    assert result["protocol"]["frames"] == config.frames and result["protocol"]["resolution"] == config.resolution
    assert result["protocol"]["antialias"] is True
    # a trainer's file records the resize it was trained with: recon scores clips resized the same way
    import pvdm_fast.metrics.evaluate as evaluate_module

    seen = []
    real = evaluate_module.iter_dataset_batches
    monkeypatch.setattr(evaluate_module, "iter_dataset_batches", lambda *a, **k: seen.append(k) or real(*a, **k))
    plain = tmp_path / "plain.safetensors"
    save_weights(plain, Autoencoder(config).state_dict(), "autoencoder",
                 {"autoencoder": asdict(config), "data": {"frame_stride": 1, "antialias": False}})
    assert _run("recon", "--autoencoder", str(plain), "--data", "synthetic:3", "--num", "2", "--batch-size", "2") == 0
    assert seen[-1]["antialias"] is False
    assert json.loads((tmp_path / "plain.recon.json").read_text())["protocol"]["antialias"] is False


def test_recon_under_torchrun_scores_the_clips_one_process_scores(tmp_path):
    # Two gloo ranks each score half of the 5 clips; the totals are reduced, so rank 0 writes what one
    # process computes (up to float32 batch sums), and the count is every clip once.
    import subprocess
    from dataclasses import asdict

    from torchrun_launch import launch_env, torchrun

    from pvdm_fast.configs import load_config
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import save_weights

    config = AutoencoderConfig(**dict(load_config("tiny").autoencoder))
    torch.manual_seed(0)
    save_weights(tmp_path / "ae.safetensors", Autoencoder(config).state_dict(), "autoencoder", asdict(config))
    common = ["--autoencoder", str(tmp_path / "ae.safetensors"), "--data", "synthetic:6", "--num-videos", "5",
              "--batch-size", "2", "--device", "cpu", "--quiet"]
    done = subprocess.run([*torchrun(2), "-m", "pvdm_fast.cli", "eval", "recon", *common,
                           "--out", str(tmp_path / "ranks.json")],
                          env=launch_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _run("recon", *common, "--out", str(tmp_path / "one.json")) == 0
    ranks, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ranks", "one"))
    assert ranks["count"] == one["count"] == 5
    assert ranks["psnr"] == pytest.approx(one["psnr"], rel=1e-5) and ranks["ssim"] == pytest.approx(one["ssim"], rel=1e-5)
    assert ranks["protocol"] == one["protocol"]


def test_reconstruction_identity():
    from pvdm_fast.metrics.recon import evaluate_reconstruction

    videos = [torch.rand(2, 3, 2, 16, 16) * 2 - 1]
    result = evaluate_reconstruction(torch.nn.Identity(), videos)
    assert result["psnr"] == float("inf") and result["psnr_exact_videos"] == 2
    assert result["ssim"] == pytest.approx(1.0)


@pytest.fixture
def no_real_features(monkeypatch):
    """Fails the test if real clips are read: the checks must come before any feature extraction."""
    def refuse(*args, **kwargs):
        raise AssertionError("real features were extracted before the bad input was refused")

    monkeypatch.setattr("pvdm_fast.metrics.evaluate.iter_dataset_batches", refuse)


def _short_first_video(root):
    from pvdm_fast.data.video_io import write_video

    folder = root / "short_first"
    if not folder.exists():
        folder.mkdir()
        write_video(folder / "video_000000.mp4", np.zeros((4, 32, 32, 3), np.uint8))
        np.savez(folder / "video_000001.npz", video=np.zeros((16, 32, 32, 3), np.uint8))
    return folder


@pytest.mark.parametrize("metric, change, message", [
    ("fvd", {"--frames": "8"}, "need clips of at least 9 frames"),
    ("fvd", {"--num": "-1"}, "--num must be a positive number of videos"),
    ("kvd", {"--num": "-1"}, "--num must be a positive number of videos"),
    ("fvd", {"--batch-size": "0"}, "--batch-size must be a positive integer"),
    ("fvd", {"--stride": "0"}, "--stride must be a positive integer"),
    ("kvd", {"--subsets": "0"}, "--subsets must be a positive integer"),
    ("fvd", {"--resolution": None}, "are 32x32 but the real clips are resized to 256x256 (--resolution 256)"),
    ("fvd", {"--stats-cache": "<folder>"}, "is a folder; pass a file path"),
    ("fvd", {"--device": "tpu"}, "--device 'tpu' is not a device"),
    ("fvd", {"--i3d": "<text>"}, "is not a readable I3D weight file"),
    ("fvd", {"--fake": "<short>"}, "video_000000.mp4: cannot read 9 frames"),
])
def test_distance_bad_input_exits_2_before_extraction(files, capsys, no_real_features, metric, change, message):
    (files / "text.pt").write_text("not weights\n")
    values = {"--real": "synthetic:3", "--fake": str(files / "fake"), "--i3d": str(files / "i3d.pt"),
              "--num": "2", "--frames": str(FRAMES), "--batch-size": "2", "--resolution": "32",
              "--stats-cache": str(files / "never_written.npz"), **change}
    placeholders = {"<folder>": str(files), "<text>": str(files / "text.pt"), "<short>": str(_short_first_video(files))}
    device = values.pop("--device", "cpu")
    argv = [x for k, v in values.items() if v is not None for x in (k, placeholders.get(v, v))]
    capsys.readouterr()
    assert _run(metric, *argv, device=device) == 2
    assert message in capsys.readouterr().err
    assert not (files / "never_written.npz").exists()


def test_corrupt_statistics_files_exit_2(files, capsys, no_real_features):
    bad = files / "cut_stats.npz"
    bad.write_bytes(b"PK\x03\x04 not a whole zip")
    common = ["--fake", str(files / "fake"), "--i3d", str(files / "i3d.pt"), "--num", "2", "--frames", str(FRAMES),
              "--resolution", "32"]
    assert _run("fvd", "--real", str(bad), *common) == 2
    assert "cut_stats.npz is not a readable feature statistics file" in capsys.readouterr().err
    assert _run("fvd", "--real", "synthetic:3", "--stats-cache", str(bad), *common) == 2
    assert "delete it or pass another --stats-cache path" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    ({"--batch-size": "0"}, "--batch-size must be a positive integer"),
    ({"--num": "-2"}, "--num must be a positive number of videos"),
    ({"--splits": "0"}, "--splits must be a positive integer"),
    ({"--frames": "8"}, "takes clips of exactly 16 frames"),
    ({"--c3d": "<i3d>"}, "looks like the Kinetics I3D of FVD"),
    ({"--device": "tpu"}, "is not a device"),
    ({"--num": "2", "--fake": "<short>"}, "video_000000.mp4: cannot read 16 frames"),
])
def test_is_bad_input_exits_2(files, capsys, change, message):
    values = {"--fake": str(files / "fake"), "--c3d": str(files / "c3d.safetensors"), "--num": "4",
              "--splits": "2", "--out": str(files / "is_bad.json"), **change}
    placeholders = {"<i3d>": str(files / "i3d.pt"), "<short>": str(_short_first_video(files))}
    device = values.pop("--device", "cpu")
    argv = [x for k, v in values.items() for x in (k, placeholders.get(v, v))]
    capsys.readouterr()
    assert _run("is", *argv, device=device) == 2
    assert message in capsys.readouterr().err
    assert not (files / "is_bad.json").exists()


def test_short_video_inside_the_folder_exits_2(files, capsys):
    """Not the first video (checked up front) but one met during extraction: still a clean exit 2."""
    from pvdm_fast.data.video_io import write_video

    folder = files / "short_later"
    folder.mkdir()
    np.savez(folder / "video_000000.npz", video=np.zeros((16, 32, 32, 3), np.uint8))
    write_video(folder / "video_000001.mp4", np.zeros((4, 32, 32, 3), np.uint8))
    assert _run("is", "--fake", str(folder), "--c3d", str(files / "c3d.safetensors"), "--num", "2",
                "--splits", "1", "--batch-size", "1") == 2
    assert "video_000001.mp4: cannot read 16 frames" in capsys.readouterr().err


def test_recon_bad_input_exits_2(tmp_path, capsys):
    from dataclasses import asdict

    from pvdm_fast.configs import load_config
    from pvdm_fast.models.autoencoder import Autoencoder, AutoencoderConfig
    from pvdm_fast.models.io import save_weights

    config = AutoencoderConfig(**dict(load_config("tiny").autoencoder))
    ae = tmp_path / "ae.safetensors"
    save_weights(ae, Autoencoder(config).state_dict(), "autoencoder", asdict(config))
    (tmp_path / "vgg16.pth").write_text("<html>moved</html>\n")
    common = ["--autoencoder", str(ae), "--data", "synthetic:3"]
    for extra, message in ((["--num", "0"], "--num must be a positive integer, got 0"),
                           (["--num", "-1"], "--num must be a positive integer, got -1"),
                           (["--batch-size", "0"], "--batch-size must be a positive integer"),
                           (["--lpips-heads", str(tmp_path / "vgg.pth")], "--lpips-heads needs --lpips"),
                           (["--lpips", str(tmp_path / "vgg16.pth")], "vgg16.pth is not a readable VGG16 / LPIPS")):
        assert _run("recon", *common, "--num", "2", *extra) == 2, extra
        assert message in capsys.readouterr().err
    assert _run("recon", *common, device="tpu") == 2
    assert "is not a device" in capsys.readouterr().err
    assert not (tmp_path / "ae.recon.json").exists()


def test_every_eval_option_survives_torchruns_parser():
    """torchrun parses the whole command line before the script's own parser: an option that is an
    abbreviation of one of its own (--num of --numa-binding) stops it. Each eval command, with every
    option spelled as the README's torchrun examples may, must pass through."""
    run = pytest.importorskip("torch.distributed.run")
    from pvdm_fast.cli import build_parser

    commands = {
        "fvd": ["--real", "r", "--fake", "f", "--i3d", "i", "--num-videos", "8", "--frames", "16", "--stride", "1",
                "--batch-size", "2", "--device", "cpu", "--out", "o.json", "--quiet", "--split", "test", "--fold",
                "1", "--seed", "0", "--workers", "0", "--resolution", "64", "--stats-cache", "s.npz", "--no-antialias"],
        "kvd": ["--real", "r", "--fake", "f", "--i3d", "i", "--num-videos", "8", "--subsets", "3",
                "--subset-size", "4"],
        "is": ["--fake", "f", "--c3d", "c", "--c3d-mean", "m", "--splits", "2", "--num-videos", "8"],
    }
    for name, options in commands.items():
        argv = ["--nproc_per_node=2", "-m", "pvdm_fast.cli", "eval", name, *options]
        launched = run.get_args_parser().parse_args(argv)  # SystemExit if torchrun refuses an option
        assert launched.training_script == "pvdm_fast.cli" and launched.training_script_args[:2] == ["eval", name]
        args = build_parser().parse_args(launched.training_script_args)
        assert args.num == 8, name
    with pytest.raises(SystemExit):  # the plain spelling really is refused there
        run.get_args_parser().parse_args(["--nproc_per_node=2", "-m", "pvdm_fast.cli", "eval", "is", "--num", "8"])


def test_sample_stride_for_a_model_trained_on_strided_clips(files, tmp_path, capsys):
    """A model trained at data.frame_stride 2 emits frames already 2 apart: the real clips are cut at
    --stride 2 and the samples read consecutively (--sample-stride 1). Real strided clips saved as such
    samples then give FVD ~0; reading them at stride 2 as well (the only option before) is refused."""
    from pvdm_fast.metrics.features import iter_dataset_batches

    fake = tmp_path / "strided"
    fake.mkdir()
    batches = iter_dataset_batches("synthetic:3", num=2, frames=FRAMES, stride=2, resolution=32, batch_size=2, seed=0)
    for i, video in enumerate(v for b in batches for v in b):
        np.savez(fake / f"video_{i:06d}.npz", video=video)
    common = ["--real", "synthetic:3", "--resolution", "32", "--fake", str(fake), "--i3d", str(files / "i3d.pt"),
              "--num", "2", "--frames", str(FRAMES), "--batch-size", "2", "--stride", "2"]
    assert _run("fvd", *common, "--sample-stride", "1") == 0
    result = json.loads((fake / f"fvd{FRAMES}.json").read_text())
    assert abs(result["fvd"]) < 1e-6
    assert result["protocol"]["generated"]["stride"] == 1 and result["protocol"]["real"]["stride"] == 2
    capsys.readouterr()
    assert _run("fvd", *common) == 2  # samples read at stride 2 too: 9 frames are not enough
    assert "at stride 2 need" in capsys.readouterr().err
    assert _run("fvd", *common, "--sample-stride", "0") == 2


@pytest.mark.parametrize("flag,expected", [([], True), (["--no-antialias"], False)])
def test_fvd_resizes_the_real_clips_as_asked(files, monkeypatch, flag, expected):
    from pvdm_fast.metrics import evaluate

    seen = []
    original = evaluate.iter_dataset_batches
    monkeypatch.setattr(evaluate, "iter_dataset_batches", lambda *a, **k: seen.append(k["antialias"]) or original(*a, **k))
    assert _run("fvd", "--real", "synthetic:3", "--resolution", "32", "--fake", str(files / "fake"), "--i3d",
                str(files / "i3d.pt"), "--num", "2", "--frames", str(FRAMES), "--batch-size", "2", *flag,
                "--out", str(files / f"aa{expected}.json")) == 0
    assert seen == [expected]
