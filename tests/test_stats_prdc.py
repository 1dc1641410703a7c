"""Precision / recall / density / coverage against a direct transcription of Naeem et al. (2020)."""
import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tolerances import sum_tol

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


def _gap_and_bound(real, fake, k):
    """(smallest |d^2 - r^2| of the data, the rounding bound of a computed squared distance).

    The metrics count strict comparisons d^2 < r^2, so ours and the oracle's counts are equal (abs=1e-12
    below only absorbs the division by N or k M) unless an exact gap is below twice the bound. A squared
    distance about a centre c (three sums of D terms, two additions, absolute terms adding up to at most
    2 (|a - c|^2 + |b - c|^2)) is within sum_tol(D + 2, that) of the exact one, so are the k-NN radii (an
    order statistic moves no more than its inputs), and so is the oracle's direct sum of squared
    differences. c is the real features' mean up to rounding far below the spread (the factor 2)."""
    centre = real.mean(axis=0)
    largest = max(((real - centre) ** 2).sum(1).max(), ((fake - centre) ** 2).sum(1).max())
    bound = sum_tol(real.shape[1] + 2, 2 * 2 * (2 * largest))
    d2 = ((real[:, None] - fake[None]) ** 2).sum(-1)
    radius2 = [np.sort(((a[:, None] - a[None]) ** 2).sum(-1), axis=1)[:, k] for a in (real, fake)]
    gap = min(np.abs(d2 - radius2[0][:, None]).min(), np.abs(d2 - radius2[1][None, :]).min())
    return gap, bound


@pytest.mark.parametrize("k, block", [(5, 1024), (3, 7), (1, 1)])
def test_equals_the_formulas(k, block):
    rng = np.random.default_rng(0)
    real = rng.normal(size=(120, 16))
    fake = rng.normal(0.4, 1.3, size=(90, 16))
    got = prdc(real, torch.from_numpy(fake), k=k, block=block)
    expected = _reference_prdc(real, fake, k)
    gap, bound = _gap_and_bound(real, fake, k)
    assert gap > 2 * bound, (gap, bound)  # no comparison within rounding: the counts must be equal
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
    gap, bound = _gap_and_bound(real, fake, k)
    assume(gap > 2 * bound)  # a tie within rounding may count either way (never drawn so far)
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
    gap, bound = _gap_and_bound(real, fake, 5)
    assert gap > 2 * bound, (gap, bound)
    assert gpu == pytest.approx(_reference_prdc(real, fake, 5), abs=1e-12)


def _on_grid(a):
    """a rounded to multiples of 2^-20. With |a| < 2^4 and an offset that is a multiple of 2^-20 below 2^32,
    a + offset needs fewer than 32 + 20 < 53 bits: exact in float64, the translated set itself."""
    return np.round(a * 2.0 ** 20) / 2.0 ** 20


def test_invariant_to_a_common_offset():
    """Issue 19 item 12: features that share a large offset (2^27 .. 2^31 per coordinate here, spread ~1) gave
    arbitrary numbers: |a|^2 + |b|^2 - 2 a.b rounds with an error ~ D eps |a|^2 ~ 1e5 against squared
    distances ~ 1e2. Both sets are now centred on the real features' mean first.

    Error model: the translated sets have exactly the original distances. Computed about any centre c, a
    squared distance (three sums of D terms, two additions, absolute terms adding up to at most
    2 (|a - c|^2 + |b - c|^2)) is within sum_tol(D + 2, that) of the exact one, so are the k-NN radii (an
    order statistic moves no more than its inputs), and so is the oracle's direct sum of squared differences.
    The four metrics count strict comparisons d^2 < r^2: they cannot differ from the oracle's unless an exact
    gap is below twice that bound, and the smallest gap of this data is checked to be far larger."""
    rng = np.random.default_rng(3)
    real, fake = _on_grid(rng.normal(size=(200, 64))), _on_grid(rng.normal(0.3, 1.1, size=(150, 64)))
    offset = 2.0 ** 27 * rng.integers(1, 16, size=64)
    k = 5
    got = prdc(real + offset, torch.from_numpy(fake + offset), k=k)
    expected = _reference_prdc(real, fake, k)
    for name in expected:  # equal counts; abs only absorbs the division by N or k M
        assert got[name] == pytest.approx(expected[name], abs=1e-12), name
    gap, bound = _gap_and_bound(real, fake, k)
    assert gap > 2 * bound, (gap, bound)
