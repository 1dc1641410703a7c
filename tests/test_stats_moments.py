"""GaussianMoments: float64 streaming moments, exact shard merging, checkpointing, warnings, bad input."""
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import cov_tol, frechet_tol, mean_tol

from genmetrics.stats import GaussianMoments


def _relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _max_error(a, b):
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    # Non-negative, offset features like Inception pool3 (mean and std of the same order).
    return (np.abs(rng.normal(0.4, 0.5, size=(3000, 64))) + rng.normal(size=(1, 64)) ** 2).astype(np.float32)


def test_one_pass_equals_numpy(features):
    moments = GaussianMoments.from_features(features)
    x = features.astype(np.float64)
    assert moments.n == 3000 and moments.dim == 64
    # Sums of 3000 rows in two orders (tests/tolerances.py; 7e-13 and 3e-11 of the largest entry here).
    assert _max_error(moments.mean, x.mean(axis=0)) <= mean_tol(x)
    assert _max_error(moments.cov, np.cov(x, rowvar=False)) <= cov_tol(x)
    assert moments.mean.dtype == np.float64 and moments.cov.dtype == np.float64
    np.testing.assert_array_equal(moments.cov, moments.cov.T)


def test_shards_merged_equal_one_pass(features):
    one_pass = GaussianMoments.from_features(features)
    # Unequal shards, mixed numpy / torch / dtypes, in another order.
    shards = [features[2000:], features[:7], features[7:1500], features[1500:2000]]
    parts = [
        GaussianMoments.from_features(shards[0]),
        GaussianMoments.from_features(torch.from_numpy(shards[1]).double()),
        GaussianMoments().update(torch.from_numpy(shards[2])),
        GaussianMoments.from_features(shards[3]),
    ]
    merged = parts[0] + parts[1]
    merged.merge(parts[2]).merge(parts[3])
    assert merged.n == one_pass.n
    assert _relative_error(merged.mean, one_pass.mean) < 1e-10
    assert _relative_error(merged.cov, one_pass.cov) < 1e-10
    assert _relative_error(merged.outer_sum, one_pass.outer_sum) < 1e-10


def test_batched_updates_equal_one_pass(features):
    streamed = GaussianMoments()
    for start in range(0, len(features), 128):
        streamed.update(torch.from_numpy(features[start:start + 128]))
    one_pass = GaussianMoments.from_features(features)
    assert _relative_error(streamed.cov, one_pass.cov) < 1e-10


def test_state_dict_round_trip(features):
    moments = GaussianMoments.from_features(features[:100])
    state = moments.state_dict()
    assert set(state) == {"n", "sum", "outer_sum", "shift", "shifted_sum", "shifted_outer_sum"}
    restored = GaussianMoments.from_state(state).update(features[100:])
    assert _relative_error(restored.cov, GaussianMoments.from_features(features).cov) < 1e-10
    # The unshifted (n, sum, outer_sum) of a format-v1 file still restore the same moments.
    unshifted = GaussianMoments.from_state({k: state[k] for k in ("n", "sum", "outer_sum")}).update(features[100:])
    assert _relative_error(unshifted.cov, GaussianMoments.from_features(features).cov) < 1e-10
    np.testing.assert_allclose(moments.outer_sum, features[:100].astype(np.float64).T @ features[:100], rtol=1e-12)
    # state_dict returns copies: later updates do not change a saved state.
    assert state["n"] == 100


