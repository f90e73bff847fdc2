"""The latent cache: a dataset encoded once by the frozen autoencoder, read back for diffusion training.

Layout of a cache folder:
  manifest.json            format, autoencoder (sha256, config), data settings, videos, shards, count
  shard-00000.safetensors  latent (n, 4, L), video (n,) int64, start (n,) int64
Shard k holds the clips [k * shard_size, (k + 1) * shard_size) of the dataset (minus unreadable ones).
A shard and then the manifest are written atomically after each shard, so an interrupted run resumes
at the missing shards. Each shard also carries its own manifest record (metadata "shard": index, file,
first_item, items, count, its failed clips, and the cache it belongs to): under torchrun every rank
writes its share of the shards and only rank 0 writes the manifest, so a shard a killed run wrote
but did not list yet is taken up from its record on resume (with any number of processes).
Each video's windows tile it from each encoded offset (`pvdm encode --offsets`, default 0) every
hop = frames * stride frames. Diffusion training (LatentDataset) draws each video once per epoch and
one of its pairs of windows hop frames apart: cur given prev is the official conditional example (the
last T frames of a 2T-frame clip given the first T), and the unconditional target is the cached window
nearest the official random prefix (data/latent_pairs.py).
What remains different from the official sampling: clip starts are limited to the encoded offsets
(officially any frame); `--offsets 0 4 8 12` (T=16) gives 4 times the starts for 4 times the encoding.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

import numpy as np
import torch

from pvdm_fast._atomic import atomic_write
from pvdm_fast.data.latent_pairs import build_pair_index
from pvdm_fast.train.distributed import decided_by_rank0
from pvdm_fast.data.sources import SyntheticVideo
from pvdm_fast.data.specs import FORMATS
from pvdm_fast.devices import resolve_device

CACHE_FORMAT = "pvdm_fast.latents.v1"
MANIFEST = "manifest.json"
SHARD_RECORD = "shard"  # the shard file's metadata key holding its manifest record (JSON)
_ENTRY_KEYS = ("index", "file", "first_item", "items", "count")  # a record's part listed in manifest["shards"]


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(out: pathlib.Path, manifest: dict) -> None:
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1)))


def read_manifest(cache_dir: str | os.PathLike) -> dict:
    path = pathlib.Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"no latent cache at {cache_dir} (missing {MANIFEST}); build one with `pvdm encode`")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a pvdm_fast latent cache (format {manifest.get('format')!r})")
    return manifest


def _source_path(source) -> str:
    """A video's path resolved (absolute, symlinks followed): `videos:many` and `videos:/abs/many`
    name the same files. Synthetic videos keep their `synthetic:i` names."""
    return source.path if isinstance(source, SyntheticVideo) else os.path.realpath(source.path)


def _data_name(name: str) -> str:
    """`FORMAT:PATH` with PATH resolved; other names (synthetic:N, "") unchanged."""
    fmt, sep, rest = name.partition(":")
    return f"{fmt}:{os.path.realpath(rest)}" if sep and rest and fmt in FORMATS and fmt != "synthetic" else name


def _identity(dataset, name: str, paths: list[str]) -> dict:
    c = dataset.config
    items = [(paths[v], s) for v, s in dataset.plan.items]
    return {"name": name, "resolution": dataset.resolution, "frames": c.frames, "stride": c.stride,
            "offsets": list(c.offsets), "clips_per_video": c.clips_per_video, "antialias": dataset.antialias,
            "items": len(items), "items_sha256": hashlib.sha256(json.dumps(items).encode()).hexdigest()}


def dataset_identity(dataset) -> dict:
    """What must match for a resumed run to continue an existing cache: clip settings and the clips,
    by resolved paths ("paths": "resolved"; caches written before it hold the paths as spelled)."""
    paths = [_source_path(s) for s in dataset.sources]
    return {**_identity(dataset, _data_name(dataset.name), paths), "paths": "resolved"}


def _same_data(old: dict, fresh: dict, dataset) -> bool:
    """Whether a cache's manifest `old` was built from the data `dataset` holds (identity `fresh`)."""
    if old["data"] == fresh["data"]:
        return True
    if "paths" in old["data"]:
        return False
    # A cache from before resolved paths: its identity used the paths as they were spelled then, which its
    # "videos" list keeps; they must name the same files (relative ones seen from this working directory).
    spelled = old.get("videos", [])
    if len(spelled) != len(dataset.sources) or _data_name(old["data"]["name"]) != fresh["data"]["name"]:
        return False
    for then, source in zip(spelled, dataset.sources):
        if (then if isinstance(source, SyntheticVideo) else os.path.realpath(then)) != _source_path(source):
            return False
    return _identity(dataset, old["data"]["name"], spelled) == old["data"]


