"""Fréchet distance and KVD: closed forms, an independent general-eigenvalue route, SciPy's sqrtm route."""

import numpy as np
import pytest
import scipy.linalg
import torch

from pvdm_fast.metrics.fvd import frechet_distance, frechet_distance_from_stats, trace_sqrt_product
from pvdm_fast.metrics.kvd import kernel_distance, mmd2_unbiased


def _reference_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Independent route: tr sqrt(S_a S_b) from the general (non-symmetric) eigenvalues of the product."""
    ma, mb = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    return float(((ma - mb) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def _scipy_fd(a: np.ndarray, b: np.ndarray) -> float:
    """The classic formula (as in the FID/FVD code of the field): real part of scipy's sqrtm(S_a S_b)."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(sa @ sb).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(root))


def test_equal_sets_give_zero():
    x = np.random.default_rng(0).normal(size=(300, 12))
    assert abs(frechet_distance(x, x)) < 1e-9


def test_shifted_means_give_squared_shift():
    x = np.random.default_rng(1).normal(size=(200, 8))
    shift = np.linspace(-1, 2, 8)
    assert frechet_distance(x, x + shift) == pytest.approx((shift ** 2).sum(), rel=1e-10)


def test_diagonal_closed_form():
    va, vb = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu = np.array([1.0, 0.0, -2.0])
    d = frechet_distance_from_stats(np.zeros(3), np.diag(va), mu, np.diag(vb))
    assert d == pytest.approx((mu ** 2).sum() + ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum(), rel=1e-12)


def test_random_features_match_independent_routes():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(350, 16)) @ rng.normal(size=(16, 16)) + 0.3
    ours = frechet_distance(torch.from_numpy(a).float(), b)  # torch and numpy inputs, float32 upcast
    assert ours == pytest.approx(_reference_fd(a.astype(np.float32).astype(np.float64), b), rel=1e-6)
    assert ours == pytest.approx(_scipy_fd(a.astype(np.float32).astype(np.float64), b), rel=1e-6)


@pytest.mark.parametrize("noise", [1e-3, 1e-5])
def test_near_singular_covariances_match_scipy_sqrtm(noise):
    """N > D features that lie close to a rank-40 subspace of R^48 (a different one for each set), so the
    covariances have condition numbers ~1e8 (noise 1e-3) and ~1e12 (noise 1e-5).

    Tolerance: our route takes square roots of the eigenvalues of S_a^1/2 S_b S_a^1/2, each known to about
    D eps lambda_max, and drops those below that threshold; since |sqrt(x + e) - sqrt(x)| <= sqrt(|e|), the
    trace term is off by at most ~2 D sqrt(D eps lambda_max) ~ 7e-4 here, i.e. < 1e-6 of the distance
    (~1e3). SciPy's Schur sqrtm is within 1e-8 of the exact value (from the singular values of the centred
    X_a X_b^T) on these inputs; the observed gap is <= 3e-8. Real defects are far larger: a biased (N)
    covariance changes the distance by 3e-3, float32 covariances by 2e-4.
    """
    rng = np.random.default_rng(7)
    d, rank, n = 48, 40, 300
    a = rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + noise * rng.normal(size=(n, d))
    b = 0.7 * rng.normal(size=(n + 50, rank)) @ rng.normal(size=(rank, d)) + 0.2 + noise * rng.normal(size=(n + 50, d))
    assert np.linalg.cond(np.cov(a, rowvar=False)) > 1e7
    assert frechet_distance(a, b) == pytest.approx(_scipy_fd(a, b), rel=1e-6)


def test_near_singular_covariances_stay_finite():
    """Fewer samples than dimensions (rank-deficient covariances), as with small evaluation sets."""
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(10, 64)), rng.normal(size=(12, 64))
    d = frechet_distance(a, b)
    assert np.isfinite(d) and d > 0
    assert d == pytest.approx(_reference_fd(a, b), rel=1e-6)
    low_rank = rng.normal(size=(50, 3)) @ rng.normal(size=(3, 40))
    assert abs(frechet_distance(low_rank, low_rank)) < 1e-8
    assert trace_sqrt_product(np.zeros((4, 4)), np.eye(4)) == 0.0


def test_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="do not match"):
        frechet_distance(np.zeros((4, 3)), np.ones((5, 2)))


def test_mmd_matches_brute_force():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(6, 5)) + 0.5
    k = lambda u, v: (u @ v / 5 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kvd_known_distributions():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 10)), rng.normal(size=(600, 10))
    same = kernel_distance(a, b, num_subsets=20, subset_size=200)
    shifted = kernel_distance(a, b + 1.0, num_subsets=20, subset_size=200)
    assert abs(same["kvd"]) < 0.05 * shifted["kvd"]  # unbiased: ~0 for equal distributions
    assert shifted["kvd"] > 0.1 and same["subset_size"] == 200
    assert kernel_distance(a, b + 1.0, num_subsets=20, subset_size=200) == shifted  # seeded subsets
    assert kernel_distance(a[:50], b, num_subsets=2)["subset_size"] == 50
    with pytest.raises(ValueError, match="same D"):
        kernel_distance(a, b[:, :3])


def test_non_finite_features_are_refused_by_name():
    """Broken weights or inputs give NaN/inf features: a clear ValueError, not NaN metrics or an eigen-solver
    failure. Statistics, the Fréchet distance and the inception score each check."""
    from pvdm_fast.metrics.inception_score import inception_score
    from pvdm_fast.metrics.stats import FeatureStats

    x = np.random.default_rng(0).standard_normal((6, 4))
    x[2, 1] = np.nan
    with pytest.raises(ValueError, match="1 of 6 feature vectors hold NaN or inf"):
        FeatureStats().update(x)
    mean, cov = torch.zeros(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    bad = cov.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf"):
        frechet_distance_from_stats(mean, cov, mean, bad)
    p = np.full((10, 5), 0.2)
    p[3] = np.nan
    with pytest.raises(ValueError, match="not class probabilities"):
        inception_score(p, splits=2)
