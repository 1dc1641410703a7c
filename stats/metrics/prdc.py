"""Precision, recall, density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics
for Generative Models"; precision/recall after Kynkäänniemi et al. 2019).

With real features X = (x_1..x_N), fake features Y = (y_1..y_M), Euclidean distance d, and
r_k(z) the distance from z to its k-th nearest neighbour within its own set (itself excluded):

    precision = 1/M sum_j 1[ exists i: d(y_j, x_i) < r_k(x_i) ]          fake samples inside the real manifold
    recall    = 1/N sum_i 1[ exists j: d(x_i, y_j) < r_k(y_j) ]          real samples inside the fake manifold
    density   = 1/(k M) sum_j sum_i 1[ d(y_j, x_i) < r_k(x_i) ]          how many real balls hold each fake
    coverage  = 1/N sum_i 1[ min_j d(x_i, y_j) < r_k(x_i) ]              real balls that hold any fake

Strict inequalities, as in the authors' reference code (the paper writes closed balls; the two agree
unless distances tie exactly). precision, recall and coverage lie in [0, 1]; density is unbounded above
(about 1 when Y and X come from the same distribution). Distances are computed in float64, in row blocks
so memory stays O(block * max(N, M)), as |a|^2 + |b|^2 - 2 a.b after subtracting the real features' mean
from both sets: distances do not change under a common translation, and the expansion's rounding error
(about D eps (|a|^2 + |b|^2)) is then relative to the features' spread, not to a large offset they share
(without it, float64 features N(0, 1) + 1e8 keep no correct digit). The result is invariant to a common
offset of the features, up to ties within that rounding.
"""
from typing import Dict

import torch

from ..checks import ArrayLike, _check_features, _check_positive_int, _check_same_dim

__all__ = ["prdc"]


def _squared_distances(a, b, b_sq_norms):
    """Squared Euclidean distances (len(a), len(b)), clamped at 0 against rounding."""
    d2 = (a * a).sum(dim=1, keepdim=True) + b_sq_norms[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)


def _centred_float64(real, fake):
    """float64 copies of both feature sets on the real features' device, minus the real features' mean."""
    x = torch.as_tensor(real).detach().to(torch.float64)
    y = torch.as_tensor(fake).detach().to(device=x.device, dtype=torch.float64)
    center = x.mean(dim=0)
    return x - center, y - center


def _kth_neighbour_sq_radius(x, k, block):
    """Squared distance of each row of x to its k-th nearest other row (self, at distance 0, excluded)."""
    sq_norms = (x * x).sum(dim=1)
    radii = []
    for start in range(0, x.shape[0], block):
        d2 = _squared_distances(x[start:start + block], x, sq_norms)
        rows = torch.arange(d2.shape[0], device=x.device)
        d2[rows, rows + start] = 0.0  # the point itself, exactly
        radii.append(torch.kthvalue(d2, k + 1, dim=1).values)
    return torch.cat(radii)


def prdc(real_features: ArrayLike, fake_features: ArrayLike, k: int = 5, block: int = 1024) -> Dict[str, float]:
    """{"precision", "recall", "density", "coverage"} (floats) of fake vs real feature sets (N, D), (M, D).

    Needs more than `k` samples on each side. numpy arrays or torch tensors; computed in float64 on the
    real features' device, `block` rows at a time (peak memory about 8 * block * max(N, M) bytes).
    """
    _check_features(real_features, "real_features")
    _check_features(fake_features, "fake_features")
    _check_same_dim(real_features, fake_features, "real_features", "fake_features")
    _check_positive_int(k, "k")
    _check_positive_int(block, "block")
    for name, feats in (("real_features", real_features), ("fake_features", fake_features)):
        if feats.shape[0] <= k:
            raise ValueError(f"{name} has {feats.shape[0]} samples; k-nearest-neighbour radii with k={k} need "
                             f"at least {k + 1}: pass more samples or a smaller k")
    x, y = _centred_float64(real_features, fake_features)

    real_radius = _kth_neighbour_sq_radius(x, k, block)
    fake_radius = _kth_neighbour_sq_radius(y, k, block)
    y_sq_norms = (y * y).sum(dim=1)

    fake_in_real = torch.zeros(y.shape[0], dtype=torch.bool, device=x.device)
    real_balls_per_fake = torch.zeros(y.shape[0], dtype=torch.float64, device=x.device)
    real_in_fake = []
    real_covered = []
    for start in range(0, x.shape[0], block):
        d2 = _squared_distances(x[start:start + block], y, y_sq_norms)  # (block, M)
        inside_real_ball = d2 < real_radius[start:start + block, None]
        fake_in_real |= inside_real_ball.any(dim=0)
        real_balls_per_fake += inside_real_ball.sum(dim=0)
        real_in_fake.append((d2 < fake_radius[None, :]).any(dim=1))
        real_covered.append(d2.min(dim=1).values < real_radius[start:start + block])

    return {
        "precision": float(fake_in_real.double().mean()),
        "recall": float(torch.cat(real_in_fake).double().mean()),
        "density": float(real_balls_per_fake.mean() / k),
        "coverage": float(torch.cat(real_covered).double().mean()),
    }
