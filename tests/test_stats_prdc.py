"""Precision / recall / density / coverage against a direct transcription of Naeem et al. (2020)."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genmetrics.stats import prdc


def _reference_prdc(real, fake, k):
    """The paper's formulas with full distance matrices (strict '<' as in the authors' code)."""
    def dist(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    real_radius = np.sort(dist(real, real), axis=1)[:, k]  # column 0 is the point itself
    fake_radius = np.sort(dist(fake, fake), axis=1)[:, k]
    d = dist(real, fake)  # (N, M)
    inside = d < real_radius[:, None]
    return {
        "precision": inside.any(axis=0).mean(),
        "recall": (d < fake_radius[None, :]).any(axis=1).mean(),
        "density": inside.sum(axis=0).mean() / k,
        "coverage": (d.min(axis=1) < real_radius).mean(),
    }


@pytest.mark.parametrize("k, block", [(5, 1024), (3, 7), (1, 1)])
def test_equals_the_formulas(k, block):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16))
    fake = rng.normal(0.4, 1.3, size=(90, 16))
    got = prdc(real, torch.from_numpy(fake), k=k, block=block)
    expected = _reference_prdc(real, fake, k)
    assert set(got) == {"precision", "recall", "density", "coverage"}
    for name in expected:
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name


def test_extreme_cases():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(50, 8))
    far = prdc(real, real + 100.0, k=3)
    assert far == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}
    same = prdc(real, real.copy(), k=3)
    assert same["precision"] == same["recall"] == same["coverage"] == 1.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(3, 25), m=st.integers(3, 25), k=st.integers(1, 2))
def test_property_matches_formulas(seed, n, m, k):
    rng = np.random.default_rng(seed)
    real, fake = rng.normal(size=(n, 3)), rng.normal(0.3, 1.0, size=(m, 3))
    got, expected = prdc(real, fake, k=k, block=4), _reference_prdc(real, fake, k)
    assert all(got[name] == pytest.approx(expected[name], abs=1e-12) for name in expected)


def test_bad_inputs_are_clear_errors():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="fake_features has 5 samples; .*k=5 need at least 6"):
        prdc(x, np.zeros((5, 4)), k=5)
    with pytest.raises(ValueError, match="feature dimension 4 but fake_features has 3"):
        prdc(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="real_features contains NaN"):
        prdc(np.full((10, 4), np.nan), x)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        prdc(x, x, k=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(300, 32)), rng.normal(0.2, 1.0, size=(200, 32))
    gpu = prdc(torch.from_numpy(real).cuda(), torch.from_numpy(fake).cuda(), k=5, block=64)
    assert gpu == pytest.approx(_reference_prdc(real, fake, 5), abs=1e-12)
