"""CMMD (Jayasumana et al., CVPR 2024, "Rethinking FID"): MMD with a Gaussian RBF kernel on CLIP embeddings.

With ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))``, x (n, d) and y (m, d):

    CMMD = scale * ( mean_{i,i'} k(x_i, x_i') + mean_{j,j'} k(y_j, y_j') - 2 mean_{i,j} k(x_i, y_j) )

Default (``unbiased=False``): the means run over the full kernel matrices, diagonals included, as the
authors' reference code (google-research ``cmmd/distance.py``) does, so numbers match published ones.
``unbiased=True``: the within-set means exclude the diagonal (sums over ``i != i'`` divided by
``n (n - 1)``), the unbiased estimate of the squared MMD; it can be slightly negative.

The paper uses sigma = 10 and scale = 1000 on L2-normalised CLIP ViT-L/14@336px image embeddings (the
``clip_l2`` layer of :mod:`genmetrics.stats.networks.clip`); this function takes the embeddings as given unless
``normalize=True``, which divides each row by its L2 norm (in float64) first. Computed in float64 in blocks
(:mod:`genmetrics.stats.metrics.pairwise`), memory ``O(chunk_size^2)`` beyond the inputs; each kernel sum takes its
distances about the mean of its second set, so embeddings that share a large offset keep their precision
(the value is invariant to a common offset of x and y up to float64 rounding of the spread).
"""
from typing import Optional

import torch

from .pairwise import DEFAULT_CHUNK_SIZE, as_feature_matrix, squared_distance_blocks

__all__ = ["cmmd", "gaussian_kernel_sum"]


def gaussian_kernel_sum(a, b, sigma: float, exclude_diagonal: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                        device: Optional[str] = None) -> float:
    """``sum_{i,j} exp(-||a_i - b_j||^2 / (2 sigma^2))`` in float64; `exclude_diagonal` drops ``i == j``
    (for ``a is b``)."""
    gamma = 1.0 / (2.0 * float(sigma) ** 2)
    total = 0.0
    for i0, j0, block in squared_distance_blocks(a, b, chunk_size, device=device):
        kernel = block.mul_(-gamma).exp_()
        total += float(kernel.sum())
        if exclude_diagonal:
            total -= float(_overlap_diagonal(kernel, i0, j0).sum())
    return total


def _overlap_diagonal(block, i0, j0):
    """The entries of `block` (rows from i0, columns from j0) where row index == column index."""
    start, stop = max(i0, j0), min(i0 + block.shape[0], j0 + block.shape[1])
    if start >= stop:
        return block.new_zeros(0)
    idx = torch.arange(start, stop, device=block.device)
    return block[idx - i0, idx - j0]


def _check_positive(value, name, default):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive number (default {default}), got {value!r}")


def cmmd(x, y, sigma: float = 10.0, scale: float = 1000.0, unbiased: bool = False,
         chunk_size: int = DEFAULT_CHUNK_SIZE, device: Optional[str] = None, normalize: bool = False) -> float:
    """CMMD between embedding sets x (n, d) and y (m, d) (see the module docstring for the formula).

    Args:
        x: (n, d) embeddings (numpy or torch); the paper's are L2-normalised CLIP embeddings.
        y: (m, d) embeddings of the other set, same width.
        sigma: Gaussian kernel bandwidth (paper: 10).
        scale: multiplier of the squared MMD (paper: 1000).
        unbiased: exclude the kernel diagonals from the within-set means (needs n, m >= 2).
        chunk_size: rows per block of the blocked kernel sums (memory ~ chunk_size^2 float64).
        device: where the blocks are computed (default: x's device).
        normalize: L2-normalise each row (float64) first, for raw CLIP embeddings (the ``clip`` layer or
            CLIP statistics files).

    Example:
        >>> cmmd(clip_l2_real, clip_l2_generated)  # doctest: +SKIP
        0.73
    """
    _check_positive(sigma, "sigma", 10.0)
    _check_positive(scale, "scale", 1000.0)
    x, y = as_feature_matrix(x, "x"), as_feature_matrix(y, "y")
    if normalize:
        x, y = (t.to(torch.float64) / t.to(torch.float64).norm(dim=1, keepdim=True) for t in (x, y))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features per row but y has {y.shape[1]}; use the same embedding")
    n, m = x.shape[0], y.shape[0]
    if unbiased and min(n, m) < 2:
        raise ValueError(f"the unbiased CMMD needs at least 2 embeddings per set, got {n} and {m}")
    pairs_x, pairs_y = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    k_xx = gaussian_kernel_sum(x, x, sigma, unbiased, chunk_size, device) / pairs_x
    k_yy = gaussian_kernel_sum(y, y, sigma, unbiased, chunk_size, device) / pairs_y
    k_xy = gaussian_kernel_sum(x, y, sigma, False, chunk_size, device) / (n * m)
    return float(scale * (k_xx + k_yy - 2.0 * k_xy))
