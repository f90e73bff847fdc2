"""`pvdm encode` under torchrun: 2 gloo ranks write the cache one process writes (latents bit-identical
on the CPU, the same manifest); an interrupted multi-rank cache, or one of the single-process version,
resumes with 1 or 2 processes encoding only the missing shards, each once; a cache of another
autoencoder is refused on every rank (exit 2) without a hang."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from .conftest import truncate, write_coded
from .test_cli_data import save_tiny_autoencoder
from torchrun_launch import free_port, torchrun

TIMEOUT = 180  # seconds a launch may take before the test fails as a hang

# Logs every shard a process writes (then runs the CLI): which rank encoded what.
_LOGGED_CLI = """
import os, sys
from pvdm_fast.data import latents
save = latents._save_shard
def logged(path, *args, **kwargs):
    save(path, *args, **kwargs)
    print(f"rank {os.environ.get('RANK', '0')} wrote {path.name}", flush=True)
latents._save_shard = logged
from pvdm_fast.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra):
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)


def _torchrun(nproc: int) -> list[str]:
    return torchrun(nproc)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


def _encode_args(setup, out, autoencoder=None) -> list[str]:
    # 16 clips (4 videos of 3 windows, 4 windows of a truncated one, some unreadable) in 6 shards of 3
    return ["encode", "--autoencoder", str(autoencoder or setup["ae"]), "--data", f"videos:{setup['data']}",
            "--out", str(out), "--shard-size", "3", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--store-dtype", "float32"]


def _written(stdout: str) -> dict[str, list[str]]:
    """rank -> the shard files it wrote (from _LOGGED_CLI's lines)."""
    ranks: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if " wrote shard-" in line:
            rank, _, name = line.split("rank ", 1)[1].split(" ")
            ranks.setdefault(rank, []).append(name)
    return ranks


def _snapshot(cache) -> tuple[dict, dict, dict]:
    """(manifest, file -> tensors, file -> its record) of a cache folder."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    manifest = json.loads((cache / "manifest.json").read_text())
    names = sorted(p.name for p in cache.glob("shard-*.safetensors"))
    tensors = {name: load_file(str(cache / name)) for name in names}
    records = {}
    for name in names:
        with safe_open(str(cache / name), framework="pt") as f:
            records[name] = json.loads((f.metadata() or {}).get("shard", "null"))
    return manifest, tensors, records


def _assert_same_cache(cache, reference, records=True):
    manifest, tensors, recs = _snapshot(cache)
    want_manifest, want_tensors, want_recs = _snapshot(reference)
    assert manifest == want_manifest
    assert list(tensors) == list(want_tensors) == [s["file"] for s in manifest["shards"]]
    for name in tensors:
        assert tensors[name].keys() == want_tensors[name].keys() == {"latent", "video", "start"}
        for key in tensors[name]:  # bit-identical
            assert torch.equal(tensors[name][key], want_tensors[name][key]), (name, key)
    if records:
        assert recs == want_recs


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """An autoencoder, a video folder, the cache one process writes and the cache 2 ranks write."""
    root = tmp_path_factory.mktemp("encode")
    save_tiny_autoencoder(root / "ae.safetensors")
    for name in "abcd":
        write_coded(root / f"v/{name}.avi", 12)
    truncate(write_coded(root / "v/e.avi", 16), 0.9)
    setup = {"ae": root / "ae.safetensors", "data": root / "v", "one": root / "one", "two": root / "two",
             "logged_cli": root / "logged_cli.py"}
    setup["logged_cli"].write_text(_LOGGED_CLI)
    setup["one_run"] = _run([sys.executable, "-m", "pvdm_fast.cli", *_encode_args(setup, setup["one"])])
    setup["two_run"] = _run([*_torchrun(2), "-m", "pvdm_fast.cli", *_encode_args(setup, setup["two"])])
    return setup


def test_two_ranks_write_the_cache_one_process_writes(built):
    for run in (built["one_run"], built["two_run"]):
        assert run.returncode == 0, run.stderr[-3000:]
    manifest = json.loads((built["one"] / "manifest.json").read_text())
    assert manifest["complete"] and len(manifest["shards"]) == 6 and manifest["failed"]  # some clips unreadable
    assert manifest["count"] == 16 - len(manifest["failed"])
    _assert_same_cache(built["two"], built["one"])
    # only rank 0 prints the summary (and shows the progress bar)
    summary = f"{manifest['count']} latents in 6 shards at {built['two']} ({len(manifest['failed'])} clips unreadable)"
    assert built["two_run"].stdout.count("latents in") == 1 and summary in built["two_run"].stdout
    bars = built["two_run"].stderr
    assert bars.count("encode:   0%") == 1 and "| 16/16 [" in bars  # one bar, counting every rank's clips


def _interrupt(cache, listed: list[int] | None, delete: list[int]) -> dict[str, int]:
    """Make `cache` what a killed run leaves: the manifest (incomplete) lists only the shards `listed`
    (None: no manifest yet), the files of shards `delete` are gone. Returns file -> inode of those kept."""
    if listed is None:
        (cache / "manifest.json").unlink()
    else:
        manifest = json.loads((cache / "manifest.json").read_text())
        shards = [s for s in manifest["shards"] if s["index"] in listed]
        kept = [range(s["first_item"], s["first_item"] + s["items"]) for s in shards]
        failed = [f for f in manifest["failed"] if any(f["item"] in items for items in kept)]
        manifest.update(shards=shards, failed=failed, count=sum(s["count"] for s in shards), complete=False)
        (cache / "manifest.json").write_text(json.dumps(manifest, indent=1))
    for k in delete:
        (cache / f"shard-{k:05d}.safetensors").unlink()
    return {p.name: p.stat().st_ino for p in cache.glob("shard-*.safetensors")}


@pytest.mark.parametrize("ranks, listed", [(1, [0, 1, 2]), (2, [0, 1, 2]), (2, None)],
                         ids=["one-process", "two-ranks", "two-ranks-no-manifest"])
def test_an_interrupted_two_rank_cache_resumes(built, tmp_path, ranks, listed):
    # Rank 0 had listed shards 0-2 (shard 1's file is gone since); rank 1 had written shard 3, not
    # listed yet; shards 4 and 5 were never written. Shard 3 is taken up from its record, not encoded again.
    cache = tmp_path / "cache"
    shutil.copytree(built["two"], cache)
    kept = _interrupt(cache, listed, delete=[1, 4, 5])
    launcher = [sys.executable] if ranks == 1 else _torchrun(ranks)
    run = _run([*launcher, str(built["logged_cli"]), *_encode_args(built, cache)])
    assert run.returncode == 0, run.stderr[-3000:]
    written = _written(run.stdout)
    assert sorted(n for names in written.values() for n in names) == [f"shard-{k:05d}.safetensors" for k in (1, 4, 5)]
    assert len(written) == ranks  # each rank encoded some of the missing shards, each shard once
    assert {p.name: p.stat().st_ino for p in cache.glob("shard-*.safetensors") if p.name in kept} == kept
    _assert_same_cache(cache, built["one"])
    assert run.stdout.count("latents in") == 1


def test_a_cache_of_the_single_process_version_resumes_under_torchrun(built, tmp_path):
    """Its shards carry no records: the manifest's list is all there is. An unlisted shard of it is
    encoded again."""
    from safetensors.torch import load_file, save_file

    cache = tmp_path / "cache"
    shutil.copytree(built["one"], cache)
    for path in cache.glob("shard-*.safetensors"):  # as the single-process version wrote them
        save_file(load_file(str(path)), str(path), metadata={"format": "pvdm_fast.latents.v1"})
    _interrupt(cache, listed=[0, 2, 3], delete=[1, 5])
    run = _run([*_torchrun(2), str(built["logged_cli"]), *_encode_args(built, cache)])
    assert run.returncode == 0, run.stderr[-3000:]
    written = _written(run.stdout)
    assert sorted(written) == ["0", "1"]
    assert sorted(n for names in written.values() for n in names) == [f"shard-{k:05d}.safetensors" for k in (1, 4, 5)]
    _assert_same_cache(cache, built["one"], records=False)


def test_a_mismatching_cache_is_refused_on_every_rank(built, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built["two"], cache)
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    other = save_tiny_autoencoder(tmp_path / "other.safetensors")
    del other
    # Each rank started as torchrun starts it, but by hand: torchrun would stop a rank still exiting
    # once another has exited, hiding its exit status.
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "pvdm_fast.cli",
                               *_encode_args(built, cache, autoencoder=tmp_path / "other.safetensors")],
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        results = [p.communicate(timeout=TIMEOUT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 2, err[-3000:]
        assert "pvdm encode: error:" in err and "holds a latent cache with a different autoencoder" in err
        assert "Traceback" not in err and "latents in" not in out
    # Through torchrun: other data settings, refused (by rank 0, raised on both), no hang.
    run = _run([*_torchrun(2), "-m", "pvdm_fast.cli", *_encode_args(built, cache), "--offsets", "0", "1"])
    assert run.returncode != 0
    assert run.stderr.count("holds a latent cache with a different data settings") == 2, run.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before  # untouched
