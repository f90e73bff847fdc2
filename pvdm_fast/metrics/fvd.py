"""Fréchet distance between Gaussians fitted to features, in float64.

d = |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2).
Both square roots are of symmetric positive semi-definite matrices, so they are taken through
`eigh` with round-off eigenvalues (negative, or below the numerical rank threshold) set to zero: unlike a general `sqrtm` of S_a S_b this
never produces complex parts or NaN for (near-)singular covariances, e.g. fewer samples than
feature dimensions.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_f64(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x.detach().cpu())
    return t.to(torch.float64)


def _rank_cut(w: torch.Tensor) -> torch.Tensor:
    """Eigenvalues below the numerical rank threshold (max |w| * n * eps) are round-off: set them to 0,
    otherwise their square roots (~1e-7 each for 1e-14 noise) add up to a visible bias in the trace."""
    tol = w.abs().max() * w.numel() * torch.finfo(w.dtype).eps
    return torch.where(w > tol, w, torch.zeros_like(w))


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((m + m.T) / 2)
    return (v * _rank_cut(w).sqrt()) @ v.T


def trace_sqrt_product(cov_a, cov_b) -> float:
    """tr((S_a S_b)^1/2) via the similar symmetric matrix S_a^1/2 S_b S_a^1/2."""
    a, b = _as_f64(cov_a), _as_f64(cov_b)
    root = _psd_sqrt(a)
    inner = root @ b @ root
    return float(_rank_cut(torch.linalg.eigvalsh((inner + inner.T) / 2)).sqrt().sum())


def frechet_distance_from_stats(mean_a, cov_a, mean_b, cov_b) -> float:
    mu_a, mu_b, s_a, s_b = _as_f64(mean_a), _as_f64(mean_b), _as_f64(cov_a), _as_f64(cov_b)
    if mu_a.shape != mu_b.shape or s_a.shape != s_b.shape or s_a.shape != (mu_a.numel(), mu_a.numel()):
        raise ValueError(f"feature statistics do not match: means {tuple(mu_a.shape)} / {tuple(mu_b.shape)}, "
                         f"covariances {tuple(s_a.shape)} / {tuple(s_b.shape)}")
    if not all(bool(torch.isfinite(t).all()) for t in (mu_a, mu_b, s_a, s_b)):
        raise ValueError("feature statistics hold NaN or inf (broken network weights or inputs); recompute them")
    d = (mu_a - mu_b).pow(2).sum() + torch.trace(s_a) + torch.trace(s_b) - 2 * trace_sqrt_product(s_a, s_b)
    return float(d)


def feature_mean_cov(features) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> mean (D,), unbiased covariance (D, D) in float64 (N - 1, as the official PVDM)."""
    x = _as_f64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got {tuple(x.shape)}")
    mean = x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / (x.shape[0] - 1)


def frechet_distance(features_a, features_b) -> float:
    """Fréchet distance of (N, D) and (M, D) features (numpy or torch), computed in float64."""
    return frechet_distance_from_stats(*feature_mean_cov(features_a), *feature_mean_cov(features_b))
