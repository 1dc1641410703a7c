"""Streaming first and second moments of feature vectors, in float64, mergeable across shards.

The state is the sample count and two sums of the samples x_1..x_n in R^D taken about a fixed shift c:

    n,   s = sum_i (x_i - c)   (D,),   S = sum_i (x_i - c)(x_i - c)^T   (D, D)

from which

    mean = c + s / n
    cov  = (S - s s^T / n) / (n - 1)      (unbiased, like numpy.cov(x, rowvar=False))

The shift c is the mean of the first batch (any point near the data works), so s and S are sums of small,
centred quantities and the subtraction in `cov` loses nothing however large the mean is against the
spread (features N(0, 1) + 1e8 keep ~15 digits, where the plain sum of x x^T keeps none). Every batch is
accumulated in float64 (whatever its dtype) with one GEMM.

Changing the shift to c' is exact in algebra: with d = c - c',

    s' = s + n d,     S' = S + s d^T + d s^T + n d d^T          (``rebase``)

and stable because both shifts lie near the data, so merging shards is: rebase one onto the other's
shift, then add n, s and S; it equals a single pass up to float64 rounding. The unshifted sums of the
statistics file format (sum = s + n c, outer_sum = S' for c' = 0) are available as ``sum`` /
``outer_sum`` and accepted by ``from_state``; they cancel for large means, so a stable state is
saved with its shift (``state_dict()``) or rebuilt from mean and covariance (``from_mean_cov``).
"""
import numpy as np
import torch

from ..messages import warn_once

from ..checks import _as_float64_numpy, _check_features

__all__ = ["GaussianMoments"]


