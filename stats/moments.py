"""Streaming first and second moments of feature vectors, in float64, mergeable across shards.

The state is three sufficient statistics of the samples x_1..x_n in R^D:

    n,   sum = sum_i x_i   (D,),   outer_sum = sum_i x_i x_i^T   (D, D)

from which

    mean = sum / n
    cov  = (outer_sum - n * mean mean^T) / (n - 1)      (unbiased, like numpy.cov(x, rowvar=False))

Every batch is accumulated in float64 (whatever its dtype), so merging shards is plain addition and equals
a single pass up to float64 rounding (~1e-16 relative on the sums). The subtraction in `cov` loses about
log10(mean^2 / variance) digits; for Inception pool3 features (non-negative, mean and standard deviation
of the same order) that leaves ~15 significant digits.
"""
import warnings

import numpy as np
import torch

from .checks import _as_float64_numpy, _check_features

__all__ = ["GaussianMoments"]


class GaussianMoments:
    """Accumulates n, sum and outer_sum of feature rows; gives their mean and unbiased covariance.

    >>> m = GaussianMoments()
    >>> for batch in batches:          # torch tensors or numpy arrays (N, D), any float dtype, any device
    ...     m.update(batch)
    >>> mu, sigma = m.mean, m.cov

    Shards computed separately (other processes, other machines) combine exactly with ``a.merge(b)``
    (in place) or ``a + b`` (new object). ``state_dict()`` / ``from_state()`` save and restore the state.
    """

    def __init__(self, dim=None):
        self._n = 0
        self._sum = self._outer_sum = None
        if dim is not None:
            self._allocate(dim)

    def _allocate(self, dim):
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer_sum = np.zeros((dim, dim), dtype=np.float64)

    @classmethod
    def from_features(cls, feats):
        """Moments of one feature matrix (N, D)."""
        moments = cls()
        moments.update(feats)
        return moments

    @classmethod
    def from_state(cls, state):
        """Rebuild from ``state_dict()`` output (or any mapping with n, sum, outer_sum, e.g. an .h5 file's)."""
        n = state["n"]
        total = _as_float64_numpy(state["sum"])
        outer_sum = _as_float64_numpy(state["outer_sum"])
        if float(n) != int(n) or int(n) < 0:
            raise ValueError(f"state n must be a non-negative whole number of samples, got {n!r}")
        if total.ndim != 1 or outer_sum.shape != (total.shape[0], total.shape[0]):
            raise ValueError(
                f"state shapes do not match: sum {total.shape} needs outer_sum ({total.shape[0]}, {total.shape[0]}), "
                f"got {outer_sum.shape}; the state is corrupt or from different features"
            )
        moments = cls(dim=total.shape[0])
        moments._n = int(n)
        moments._sum[:] = total
        moments._outer_sum[:] = outer_sum
        return moments

    def state_dict(self):
        """{"n": int, "sum": float64 (D,), "outer_sum": float64 (D, D)} (copies)."""
        self._check_not_empty()
        return {"n": self._n, "sum": self._sum.copy(), "outer_sum": self._outer_sum.copy()}

    @property
    def n(self):
        """Number of samples accumulated."""
        return self._n

    @property
    def dim(self):
        """Feature dimension D (None before the first update)."""
        return None if self._sum is None else self._sum.shape[0]

    @property
    def sum(self):
        """float64 (D,) sum of the samples."""
        self._check_not_empty()
        return self._sum

    @property
    def outer_sum(self):
        """float64 (D, D) sum of the samples' outer products."""
        self._check_not_empty()
        return self._outer_sum

    def update(self, feats):
        """Add a batch of feature rows (N, D), N >= 1; returns self."""
        _check_features(feats, "features", min_samples=1)
        self._check_dim(feats.shape[1], "features")
        if isinstance(feats, torch.Tensor):
            x = feats.detach().to(torch.float64)
            batch_sum = x.sum(dim=0).cpu().numpy()
            batch_outer = (x.T @ x).cpu().numpy()
        else:
            x = np.asarray(feats, dtype=np.float64)
            batch_sum = x.sum(axis=0)
            batch_outer = x.T @ x
        if self._sum is None:
            self._allocate(x.shape[1])
        self._n += int(x.shape[0])
        self._sum += batch_sum
        self._outer_sum += batch_outer
        return self

    def merge(self, other):
        """Add another accumulator's samples to this one (in place); returns self."""
        if not isinstance(other, GaussianMoments):
            raise TypeError(f"can only merge another GaussianMoments, got {type(other).__name__}")
        if other._sum is None:
            return self
        self._check_dim(other.dim, "the merged moments")
        if self._sum is None:
            self._allocate(other.dim)
        self._n += other._n
        self._sum += other._sum
        self._outer_sum += other._outer_sum
        return self

    def __add__(self, other):
        if not isinstance(other, GaussianMoments):
            return NotImplemented
        return GaussianMoments().merge(self).merge(other)

    @property
    def mean(self):
        """float64 (D,) sample mean."""
        self._check_not_empty()
        return self._sum / self._n

    @property
    def cov(self):
        """float64 (D, D) unbiased sample covariance (divides by n - 1); symmetric by construction.

        Warns (UserWarning) when n <= D: the covariance then has rank at most n - 1 < D and the Fréchet
        distance computed from it is biased upward.
        """
        self._check_not_empty()
        if self._n < 2:
            raise ValueError("the covariance needs at least 2 samples, got 1; add more samples")
        if self._n <= self.dim:
            warnings.warn(
                f"covariance of D={self.dim} features estimated from only n={self._n} samples has rank at most "
                f"n-1={self._n - 1} < D: FID computed from it is biased (upward, strongly at small n). Use more than "
                f"{self.dim} samples, and 10,000-50,000 for numbers comparable with published FIDs.",
                UserWarning,
                stacklevel=2,
            )
        cov = (self._outer_sum - np.outer(self._sum, self._sum) / self._n) / (self._n - 1)
        return (cov + cov.T) / 2

    def _check_dim(self, dim, what):
        if self._sum is not None and dim != self.dim:
            raise ValueError(
                f"{what} have feature dimension {dim} but the accumulated moments have {self.dim}; "
                f"accumulate features of one extractor layer only"
            )

    def _check_not_empty(self):
        if self._n == 0:
            raise ValueError("no samples accumulated yet; call update(features) first")

    def __repr__(self):
        return f"GaussianMoments(n={self._n}, dim={self.dim})"
