"""The latent cache: round trip, resume after an interruption, refusing a foreign cache, pairs."""

import json

import pytest
import torch

from pvdm_fast.data.dataset import open_dataset
from pvdm_fast.data.latents import LatentDataset, encode_dataset, read_manifest
from pvdm_fast.models.triplane import merge_planes

from .conftest import truncate, write_coded


class TinyTriplaneEncoder(torch.nn.Module):
    """Stand-in with the Autoencoder.encode contract: (B,3,T,H,W) -> (B,4,h*w + T*w + T*h) in (-1,1)."""

    def __init__(self, patch: int = 4, fail_after: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Conv3d(3, 4, (1, patch, patch), stride=(1, patch, patch))
        self.calls, self.fail_after = 0, fail_after

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        grid = self.proj(video)  # (B, 4, T, h, w)
        planes = [grid.mean(2), grid.mean(3), grid.mean(4)]  # xy (h,w), yt (T,w), xt (T,h)
        return torch.tanh(merge_planes(planes))


def synthetic_windows(count=3, frames=4, **kw):
    return open_dataset(f"synthetic:{count}", resolution=8, frames=frames, mode="windows", clips_per_video=0,
                        substitute=False, synthetic_frames=3 * frames, **kw)


def test_round_trip_and_pairs(tmp_path):
    ds = synthetic_windows(offsets=(0, 2))
    ae = TinyTriplaneEncoder()
    manifest = encode_dataset(ae, ds, tmp_path / "cache", autoencoder_id="ae1", autoencoder_config={"k": 1},
                              shard_size=4, batch_size=3, store_dtype=torch.float32, progress=False)
    assert manifest["complete"] and manifest["count"] == len(ds) == 3 * 5
    assert len(manifest["shards"]) == 4 and manifest["autoencoder"] == {"sha256": "ae1", "config": {"k": 1}}
    cache = LatentDataset(tmp_path / "cache", autoencoder_id="ae1")
    assert len(cache) == len(ds) and cache.latent_shape == (4, 2 * 2 + 4 * 2 + 4 * 2)
    with torch.no_grad():
        for i in range(len(ds)):
            item, video = cache[i], ds[i]
            torch.testing.assert_close(item["latent"], ae.encode(video["video"][None])[0], rtol=0, atol=1e-6)
            video_index, start = ds.plan.items[i]
            previous = ds.plan.items.index((video_index, start - 4)) if start >= 4 else None
            assert item["cond_valid"] == (previous is not None)
            expected = cache[previous]["latent"] if previous is not None else torch.zeros_like(item["latent"])
            assert torch.equal(item["cond"], expected)
    assert sum(cache[i]["cond_valid"] for i in range(len(cache))) == 3 * 3  # starts 4, 8, 6 have a previous
    latents, cond_index = cache.tensors()
    assert latents.shape == (len(cache), *cache.latent_shape)
    for i in (0, 2, len(cache) - 1):
        assert torch.equal(latents[i], cache[i]["latent"]) and (cond_index[i] >= 0) == cache[i]["cond_valid"]


def test_resume_after_interruption(tmp_path):
    ds = synthetic_windows(count=4)
    reference = encode_dataset(TinyTriplaneEncoder(), ds, tmp_path / "full", autoencoder_id="ae", shard_size=3,
                               batch_size=3, progress=False)
    interrupted = TinyTriplaneEncoder(fail_after=2)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(interrupted, ds, tmp_path / "cache", autoencoder_id="ae", shard_size=3, batch_size=3,
                       progress=False)
    partial = read_manifest(tmp_path / "cache")
    assert not partial["complete"] and [s["index"] for s in partial["shards"]] == [0, 1]
    with pytest.raises(ValueError, match="incomplete"):
        LatentDataset(tmp_path / "cache")
    resumed = TinyTriplaneEncoder()
    manifest = encode_dataset(resumed, ds, tmp_path / "cache", autoencoder_id="ae", shard_size=3, batch_size=3,
                              progress=False)
    assert resumed.calls == 2  # only the two missing shards were encoded
    assert manifest["count"] == reference["count"] == len(ds)
    a, b = LatentDataset(tmp_path / "cache"), LatentDataset(tmp_path / "full")
    for i in range(len(ds)):
        assert torch.equal(a[i]["latent"], b[i]["latent"]) and torch.equal(a[i]["cond"], b[i]["cond"])
    with pytest.raises(ValueError, match="different autoencoder"):
        encode_dataset(resumed, ds, tmp_path / "cache", autoencoder_id="other", shard_size=3, progress=False)
    with pytest.raises(ValueError, match="different data settings"):
        encode_dataset(resumed, synthetic_windows(count=5), tmp_path / "cache", autoencoder_id="ae", shard_size=3,
                       progress=False)


def _windows(spec):
    return open_dataset(spec, resolution=8, frames=4, mode="windows", clips_per_video=0, substitute=False)


def _interrupted_encode_of_two_videos(tmp_path, monkeypatch):
    """`many/a.avi`, `many/b.avi` under tmp_path (the working directory), an encode into `cache`
    interrupted after its first batch; returns the dataset maker (spec -> windows dataset)."""
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b"):
        write_coded(tmp_path / f"many/{name}.avi", 8)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(TinyTriplaneEncoder(fail_after=1), _windows("videos:many"), "cache", autoencoder_id="ae",
                       shard_size=2, batch_size=2, progress=False)
    return _windows


def test_resume_with_the_data_folder_spelled_differently(tmp_path, monkeypatch):
    import shutil

    windows = _interrupted_encode_of_two_videos(tmp_path, monkeypatch)
    resumed = TinyTriplaneEncoder()
    manifest = encode_dataset(resumed, windows(f"videos:{tmp_path}/./many/"), "cache", autoencoder_id="ae",
                              shard_size=2, batch_size=2, progress=False)
    assert resumed.calls == 1 and manifest["complete"] and manifest["count"] == 4
    shutil.copytree(tmp_path / "many", tmp_path / "copy")  # the same bytes elsewhere are other data
    with pytest.raises(ValueError, match="different data settings"):
        encode_dataset(resumed, windows("videos:copy"), "cache", autoencoder_id="ae", shard_size=2, progress=False)


def test_cache_from_before_resolved_paths_still_resumes(tmp_path, monkeypatch):
    import hashlib

    windows = _interrupted_encode_of_two_videos(tmp_path, monkeypatch)
    # rewrite the manifest as the first cache format wrote it: identity over the paths as spelled
    manifest = read_manifest("cache")
    ds = windows("videos:many")
    spelled = [s.path for s in ds.sources]
    items = [(spelled[v], s) for v, s in ds.plan.items]
    data = {k: v for k, v in manifest["data"].items() if k != "paths"}
    data.update(name="videos:many", items_sha256=hashlib.sha256(json.dumps(items).encode()).hexdigest())
    (tmp_path / "cache/manifest.json").write_text(json.dumps({**manifest, "data": data, "videos": spelled}))
    write_coded(tmp_path / "other/a.avi", 8)
    with pytest.raises(ValueError, match="different data settings"):
        encode_dataset(TinyTriplaneEncoder(), windows("videos:other"), "cache", autoencoder_id="ae", shard_size=2,
                       progress=False)
    resumed = TinyTriplaneEncoder()
    manifest = encode_dataset(resumed, windows(f"videos:{tmp_path / 'many'}"), "cache", autoencoder_id="ae",
                              shard_size=2, batch_size=2, progress=False)
    assert resumed.calls == 1 and manifest["complete"] and manifest["count"] == 4
    assert read_manifest("cache")["data"]["paths"] == "resolved"  # upgraded on resume


def test_foreign_or_missing_cache_is_refused(tmp_path):
    encode_dataset(TinyTriplaneEncoder(), synthetic_windows(count=1), tmp_path / "c", autoencoder_id="a" * 64,
                   progress=False)
    with pytest.raises(ValueError, match="built by autoencoder aaaaaaaaaaaa"):
        LatentDataset(tmp_path / "c", autoencoder_id="b" * 64)
    with pytest.raises(FileNotFoundError, match="pvdm encode"):
        LatentDataset(tmp_path / "nothing")
    (tmp_path / "c/manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a pvdm_fast latent cache"):
        LatentDataset(tmp_path / "c")


def test_unreadable_clips_are_left_out_and_listed(tmp_path):
    write_coded(tmp_path / "v/a.avi", 16)
    truncate(write_coded(tmp_path / "v/b.avi", 16), 0.9)
    ds = open_dataset(f"videos:{tmp_path / 'v'}", resolution=8, frames=4, mode="windows", clips_per_video=0,
                      substitute=False)
    with pytest.warns(RuntimeWarning, match="b.avi"):
        manifest = encode_dataset(TinyTriplaneEncoder(), ds, tmp_path / "cache", autoencoder_id="x", progress=False)
    assert manifest["failed"] and all(f["path"].endswith("b.avi") for f in manifest["failed"])
    assert manifest["count"] == len(ds) - len(manifest["failed"]) >= 4
    cache = LatentDataset(tmp_path / "cache")
    assert len(cache) == manifest["count"]


def test_latent_cache_in_loader_workers(tmp_path):
    from pvdm_fast.data.loader import make_loader

    encode_dataset(TinyTriplaneEncoder(), synthetic_windows(count=2), tmp_path / "c", autoencoder_id="a",
                   progress=False)
    cache = LatentDataset(tmp_path / "c")
    cache[0]  # opens a shard handle; a pickled copy (spawned workers) must reopen its own
    import pickle

    copy = pickle.loads(pickle.dumps(cache))
    assert copy._handles == {} and torch.equal(copy[0]["latent"], cache[0]["latent"])
    batches = list(make_loader(cache, 2, num_workers=2, device="cpu", seed=1))
    assert sorted(i for b in batches for i in b["index"].tolist()) == list(range(len(cache)))
    assert batches[0]["latent"].shape[1:] == cache.latent_shape and batches[0]["cond_valid"].dtype == torch.bool
