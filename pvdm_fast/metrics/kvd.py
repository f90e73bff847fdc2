"""Kernel distance (KVD / KID): unbiased MMD^2 with the cubic polynomial kernel.

k(x, y) = (x . y / D + 1)^3 on D-dimensional features. As in the field (KID of Binkowski et al.,
StyleGAN's `kid`), the unbiased estimate is averaged over `num_subsets` random subsets of
min(N, M, subset_size) items from each side, drawn without replacement with a seeded generator.
"""

from __future__ import annotations

import numpy as np


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 of two equally sized sets: off-diagonal kernel means minus twice the cross mean."""
    m = x.shape[0]
    kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.mean())


def kernel_distance(features_a, features_b, num_subsets: int = 100, subset_size: int = 1000,
                    seed: int = 0) -> dict:
    """{'kvd': mean over subsets, 'kvd_std': their std, 'subset_size', 'num_subsets'} in float64."""
    a = np.asarray(features_a.detach().cpu() if hasattr(features_a, "detach") else features_a, dtype=np.float64)
    b = np.asarray(features_b.detach().cpu() if hasattr(features_b, "detach") else features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got {a.shape} and {b.shape}")
    m = min(a.shape[0], b.shape[0], subset_size)
    if m < 2 or num_subsets < 1:
        raise ValueError(f"KVD needs at least 2 items per side and one subset, got sizes {a.shape[0]}, "
                         f"{b.shape[0]} (subset size {subset_size}) and {num_subsets} subsets")
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(a[rng.choice(a.shape[0], m, replace=False)],
                            b[rng.choice(b.shape[0], m, replace=False)]) for _ in range(num_subsets)]
    return {"kvd": float(np.mean(values)), "kvd_std": float(np.std(values)), "subset_size": int(m),
            "num_subsets": int(num_subsets)}
