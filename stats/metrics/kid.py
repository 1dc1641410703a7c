"""Kernel Inception Distance (Bińkowski et al. 2018): unbiased MMD^2 with a polynomial kernel.

    k(x, y) = (gamma * x.y + coef0) ^ degree,   defaults gamma = 1/D, coef0 = 1, degree = 3

For samples X = (x_1..x_m) and Y = (y_1..y_n) the unbiased estimator of MMD^2 is

    MMD^2_u = sum_{i!=j} k(x_i, x_j) / (m (m-1)) + sum_{i!=j} k(y_i, y_j) / (n (n-1))
              - 2 sum_{i,j} k(x_i, y_j) / (m n)

KID is its mean over `subsets` random subsets of `subset_size` samples drawn without replacement from
each side; the reported std is the population standard deviation (ddof=0) over the subsets, as in
torch-fidelity, torchmetrics and the original code. KID is unbiased (its expectation does not depend
on the sample size), so it may be slightly negative when the two distributions are equal. Units: kernel
units (for Inception pool3 with the defaults, values of 1e-3 .. 1e-1; papers often report KID x 1000).

Everything is computed in float64, and about a centre m (the mean of both feature sets): with u = x - m,
v = y - m, b = gamma m.m + coef0 and t = gamma (u.v + m.u + m.v) (so gamma x.y + coef0 = b + t),

    k(x, y) - b^degree = sum_{j=1..degree} C(degree, j) b^(degree-j) t^j       (Horner in t)

The constant b^degree drops out of MMD^2_u exactly (its three averages have weights 1 + 1 - 2 = 0), so
the kernel is never formed at full size: features with a large common offset (N(0, 1) + 1e8, where
k ~ 1e48 and the plain formula returns noise, 0 or NaN) keep their digits. Values that overflow float64
raise a ``ValueError`` (KID is not scale invariant, so they cannot be rescaled silently).
"""
import math
import warnings
from typing import Optional, Tuple

import numpy as np
import torch

from ..checks import ArrayLike, _check_features, _check_positive_int, _check_same_dim
from ..messages import GenMetricsWarning

__all__ = ["kernel_inception_distance", "polynomial_mmd_unbiased", "polynomial_kernel"]


def polynomial_kernel(x, y, degree=3, gamma=None, coef0=1.0):
    """Kernel matrix (gamma * x @ y.T + coef0) ** degree of two torch matrices; gamma=None means 1/D."""
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (x @ y.T * gamma + coef0) ** degree