def _difference(key: str, cached, wanted) -> str:
    """`key: cached vs wanted`, for dicts only the entries that differ."""
    if isinstance(cached, dict) and isinstance(wanted, dict):
        keys = [k for k in {**cached, **wanted} if cached.get(k) != wanted.get(k)]
        return "; ".join(f"{key}.{k}: {cached.get(k)} vs {wanted.get(k)}" for k in keys)
    return f"{key}: {cached} vs {wanted}"


def _start_manifest(out: pathlib.Path, autoencoder_id: str, autoencoder_config: dict, dataset,
                    shard_size: int, store_dtype: torch.dtype) -> dict:
    fresh = {"format": CACHE_FORMAT, "autoencoder": {"sha256": autoencoder_id, "config": autoencoder_config},
             "data": dataset_identity(dataset), "videos": [_source_path(s) for s in dataset.sources],
             "hop": dataset.config.hop, "shard_size": shard_size, "store_dtype": str(store_dtype).split(".")[-1],
             "shards": [], "failed": [], "count": 0, "complete": False}
    if not (out / MANIFEST).exists():
        return fresh
    old = read_manifest(out)
    for key, what in (("autoencoder", "autoencoder"), ("data", "data settings"), ("shard_size", "shard size"),
                      ("store_dtype", "storage dtype")):
        same = _same_data(old, fresh, dataset) if key == "data" else old[key] == fresh[key]
        if not same:
            difference = _difference(key, old[key], fresh[key])
            raise ValueError(f"{out} holds a latent cache with a different {what} ({difference}); "
                             "pass a new --out folder or delete the old cache")
    return {**old, "data": fresh["data"], "videos": fresh["videos"]}  # an old cache's identity is upgraded


