"""Blocked pairwise squared Euclidean distances, so that no n x m matrix is ever held at once.

Used by :mod:`genmetrics.stats.metrics.copy_detection` (nearest neighbours) and :mod:`genmetrics.stats.metrics.cmmd`
(Gaussian kernel sums). Inputs stay in the caller's dtype; each block is converted to the working dtype
(float64 by default) and centred when it is used, so the peak extra memory is at most
``3 * chunk_size * d + chunk_size ** 2`` working-dtype numbers.

A block is ``|a'|^2 + |b'|^2 - 2 a' b'^T`` with ``a' = a - c`` and ``b' = b - c`` for one common centre c
(by default the mean of b). The distances are the same for any c, but the expansion's rounding error is
about ``d eps (|a'|^2 + |b'|^2)``: without centring, features that share a large offset o (|o| >> their
spread) lose every digit (float64 with |o| ~ 1e8 against a spread ~ 1: errors larger than the distances).
After centring the error is relative to the spread, and a translation of both sets leaves the results
unchanged up to that rounding.
"""
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

__all__ = ["DEFAULT_CHUNK_SIZE", "as_feature_matrix", "blocked_mean", "squared_distance_blocks"]

#: Rows (and columns) per block: a 2048 x 2048 float64 block is 32 MiB.
DEFAULT_CHUNK_SIZE = 2048


def as_feature_matrix(x, what: str) -> torch.Tensor:
    """A 2-D tensor (n, d) from a numpy array or tensor, kept in its dtype (no copy when possible).

    Raises ValueError naming `what` for other shapes, empty sets, or non-finite values.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (n, d) of features, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} holds NaN or infinite values; pass finite features")
    return t


def _check_chunk_size(chunk_size):
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def blocked_mean(x: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE, dtype=torch.float64,
                 device: Optional[str] = None) -> torch.Tensor:
    """The mean row of x (d,), summed in `dtype` on `device` one block of `chunk_size` rows at a time."""
    _check_chunk_size(chunk_size)
    device = x.device if device is None else torch.device(device)
    total = torch.zeros(x.shape[1], dtype=dtype, device=device)
    for i0 in range(0, x.shape[0], chunk_size):
        total += x[i0:i0 + chunk_size].to(device=device, dtype=dtype).sum(dim=0)
    return total / x.shape[0]


def squared_distance_blocks(a: torch.Tensor, b: torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE,
                            dtype=torch.float64, device: Optional[str] = None,
                            center: Optional[torch.Tensor] = None) -> Iterator[Tuple[int, int, torch.Tensor]]:
    """Yield ``(i0, j0, D)`` with ``D[i, j] = ||a[i0 + i] - b[j0 + j]||^2`` for blocks of at most
    ``chunk_size`` rows of `a` and columns of `b`, in `dtype` on `device` (default: `a`'s device).

    ``D = |a'|^2 + |b'|^2 - 2 a' b'^T`` with ``a' = a - center``, ``b' = b - center`` (default center: the
    mean of b, see the module docstring), clamped at 0 (the expansion can round slightly below 0).
    """
    _check_chunk_size(chunk_size)
    device = a.device if device is None else torch.device(device)
    if center is None:
        center = blocked_mean(b, chunk_size, dtype, device)
    center = center.to(device=device, dtype=dtype)
    for i0 in range(0, a.shape[0], chunk_size):
        rows = a[i0:i0 + chunk_size].to(device=device, dtype=dtype) - center
        row_norms = (rows * rows).sum(dim=1, keepdim=True)
        for j0 in range(0, b.shape[0], chunk_size):
            cols = b[j0:j0 + chunk_size].to(device=device, dtype=dtype) - center
            block = row_norms + (cols * cols).sum(dim=1)[None, :]
            block.addmm_(rows, cols.t(), alpha=-2.0)
            yield i0, j0, block.clamp_(min=0.0)
