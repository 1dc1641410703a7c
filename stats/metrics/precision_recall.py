"""Improved precision and recall (Kynkäänniemi et al. 2019) by the rule of OpenAI's ADM evaluator
(guided-diffusion ``evaluations/evaluator.py``), the precision/recall that ImageNet papers print.

With real features X = (x_1..x_N), fake features Y = (y_1..y_M), the SQUARED Euclidean distance
d²(a, b) = |a - b|², and r_k(z) the squared distance from z to its k-th nearest OTHER point of its own set
(the point itself excluded; a duplicate counts, at distance 0):

    precision = 1/M sum_j 1[ exists i: d²(y_j, x_i) <= r_k(x_i) ]      fakes inside or on some real ball
    recall    = 1/N sum_i 1[ exists j: d²(x_i, y_j) <= r_k(y_j) ]      reals inside or on some fake ball

Closed balls (``<=``), k = 3 by default (:data:`~genmetrics.stats.defaults.ADM_PR_K`). Both lie in [0, 1].
Unlike :mod:`.prdc` (Naeem et al., k = 5, strict ``<``), a point exactly on a radius counts. Precision needs
only the real radii and recall only the fake ones: :func:`fraction_in_balls` computes one of the two.

Memory stays bounded: no N x M or N x N matrix is held. The k-th neighbour radii are found block by block
(:func:`~genmetrics.stats.metrics.pairwise.squared_distance_blocks`, float64, centred on the ball set's
mean) with a running k-smallest per point, each block of the symmetric N x N distances computed once and
used for its rows and its columns; membership is tested block by block for the queries not yet found,
which leave the search as soon as one ball holds them. Peak extra memory: a few float64 blocks of
``chunk_size²`` (32 MiB each at 2048) and ``chunk_size * D``, plus (N, k) radii candidates.

Exactness (the ADM evaluator computes distances in float16 with a float32 fallback; we decide as exact
arithmetic on the given features does, up to the rounding of one direct float64 sum):

- a block distance ``|a'|² + |b'|² - 2 a'·b'`` (a' = a - c, b' = b - c) is within
  ``(2 (D + 2) + 5) u S`` of the exact squared distance, S = |a'|² + |b'|², u = eps / 2 (Higham: dot
  products of D terms, the rounding of the centring);
- each radius is then recomputed DIRECTLY, ``sum((a - b)²)`` in float64 over the k nearest neighbours the
  blocks found (exact 0 for duplicates; relative error at most gamma_(D+3));
- a membership decision is taken from the block only when ``|d² - r|`` exceeds
  :func:`_tie_tolerance` = ``2 (D + 8) eps (S + r)`` (more than twice both bounds together), otherwise the
  pair's distance is recomputed directly and compared with the radius. Points ON a radius (equal direct
  sums, e.g. features with few significant bits) and duplicate features are therefore decided as exact
  arithmetic decides them. The only decisions that can differ from exact arithmetic are those where the
  distance and the radius differ by less than about gamma_(D+3) (d² + r) (~5e-13 relative for pool3), or
  where two distinct neighbour distances of one point differ by less than the block bound (the radius is
  then off by at most that bound).
"""
from typing import Dict

import torch

from ..checks import ArrayLike, _check_features, _check_positive_int, _check_same_dim
from ..defaults import ADM_PR_K
from .pairwise import DEFAULT_CHUNK_SIZE, as_feature_matrix, blocked_mean, squared_distance_blocks

__all__ = ["precision_recall", "fraction_in_balls"]

_F64 = torch.float64