def _check_encode_args(batch_size: int, shard_size: int, num_workers: int) -> None:
    for name, flag, value, least in (("batch_size", "--batch-size", batch_size, 1),
                                     ("shard_size", "--shard-size", shard_size, 1),
                                     ("num_workers", "--workers", num_workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} ({flag}) must be an integer >= {least}, got {value!r}")


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _cache_key(manifest: dict) -> str:
    """What a shard's record names as its cache: the manifest's identity (autoencoder, data, layout)."""
    identity = {k: manifest[k] for k in ("format", "autoencoder", "data", "shard_size", "store_dtype")}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _read_record(path: pathlib.Path) -> dict | None:
    """The manifest record a shard file carries; None for a shard without one (written before records)
    or a file that is not a readable shard."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(SHARD_RECORD)
        return json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - a damaged file is a shard to encode again
        return None


def _done_shards(out: pathlib.Path, manifest: dict, num_items: int, key: str,
                 known: dict[int, dict] | None = None) -> dict[int, dict]:
    """index -> record of the shards done: those the manifest lists whose file is there (their failed
    clips from the manifest), and shard files not listed whose own record belongs to this cache
    (`key`) and plan (a run killed between a shard and the manifest, or a torchrun rank's shard rank
    0 did not list yet). `known`: records already found (only other files are read)."""
    records = dict(known or {})
    shard_size = manifest["shard_size"]
    num_shards = -(-num_items // shard_size)
    if known is None:
        for s in manifest["shards"]:
            if (out / s["file"]).is_file():
                items = range(s["first_item"], s["first_item"] + s["items"])
                records[s["index"]] = {**{k: s[k] for k in _ENTRY_KEYS},
                                       "failed": [f for f in manifest["failed"] if f["item"] in items]}
    present = set(os.listdir(out))
    for k in range(num_shards):
        if k in records or _shard_name(k) not in present:
            continue
        record = _read_record(out / _shard_name(k))
        first = k * shard_size
        if record is not None and record.get("cache") == key and record.get("index") == k and \
                record.get("file") == _shard_name(k) and record.get("first_item") == first and \
                record.get("items") == min(num_items, first + shard_size) - first:
            records[k] = {k2: v for k2, v in record.items() if k2 != "cache"}
    return records


def _with_shards(manifest: dict, records: dict[int, dict]) -> dict:
    """`manifest` listing exactly the shards of `records`, their failed clips and count."""
    ordered = [records[k] for k in sorted(records)]
    return {**manifest, "shards": [{k: r[k] for k in _ENTRY_KEYS} for r in ordered],
            "failed": sorted((f for r in ordered for f in r["failed"]), key=lambda f: f["item"]),
            "count": sum(r["count"] for r in ordered)}


def _start(out: pathlib.Path, autoencoder_id: str, autoencoder_config: dict, dataset, shard_size: int,
           store_dtype: torch.dtype, rank: int, world: int) -> tuple[dict, dict[int, dict]]:
    """The manifest (checked against this run, on rank 0) and the records of the shards done."""
    everyone = []
    if world > 1:  # every rank must encode the clips rank 0 checks
        everyone = [None] * world
        torch.distributed.all_gather_object(everyone, (dataset_identity(dataset),
                                                        [_source_path(s) for s in dataset.sources]))

    def decide():
        for r, (data, videos) in enumerate(everyone):
            if (data, videos) != everyone[0]:
                difference = _difference("data", everyone[0][0], data) or "videos: the paths differ"
                raise ValueError(f"rank {r} opened other data than rank 0 ({difference}); every rank must "
                                 "see the same dataset")
        manifest = _start_manifest(out, autoencoder_id, autoencoder_config, dataset, shard_size, store_dtype)
        records = _done_shards(out, manifest, len(dataset), _cache_key(manifest))
        complete = manifest["complete"] and len(records) == -(-len(dataset) // shard_size)
        return {**_with_shards(manifest, records), "complete": complete}, records

    return decided_by_rank0(rank, world, decide)


@torch.no_grad()
def encode_dataset(autoencoder: torch.nn.Module, dataset, out_dir: str | os.PathLike, *, autoencoder_id: str,
                   autoencoder_config: dict | None = None, batch_size: int = 8, shard_size: int = 1024,
                   device: str | torch.device | None = None, store_dtype: torch.dtype = torch.float16,
                   num_workers: int = 0, progress: bool = True) -> dict:
    """Encode every clip of `dataset` (a ClipDataset, normally in "windows" mode with substitute off)
    into `out_dir`; resumes an interrupted run. `autoencoder.encode(video (B,3,T,H,W)) -> (B,4,L)`.
    On a GPU the encoder runs under bf16 autocast. Latents are stored as `store_dtype` (float16 by
    default: they lie in (-1, 1), where float16 keeps 11 bits). Returns the manifest.
    In an initialised process group (torchrun), every rank calls this with its own `device` and the
    same arguments: the shards to encode are dealt out over the ranks, rank 0 checks the cache, writes
    the manifest and shows the progress, and every rank returns the final manifest. The cache is the
    one a single process writes."""
    from tqdm import tqdm

    from pvdm_fast.data.loader import dist_rank_world

    _check_encode_args(batch_size, shard_size, num_workers)
    device = resolve_device(device)
    rank, world = dist_rank_world()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest, records = _start(out, autoencoder_id, autoencoder_config or {}, dataset, shard_size, store_dtype,
                               rank, world)
    key = _cache_key(manifest)
    autoencoder.eval().to(device)
    num_shards = -(-len(dataset) // shard_size)
    todo = [k for k in range(num_shards) if k not in records]
    bar = tqdm(total=len(dataset), initial=sum(r["items"] for r in records.values()), unit="clip",
               disable=not progress or rank != 0, desc="encode")
    written = []
    for k in todo[rank::world]:
        items = range(k * shard_size, min(len(dataset), (k + 1) * shard_size))
        tensors, failed = _encode_items(autoencoder, dataset, items, batch_size, device, num_workers, bar)
        record = {"index": k, "file": _shard_name(k), "first_item": items[0], "items": len(items),
                  "count": len(tensors["video"]), "failed": failed}
        _save_shard(out / record["file"], tensors, store_dtype, {**record, "cache": key})
        written.append(record)
        if rank == 0:
            before = set(records)
            records[k] = record
            if world > 1:  # the other ranks' shards written so far
                records = _done_shards(out, manifest, len(dataset), key, known=records)
                bar.update(sum(records[i]["items"] for i in set(records) - before - {k}))
            manifest = _with_shards(manifest, records)
            _write_manifest(out, manifest)
    everyone = []
    if world > 1:
        everyone = [None] * world
        torch.distributed.all_gather_object(everyone, written)  # also: every rank is done

    def finish():
        for record in (r for rank_records in everyone for r in rank_records):
            if record["index"] not in records:
                bar.update(record["items"])
            records[record["index"]] = record
        final = {**_with_shards(manifest, records), "complete": True}
        _write_manifest(out, final)
        return final

    manifest = decided_by_rank0(rank, world, finish)
    bar.close()
    return manifest


def _encode_items(autoencoder, dataset, items: range, batch_size: int, device: torch.device, num_workers: int,
                  bar) -> tuple[dict, list[dict]]:
    from pvdm_fast.data.loader import _worker_init, worker_context

    extra = {"multiprocessing_context": worker_context(), "worker_init_fn": _worker_init} if num_workers > 0 else {}
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, list(items)), batch_size=batch_size,
                                         num_workers=num_workers, pin_memory=device.type == "cuda", **extra)
    latents, videos, starts, failed = [], [], [], []
    for batch in loader:
        ok = batch["ok"]
        for i in (~ok).nonzero().flatten().tolist():
            failed.append({"item": int(batch["index"][i]), "path": dataset.sources[int(batch["video_index"][i])].path,
                           "start": int(batch["start"][i])})
        if ok.any():
            video = batch["video"][ok].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                latent = autoencoder.encode(video)
            latents.append(latent.float().cpu())
            videos.append(batch["video_index"][ok])
            starts.append(batch["start"][ok])
        bar.update(len(ok))
    if not latents:
        return {"latent": torch.zeros(0), "video": torch.zeros(0, dtype=torch.int64),
                "start": torch.zeros(0, dtype=torch.int64)}, failed
    return {"latent": torch.cat(latents), "video": torch.cat(videos).long(), "start": torch.cat(starts).long()}, failed


def _save_shard(path: pathlib.Path, tensors: dict, store_dtype: torch.dtype, record: dict) -> None:
    from safetensors.torch import save_file

    tensors = {**tensors, "latent": tensors["latent"].to(store_dtype).contiguous()}
    metadata = {"format": CACHE_FORMAT, SHARD_RECORD: json.dumps(record, sort_keys=True)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


class LatentDataset(torch.utils.data.Dataset):
    """Cached latents as diffusion training examples, one item per video (as officially, every video is
    drawn once per epoch whatever its length). `dataset[(i, epoch)]` (or `[i]`, epoch 0) picks one of
    video i's choices uniformly, from (seed, epoch, i) only (see data/latent_pairs.py), and returns:
      latent (4, L) float32: cur, the conditional target; cond (4, L) float32: prev, the window `hop`
      frames before cur, or zeros; cond_valid: bool, False for a video without a pair;
      between (K-2, 4, L) float32, between_at (K-2,) float32, between_valid (K-2,) bool: the cached
      windows between prev and cur (starts as fractions of hop; K - 2 = offsets per hop - 1, 0 for a
      cache of one offset), candidates of the unconditional target with cond and latent;
      index, video, start: int (item, the video's number in the cache, cur's start frame).
    `cache_targets` turns a batch of them into the step's (x, cond, cond_valid).
    Shards are memory-mapped (safetensors) and opened lazily in each worker process.
    `autoencoder_id` (the checkpoint's sha256) refuses a cache built by another autoencoder."""

    def __init__(self, cache_dir: str | os.PathLike, autoencoder_id: str | None = None, *, seed: int = 0):
        from safetensors import safe_open

        self.dir = pathlib.Path(cache_dir)
        self.seed = seed
        self.manifest = read_manifest(self.dir)
        built_by = self.manifest["autoencoder"]["sha256"]
        if autoencoder_id is not None and autoencoder_id != built_by:
            raise ValueError(f"latent cache {self.dir} was built by autoencoder {built_by[:12]}, not "
                             f"{autoencoder_id[:12]}; re-encode with `pvdm encode` for this autoencoder")
        if not self.manifest["complete"]:
            raise ValueError(f"latent cache {self.dir} is incomplete (an interrupted `pvdm encode`); "
                             "run the same command again to finish it")
        self.rows: list[tuple[int, int]] = []  # (shard position, row)
        self.keys: list[tuple[int, int]] = []  # (video, start) of each row
        for pos, shard in enumerate(self.manifest["shards"]):
            with safe_open(str(self.dir / shard["file"]), framework="pt") as f:
                videos, starts = f.get_tensor("video").tolist(), f.get_tensor("start").tolist()
            self.rows += [(pos, r) for r in range(len(videos))]
            self.keys += list(zip(videos, starts))
        if not self.rows:
            raise ValueError(f"latent cache {self.dir} holds no latents")
        self.pairs = build_pair_index(self.keys, self.manifest["hop"])
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.pairs.videos)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self._row(0).shape)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}  # file handles do not cross process boundaries

    def _row(self, i: int) -> torch.Tensor:
        from safetensors import safe_open

        pos, row = self.rows[i]
        if pos not in self._handles:
            self._handles[pos] = safe_open(str(self.dir / self.manifest["shards"][pos]["file"]), framework="pt")
        return self._handles[pos].get_slice("latent")[row:row + 1][0].float()

    def choice(self, index: int, epoch: int = 0) -> int:
        """The choice (a row of `pairs.rows`) item `index` takes in `epoch`: uniform over the video's."""
        draw = np.random.default_rng([self.seed, epoch, index]).integers(0, self.pairs.count[index])
        return int(self.pairs.first[index] + draw)

    def tensors(self, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """The whole cache at once, for trainers that gather batches on the GPU without a DataLoader:
        latents (N, 4, L) in the stored dtype, and the PairIndex tables (first, count per item; rows,
        at per choice). Item i's example in an epoch is choice `choice(i, epoch)` (or any uniform draw
        from first[i] + [0, count[i])): latents[rows[c]] with rows[c] < 0 meaning zeros."""
        from safetensors.torch import load_file

        latents = torch.cat([load_file(str(self.dir / s["file"]))["latent"] for s in self.manifest["shards"]])
        p = self.pairs
        tables = {"first": p.first, "count": p.count, "rows": p.rows, "at": p.at}
        return {"latents": latents.to(device), **{k: torch.from_numpy(v).to(device) for k, v in tables.items()}}

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} videos")
        c = self.choice(index, epoch)
        rows, at = self.pairs.rows[c].tolist(), torch.from_numpy(self.pairs.at[c])
        cur = self._row(rows[-1])
        windows = [self._row(r) if r >= 0 else torch.zeros_like(cur) for r in rows[:-1]]
        between = torch.stack(windows[1:]) if len(windows) > 1 else cur.new_zeros((0, *cur.shape))
        return {"latent": cur, "cond": windows[0], "cond_valid": rows[0] >= 0, "between": between,
                "between_at": at[1:-1], "between_valid": torch.tensor([r >= 0 for r in rows[1:-1]], dtype=torch.bool),
                "index": index, "video": self.keys[rows[-1]][0], "start": self.keys[rows[-1]][1]}


def encode_to_cache(autoencoder: torch.nn.Module, spec: str, out_dir: str | os.PathLike, *, autoencoder_id: str,
                    autoencoder_config: dict, resolution: int, frames: int, stride: int = 1,
                    offsets: tuple[int, ...] = (0,), clips_per_video: int = 0, split: str | None = None,
                    fold: int = 1, antialias: bool = True, **encode_kwargs) -> dict:
    """Open `spec` as consecutive T-frame windows (at each offset) and encode it into `out_dir`."""
    from pvdm_fast.data.dataset import open_dataset

    dataset = open_dataset(spec, resolution=resolution, frames=frames, stride=stride, mode="windows",
                           offsets=offsets, clips_per_video=clips_per_video, split=split, fold=fold,
                           antialias=antialias, substitute=False)
    return encode_dataset(autoencoder, dataset, out_dir, autoencoder_id=autoencoder_id,
                          autoencoder_config=autoencoder_config, **encode_kwargs)
