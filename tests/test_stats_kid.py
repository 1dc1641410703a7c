"""KID: equals torch-fidelity, torchmetrics and clean-fid on identical features and subsets; seeding; bad input."""
import numpy as np
import pytest
import torch
from cleanfid.fid import kernel_distance as cleanfid_kernel_distance
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import mmd_tol
from torch_fidelity.metric_kid import kernel_mmd as fidelity_kernel_mmd
from torch_fidelity.metric_kid import kid_features_to_metric
from torchmetrics.image.kid import poly_mmd as torchmetrics_poly_mmd

from genmetrics.stats import kernel_inception_distance, polynomial_mmd_unbiased

FIDELITY_KWARGS = dict(verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
                       kid_kernel_poly_coef0=1)


@pytest.fixture(scope="module")
def feature_sets():
    rng = np.random.default_rng(0)
    real = np.abs(rng.normal(0.3, 0.6, size=(150, 48)))
    fake = np.abs(rng.normal(0.35, 0.7, size=(150, 48)))
    return real, fake


def test_per_subset_mmd_equals_peers(feature_sets):
    # All three compute in float64 here: they agree to the rounding of the kernel means (1e-9 relative).
    real, fake = feature_sets
    ours = polynomial_mmd_unbiased(real, fake)
    assert abs(ours - float(fidelity_kernel_mmd(real, fake, **FIDELITY_KWARGS))) <= mmd_tol(real, fake)
    tm = float(torchmetrics_poly_mmd(torch.from_numpy(real), torch.from_numpy(fake)))
    assert abs(ours - tm) <= mmd_tol(real, fake)
    for degree, gamma, coef0 in [(2, 0.5, 0.0), (4, None, 2.0)]:
        kwargs = dict(FIDELITY_KWARGS, kid_kernel_poly_degree=degree, kid_kernel_poly_gamma=gamma,
                      kid_kernel_poly_coef0=coef0)
        assert abs(polynomial_mmd_unbiased(real, fake, degree=degree, gamma=gamma, coef0=coef0)
                   - float(fidelity_kernel_mmd(real, fake, **kwargs))) <= mmd_tol(real, fake, degree, gamma, coef0)


def test_full_size_subsets_equal_torch_fidelity_and_clean_fid(feature_sets):
    # subset_size = N: every subset is the whole set (in some order), so all implementations see the same data.
    real, fake = feature_sets
    mean, std = kernel_inception_distance(real, fake, subsets=3, subset_size=150)
    fidelity = kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=3,
                                      kid_subset_size=150, rng_seed=1, **FIDELITY_KWARGS)
    assert mean == pytest.approx(fidelity["kernel_inception_distance_mean"], rel=1e-6)
    assert std == 0.0  # the subsets cannot differ: computed once
    np.random.seed(0)
    assert mean == pytest.approx(cleanfid_kernel_distance(real, fake, num_subsets=2, max_subset_size=150), rel=1e-6)


def test_mean_and_std_over_the_same_random_subsets_equal_torch_fidelity(feature_sets):
    # Replay torch-fidelity's subset draws (RandomState(seed).choice) through our per-subset function.
    real, fake = feature_sets
    rng = np.random.RandomState(7)
    values = []
    for _ in range(20):
        f1 = real[rng.choice(150, 60, replace=False)]
        f2 = fake[rng.choice(150, 60, replace=False)]
        values.append(polynomial_mmd_unbiased(f1, f2))
    fidelity = kid_features_to_metric(torch.from_numpy(real), torch.from_numpy(fake), kid_subsets=20,
                                      kid_subset_size=60, rng_seed=7, **FIDELITY_KWARGS)
    assert np.mean(values) == pytest.approx(fidelity["kernel_inception_distance_mean"], rel=1e-6)
    assert np.std(values) == pytest.approx(fidelity["kernel_inception_distance_std"], rel=1e-6)


def test_unequal_sizes_match_the_definition():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(7, 5)), rng.normal(0.5, 1.0, size=(11, 5))
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(11) for j in range(11) if i != j) / (11 * 10)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(11)) / (7 * 11)
    assert abs(polynomial_mmd_unbiased(x, y) - (xx + yy - 2 * xy)) <= mmd_tol(x, y)


def test_seeded_and_clipped(feature_sets):
    real, fake = feature_sets
    first = kernel_inception_distance(real, torch.from_numpy(fake).float(), subsets=10, subset_size=50, seed=3)
    assert first == kernel_inception_distance(real, torch.from_numpy(fake).float(), subsets=10, subset_size=50, seed=3)
    assert first != kernel_inception_distance(real, fake, subsets=10, subset_size=50, seed=4)
    with pytest.warns(UserWarning, match="subsets of 100 instead"):
        kernel_inception_distance(real, fake[:100], subsets=2, subset_size=1000)
    # Same distribution: KID is unbiased, so close to 0 (either sign).
    same = kernel_inception_distance(real[:75], real[75:], subsets=5, subset_size=70)[0]
    assert abs(same) < 0.1 * polynomial_mmd_unbiased(real, fake + 1.0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(2, 12), n=st.integers(2, 12), dim=st.integers(1, 6))
