"""Inception Score of videos from C3D class probabilities (the StyleGAN-V `isv2048_ucf` protocol).

The probabilities of all `num` videos are shuffled with NumPy's RandomState(42), cut into `splits`
consecutive parts (part i: items [i n / splits, (i + 1) n / splits)), and each part scores
exp(E_x KL(p(y|x) || p(y))); the result is the mean and (population) std over parts. PVDM reports
this on 2048 UCF-101 samples of 16 frames with 10 splits. 0 log 0 is taken as 0 (its limit), so an
exactly zero probability does not turn the score into NaN.
"""

from __future__ import annotations

import numpy as np


def inception_score(probs, splits: int = 10, shuffle_seed: int | None = 42) -> tuple[float, float]:
    p = np.array(probs.detach().cpu() if hasattr(probs, "detach") else probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be (N, classes), got {p.shape}")
    if not 1 <= splits <= p.shape[0]:
        raise ValueError(f"splits must be in [1, N={p.shape[0]}], got {splits}")
    if not np.isfinite(p).all() or (p < 0).any() or np.abs(p.sum(1) - 1).max() > 1e-3:
        raise ValueError("inputs are not class probabilities (rows must be non-negative and sum to 1)")
    if shuffle_seed is not None:
        np.random.RandomState(shuffle_seed).shuffle(p)
    n = p.shape[0]
    scores = []
    for i in range(splits):
        part = p[i * n // splits:(i + 1) * n // splits]
        marginal = part.mean(0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(kl.sum(1).mean()))
    return float(np.mean(scores)), float(np.std(scores))
