"""FID∞ (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score and where to find them").

FID computed from N generated samples is biased upward, and the bias depends on the generator, so two
models compared at the same N can rank wrongly. The bias is, to first order, linear in 1/N:

    FID_N ≈ FID_∞ + b / N

FID∞ evaluates FID_N against fixed reference statistics at `num_points` sample sizes N evenly spaced
from `min_samples` to all the samples (each a random subset without replacement), fits that line by
least squares in 1/N, and returns its intercept. Same units as FID. As in the authors' code the
reference (typically 50,000 images) is taken as exact; use >= 50,000 generated samples and the
defaults (N from 5,000, 15 points) to compare with their numbers. Each FID_N is a Fréchet distance (never
negative); the intercept is an extrapolation and can come out slightly below 0 when the generated
distribution equals the reference's.
"""
from typing import Optional

import numpy as np
import torch

from ..checks import ArrayLike, _as_float64_numpy, _check_features, _check_positive_int
from .frechet import frechet_distance, sqrtm_psd
from ..streaming.moments import GaussianMoments

__all__ = ["fid_infinity"]


def fid_infinity(fake_features: ArrayLike, mu_ref: ArrayLike, sigma_ref: ArrayLike,
                 sqrt_sigma_ref: Optional[ArrayLike] = None, min_samples: int = 5000, num_points: int = 15,
                 seed: int = 0) -> float:
    """Extrapolated FID at infinitely many generated samples (float), see the module docstring.

    fake_features: (N, D) generated-sample features, N > min_samples (numpy or torch, any device).
    mu_ref, sigma_ref: the reference statistics; sqrt_sigma_ref its cached ``sqrtm_psd(sigma_ref)``.
    Subsets come from ``numpy.random.default_rng(seed)``.
    """
    _check_features(fake_features, "fake_features")
    _check_positive_int(min_samples, "min_samples", minimum=2)
    _check_positive_int(num_points, "num_points", minimum=2)
    n = fake_features.shape[0]
    if n <= min_samples:
        raise ValueError(f"fid_infinity needs more than min_samples={min_samples} samples to fit a line, got {n}; "
                         f"pass more samples or a smaller min_samples")
    mu_ref, sigma_ref = _as_float64_numpy(mu_ref), _as_float64_numpy(sigma_ref)
    if sqrt_sigma_ref is None:
        sqrt_sigma_ref = sqrtm_psd(sigma_ref)
    features = torch.as_tensor(fake_features)
    rng = np.random.default_rng(seed)
    sizes = np.linspace(min_samples, n, num_points).astype(np.int64)
    fids = []
    for size in sizes:
        rows = torch.from_numpy(rng.choice(n, size, replace=False)).to(features.device)
        moments = GaussianMoments.from_features(features[rows])
        fids.append(frechet_distance(mu_ref, sigma_ref, moments.mean, moments.cov, sqrt_sigma1=sqrt_sigma_ref))
    _slope, intercept = np.polyfit(1.0 / sizes, np.asarray(fids), deg=1)
    return float(intercept)