def test_property_symmetric(seed, m, n, dim):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(m, dim)), rng.normal(size=(n, dim))
    forward = polynomial_mmd_unbiased(x, y)
    # Swapped, the centre and every sum are taken in another order.
    assert abs(forward - polynomial_mmd_unbiased(y, x)) <= mmd_tol(x, y)


@pytest.mark.parametrize(
    "f1, f2, message",
    [
        (np.zeros((0, 4)), np.zeros((5, 4)), "features1 is empty"),
        (np.zeros((1, 4)), np.zeros((5, 4)), "features1 has 1 sample"),
        (np.zeros((5, 4)), np.zeros((5, 3)), "feature dimension 4 but features2 has 3"),
        (np.zeros((5, 4)), np.full((5, 4), np.nan), "features2 contains NaN"),
        (np.zeros(5), np.zeros((5, 4)), "2-D"),
    ],
)
def test_bad_inputs_are_clear_errors(f1, f2, message):
    with pytest.raises(ValueError, match=message):
        kernel_inception_distance(f1, f2)


def test_bad_parameters():
    x = np.ones((5, 2))
    with pytest.raises(ValueError, match="subset_size must be an integer >= 2"):
        kernel_inception_distance(x, x, subset_size=1)
    with pytest.raises(ValueError, match="subsets must be an integer >= 1"):
        kernel_inception_distance(x, x, subsets=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu(feature_sets):
    real, fake = feature_sets
    cpu = kernel_inception_distance(real, fake, subsets=5, subset_size=100, seed=2)
    gpu = kernel_inception_distance(torch.from_numpy(real).cuda(), torch.from_numpy(fake).cuda(), subsets=5,
                                    subset_size=100, seed=2)
    assert gpu == pytest.approx(cpu, abs=mmd_tol(real, fake))


def _exact_mmd(x, y, degree=3):
    """MMD^2_u in rational arithmetic on the float64 values (the oracle for large magnitudes)."""
    from fractions import Fraction

    gamma = Fraction(1, x.shape[1])
    xs = [[Fraction(float(v)) for v in row] for row in x]
    ys = [[Fraction(float(v)) for v in row] for row in y]

    def mean_kernel(a, b, skip_diagonal):
        total = sum((gamma * sum(p * q for p, q in zip(a[i], b[j])) + 1) ** degree
                    for i in range(len(a)) for j in range(len(b)) if not (skip_diagonal and i == j))
        return total / (len(a) * (len(b) - skip_diagonal))

    return float(mean_kernel(xs, xs, True) + mean_kernel(ys, ys, True) - 2 * mean_kernel(xs, ys, False))


@pytest.mark.parametrize("offset", [1e4, 1e8])
def test_large_magnitude_features_match_exact_arithmetic(offset):
    """N(0, 1) + c: the kernel ~ c^6 cancels in MMD^2; the plain formula gave 0 (c = 1e8) or NaN (larger).

    The expansion about the mean still sums terms ~ c^5 |u| that cancel in MMD^2: at c = 1e8 the bound is
    6e-5 relative (2e-8 observed); at 1e4, 6e-9 (1e-12 observed).
    """
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(12, 4)) + offset, rng.normal(0.3, 1.2, size=(15, 4)) + offset
    center = np.concatenate([x, y]).mean(axis=0)
    assert abs(polynomial_mmd_unbiased(x, y) - _exact_mmd(x, y)) <= mmd_tol(x, y, center=center)
    assert abs(polynomial_mmd_unbiased(torch.from_numpy(x), y, degree=2) - _exact_mmd(x, y, 2)) <= mmd_tol(
        x, y, degree=2, center=center)
    mean, std = kernel_inception_distance(x, y, subsets=3, subset_size=10)
    assert np.isfinite(mean) and np.isfinite(std) and std > 0


def test_overflowing_kernel_is_a_clear_error():
    x = np.random.default_rng(6).normal(size=(30, 8)) * 1e80
    with pytest.raises(ValueError, match="KID overflows float64.*as large as .*e\\+80.*rescale both feature sets"):
        kernel_inception_distance(x, x + 1.0, subsets=2, subset_size=20)
    with pytest.raises(ValueError, match="degree must be an integer >= 1"):
        polynomial_mmd_unbiased(x, x, degree=1.5)
