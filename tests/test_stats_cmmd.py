"""CMMD: equals the formula computed directly in float64 (full kernel matrices, as the authors' code; and the
unbiased variant), is ~0 for a set with itself, grows with a distortion's strength on real image features."""
import numpy as np
import pytest
import torch
from tolerances import gamma, sum_tol

from genmetrics.stats import cmmd, extract_features


def direct_cmmd(x, y, sigma=10.0, scale=1000.0, unbiased=False):
    """The reference formula on full float64 kernel matrices (google-research cmmd/distance.py's mmd)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    gamma = 1.0 / (2.0 * sigma ** 2)

    def kernel(a, b):
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        return np.exp(-gamma * sq)

    k_xx, k_yy, k_xy = kernel(x, x), kernel(y, y), kernel(x, y)
    if unbiased:
        n, m = len(x), len(y)
        within = (k_xx.sum() - np.trace(k_xx)) / (n * (n - 1)) + (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    else:
        within = k_xx.mean() + k_yy.mean()
    return scale * (within - 2.0 * k_xy.mean())


def unit_rows(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def embeddings():
    rng = np.random.default_rng(0)
    x = unit_rows(rng.normal(size=(90, 32)))
    y = unit_rows(rng.normal(size=(70, 32)) + 0.3)
    return x, y


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 16, 4096])
def test_equals_direct_formula(embeddings, unbiased, chunk_size):
    x, y = embeddings
    ours = cmmd(x, y, unbiased=unbiased, chunk_size=chunk_size)
    assert ours == pytest.approx(direct_cmmd(x, y, unbiased=unbiased), rel=1e-6)


def test_other_sigma_scale_and_float32_torch_input(embeddings):
    x, y = embeddings
    ours = cmmd(torch.from_numpy(x).float(), torch.from_numpy(y).float(), sigma=0.7, scale=3.0)
    expected = direct_cmmd(x.astype(np.float32), y.astype(np.float32), sigma=0.7, scale=3.0)
    assert ours == pytest.approx(expected, rel=1e-6)
    assert isinstance(ours, float)


def test_normalize_divides_each_row_by_its_norm(embeddings):
    x, y = (3.0 * e + 0.5 for e in embeddings)  # not unit rows
    unit = [e / np.linalg.norm(e, axis=1, keepdims=True) for e in (x, y)]
    assert cmmd(x.astype(np.float32), y, normalize=True) == pytest.approx(direct_cmmd(*unit), rel=1e-6)


def _zero_tol(n, dim, sigma=10.0, scale=1000.0):
    """Bound on |CMMD| of unit rows against themselves (0 in exact arithmetic): a squared distance about a
    centre within the rows' hull (|a - c| <= 2) is a sum of D + 2 terms adding up to at most 16, a kernel
    value moves by g = 1 / (2 sigma^2) times that, each of the three means of n^2 values in (0, 1] by
    2 gamma_{n^2}; CMMD = scale (k_xx + k_yy - 2 k_xy): scale 4 times the sum (3.6e-9 for n = 90)."""
    return scale * 4 * (sum_tol(dim + 2, 16) / (2 * sigma ** 2) + 2 * gamma(n * n))


def test_a_set_with_itself_is_zero(embeddings):
    x, _ = embeddings
    assert abs(cmmd(x, x)) <= _zero_tol(*x.shape)  # it was < 1e-9, below this bound
    # the unbiased estimate of a set against itself is 2 scale (mean off-diagonal k - mean k) = O(scale / n)
    unbiased = cmmd(x, x, unbiased=True)
    assert unbiased == pytest.approx(direct_cmmd(x, x, unbiased=True), rel=1e-6)
    assert abs(unbiased) < 2 * 1000.0 * 0.02 / len(x)


@pytest.fixture(scope="module")
def noisy_features(inception, photos):
    """L2-normalised Inception pool3 of 24 crops of the photos, clean and with Gaussian noise of std 4, 16, 48."""
    crops = [p[y:y + 160, x:x + 160] for p in photos[:6] for y in (0, 140) for x in (0, 140)]
    rng = np.random.default_rng(0)
    sets = {}
    for std in (0, 4, 16, 48):
        noisy = [np.clip(c + rng.normal(0, std, c.shape), 0, 255).astype(np.uint8) if std else c for c in crops]
        x = torch.from_numpy(np.stack(noisy)).permute(0, 3, 1, 2).contiguous()
        sets[std] = unit_rows(extract_features(x, model=inception, mode="clean", progress=False)["pool3"].numpy())
    return sets


def test_grows_with_distortion_strength(noisy_features):
    clean = noisy_features[0]
    values = [cmmd(clean, noisy_features[std]) for std in (0, 4, 16, 48)]
    assert abs(values[0]) <= _zero_tol(*clean.shape)
    assert values[0] < values[1] < values[2] < values[3]


@pytest.mark.parametrize("kwargs, match", [
    (dict(x=np.zeros((3, 4)), y=np.zeros((3, 5))), "same embedding"),
    (dict(x=np.zeros((0, 4)), y=np.zeros((3, 4))), "x must be a non-empty"),
    (dict(x=np.zeros((1, 4)), y=np.zeros((3, 4)), unbiased=True), "at least 2"),
    (dict(x=np.zeros((2, 4)), y=np.zeros((3, 4)), sigma=0), "sigma must be"),
    (dict(x=np.zeros((2, 4)), y=np.zeros((3, 4)), scale=-1.0), "scale must be"),
])
def test_bad_input_is_refused_in_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as error:
        cmmd(**kwargs)
    assert "\n" not in str(error.value)


def test_invariant_to_a_common_offset(embeddings):
    """Issue 19 item 12 (CMMD shares the blocked distances of copy detection): embeddings that share a large
    offset (2^27 .. 2^31 per coordinate) gave squared distances wrong by ~ D eps |a|^2 ~ 1e4, so kernel
    values of 0 or 1 at random. Each kernel sum now centres on the mean of its second set.

    Error model: rows of norm 4 on a grid of 2^-20 (so that adding the offset is exact: < 53 bits) about a
    centre of norm <= 4 are within 8 of it, so a squared distance's absolute terms add up to at most
    2 (64 + 64) and two runs' squared distances differ by at most e = sum_tol(D + 2, 256). A kernel value
    exp(-g d^2), g = 1 / (2 sigma^2), then moves by at most g e; each of the three means also by the rounding
    of a sum of at most n^2 terms in (0, 1] (2 gamma_{n^2} of the mean), and CMMD = scale (k_xx + k_yy -
    2 k_xy) by scale (1 + 1 + 2) times that."""
    x, y = (np.round(4.0 * e * 2.0 ** 20) / 2.0 ** 20 for e in embeddings)
    offset = 2.0 ** 27 * np.random.default_rng(5).integers(1, 16, size=x.shape[1])
    sigma, n = 2.0, max(len(x), len(y))
    base = cmmd(x, y, sigma=sigma)
    shifted = cmmd(x + offset, torch.from_numpy(y + offset), sigma=sigma, chunk_size=16)
    per_mean = sum_tol(x.shape[1] + 2, 256) / (2 * sigma ** 2) + 2 * gamma(n * n)
    assert abs(shifted - base) <= 1000.0 * 4 * per_mean
    assert base > 1000.0 * 4 * per_mean * 1e6  # the check above is not vacuous
