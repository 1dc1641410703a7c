"""The statistics writer (issue 12 item 6): lossless compression and no derived outer_sum halve a file of 1000
images with features, the round trip is bit-identical, files written by 0.1 are still read, and files get the
user's umask instead of mkstemp's 0600. Real files, random Inception-like features."""
import os
import stat
import sys
import warnings

import h5py
import numpy as np
import pytest

from genmetrics.registry import ReferenceStats, read_refstats, write_refstats
from genmetrics.stats import GaussianMoments, sqrtm_psd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from refstats_size import write_0_1  # noqa: E402  (the 0.1 writer's layout, also used by the size script)

META = dict(dataset="toy", split="train", resolution=32, mode="clean", feature_extractor="inception-v3-compat",
            feature_layer="pool3", source="test")


def _stats(n, dim, sqrt_sigma=False, zeros=False):
    rng = np.random.default_rng(n)
    features = (np.abs(rng.normal(size=(n, dim))) * 0.4).astype(np.float32)
    if zeros:
        features[:, 1:] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n <= D: rank-deficient on purpose
        stats = ReferenceStats.from_moments(GaussianMoments.from_features(features), features=features, meta=META)
    if sqrt_sigma:
        stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    return stats


def _same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def thousand():
    return _stats(1000, 2048)


def test_a_file_of_1000_images_with_features_is_at_most_half_the_0_1_size(thousand, tmp_path):
    old, new = write_0_1(tmp_path / "old.h5", thousand), write_refstats(tmp_path / "new.h5", thousand)
    old_size, new_size = os.path.getsize(old), os.path.getsize(new)
    print(f"\n1000 x 2048 features: 0.1 layout {old_size / 1e6:.1f} MB, now {new_size / 1e6:.1f} MB "
          f"({new_size / old_size:.3f})")
    assert new_size <= old_size / 2
    with h5py.File(new) as f:
        assert "outer_sum" not in f and f["sigma"].compression == "gzip" and f["sigma"].shuffle


def test_round_trip_is_bit_identical(thousand, tmp_path):
    stats = _stats(300, 512, sqrt_sigma=True)
    back = read_refstats(write_refstats(tmp_path / "x.h5", stats), lazy_features=False, full=True)
    for name in ("mu", "sigma", "sum", "sqrt_sigma", "features"):
        assert _same_bits(np.asarray(getattr(back, name)), np.asarray(getattr(stats, name))), name
    assert back.n == stats.n and back.outer_sum is None  # derived: (n - 1) sigma + sum sum^T / n
    assert all(back.meta[k] == v for k, v in META.items())


def test_files_written_by_0_1_are_still_read(tmp_path):
    stats = _stats(50, 64, sqrt_sigma=True)
    path = tmp_path / "old.h5"
    write_0_1(path, stats)
    with h5py.File(path, "r+") as f, h5py.File(write_refstats(tmp_path / "attrs.h5", stats)) as g:
        for key, value in g.attrs.items():
            f.attrs[key] = value
    back = read_refstats(path, lazy_features=False, full=True)
    for name in ("mu", "sigma", "sum", "outer_sum", "sqrt_sigma", "features"):
        assert _same_bits(np.asarray(getattr(back, name)), np.asarray(getattr(stats, name))), name


def test_mostly_zero_arrays_are_stored_uncompressed_and_read_back(tmp_path):
    stats = _stats(40, 32, zeros=True)  # sigma and features nearly all zeros: would compress past the reader's limit
    path = write_refstats(tmp_path / "zeros.h5", stats)
    with h5py.File(path) as f:
        assert f["sigma"].compression is None and f["features"].compression is None
    back = read_refstats(path, lazy_features=False)
    assert _same_bits(back.sigma, stats.sigma) and _same_bits(np.asarray(back.features), stats.features)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_users_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path = write_refstats(tmp_path / "shared.h5", _stats(10, 8))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