class GaussianMoments:
    """Accumulates n and the shifted sums of feature rows; gives their mean and unbiased covariance.

    >>> m = GaussianMoments()
    >>> for batch in batches:          # torch tensors or numpy arrays (N, D), any float dtype, any device
    ...     m.update(batch)
    >>> mu, sigma = m.mean, m.cov

    Shards computed separately (other processes, other machines) combine exactly with ``a.merge(b)``
    (in place) or ``a + b`` (new object). ``state_dict()`` / ``from_state()`` save and restore the state.

    Reducing across ``torch.distributed`` ranks: the sums are additive only about a common shift, so the
    ranks first agree on one (e.g. broadcast rank 0's ``shift``; an empty rank takes it as is), each calls
    ``rebase(shift)``, then an all-reduce SUM of ``n``, ``shifted_sum`` and ``shifted_outer_sum`` (float64)
    gives the merged state exactly, rebuilt with ``from_state({"n", "shift", "shifted_sum",
    "shifted_outer_sum"})``. Summing the unshifted ``sum`` / ``outer_sum`` instead is exact in algebra but
    cancels catastrophically when the mean is large against the spread.
    """

    def __init__(self, dim=None):
        self._n = 0
        self._shift = self._sum = self._outer_sum = None
        if dim is not None:
            self._allocate(dim)

    def _allocate(self, dim):
        """Zero sums of dimension `dim`; the shift stays unset until the first update, rebase or merge."""
        self._sum = np.zeros(dim, dtype=np.float64)
        self._outer_sum = np.zeros((dim, dim), dtype=np.float64)

    @classmethod
    def from_features(cls, feats):
        """Moments of one feature matrix (N, D)."""
        moments = cls()
        moments.update(feats)
        return moments

    @classmethod
    def from_mean_cov(cls, n, mean, cov):
        """The state of n samples with this mean and unbiased covariance: c = mean, s = 0, S = (n - 1) cov.

        Stable for any mean (an .h5 file's ``n``, ``mu``, ``sigma``); exact up to the rounding of mean and cov.
        """
        mean, cov = _as_float64_numpy(mean), _as_float64_numpy(cov)
        return cls.from_state({"n": n, "shift": mean, "shifted_sum": np.zeros_like(mean),
                               "shifted_outer_sum": (int(n) - 1) * cov if int(n) > 1 else np.zeros_like(cov)})

    @classmethod
    def from_state(cls, state):
        """Rebuild from ``state_dict()`` output or any mapping with n, sum, outer_sum (e.g. an .h5 file's).

        With ``shift``, ``shifted_sum`` and ``shifted_outer_sum`` present those are used (stable); otherwise
        the unshifted ``sum`` / ``outer_sum`` (shift 0, as stored by format v1).
        """
        n = state["n"]
        if float(n) != int(n) or int(n) < 0:
            raise ValueError(f"state n must be a non-negative whole number of samples, got {n!r}")
        if "shift" in state:
            shift = _as_float64_numpy(state["shift"])
            total, outer_sum = (_as_float64_numpy(state[k]) for k in ("shifted_sum", "shifted_outer_sum"))
        else:
            total, outer_sum = (_as_float64_numpy(state[k]) for k in ("sum", "outer_sum"))
            shift = np.zeros(total.shape[:1])
        dim = total.shape[0] if total.ndim == 1 else -1
        if total.ndim != 1 or outer_sum.shape != (dim, dim) or shift.shape != (dim,):
            raise ValueError(
                f"state shapes do not match: sum {total.shape} needs outer_sum ({dim}, {dim}) and shift ({dim},), "
                f"got {outer_sum.shape} and {shift.shape}; the state is corrupt or from different features"
            )
        moments = cls(dim=dim)
        moments._n = int(n)
        moments._shift = shift.copy()
        moments._sum[:], moments._outer_sum[:] = total, outer_sum
        return moments

    def state_dict(self):
        """Copies of the state: n, the unshifted sum / outer_sum, and shift, shifted_sum, shifted_outer_sum."""
        self._check_not_empty()
        return {"n": self._n, "sum": self.sum, "outer_sum": self.outer_sum, "shift": self._shift.copy(),
                "shifted_sum": self._sum.copy(), "shifted_outer_sum": self._outer_sum.copy()}

    @property
    def n(self):
        """Number of samples accumulated."""
        return self._n

    @property
    def dim(self):
        """Feature dimension D (None before the first update)."""
        return None if self._sum is None else self._sum.shape[0]

    @property
    def shift(self):
        """float64 (D,) shift c the sums are taken about (the first batch's mean unless rebased)."""
        if self._shift is None:
            raise ValueError("no shift yet; call update(features) or rebase(shift) first")
        return self._shift

    @property
    def shifted_sum(self):
        """float64 (D,) s = sum_i (x_i - shift)."""
        self._check_allocated()
        return self._sum

    @property
    def shifted_outer_sum(self):
        """float64 (D, D) S = sum_i (x_i - shift)(x_i - shift)^T."""
        self._check_allocated()
        return self._outer_sum

    @property
    def sum(self):
        """float64 (D,) sum of the samples, s + n c (a new array)."""
        self._check_not_empty()
        return self._sum + self._n * self._shift

    @property
    def outer_sum(self):
        """float64 (D, D) sum of the samples' outer products (a new array; loses digits for large means)."""
        self._check_not_empty()
        return self._rebased(np.zeros_like(self._shift))[1]

    def update(self, feats):
        """Add a batch of feature rows (N, D), N >= 1; returns self. One float64 GEMM on the batch's device."""
        _check_features(feats, "features", min_samples=1)
        self._check_dim(feats.shape[1], "features")
        if isinstance(feats, torch.Tensor):
            x = feats.detach().to(torch.float64)
            if self._shift is None:
                self._start(x.mean(dim=0).cpu().numpy())
            x = x - torch.from_numpy(self._shift).to(x.device)
            batch_sum = x.sum(dim=0).cpu().numpy()
            batch_outer = (x.T @ x).cpu().numpy()
        else:
            x = np.asarray(feats, dtype=np.float64)
            if self._shift is None:
                self._start(x.mean(axis=0))
            x = x - self._shift
            batch_sum = x.sum(axis=0)
            batch_outer = x.T @ x
        self._n += int(x.shape[0])
        self._sum += batch_sum
        self._outer_sum += batch_outer
        return self

    def _start(self, shift):
        """Take `shift` (the first batch's mean, or the first merged state's shift) for an empty state."""
        if self._sum is None:
            self._allocate(shift.shape[0])
        self._shift = np.array(shift, dtype=np.float64)

    def rebase(self, shift):
        """Take the sums about another shift c' (in place; exact in algebra, see the module docstring).

        On an empty accumulator this just sets the shift (and the dimension). Returns self.
        """
        shift = _as_float64_numpy(shift)
        if shift.ndim != 1:
            raise ValueError(f"shift must be a vector (D,), got shape {shift.shape}")
        self._check_dim(shift.shape[0], "the shift")
        if self._shift is not None:
            self._sum, self._outer_sum = self._rebased(shift)
        self._start(shift)
        return self

    def _rebased(self, shift):
        """(s', S') about `shift`: s' = s + n d, S' = S + s d^T + d s^T + n d d^T with d = c - c'."""
        d = self._shift - shift
        s_d = np.outer(self._sum, d)
        outer = self._outer_sum + s_d + s_d.T + self._n * np.outer(d, d)
        return self._sum + self._n * d, outer

    def merge(self, other):
        """Add another accumulator's samples to this one (in place, other's sums rebased); returns self."""
        if not isinstance(other, GaussianMoments):
            raise TypeError(f"can only merge another GaussianMoments, got {type(other).__name__}")
        self._check_dim(other.dim, "the merged moments")
        if other._n == 0:
            return self
        if self._shift is None:
            self._start(other._shift)
        other_sum, other_outer_sum = other._rebased(self._shift)
        self._n += other._n
        self._sum += other_sum
        self._outer_sum += other_outer_sum
        return self

    def __add__(self, other):
        if not isinstance(other, GaussianMoments):
            return NotImplemented
        return GaussianMoments().merge(self).merge(other)

    @property
    def mean(self):
        """float64 (D,) sample mean, c + s / n."""
        self._check_not_empty()
        return self._shift + self._sum / self._n

    @property
    def cov(self):
        """float64 (D, D) unbiased sample covariance (S - s s^T / n) / (n - 1); symmetric by construction.

        Warns (:class:`~genmetrics.stats.messages.GenMetricsWarning`) when n <= D: the covariance then has
        rank at most n - 1 < D and the Fréchet distance computed from it is biased upward. The warning is
        shown once per process for each (n, D), not at every scoring call of a training loop.
        """
        self._check_not_empty()
        if self._n < 2:
            raise ValueError("the covariance needs at least 2 samples, got 1; add more samples")
        if self._n <= self.dim:
            warn_once(
                ("rank-deficient covariance", self._n, self.dim),
                f"covariance of D={self.dim} features estimated from only n={self._n} samples has rank at most "
                f"n-1={self._n - 1} < D: FID computed from it is biased (upward, strongly at small n). Use more than "
                f"{self.dim} samples, and 10,000-50,000 for numbers comparable with published FIDs.",
            )
        cov = (self._outer_sum - np.outer(self._sum, self._sum) / self._n) / (self._n - 1)
        return (cov + cov.T) / 2

    def _check_dim(self, dim, what):
        if self._sum is not None and dim is not None and dim != self.dim:
            raise ValueError(
                f"{what} have feature dimension {dim} but the accumulated moments have {self.dim}; "
                f"accumulate features of one extractor layer only"
            )

    def _check_allocated(self):
        if self._sum is None:
            raise ValueError("no feature dimension yet; call update(features) or rebase(shift) first")

    def _check_not_empty(self):
        if self._n == 0:
            raise ValueError("no samples accumulated yet; call update(features) first")

    def __repr__(self):
        return f"GaussianMoments(n={self._n}, dim={self.dim})"