def precision_recall(real_features: ArrayLike, fake_features: ArrayLike, k: int = ADM_PR_K,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> Dict[str, float]:
    """{"precision", "recall"} (floats in [0, 1]) of fake vs real features by the ADM rule (module docstring).

    Args:
        real_features: (N, D) numpy array or tensor, N > k (e.g. Inception pool3, D = 2048).
        fake_features: (M, D), M > k.
        k: the neighbour whose squared distance is each point's radius (3 in the ADM evaluator).
        chunk_size: rows (and columns) per distance block; memory grows with its square.

    Computed on the real features' device in float64, a block at a time (the fake features are moved there).

    Raises:
        TypeError / ValueError: not feature matrices, different D, non-finite values, N or M <= k.

    Example:
        >>> import numpy as np
        >>> real = np.random.default_rng(0).normal(size=(100, 8))
        >>> precision_recall(real, real.copy())
        {'precision': 1.0, 'recall': 1.0}
    """
    _check_inputs(real_features, fake_features, k, "real_features", "fake_features", queries_need_k=True)
    real = as_feature_matrix(real_features, "real_features")
    fake = as_feature_matrix(fake_features, "fake_features").to(real.device)
    return {"precision": _fraction_in_balls(real, fake, k, chunk_size),
            "recall": _fraction_in_balls(fake, real, k, chunk_size)}


def fraction_in_balls(ball_features: ArrayLike, query_features: ArrayLike, k: int = ADM_PR_K,
                      chunk_size: int = DEFAULT_CHUNK_SIZE) -> float:
    """The share of `query_features` (M, D) lying inside or on some ball of `ball_features` (N, D), N > k:
    ball i has centre b_i and squared radius r_k(b_i) (module docstring). Precision is
    ``fraction_in_balls(real, fake)``, recall ``fraction_in_balls(fake, real)``.

    Raises:
        TypeError / ValueError: not feature matrices, different D, non-finite values, N <= k.
    """
    _check_inputs(ball_features, query_features, k, "ball_features", "query_features", queries_need_k=False)
    balls = as_feature_matrix(ball_features, "ball_features")
    queries = as_feature_matrix(query_features, "query_features").to(balls.device)
    return _fraction_in_balls(balls, queries, k, chunk_size)


def _check_inputs(balls, queries, k, ball_name, query_name, queries_need_k):
    """Feature matrices of one dimension, k a positive integer smaller than each ball set's size."""
    _check_features(balls, ball_name, min_samples=1)
    _check_features(queries, query_name, min_samples=1)
    _check_same_dim(balls, queries, ball_name, query_name)
    _check_positive_int(k, "k")
    for name, feats in ((ball_name, balls), (query_name, queries))[:2 if queries_need_k else 1]:
        if feats.shape[0] <= k:
            raise ValueError(f"{name} has {feats.shape[0]} samples, and a radius (the distance to the k-th nearest "
                             f"other point of the same set) needs at least k + 1 = {k + 1}: pass more samples or a "
                             f"smaller k")


def _fraction_in_balls(balls, queries, k, chunk_size):
    """:func:`fraction_in_balls` on validated tensors of one device."""
    center = blocked_mean(balls, chunk_size)
    radii = _kth_neighbour_radii(balls, k, center, chunk_size)
    return float(_inside_some_ball(balls, radii, queries, center, chunk_size).double().mean())


def _tie_tolerance(dim, ball_sq, query_sq, radii):
    """Bound (float64) beyond which a block's ``d² - r`` has the sign of the exact one (module docstring):
    ``2 (D + 8) eps (|a'|² + |b'|² + r)`` for balls (rows) against queries (columns)."""
    factor = 2.0 * (dim + 8) * torch.finfo(_F64).eps
    return factor * (ball_sq[:, None] + query_sq[None, :] + radii[:, None])


def _direct_sq_distances(a, b):
    """|a_i - b_i|² of paired rows (..., D), summed directly in float64 (exact 0 for equal rows)."""
    diff = a.to(_F64) - b.to(_F64)
    return (diff * diff).sum(dim=-1)


def _keep_smallest(best, best_ids, rows, d2, ids, dim=1):
    """Merge the k smallest of block `d2` along `dim` (their ids from `ids`) into the running k smallest of `rows`
    (dim 1: d2's rows are `rows`; dim 0: its columns are), in place."""
    block_best, where = d2.topk(min(best.shape[1], d2.shape[dim]), dim=dim, largest=False)
    if dim == 0:
        block_best, where = block_best.t(), where.t()
    values = torch.cat([best[rows], block_best], dim=1)
    candidates = torch.cat([best_ids[rows], ids[where]], dim=1)
    smallest, chosen = values.topk(best.shape[1], dim=1, largest=False)
    best[rows] = smallest
    best_ids[rows] = candidates.gather(1, chosen)


def _kth_neighbour_radii(x, k, center, chunk_size):
    """r_k of every row of x (float64 (N,)): the squared distance to its k-th nearest other row.

    The blocks give the k nearest candidates (each block of the symmetric matrix computed once, for its rows
    and its columns; the point itself at +inf); the radius is their largest DIRECT squared distance."""
    n, device = x.shape[0], x.device
    best = torch.full((n, k), float("inf"), dtype=_F64, device=device)
    best_ids = torch.zeros((n, k), dtype=torch.long, device=device)
    for i0 in range(0, n, chunk_size):
        rows = slice(i0, min(i0 + chunk_size, n))
        row_ids = torch.arange(rows.start, rows.stop, device=device)
        for _, j, d2 in squared_distance_blocks(x[rows], x[i0:], chunk_size, _F64, device, center):
            cols = slice(i0 + j, i0 + j + d2.shape[1])
            if j == 0:
                d2.fill_diagonal_(float("inf"))  # the point itself (the diagonal block is square)
            else:
                _keep_smallest(best, best_ids, cols, d2, row_ids, dim=0)
            _keep_smallest(best, best_ids, rows, d2, torch.arange(cols.start, cols.stop, device=device))
    radii = torch.empty(n, dtype=_F64, device=device)
    step = max(1, chunk_size // k)
    for i0 in range(0, n, step):
        rows = slice(i0, min(i0 + step, n))
        radii[rows] = _direct_sq_distances(x[rows, None, :], x[best_ids[rows]]).max(dim=1).values
    return radii


def _centred_sq_norms(x, center, chunk_size):
    """|x_i - c|² (float64 (N,)), a block of rows at a time."""
    out = torch.empty(x.shape[0], dtype=_F64, device=x.device)
    for i0 in range(0, x.shape[0], chunk_size):
        rows = x[i0:i0 + chunk_size].to(_F64) - center
        out[i0:i0 + chunk_size] = (rows * rows).sum(dim=1)
    return out


def _found_in_block(balls, radii, ball_sq, queries, query_sq, center):
    """Bool (len(queries),): whether each query lies inside or on one of these balls (at most one block each)."""
    size = max(balls.shape[0], queries.shape[0])
    [(_, _, d2)] = list(squared_distance_blocks(balls, queries, size, _F64, balls.device, center))
    excess = d2 - radii[:, None]
    tolerance = _tie_tolerance(balls.shape[1], ball_sq, query_sq, radii)
    found = (excess < -tolerance).any(dim=0)
    ball_ids, query_ids = (excess.abs() <= tolerance).nonzero(as_tuple=True)
    if ball_ids.numel():
        on_or_in = _direct_sq_distances(balls[ball_ids], queries[query_ids]) <= radii[ball_ids]
        found[query_ids[on_or_in]] = True
    return found


def _inside_some_ball(balls, radii, queries, center, chunk_size):
    """Bool (M,) on the queries' device: query j lies inside or on some ball (|q_j - b_i|² <= r_i).

    Queries go a block at a time through the ball blocks; those found leave, and a block whose queries are all
    found stops early."""
    inside = torch.zeros(queries.shape[0], dtype=torch.bool, device=queries.device)
    ball_sq = _centred_sq_norms(balls, center, chunk_size)
    for q0 in range(0, queries.shape[0], chunk_size):
        pending = torch.arange(q0, min(q0 + chunk_size, queries.shape[0]), device=queries.device)
        pending_sq = _centred_sq_norms(queries[pending], center, chunk_size)
        for b0 in range(0, balls.shape[0], chunk_size):
            ball_rows = slice(b0, b0 + chunk_size)
            found = _found_in_block(balls[ball_rows], radii[ball_rows], ball_sq[ball_rows], queries[pending],
                                    pending_sq, center)
            inside[pending[found]] = True
            pending, pending_sq = pending[~found], pending_sq[~found]
            if pending.numel() == 0:
                break
    return inside
