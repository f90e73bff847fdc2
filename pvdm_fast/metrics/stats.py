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


def load_stats(path: str | os.PathLike) -> tuple[dict, dict]:
    """({'mean', 'cov', 'count', 'features' or None}, protocol) from a file written by save_stats."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"statistics file {path} not found (it is written by `pvdm eval fvd` with "
                                "--real FORMAT:PATH --stats-cache FILE)")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("mean", "cov", "count", "protocol") if k not in z.files]
        if missing:
            raise ValueError(f"{path} is not a feature statistics file (missing {', '.join(missing)})")
        stats = {"mean": z["mean"].astype(np.float64), "cov": z["cov"].astype(np.float64),
                 "count": int(z["count"]), "features": z["features"] if "features" in z.files else None}
        protocol = json.loads(str(z["protocol"]))
    return stats, protocol


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
