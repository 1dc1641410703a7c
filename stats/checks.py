"""Validators shared by the statistics functions (feature matrices, probability rows, Gaussian moments).

Each ``_check_*`` raises ``TypeError`` (wrong kind of object) or ``ValueError`` (wrong shape or values)
with a message that names the problem and how to fix it. They accept numpy arrays and torch tensors
(on any device) without copying them to the CPU, except for the finiteness test which reduces on the
device.
"""
import numbers
from typing import Union

import numpy as np
import torch


__all__ = ["ArrayLike"]

#: What the metric functions take: a numpy array or a torch tensor (any device).
ArrayLike = Union[np.ndarray, torch.Tensor]

def _is_array(x):
    return isinstance(x, (np.ndarray, torch.Tensor))


def _check_array(x, name):
    """`x` must be a numpy array or a torch tensor of real numbers."""
    if not _is_array(x):
        raise TypeError(
            f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}; "
            f"convert it with numpy.asarray(...) or torch.as_tensor(...)"
        )
    if isinstance(x, torch.Tensor):
        is_real = not (x.dtype.is_complex or x.dtype == torch.bool)
    else:
        is_real = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    if not is_real:
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}; cast it to float32 or float64")


def _check_finite(x, name):
    finite = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else bool(np.isfinite(x).all())
    if not finite:
        raise ValueError(
            f"{name} contains NaN or Inf values; the features (or the images they came from) are corrupt: "
            f"check the generator output and remove or fix the non-finite rows"
        )


def _check_features(x, name="features", min_samples=2):
    """A feature matrix: 2-D (N, D) with D >= 1, at least `min_samples` rows, all values finite."""
    _check_array(x, name)
    if x.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D matrix (num_samples, feature_dim), got shape {tuple(x.shape)}; "
            f"flatten each sample's features into one row, e.g. x.reshape(len(x), -1)"
        )
    n, dim = x.shape
    if dim == 0:
        raise ValueError(
            f"{name} has feature dimension 0 (shape {tuple(x.shape)}); each row needs at least one feature"
        )
    if n == 0:
        raise ValueError(f"{name} is empty (0 samples); pass at least {min_samples} samples")
    if n < min_samples:
        raise ValueError(
            f"{name} has {n} sample(s), at least {min_samples} are needed (a covariance or a distance "
            f"between sets needs several samples); pass more samples"
        )
    _check_finite(x, name)


def _check_same_dim(a, b, name_a="features1", name_b="features2"):
    """Two feature matrices (or mean vectors) must have the same feature dimension (last axis)."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"{name_a} has feature dimension {a.shape[-1]} but {name_b} has {b.shape[-1]}; both must come "
            f"from the same feature extractor and layer (e.g. Inception pool3, 2048)"
        )


def _check_probabilities(p, name="probs", atol=1e-3):
    """Rows of class probabilities: 2-D (N, C), finite, non-negative, each row summing to 1 (within atol)."""
    _check_features(p, name, min_samples=1)
    p64 = torch.as_tensor(p).double()
    if bool((p64 < 0).any()):
        raise ValueError(
            f"{name} has negative entries (min {float(p64.min()):.3g}); probabilities must be >= 0: "
            f"if these are logits, use inception_score_from_logits"
        )
    sums = p64.sum(dim=1)
    if bool(((sums - 1).abs() > atol).any()):
        raise ValueError(
            f"rows of {name} must sum to 1, got row sums in [{float(sums.min()):.6g}, {float(sums.max()):.6g}]; "
            f"apply softmax first, or if these are logits use inception_score_from_logits"
        )


def _check_positive_int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_mean_cov(mu, sigma, name="mu/sigma"):
    """A Gaussian's mean (D,) and covariance (D, D): finite, matching sizes, symmetric."""
    if mu.ndim != 1:
        raise ValueError(f"{name}: the mean must be a vector (D,), got shape {mu.shape}; pass mu.ravel()")
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: the covariance must be ({mu.shape[0]}, {mu.shape[0]}) to match the mean, got {sigma.shape}; "
            f"pass the covariance of the same features (numpy.cov(features, rowvar=False))"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name} contains NaN or Inf; recompute the statistics from finite features")
    scale = max(float(np.abs(sigma).max()), np.finfo(np.float64).tiny)
    if float(np.abs(sigma - sigma.T).max()) > 1e-6 * scale:
        raise ValueError(f"{name}: the covariance is not symmetric; pass a covariance matrix (sigma == sigma.T)")


def _as_float64_numpy(x):
    """A numpy float64 copy (or view) of an array or tensor, moved to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)
