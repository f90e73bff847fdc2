"""Streaming feature statistics and the cached real-statistics file.

`FeatureStats` keeps a float64 running mean and sum of squared deviations, updated batch by batch
with Chan et al.'s pairwise merge (no catastrophic cancellation, unlike sum(x x^T) - N mu mu^T), and
the features themselves for KVD. Real statistics are written to `.npz` with `mean`, `cov`, `count`,
`features` and `protocol` (JSON): everything that decides the numbers (network file digest, data,
frames, stride, clip count, resolution, seed). A cached file is reused only when its protocol equals
the requested one.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
import zlib

import numpy as np
import torch

from pvdm_fast._atomic import atomic_write


class FeatureStats:
    def __init__(self, keep_features: bool = True):
        self.count = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None  # sum over items of (x - mean)(x - mean)^T
        self.keep_features = keep_features
        self._features: list[np.ndarray] = []

    def update(self, batch) -> None:
        x = np.asarray(batch.detach().cpu() if torch.is_tensor(batch) else batch, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be (N, D), got {x.shape}")
        if x.shape[0] == 0:
            return
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).any(1).sum())
            raise ValueError(f"{bad} of {x.shape[0]} feature vectors hold NaN or inf: the network's weights or its "
                             "input are broken (FVD / KVD / IS would be NaN or fail in the eigen-solver)")
        if self.mean is not None and x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"feature width changed from {self.mean.shape[0]} to {x.shape[1]}")
        mean = x.mean(0)
        xc = x - mean
        self._merge(x.shape[0], mean, xc.T @ xc)
        if self.keep_features:
            self._features.append(x.astype(np.float32))

    def merge(self, other: "FeatureStats") -> None:
        """Fold in statistics gathered elsewhere (another rank)."""
        if other.count:
            self._merge(other.count, other.mean, other.m2)
            if self.keep_features:
                self._features.extend(other._features)

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if self.count == 0:
            self.count, self.mean, self.m2 = n, mean.copy(), m2.copy()
            return
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + np.outer(delta, delta) * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total

    @property
    def cov(self) -> np.ndarray:
        """Unbiased (N - 1) covariance, as the official PVDM FVD."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, have {self.count}")
        return self.m2 / (self.count - 1)

    @property
    def features(self) -> np.ndarray:
        if not self.keep_features:
            raise ValueError("these statistics were gathered without keeping the features")
        if not self._features:
            return np.zeros((0, 0 if self.mean is None else self.mean.shape[0]), np.float32)
        return np.concatenate(self._features)


def save_stats(path: str | os.PathLike, stats: FeatureStats, protocol: dict) -> None:
    """Atomic write of mean, cov, count, features and the protocol (JSON) to `.npz`."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"mean": stats.mean, "cov": stats.cov, "count": np.int64(stats.count),
              "protocol": np.array(json.dumps(protocol, sort_keys=True))}
    if stats.keep_features:
        arrays["features"] = stats.features

    def write(tmp: pathlib.Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write, keep_suffix=True)


class _NotStats(Exception):
    """A readable .npz that is not a statistics file (kept apart from the archive's own errors)."""


STATS_REMEDY = "recompute it with `pvdm eval fvd --real FORMAT:PATH --stats-cache FILE`"
CACHE_REMEDY = "delete it or pass another --stats-cache path to recompute the statistics"


def load_stats(path: str | os.PathLike, remedy: str = STATS_REMEDY) -> tuple[dict, dict]:
    """({'mean', 'cov', 'count', 'features' or None}, protocol) from a file written by save_stats.

    A missing file raises FileNotFoundError; a corrupt or foreign one ValueError naming it and `remedy`."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} not found (it is written by `pvdm eval fvd` with "
                                "--real FORMAT:PATH --stats-cache FILE)")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("mean", "cov", "count", "protocol") if k not in z.files]
            if missing:
                raise _NotStats(f"missing {', '.join(missing)}")
            stats = {"mean": z["mean"].astype(np.float64), "cov": z["cov"].astype(np.float64),
                     "count": int(z["count"]), "features": z["features"] if "features" in z.files else None}
            protocol = json.loads(str(z["protocol"]))
    except _NotStats as exc:
        raise ValueError(f"{path} is not a feature statistics file ({exc}); {remedy}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a readable feature statistics file ({type(exc).__name__}: {exc}); "
                         f"{remedy}") from None
    if not isinstance(protocol, dict):
        raise ValueError(f"{path} is not a feature statistics file (its protocol is not a JSON object); {remedy}")
    return stats, protocol


def check_cache_path(path: str | os.PathLike) -> pathlib.Path:
    """The --stats-cache path, checked before any feature is extracted: a file (existing or to be
    written) whose folder exists or can be created and written to."""
    path = pathlib.Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"--stats-cache {path} is a folder; pass a file path such as {path / 'real_stats.npz'}")
    if path.exists() and not path.is_file():
        raise ValueError(f"--stats-cache {path} is not a regular file; pass a file path such as real_stats.npz")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # save_stats creates the missing folders below this one
    if not folder.is_dir():
        raise ValueError(f"--stats-cache {path}: {folder} is a file, so the folder for the cache cannot be created")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--stats-cache {path}: no permission to write in {folder}; pass another path")
    return path


def protocol_mismatch(cached: dict, wanted: dict, keys=None) -> dict:
    """{key: (cached, wanted)} for every differing key (all keys, or only `keys`)."""
    keys = sorted(set(cached) | set(wanted)) if keys is None else keys
    return {k: (cached.get(k), wanted.get(k)) for k in keys if cached.get(k) != wanted.get(k)}


def check_protocol(path, cached: dict, wanted: dict, keys=None) -> None:
    diff = protocol_mismatch(cached, wanted, keys)
    if diff:
        detail = "; ".join(f"{k}: {a!r} in the file, {b!r} now" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise ValueError(f"statistics in {path} were computed with a different protocol ({detail}); delete the "
                         "file or choose another --stats-cache path to recompute, or pass matching options")
