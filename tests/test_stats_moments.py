"""GaussianMoments: float64 streaming moments, exact shard merging, checkpointing, warnings, bad input."""
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genmetrics.stats import GaussianMoments


def _relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    # Non-negative, offset features like Inception pool3 (mean and std of the same order).
    return (np.abs(rng.normal(0.4, 0.5, size=(3000, 64))) + rng.normal(size=(1, 64)) ** 2).astype(np.float32)


def test_one_pass_equals_numpy(features):
    moments = GaussianMoments.from_features(features)
    x = features.astype(np.float64)
    assert moments.n == 3000 and moments.dim == 64
    assert _relative_error(moments.mean, x.mean(axis=0)) < 1e-12
    assert _relative_error(moments.cov, np.cov(x, rowvar=False)) < 1e-10
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
    assert set(state) == {"n", "sum", "outer_sum"}
    restored = GaussianMoments.from_state(state).update(features[100:])
    assert _relative_error(restored.cov, GaussianMoments.from_features(features).cov) < 1e-10
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
