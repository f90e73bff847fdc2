"""The latent cache: round trip, resume after an interruption, refusing a foreign cache, and the
training examples it gives (one item per video, its pairs drawn uniformly, targets chosen as officially)."""

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
    ds = synthetic_windows(offsets=(0, 2))  # starts 0, 4, 8 and 2, 6 in 12 frames: pairs 0-4, 4-8, 2-6
    ae = TinyTriplaneEncoder()
    manifest = encode_dataset(ae, ds, tmp_path / "cache", autoencoder_id="ae1", autoencoder_config={"k": 1},
                              shard_size=4, batch_size=3, store_dtype=torch.float32, progress=False)
    assert manifest["complete"] and manifest["count"] == len(ds) == 3 * 5
    assert len(manifest["shards"]) == 4 and manifest["autoencoder"] == {"sha256": "ae1", "config": {"k": 1}}
    cache = LatentDataset(tmp_path / "cache", autoencoder_id="ae1")
    assert len(cache) == 3 and cache.latent_shape == (4, 2 * 2 + 4 * 2 + 4 * 2)  # one item per video
    assert cache.keys == ds.plan.items
    whole = cache.tensors()
    latents = whole["latents"]
    assert latents.shape == (len(ds), *cache.latent_shape)
    with torch.no_grad():
        for i in range(len(ds)):
            torch.testing.assert_close(latents[i], ae.encode(ds[i]["video"][None])[0], rtol=0, atol=1e-6)
    row = {key: i for i, key in enumerate(ds.plan.items)}
    for v in range(3):
        for epoch in range(6):
            item = cache[(v, epoch)]
            start = item["start"]
            assert item["video"] == v and item["index"] == v and start in (4, 6, 8) and item["cond_valid"]
            assert torch.equal(item["latent"], latents[row[v, start]])
            assert torch.equal(item["cond"], latents[row[v, start - 4]])  # the window hop = 4 frames before
            assert torch.equal(item["between"], latents[row[v, start - 2]][None])  # the offset-2 window between
            assert item["between_at"].tolist() == [0.5] and item["between_valid"].tolist() == [True]
            c = cache.choice(v, epoch)  # tensors() holds the same example
            rows = whole["rows"][c]
            assert whole["first"][v] <= c < whole["first"][v] + whole["count"][v] and whole["count"][v] == 3
            assert rows.tolist() == [row[v, start - 4], row[v, start - 2], row[v, start]]
            assert whole["at"][c].tolist() == [0.0, 0.5, 1.0]


