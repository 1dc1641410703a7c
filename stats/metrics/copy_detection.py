"""Memorization check: which generated samples sit closer to a reference image than references sit to each other.

For reference features ``r_1 .. r_m`` let ``rho_j = min_{k != j} ||r_j - r_k||`` be each reference's
nearest-neighbour distance inside the reference set. For a sample ``s_i`` with nearest reference
``j(i) = argmin_j ||s_i - r_j||`` and distance ``d_i``, the copy score is

    score_i = d_i / rho_{j(i)}

(0 / 0 = 0: an exact copy of a duplicated reference; d / 0 = inf otherwise). A fresh sample from the
reference distribution is about as far from its nearest reference as that reference is from its own
neighbour (score near 1 in high dimension); a copy, even re-encoded or shifted by a pixel, is much
closer (score near 0). A sample is flagged when ``score_i < threshold``.

Both nearest-neighbour searches run in blocks (:mod:`genmetrics.stats.metrics.pairwise`) in float64: memory is
``O(chunk_size * (chunk_size + d))`` beyond the inputs, never ``n x m``. Both centre the features on the
references' mean first, so a large offset shared by samples and references (features far from the origin)
costs no precision: the result is invariant to a common offset up to float64 rounding of the spread.
"""
from typing import Optional

import numpy as np
import torch

from .pairwise import DEFAULT_CHUNK_SIZE, as_feature_matrix, squared_distance_blocks

__all__ = ["DEFAULT_COPY_THRESHOLD", "copy_detection", "nearest_neighbours"]

#: Flag samples nearer their nearest reference than this fraction of that reference's own neighbour distance.
DEFAULT_COPY_THRESHOLD = 0.5


def nearest_neighbours(queries, keys, exclude_self: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                       device: Optional[str] = None):
    """For each row of `queries` its nearest row of `keys`: ``(distances, indices)`` as numpy float64 / int64.

    Distances are computed about the mean of `keys` (see :mod:`genmetrics.stats.metrics.pairwise`).

    exclude_self: `queries` is `keys` and a row may not be its own neighbour (the index, not the value, is
    excluded: a duplicated row has distance 0 to its twin). Needs at least two keys then.
    """
    queries, keys = as_feature_matrix(queries, "queries"), as_feature_matrix(keys, "keys")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"queries have {queries.shape[1]} features per row but keys have {keys.shape[1]}; "
                         f"use features from the same extractor and layer")
    if exclude_self and keys.shape[0] < 2:
        raise ValueError("the reference set needs at least 2 rows to measure its own nearest-neighbour distances")
    best = torch.full((queries.shape[0],), float("inf"), dtype=torch.float64)
    where = torch.zeros(queries.shape[0], dtype=torch.int64)
    for i0, j0, block in squared_distance_blocks(queries, keys, chunk_size, device=device):
        if exclude_self:
            _mask_diagonal(block, i0, j0)
        value, index = block.min(dim=1)
        value, index = value.cpu(), index.cpu() + j0
        rows = slice(i0, i0 + block.shape[0])
        better = value < best[rows]
        best[rows] = torch.where(better, value, best[rows])
        where[rows] = torch.where(better, index, where[rows])
    return best.sqrt().numpy(), where.numpy()


def _mask_diagonal(block, i0, j0):
    """Set ``block[i, j] = inf`` where ``i0 + i == j0 + j`` (a row compared with itself)."""
    rows = torch.arange(i0, i0 + block.shape[0], device=block.device)
    cols = rows - j0
    inside = (cols >= 0) & (cols < block.shape[1])
    block[(rows - i0)[inside], cols[inside]] = float("inf")


def _copy_scores(distances, reference_nn):
    """``d / rho`` with 0 / 0 = 0 and d / 0 = inf (see the module docstring)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = distances / reference_nn
    scores[(distances == 0) & (reference_nn == 0)] = 0.0
    return scores


def _check_threshold(threshold):
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not threshold > 0:
        raise ValueError(f"threshold must be a positive number (a fraction of the reference's neighbour "
                         f"distance, default {DEFAULT_COPY_THRESHOLD}), got {threshold!r}")


def copy_detection(sample_features, reference_features, threshold: float = DEFAULT_COPY_THRESHOLD,
                   reference_nn_distances=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   device: Optional[str] = None) -> dict:
    """Flag samples that are (near-)copies of reference images (see the module docstring for the math).

    Args:
        sample_features: (n, d) features of generated samples.
        reference_features: (m, d) features of the reference (training) images, m >= 2, same extractor.
        threshold: flag ``score < threshold``; the score is a distance ratio (1 ~ a fresh sample).
        reference_nn_distances: (m,) precomputed ``rho`` (e.g. stored beside the features); computed if None.
        chunk_size: rows per block of the blocked distance computation (memory ~ chunk_size^2 float64).
        device: where the distance blocks are computed (default: the features' device).

    Returns:
        dict with ``fraction`` (share of samples flagged), ``indices`` (flagged sample indices, lowest score
        first), ``scores`` (n,), ``nearest`` (n, index of the nearest reference), ``distances`` (n,),
        ``reference_nn_distances`` (m,), ``threshold``.

    Example:
        >>> result = copy_detection(sample_feats, train_feats)  # doctest: +SKIP
        >>> worst = result["indices"]  # doctest: +SKIP
        >>> result["fraction"], worst[:10]  # doctest: +SKIP
    """
    _check_threshold(threshold)
    samples = as_feature_matrix(sample_features, "sample_features")
    references = as_feature_matrix(reference_features, "reference_features")
    if reference_nn_distances is None:
        reference_nn, _ = nearest_neighbours(references, references, exclude_self=True, chunk_size=chunk_size,
                                             device=device)
    else:
        reference_nn = np.asarray(reference_nn_distances, dtype=np.float64)
        if reference_nn.shape != (references.shape[0],):
            raise ValueError(f"reference_nn_distances must have shape ({references.shape[0]},), one per reference, "
                             f"got {reference_nn.shape}; pass None to compute them")
    distances, nearest = nearest_neighbours(samples, references, chunk_size=chunk_size, device=device)
    scores = _copy_scores(distances, reference_nn[nearest])
    flagged = np.flatnonzero(scores < threshold)
    order = flagged[np.argsort(scores[flagged], kind="stable")]
    return {"fraction": float(len(order) / len(scores)), "indices": order, "scores": scores, "nearest": nearest,
            "distances": distances, "reference_nn_distances": reference_nn, "threshold": float(threshold)}