def polynomial_mmd_unbiased(features1: ArrayLike, features2: ArrayLike, degree: int = 3, gamma: Optional[float] = None,
                            coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between two feature sets (m, D) and (n, D) with the polynomial kernel (float)."""
    _check_features(features1, "features1")
    _check_features(features2, "features2")
    _check_same_dim(features1, features2)
    _check_positive_int(degree, "degree")
    x = torch.as_tensor(features1).to(torch.float64)
    y = torch.as_tensor(features2).to(device=x.device, dtype=torch.float64)
    return _mmd_unbiased(x, y, degree, gamma, coef0, _center(x, y))


def _mmd_unbiased(x, y, degree, gamma, coef0, center):
    """MMD^2_u of float64 x (m, D), y (n, D) with the polynomial kernel, evaluated about `center` (D,)."""
    m, n = x.shape[0], y.shape[0]
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    u, v = x - center, y - center
    base = gamma * float(center @ center) + coef0
    try:
        coefficients = [math.comb(degree, j) * base ** (degree - j) for j in range(1, degree + 1)]
    except OverflowError:
        raise _overflow_error(x, y, degree) from None
    a_x, a_y = gamma * (u @ center), gamma * (v @ center)

    def shifted_kernel(p, a_p, q, a_q):
        t = gamma * (p @ q.T) + a_p[:, None] + a_q[None, :]
        value = torch.full_like(t, coefficients[-1])
        for coefficient in reversed(coefficients[:-1]):
            value = value * t + coefficient
        return value * t

    k_xx, k_yy, k_xy = shifted_kernel(u, a_x, u, a_x), shifted_kernel(v, a_y, v, a_y), shifted_kernel(u, a_x, v, a_y)
    within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
    within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
    value = float(within_x + within_y - 2.0 * k_xy.sum() / (m * n))
    if not math.isfinite(value):
        raise _overflow_error(x, y, degree)
    return value


def _overflow_error(x, y, degree):
    magnitude = max(float(x.abs().max()), float(y.abs().max()))
    return ValueError(f"KID overflows float64: the degree-{degree} polynomial kernel of features as large as "
                      f"{magnitude:.3g} exceeds 1.8e308; KID is not scale invariant, so rescale both feature sets "
                      f"by the same factor and report it (or check that these are Inception activations)")


def _center(x, y, rows=4096):
    """Mean of the rows of x and y together (float64, summed in blocks of `rows`), the kernel's expansion point."""
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for block in (*torch.split(x, rows), *torch.split(y.to(x.device), rows)):
        total += block.to(torch.float64).sum(dim=0)
    return total / (x.shape[0] + y.shape[0])


def kernel_inception_distance(
    features1: ArrayLike, features2: ArrayLike, subsets: int = 100, subset_size: int = 1000, degree: int = 3,
    gamma: Optional[float] = None, coef0: float = 1.0, seed: int = 0,
) -> Tuple[float, float]:
    """KID between two feature sets (N1, D) and (N2, D): (mean, std) of MMD^2_u over random subsets.

    Each subset draws `subset_size` rows without replacement from each side with
    ``numpy.random.default_rng(seed)`` (first from features1, then from features2), so results are
    reproducible. If either side has fewer rows than `subset_size`, the subset size is clipped to the
    smaller side (with a warning): KID stays unbiased but its variance grows. When every subset is the whole
    of both sets (``subset_size >= N1 == N2``) they cannot differ: MMD^2_u is computed once, std = 0.
    Accepts numpy arrays or torch tensors (any device; the computation runs there in float64).
    """
    _check_features(features1, "features1")
    _check_features(features2, "features2")
    _check_same_dim(features1, features2)
    _check_positive_int(subsets, "subsets")
    _check_positive_int(subset_size, "subset_size", minimum=2)
    _check_positive_int(degree, "degree")
    n1, n2 = features1.shape[0], features2.shape[0]
    if subset_size > min(n1, n2):
        warnings.warn(
            f"KID subset_size={subset_size} is larger than the number of samples ({n1} and {n2}); using "
            f"subsets of {min(n1, n2)} instead. KID stays unbiased but is noisier: use more samples.",
            GenMetricsWarning,
            stacklevel=2,
        )
        subset_size = min(n1, n2)
    x_all = torch.as_tensor(features1)
    y_all = torch.as_tensor(features2).to(x_all.device)
    center = _center(x_all, y_all)
    if subset_size == n1 == n2:  # every subset a permutation of the whole sets: one value, no spread
        return float(_mmd_unbiased(x_all.to(torch.float64), y_all.to(torch.float64), degree, gamma, coef0, center)), 0.0
    rng = np.random.default_rng(seed)
    values = np.empty(subsets, dtype=np.float64)
    for i in range(subsets):
        x_idx = torch.from_numpy(rng.choice(n1, subset_size, replace=False)).to(x_all.device)
        y_idx = torch.from_numpy(rng.choice(n2, subset_size, replace=False)).to(x_all.device)
        x = x_all[x_idx].to(torch.float64)
        y = y_all[y_idx].to(torch.float64)
        values[i] = _mmd_unbiased(x, y, degree, gamma, coef0, center)
    return _mean_std(values)


def _mean_std(values):
    """Mean and population std (ddof=0), computed on values / max|values| so that neither overflows."""
    scale = float(np.abs(values).max()) or 1.0
    return float((values / scale).mean() * scale), float((values / scale).std() * scale)