def test_warns_when_covariance_is_rank_deficient():
    moments = GaussianMoments.from_features(np.random.default_rng(1).normal(size=(10, 32)))
    with pytest.warns(UserWarning, match=r"rank at most n-1=9 < D.*biased"):
        moments.cov
    enough = GaussianMoments.from_features(np.random.default_rng(1).normal(size=(40, 32)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enough.cov


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((0, 8)), "empty"),
        (np.zeros(8), "2-D"),
        (np.array([[1.0, np.nan]]), "NaN or Inf"),
        (np.array([[1.0, np.inf]]), "NaN or Inf"),
        ([[1.0, 2.0]], "numpy array or a torch tensor"),
        (np.zeros((3, 2), dtype=complex), "real numbers"),
    ],
)
def test_bad_features_are_clear_errors(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        GaussianMoments().update(bad)


def test_mismatched_dimensions_and_too_few_samples():
    moments = GaussianMoments.from_features(np.ones((3, 4)))
    with pytest.raises(ValueError, match="feature dimension 5 .* have 4"):
        moments.update(np.ones((2, 5)))
    with pytest.raises(ValueError, match="feature dimension 6 .* have 4"):
        moments.merge(GaussianMoments.from_features(np.ones((2, 6))))
    with pytest.raises(ValueError, match="at least 2 samples"):
        GaussianMoments.from_features(np.ones((1, 4))).cov
    with pytest.raises(ValueError, match="no samples"):
        GaussianMoments().mean
    with pytest.raises(ValueError, match="state shapes"):
        GaussianMoments.from_state({"n": 3, "sum": np.zeros(4), "outer_sum": np.zeros((3, 3))})


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 40),
    dim=st.integers(1, 6),
    cut=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**32 - 1),
    offset=st.floats(-100.0, 100.0),
)
def test_property_any_split_merges_to_one_pass(n, dim, cut, seed, offset):
    x = np.random.default_rng(seed).normal(offset, 1.0, size=(n, dim))
    k = int(cut * n)
    first, second = GaussianMoments(dim), GaussianMoments(dim)
    if k:
        first.update(x[:k])
    if k < n:
        second.update(x[k:])
    merged = first + second
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.cov(x, rowvar=False).reshape(dim, dim)
        np.testing.assert_allclose(merged.cov, expected, rtol=1e-7, atol=1e-9 * (1 + offset**2))
    np.testing.assert_allclose(merged.mean, x.mean(axis=0), rtol=1e-12, atol=1e-12 * (1 + abs(offset)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_equal_cpu(features):
    on_gpu = GaussianMoments()
    for start in range(0, len(features), 1000):
        on_gpu.update(torch.from_numpy(features[start:start + 1000]).cuda())
    assert _relative_error(on_gpu.cov, GaussianMoments.from_features(features).cov) < 1e-10


def _offset_features(offset, n, dim, seed, scale=1.0):
    return np.random.default_rng(seed).normal(size=(n, dim)) * scale + offset


def _two_pass(x):
    """Reference: the correctly rounded sum (math.fsum) over n for the mean, the covariance centred on it.

    (numpy.cov centres on numpy's own mean, whose rounding error e adds n e^2 / (n - 1) to the covariance:
    6e-14 at c = 1e8 here, and more where its summation order differs; np.longdouble is float64 on some
    platforms.)
    """
    mean = np.array([math.fsum(column) for column in x.T]) / len(x)
    centred = x - mean
    return mean, centred.T @ centred / (len(x) - 1)


@pytest.mark.parametrize("offset", [0.0, 1e4, 1e6, 1e8, -1e8])
def test_fid_with_large_mean_equals_two_pass(offset):
    """Features N(0, 1) + c: the streamed moments give the two-pass FID to 1e-9 for |c| up to 1e8.

    (The plain sum of x x^T gave FID -853 instead of ~5 at c = 1e8.)
    """
    from genmetrics.stats import frechet_distance

    x = _offset_features(offset, 3000, 16, seed=1)
    y = _offset_features(offset, 2000, 16, seed=2, scale=1.5)
    mx, my = GaussianMoments(), GaussianMoments()
    for start in range(0, 3000, 100):
        mx.update(torch.from_numpy(x[start:start + 100]))
        my.update(y[start:start + 100]) if start < 2000 else None
    expected = frechet_distance(*_two_pass(x), *_two_pass(y))
    assert expected > 1.0
    # Each mean is one rounding of ~c away from the other side's (one ulp, 1.5e-8 at 1e8): up to 1.2e-8
    # of this FID (1.5e-10 observed); the covariances are sums of 3000 and 2000 rows.
    ulp = np.spacing(abs(offset) + 10.0)
    tol = frechet_tol(*_two_pass(x), *_two_pass(y), samples=5000, mean_error=ulp)
    assert abs(frechet_distance(mx.mean, mx.cov, my.mean, my.cov) - expected) <= tol
    assert _max_error(mx.cov, _two_pass(x)[1]) <= cov_tol(x)


@pytest.mark.parametrize("offset", [1e8, -3e7])
def test_shards_with_large_mean_merge_exactly(offset):
    """Shards with different shifts (their first batches' means) merge to the one-pass state to 1e-12."""
    x = _offset_features(offset, 4000, 32, seed=3)
    one_pass = GaussianMoments.from_features(x)
    parts = [GaussianMoments.from_features(x[a:b]) for a, b in ((0, 5), (5, 1300), (1300, 4000))]
    merged = parts[2] + parts[0]
    merged.merge(parts[1])
    assert merged.n == 4000
    assert _max_error(merged.cov, one_pass.cov) <= cov_tol(x)
    assert _max_error(merged.cov, _two_pass(x)[1]) <= cov_tol(x)
    # The means: c + s / n, rounded once at ~c (one ulp apart at most) plus the sums' rounding.
    assert _max_error(merged.mean, one_pass.mean) <= np.spacing(abs(offset) + 10.0) + mean_tol(x - offset)
    # A saved state keeps its shift: restoring it loses nothing.
    restored = GaussianMoments.from_state(merged.state_dict())
    np.testing.assert_array_equal(restored.cov, merged.cov)
    # Mean and covariance (an .h5 file's mu, sigma, n) rebuild a stable state too; mu itself is rounded
    # to ~7e-9 at 1e8, which moves the merged covariance by ~1e-11 here.
    rebuilt = GaussianMoments.from_mean_cov(4000, one_pass.mean, one_pass.cov).merge(parts[0])
    assert _relative_error(rebuilt.cov, np.cov(np.concatenate([x, x[:5]]), rowvar=False)) < 1e-10


def test_rebase_to_a_common_shift_makes_sums_additive():
    """What a torch.distributed all-reduce does: agree on one shift, rebase, add the shifted sums."""
    x = _offset_features(1e8, 900, 8, seed=4)
    ranks = [GaussianMoments.from_features(x[:400]), GaussianMoments.from_features(x[400:]), GaussianMoments()]
    common = ranks[0].shift.copy()
    for rank in ranks:
        rank.rebase(common)
    reduced = {"n": sum(r.n for r in ranks), "shift": common,
               "shifted_sum": sum(r.shifted_sum for r in ranks),
               "shifted_outer_sum": sum(r.shifted_outer_sum for r in ranks)}
    total = GaussianMoments.from_state(reduced)
    assert total.n == 900 and ranks[2].n == 0
    assert _max_error(total.cov, _two_pass(x)[1]) <= cov_tol(x)
    assert _max_error(total.cov, (ranks[0] + ranks[1]).cov) <= cov_tol(x)
    # rebase is exact in algebra: going there and back is the identity up to rounding.
    moved = GaussianMoments.from_features(x[:400]).rebase(common + 0.5).rebase(ranks[0].shift)
    assert _relative_error(moved.shifted_outer_sum, ranks[0].shifted_outer_sum) < 1e-12


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 60), dim=st.integers(1, 5), cut=st.floats(0.0, 1.0), seed=st.integers(0, 2**32 - 1),
       exponent=st.floats(0.0, 8.0))
def test_property_large_offsets_merge_to_two_pass(n, dim, cut, seed, exponent):
    x = _offset_features(10.0 ** exponent, n, dim, seed)
    k = int(cut * n)
    merged = GaussianMoments(dim).update(x[:k]) if k else GaussianMoments(dim)
    merged = merged + (GaussianMoments.from_features(x[k:]) if k < n else GaussianMoments())
    expected = np.cov(x, rowvar=False).reshape(dim, dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(merged.cov, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