def _fake_cache(folder, windows: dict[int, list[int]], hop: int, length: int = 6):
    """A cache as `pvdm encode` (format v1) writes it, by hand: video -> window starts; the latent of
    row r is filled with r + 1 (zeros stay recognisable). Returns the rows' (video, start) keys."""
    from safetensors.torch import save_file

    folder.mkdir()
    keys = [(v, s) for v, starts in windows.items() for s in starts]
    rows = torch.arange(1, len(keys) + 1, dtype=torch.float32)
    save_file({"latent": rows.view(-1, 1, 1).expand(-1, 4, length).to(torch.float16).contiguous(),
               "video": torch.tensor([v for v, _ in keys]), "start": torch.tensor([s for _, s in keys])},
              str(folder / "shard-00000.safetensors"), metadata={"format": "pvdm_fast.latents.v1"})
    manifest = {"format": "pvdm_fast.latents.v1", "autoencoder": {"sha256": "ae", "config": {}},
                "data": {"name": "synthetic:0", "frames": 4, "stride": hop // 4, "offsets": [0]},
                "videos": [f"synthetic:{v}" for v in range(max(windows) + 1)], "hop": hop, "shard_size": 1024,
                "store_dtype": "float16", "failed": [], "count": len(keys), "complete": True,
                "shards": [{"index": 0, "file": "shard-00000.safetensors", "first_item": 0, "items": len(keys),
                            "count": len(keys)}]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return keys


def _row_of(latent: torch.Tensor) -> int:
    """The cache row a latent of `_fake_cache` came from; -1 for zeros."""
    return int(latent.flatten()[0]) - 1


# Video 3: 11 windows (10 pairs); 5: one window; 6: two windows with a gap (no pair); 9: 3 windows.
# Numbers with holes: videos whose windows all failed, or skipped, have no item.
UNEVEN = {3: [16 * k for k in range(11)], 5: [0], 6: [0, 32], 9: [0, 16, 32]}


def test_items_are_videos_each_drawn_once_per_epoch(tmp_path):
    from pvdm_fast.data.loader import make_loader

    _fake_cache(tmp_path / "c", UNEVEN, hop=16)
    cache = LatentDataset(tmp_path / "c")
    assert len(cache) == 4 and cache.pairs.videos.tolist() == [3, 5, 6, 9]
    stream = iter(make_loader(cache, 2, seed=3, num_workers=0, device="cpu", infinite=True))
    drawn = [v for _ in range(2 * 50) for v in next(stream)["video"].tolist()]
    for epoch in range(50):  # whatever its length, every video once per epoch
        assert sorted(drawn[4 * epoch:4 * epoch + 4]) == [3, 5, 6, 9]


def test_each_video_draws_its_pairs_uniformly_and_deterministically(tmp_path):
    keys = _fake_cache(tmp_path / "c", UNEVEN, hop=16)
    cache = LatentDataset(tmp_path / "c", seed=7)
    epochs = 3000
    long_video = [cache[(0, e)] for e in range(epochs)]
    assert all(item["cond_valid"] and item["start"] - 16 == keys[_row_of(item["cond"])][1] for item in long_video)
    counts = {}
    for item in long_video:
        counts[item["start"]] = counts.get(item["start"], 0) + 1
    assert sorted(counts) == [16 * k for k in range(1, 11)]  # every pair, never the first window as target
    # within 20% of 300 draws each: 3.6 sd of a binomial (and the draws are fixed by the seed)
    assert all(abs(n - epochs / 10) < 0.2 * epochs / 10 for n in counts.values()), counts
    again = LatentDataset(tmp_path / "c", seed=7)
    assert [again[(0, e)]["start"] for e in range(40)] == [item["start"] for item in long_video[:40]]
    other_seed = LatentDataset(tmp_path / "c", seed=8)
    assert [other_seed[(0, e)]["start"] for e in range(40)] != [item["start"] for item in long_video[:40]]
    single = [cache[(1, e)] for e in range(5)]  # one window: no condition, the window is the target
    assert all(not s["cond_valid"] and s["start"] == 0 and not s["cond"].any() for s in single)
    gap = {cache[(2, e)]["start"] for e in range(40)}  # no pair: each window, unconditioned
    assert gap == {0, 32} and not any(cache[(2, e)]["cond_valid"] for e in range(40))
    assert {cache[(3, e)]["start"] for e in range(40)} == {16, 32}


def test_conditional_batches_always_have_their_condition(tmp_path):
    from torch.utils.data import default_collate

    from pvdm_fast.data.latent_pairs import cache_targets
    from pvdm_fast.diffusion.losses import draw_conditioned

    _fake_cache(tmp_path / "c", {0: [0, 16], 1: [0, 16, 32], 4: [16 * k for k in range(11)]}, hop=16)
    cache = LatentDataset(tmp_path / "c")
    gen = torch.Generator().manual_seed(0)
    coins = kept = 0
    for step in range(300):  # every video has a pair: the effective conditional fraction is the coin's
        batch = default_collate([cache[(v, step)] for v in range(3)])
        conditioned = draw_conditioned(3, 0.3, generator=gen)
        x, cond, valid = cache_targets(batch, conditioned, torch.randint(0, 5, (3,), generator=gen), frames=4)
        coins, kept = coins + int(conditioned.sum()), kept + int((conditioned & valid).sum())
        if conditioned[0]:  # a conditional example: cur given the window before it
            assert torch.equal(x, batch["latent"]) and torch.equal(cond, batch["cond"])
    assert kept == coins > 0


def test_a_video_without_a_pair_trains_its_window_unconditioned(tmp_path):
    from torch.utils.data import default_collate

    from pvdm_fast.data.latent_pairs import cache_targets

    _fake_cache(tmp_path / "c", {0: [8], 1: [0, 16]}, hop=16)
    cache = LatentDataset(tmp_path / "c")
    batch = default_collate([cache[0], cache[0], cache[1]])
    for coin in (True, False):
        for prefix in range(5):
            x, cond, valid = cache_targets(batch, torch.tensor([coin] * 3), torch.tensor([prefix] * 3), frames=4)
            assert valid.tolist() == [False, False, True]
            assert [_row_of(r) for r in x[:2]] == [0, 0] and not cond[:2].any()


def test_unconditional_target_is_the_cached_window_nearest_the_prefix(tmp_path):
    from torch.utils.data import default_collate

    from pvdm_fast.data.latent_pairs import cache_targets

    # T = 16, stride 1: video 0 encoded at offsets 0, 4, 8, 12 (one pair 0-16 with three windows between);
    # video 1 lost its windows at 8 and 12 (one between); video 2 only has offset 0 (none between).
    keys = _fake_cache(tmp_path / "c", {0: [0, 4, 8, 12, 16], 1: [0, 4, 16], 2: [0, 16]}, hop=16)
    cache = LatentDataset(tmp_path / "c")
    assert cache.pairs.width == 5  # prev, 3 between, cur
    batch = default_collate([cache[v] for v in range(3)])
    assert batch["between"].shape == (3, 3, 4, 6) and batch["between_valid"].tolist() == [
        [True, True, True], [True, False, False], [False, False, False]]

    def nearest(starts, prefix):  # ties go to the earlier window
        return min(starts, key=lambda s: (abs(s - prefix), s))

    for prefix in range(17):
        x, cond, valid = cache_targets(batch, torch.tensor([False] * 3), torch.tensor([prefix] * 3), frames=16)
        starts = [keys[_row_of(r)] for r in x]
        assert starts == [(0, nearest([0, 4, 8, 12, 16], prefix)), (1, nearest([0, 4, 16], prefix)),
                          (2, nearest([0, 16], prefix))], prefix
        assert valid.all()  # the condition is there; joint_loss drops it for an unconditional row
    x, cond, _ = cache_targets(batch, torch.tensor([True] * 3), torch.tensor([0] * 3), frames=16)
    assert [keys[_row_of(r)][1] for r in x] == [16] * 3 and [keys[_row_of(r)][1] for r in cond] == [0] * 3


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
    assert len(a) == len(b) == 4 and a.keys == b.keys
    for i in range(len(a)):
        for epoch in range(3):
            x, y = a[(i, epoch)], b[(i, epoch)]
            assert all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)
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
    assert len(cache.keys) == manifest["count"] and len(cache) == len({v for v, _ in cache.keys}) >= 1


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


def test_a_shard_written_but_not_listed_is_taken_up_from_its_record(tmp_path, monkeypatch):
    """A run killed between writing a shard and listing it in the manifest (or a torchrun rank's shard
    that rank 0 had not listed yet): the shard's own record brings it back, only for its own cache."""
    from pvdm_fast.data import latents

    ds = synthetic_windows(count=4)  # 12 clips: 4 shards of 3, one batch each
    reference = encode_dataset(TinyTriplaneEncoder(), ds, tmp_path / "full", autoencoder_id="ae", shard_size=3,
                               batch_size=3, progress=False)
    write, writes = latents._write_manifest, []

    def killed_on_the_second(out, manifest):
        writes.append(len(manifest["shards"]))
        if len(writes) == 2:
            raise KeyboardInterrupt("killed after shard 1 was written, before it was listed")
        write(out, manifest)

    monkeypatch.setattr(latents, "_write_manifest", killed_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(TinyTriplaneEncoder(), ds, tmp_path / "cache", autoencoder_id="ae", shard_size=3,
                       batch_size=3, progress=False)
    monkeypatch.setattr(latents, "_write_manifest", write)
    assert [s["index"] for s in read_manifest(tmp_path / "cache")["shards"]] == [0]
    assert (tmp_path / "cache/shard-00001.safetensors").is_file()
    resumed = TinyTriplaneEncoder()
    assert encode_dataset(resumed, ds, tmp_path / "cache", autoencoder_id="ae", shard_size=3, batch_size=3,
                          progress=False) == reference
    assert resumed.calls == 2  # shards 2 and 3; shard 1 was taken up
    (tmp_path / "cache/manifest.json").unlink()  # shards of another cache are not taken up
    other = TinyTriplaneEncoder()
    encode_dataset(other, ds, tmp_path / "cache", autoencoder_id="other", shard_size=3, batch_size=3, progress=False)
    assert other.calls == 4
    (tmp_path / "cache/manifest.json").unlink()  # its own are, even without a manifest
    again = TinyTriplaneEncoder()
    manifest = encode_dataset(again, ds, tmp_path / "cache", autoencoder_id="other", shard_size=3, batch_size=3,
                              progress=False)
    assert again.calls == 0 and manifest == {**reference, "autoencoder": {"sha256": "other", "config": {}}}
