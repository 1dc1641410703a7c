"""frechet_distance: equals pytorch-fid and clean-fid, closed forms, symmetry, cached square root, the Gram
form from features, bad input."""
import warnings

import numpy as np
import pytest
import torch
from cleanfid.fid import frechet_distance as cleanfid_frechet_distance
from hypothesis import given, settings
from hypothesis import strategies as st
from pytorch_fid.fid_score import calculate_frechet_distance as pytorch_fid_frechet_distance
from tolerances import frechet_tol, sum_tol

from genmetrics.stats import GaussianMoments, fid_infinity, frechet_distance, sqrtm_psd


def _features(n, dim, seed, scale=1.0, shift=0.0, dtype=np.float32):
    """Correlated non-negative features (like pool3) in `dtype` and their float64 moments (mean, unbiased cov)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    x = np.abs(rng.normal(size=(n, dim)) @ mixing * scale + shift).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rank-deficient cases are intended here
        moments = GaussianMoments.from_features(x)
        return x, moments.mean, moments.cov


def _gaussian_stats(n, dim, seed, scale=1.0, shift=0.0):
    """(mean, cov) of float64 :func:`_features`."""
    return _features(n, dim, seed, scale, shift, dtype=np.float64)[1:]


# (n1, n2, dim): well conditioned, and rank-deficient covariances (n < D) on one or both sides.
CASES = [(2000, 1500, 64), (300, 400, 128), (40, 2000, 64), (50, 30, 96)]


@pytest.mark.parametrize("n1, n2, dim", CASES)
def test_equals_pytorch_fid_and_clean_fid(n1, n2, dim):
    mu1, sigma1 = _gaussian_stats(n1, dim, seed=1)
    mu2, sigma2 = _gaussian_stats(n2, dim, seed=2, scale=1.3, shift=0.1)
    ours = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(ours, float)
    # Two algorithms (eigvalsh of a symmetric matrix, sqrtm of S1 S2): within rounding of each, 4e-12
    # relative for full-rank covariances, 4e-6 with n < D (sqrt of the zero eigenvalues' rounding noise).
    tol = frechet_tol(mu1, sigma1, mu2, sigma2)
    assert abs(ours - pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2)) <= tol
    assert abs(ours - cleanfid_frechet_distance(mu1, sigma1, mu2, sigma2)) <= tol


def test_commuting_gaussians_closed_form():
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    a, b = rng.uniform(0, 3, size=50), rng.uniform(0, 3, size=50)
    a[:5] = 0.0  # singular covariance
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    # Products and eigenvalues of diagonal matrices are exact (one non-zero term per sum): what is left
    # are sums of 50 terms, about 4 x 50 in all, against the closed form's.
    magnitude = np.sum((mu1 - mu2) ** 2) + a.sum() + b.sum() + 2 * np.sqrt(a * b).sum()
    assert abs(frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) - expected) <= sum_tol(4 * 50, magnitude)


@settings(max_examples=30, deadline=None)
@given(
    m1=st.floats(-10, 10), m2=st.floats(-10, 10), s1=st.floats(0, 10), s2=st.floats(0, 10),
)
def test_property_one_dimensional_closed_form(m1, m2, s1, s2):
    # In 1-D the Fréchet distance is (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2.
    got = frechet_distance(np.array([m1]), np.array([[s1**2]]), np.array([m2]), np.array([[s2**2]]))
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-9, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dim=st.integers(1, 12), n=st.integers(2, 30))
def test_property_self_distance_zero_and_symmetry(seed, dim, n):
    mu1, sigma1 = _gaussian_stats(n, dim, seed)
    mu2, sigma2 = _gaussian_stats(n + 3, dim, seed + 1)
    # n < D is drawn too: each zero eigenvalue's rounding noise delta adds up to sqrt(delta).
    assert abs(frechet_distance(mu1, sigma1, mu1, sigma1)) <= frechet_tol(mu1, sigma1, mu1, sigma1)
    forward = frechet_distance(mu1, sigma1, mu2, sigma2)
    tol = max(frechet_tol(mu1, sigma1, mu2, sigma2), frechet_tol(mu2, sigma2, mu1, sigma1))
    assert forward >= -tol
    assert abs(forward - frechet_distance(mu2, sigma2, mu1, sigma1)) <= tol


def test_invariant_to_sample_order():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(500, 32)), rng.normal(0.2, 1.1, size=(400, 32))
    base = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    xs = GaussianMoments.from_features(x[rng.permutation(500)])
    ys = GaussianMoments.from_features(y[rng.permutation(400)])
    # The moments differ by the summation order of 500 / 400 rows (3e-11 relative here).
    tol = frechet_tol(xs.mean, xs.cov, ys.mean, ys.cov, samples=900)
    assert abs(frechet_distance(xs.mean, xs.cov, ys.mean, ys.cov) - base) <= tol


def test_cached_square_root_and_torch_inputs():
    mu1, sigma1 = _gaussian_stats(40, 64, seed=5)  # rank-deficient reference
    mu2, sigma2 = _gaussian_stats(300, 64, seed=6)
    root = sqrtm_psd(sigma1)
    np.testing.assert_allclose(root, root.T)
    np.testing.assert_allclose(root @ root, sigma1, atol=1e-10 * np.abs(sigma1).max())
    assert np.linalg.eigvalsh(root).min() > -1e-12  # PSD up to rounding
    direct = frechet_distance(mu1, sigma1, mu2, sigma2)
    # Same operations (the rank-deficient sigma1 has no Cholesky factor, so the direct path takes this root):
    # rel=1e-12 allows only a few ulps; here and below equality is what is checked.
    assert frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=root) == pytest.approx(direct, rel=1e-12)
    as_torch = [torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2)]
    assert frechet_distance(*as_torch) == pytest.approx(direct, rel=1e-12)


def _centred(x):
    return (x - x.mean(axis=0, dtype=np.float64)) / np.sqrt(len(x) - 1)


@pytest.mark.parametrize("n1, n2, dim", [(3000, 200, 256), (100, 60, 256), (500, 255, 256)])
def test_gram_form_equals_the_exact_value_and_pytorch_fid(n1, n2, dim):
    x1, mu1, sigma1 = _features(n1, dim, seed=11)
    x2, mu2, sigma2 = _features(n2, dim, seed=12, scale=1.2, shift=0.05)
    # With S = F^T F on both sides, Tr((S1 S2)^(1/2)) is the sum of the singular values of F1 F2^T.
    trace_sqrt = np.linalg.svd(_centred(x1) @ _centred(x2).T, compute_uv=False).sum()
    exact = (mu1 - mu2) @ (mu1 - mu2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
    gram = frechet_distance(mu1, sigma1, mu2, sigma2, features2=x2)
    # Observed 7e-10 relative (Gram form) and 3e-8 (D x D form, pytorch-fid); the bounds are 8e-8 and 1e-5:
    # the D x D form has D - N2 + 1 zero eigenvalues, the Gram form one. sigma1 is a sum of n1 rows here,
    # the oracle works on the rows themselves.
    assert abs(gram - exact) <= frechet_tol(mu1, sigma1, mu2, sigma2, features2=x2, samples=n1)
    dense_tol = frechet_tol(mu1, sigma1, mu2, sigma2, samples=n1 + n2)
    assert abs(frechet_distance(mu1, sigma1, mu2, sigma2) - exact) <= dense_tol
    assert abs(pytorch_fid_frechet_distance(mu1, sigma1, mu2, sigma2) - exact) <= dense_tol
    root = sqrtm_psd(sigma1)
    on_torch = frechet_distance(*(torch.from_numpy(a) for a in (mu1, sigma1, mu2, sigma2)), sqrt_sigma1=root,
                                features2=torch.from_numpy(x2))
    assert on_torch == pytest.approx(gram, rel=1e-12)  # same operations on the same float64 values


def test_gram_form_closed_forms():
    # A set's distance to itself is 0: Tr((S S)^(1/2)) = Tr(S). The D x D form, whose D - N + 1 zero
    # eigenvalues come out as rounding noise, is ~100x further from 0.
    # The bound is the Gram form's (tests/tolerances.py): its one zero eigenvalue (the centring) comes out
    # as rounding noise of size delta and adds up to sqrt(delta) (the bound is 4e-8 of Tr(S) here, 7e-10 observed).
    x, mu, sigma = _features(100, 512, seed=13)
    gram = frechet_distance(mu, sigma, mu, sigma, features2=x)
    dense = frechet_distance(mu, sigma, mu, sigma)
    assert abs(gram) <= frechet_tol(mu, sigma, mu, sigma, features2=x)
    assert abs(gram) <= abs(dense)  # <=: a value rounded below 0 may be returned as 0.0 on both sides
    # Against the identity, Tr(S2^(1/2)) is the sum of the singular values of Xc / sqrt(N - 1). The SVD
    # carries no square root of a rounding error; the Gram form's zero eigenvalue does (observed 4e-10
    # relative, the bound 1e-8; it was rel=1e-12, which held only for one machine's summation order).
    x, mu, sigma = _features(40, 128, seed=14)
    singular = np.linalg.svd(_centred(x), compute_uv=False)
    expected = mu @ mu + 128 + np.trace(sigma) - 2 * singular.sum()
    got = frechet_distance(np.zeros(128), np.eye(128), mu, sigma, features2=x)
    assert abs(got - expected) <= frechet_tol(np.zeros(128), np.eye(128), mu, sigma, features2=x)


def test_gram_form_refuses_features_of_other_samples():
    x, mu, sigma = _features(50, 64, seed=15)
    _, mu1, sigma1 = _features(500, 64, seed=16)
    with pytest.raises(ValueError, match="features2 are not the features mu2/sigma2 were computed from"):
        frechet_distance(mu1, sigma1, mu, sigma, features2=x[:40])
    with pytest.raises(ValueError, match="features2 are not the features"):
        frechet_distance(mu1, sigma1, mu, sigma, features2=x + 1.0)
    with pytest.raises(ValueError, match=r"features2 must be the \(N2, 64\) features"):
        frechet_distance(mu1, sigma1, mu, sigma, features2=x[:, :32])
    nan = x.copy()
    nan[3, 3] = np.nan
    with pytest.raises(ValueError, match="features2 contains NaN"):
        frechet_distance(mu1, sigma1, mu, sigma, features2=nan)
    # sigma1 not PSD only outside the span of the samples (which the N2 x N2 matrix never sees): refused.
    centred = x - x.mean(axis=0, dtype=np.float64)
    outside = np.linalg.svd(centred, full_matrices=True)[2][-1]  # orthogonal to every centred sample
    assert np.abs(centred @ outside).max() < 1e-9 * np.abs(centred).max()
    not_psd = sigma1 - 2 * np.linalg.eigvalsh(sigma1).max() * np.outer(outside, outside)
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite"):
        frechet_distance(mu1, not_psd, mu, sigma, features2=x)
    with pytest.raises(ValueError, match="sqrt_sigma1 is not the square root of sigma1"):
        frechet_distance(mu1, not_psd, mu, sigma, sqrt_sigma1=sqrtm_psd(sigma1), features2=x)
    # N2 >= D: the D x D form is used and the features are not read (a list would not even be an array).
    big, mu_big, sigma_big = _features(80, 64, seed=17)
    assert frechet_distance(mu1, sigma1, mu_big, sigma_big, features2=big[:, ::-1].copy()) == pytest.approx(
        frechet_distance(mu1, sigma1, mu_big, sigma_big), rel=1e-12)


def test_bad_inputs_are_clear_errors():
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="feature dimension 4 but mu2 has 5"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(ValueError, match=r"covariance must be \(4, 4\)"):
        frechet_distance(mu, np.eye(3), mu, sigma)
    with pytest.raises(ValueError, match="NaN or Inf"):
        frechet_distance(mu, np.full((4, 4), np.nan), mu, sigma)
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(mu, np.triu(np.ones((4, 4))), mu, sigma)
    with pytest.raises(ValueError, match="sqrt_sigma1 has shape"):
        frechet_distance(mu, sigma, mu, sigma, sqrt_sigma1=np.eye(3))
    with pytest.raises(ValueError, match="mean must be a vector"):
        frechet_distance(np.zeros((4, 1)), sigma, mu, sigma)


def test_fid_infinity_removes_the_small_sample_bias():
    # Fake ~ N(0.5, 1.2² I), reference N(0, I) exactly: FID = D (0.5² + 0.2²). FID at N samples is biased
    # upward (~0.7 here); FID∞ extrapolates it away (averaged over seeds to tame the sampling noise).
    dim, n = 64, 2000
    true = dim * (0.25 + 0.04)
    biased, extrapolated = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subsets of fewer than D samples are rank-deficient, on purpose
        for seed in range(6):
            x = np.random.default_rng(seed).normal(0.5, 1.2, size=(n, dim))
            moments = GaussianMoments.from_features(x)
            biased.append(frechet_distance(np.zeros(dim), np.eye(dim), moments.mean, moments.cov) - true)
            extrapolated.append(
                fid_infinity(torch.from_numpy(x), np.zeros(dim), np.eye(dim), min_samples=200, num_points=8,
                             seed=seed) - true)
    assert np.mean(biased) > 0.4
    assert abs(np.mean(extrapolated)) < 0.25 * np.mean(biased)
    with pytest.raises(ValueError, match="more than min_samples=5000"):
        fid_infinity(np.ones((100, 4)), np.zeros(4), np.eye(4))


def test_large_magnitude_covariances_are_rescaled_exactly():
    """Features with spread ~1e110: F S2 F overflowed (bare LinAlgError); the power-of-two rescaling is exact."""
    mu1, sigma1 = _gaussian_stats(300, 32, seed=7)
    mu2, sigma2 = _gaussian_stats(200, 32, seed=8, scale=1.2)
    base = frechet_distance(mu1, sigma1, mu2, sigma2)
    a = 2.0 ** 365  # ~7.5e109
    big = frechet_distance(mu1 * a, sigma1 * a * a, mu2 * a, sigma2 * a * a)
    assert big == pytest.approx(base * a * a, rel=1e-12)  # scaling by powers of 2: the same operations
    tiny = frechet_distance(mu1 / a, sigma1 / a / a, mu2 / a, sigma2 / a / a)
    assert tiny == pytest.approx(base / a / a, rel=1e-12)
    # The cached root instead of a Cholesky factor: another algorithm.
    assert abs(frechet_distance(mu1 * a, sigma1 * a * a, mu2 * a, sigma2 * a * a, sqrt_sigma1=sqrtm_psd(sigma1) * a)
               - big) <= frechet_tol(mu1, sigma1, mu2, sigma2) * a * a
    with pytest.raises(ValueError, match="overflows float64.*rescale both feature sets"):
        frechet_distance(mu1 * 1e160, sigma1, mu2, sigma2)


def test_statistics_that_are_not_covariances_are_refused():
    """A non-PSD sigma gave a negative FID (or 0.0 for a negative-definite one); a wrong cached root gave 15.9."""
    mu1, sigma1 = _gaussian_stats(300, 16, seed=9)
    mu2, sigma2 = _gaussian_stats(300, 16, seed=10)
    eigenvalues, vectors = np.linalg.eigh(sigma1)
    eigenvalues[:3] = -0.5 * eigenvalues.max()
    not_psd = (vectors * eigenvalues) @ vectors.T
    not_psd = (not_psd + not_psd.T) / 2
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite"):
        frechet_distance(mu1, not_psd, mu2, sigma2)
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite"):
        frechet_distance(mu1, -sigma1, mu2, sigma2)
    with pytest.raises(ValueError, match="sigma2 .* is not positive semi-definite"):
        frechet_distance(mu1, sigma1, mu2, not_psd)
    with pytest.raises(ValueError, match="sqrt_sigma1 is not the square root of sigma1"):
        frechet_distance(mu1, sigma1, mu1, sigma1, sqrt_sigma1=sqrtm_psd(sigma2))
    # PSD up to rounding (rank-deficient, float32-rounded) is still accepted, and self-distance stays ~0.
    mu3, sigma3 = _gaussian_stats(10, 16, seed=11)
    rounded = sigma3.astype(np.float32)
    assert abs(frechet_distance(mu3, rounded, mu3, rounded)) < 1e-3 * np.trace(sigma3)


def _few_sample_stats(n, dim, seed):
    """Mean and covariance (float64, np.cov) of n < dim standard normal samples: rank n - 1, a null space of
    dimension dim - n + 1. The tests round them to float32, as statistics files and user code often store them."""
    x = np.random.default_rng(seed).normal(size=(n, dim))
    return x.mean(axis=0), np.cov(x, rowvar=False)


def test_second_covariance_negative_in_the_first_ones_null_space_is_refused():
    """Issue 19 item 8. sigma1 from 20 samples in D = 64 (rank 19) and sigma2 = sigma1 - 2.48 v v^T with v in
    sigma1's null space, float32: the D x D form's A S2 A (A the root of sigma1) is 0 along v and passed its
    check, Tr(S2) lost 2.48, and the distance between N(mu, sigma1) and N(mu, sigma2) came out as -2.48.
    sigma2 is now checked on its own; the message names it and gives its most negative eigenvalue (-2.48
    up to float32 rounding, far beyond the PSD tolerance 10 D eps32 max|eig| ~ 5e-4)."""
    mu, sigma1 = _few_sample_stats(20, 64, seed=0)
    v = np.linalg.eigh(sigma1)[1][:, 0]  # sigma1 v = 0 up to float64 rounding
    sigma2 = sigma1 - 2.48 * np.outer(v, v)
    mu, sigma1, sigma2 = (a.astype(np.float32) for a in (mu, sigma1, sigma2))
    refusal = r"^sigma2 is not positive semi-definite \(eigenvalue -2.48, largest magnitude"
    with pytest.raises(ValueError, match=refusal):
        frechet_distance(mu, sigma1, mu, sigma2)
    with pytest.raises(ValueError, match=refusal):
        frechet_distance(*(torch.from_numpy(a) for a in (mu, sigma1, mu, sigma2)))
    with pytest.raises(ValueError, match=refusal):
        frechet_distance(mu, sigma1, mu, sigma2, sqrt_sigma1=sqrtm_psd(sigma1))
    with pytest.raises(ValueError, match=r"^sigma is not positive semi-definite \(eigenvalue -2.48"):
        sqrtm_psd(sigma2)  # a root of it would be a root of another matrix (the negative part clipped)
    # The same statistics without the negative part are accepted: sigma1's own float32 rounding noise
    # (eigenvalues ~ -1e-7 here) is within the tolerance.
    assert frechet_distance(mu, sigma1, mu, sigma1) >= 0.0


def test_self_distance_of_float32_statistics_is_zero_not_negative():
    """Issue 19 item 8: a self-distance came out as -8.9e-5 (here -1.2e-5). A distance is never negative:
    the value that rounding takes below 0 is returned as 0.0.

    Why it is below 0 on every machine: rounding the rank-19 covariance to float32 gives its null space
    eigenvalues mu_i of either sign (~1e-7). With A the root of S (negative eigenvalues clipped), A S A has
    eigenvalues lambda_i^2 on the range and max(mu_i, 0) mu_i in the null space, so
    2 Tr(S) - 2 sum sqrt(eig(A S A)) = 2 sum_{mu_i < 0} mu_i (-6e-6 here, fixed by the data), and float64
    rounding (eigenvalues of A S A within gamma_{3D} lambda_max^2 ~ 1e-11, which moves each of the 19 square
    roots of a non-zero eigenvalue by at most 1e-11 / lambda_min(S on its range) ~ 4e-12, and each zero one
    only upward, which lowers the result) cannot lift it above 0."""
    mu, sigma = (a.astype(np.float32) for a in _few_sample_stats(20, 128, seed=0))
    eigenvalues = np.linalg.eigvalsh(sigma.astype(np.float64))
    assert 2 * eigenvalues[eigenvalues < 0].sum() < -1e-6  # the premise above
    assert frechet_distance(mu, sigma, mu, sigma) == 0.0
    assert frechet_distance(torch.from_numpy(mu), torch.from_numpy(sigma), mu, sigma,
                            sqrt_sigma1=sqrtm_psd(sigma)) == 0.0
