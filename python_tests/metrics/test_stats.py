"""Streaming statistics equal the all-at-once ones; the cache keeps its protocol and refuses others."""

import numpy as np
import pytest

from pvdm_fast.metrics.fvd import feature_mean_cov
from pvdm_fast.metrics.stats import FeatureStats, check_protocol, load_stats, save_stats


def _stream(x: np.ndarray, sizes) -> FeatureStats:
    s = FeatureStats()
    start = 0
    for n in sizes:
        s.update(x[start:start + n])
        start += n
    return s


def test_streaming_equals_batch():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=1e3, scale=0.5, size=(97, 7))  # a large offset: naive sum-of-squares would lose digits
    s = _stream(x, [1, 5, 0, 30, 61])
    mean, cov = feature_mean_cov(x)
    np.testing.assert_allclose(s.mean, mean.numpy(), rtol=1e-13)
    np.testing.assert_allclose(s.cov, cov.numpy(), rtol=1e-9, atol=1e-12)
    assert s.count == 97 and s.features.shape == (97, 7)


def test_merge_equals_single_stream():
    x = np.random.default_rng(1).normal(size=(40, 4))
    a, b = _stream(x[:13], [13]), _stream(x[13:], [10, 17])
    a.merge(b)
    whole = _stream(x, [40])
    np.testing.assert_allclose(a.cov, whole.cov, rtol=1e-12)
    np.testing.assert_allclose(a.features, whole.features)


def test_errors():
    s = FeatureStats()
    s.update(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        _ = s.cov
    with pytest.raises(ValueError, match="width changed"):
        s.update(np.zeros((2, 4)))


def test_cache_round_trip_and_protocol(tmp_path):
    x = np.random.default_rng(2).normal(size=(20, 5))
    stats = _stream(x, [8, 12])
    protocol = {"network_sha256": "abc", "frames": 16, "stride": 1, "num": 20}
    path = tmp_path / "real.npz"
    save_stats(path, stats, protocol)
    loaded, proto = load_stats(path)
    assert proto == protocol and loaded["count"] == 20
    np.testing.assert_allclose(loaded["cov"], stats.cov)
    np.testing.assert_allclose(loaded["features"], x.astype(np.float32))
    check_protocol(path, proto, dict(protocol))
    with pytest.raises(ValueError, match="frames: 16 in the file, 8 now"):
        check_protocol(path, proto, {**protocol, "frames": 8})
    check_protocol(path, proto, {**protocol, "num": 5}, keys=("frames",))  # only the listed keys matter


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="stats-cache"):
        load_stats(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a feature statistics file"):
        load_stats(tmp_path / "other.npz")


def test_corrupt_statistics_file_names_it(tmp_path):
    from pvdm_fast.metrics.stats import CACHE_REMEDY

    path = tmp_path / "real.npz"
    save_stats(path, _stream(np.random.default_rng(3).normal(size=(6, 2)), [6]), {"frames": 16})
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])  # an interrupted copy: zipfile.BadZipFile before
    with pytest.raises(ValueError, match="real.npz is not a readable feature statistics file.*recompute it"):
        load_stats(path)
    with pytest.raises(ValueError, match="real.npz is not a readable .*delete it or pass another --stats-cache"):
        load_stats(path, remedy=CACHE_REMEDY)


def test_cache_path_checked_up_front(tmp_path):
    from pvdm_fast.metrics.stats import check_cache_path

    with pytest.raises(ValueError, match="is a folder; pass a file path"):
        check_cache_path(tmp_path)
    assert check_cache_path(tmp_path / "new" / "deeper" / "real.npz") == tmp_path / "new" / "deeper" / "real.npz"
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is a file, so the folder for the cache cannot be created"):
        check_cache_path(tmp_path / "file" / "real.npz")
