"""Sample diversity: the mean pairwise LPIPS or MS-SSIM over K seeded random pairs of distinct samples.

Unconditional generators have no targets, so paired scores do not apply; instead the spread of the samples
themselves is measured (mean LPIPS over random pairs: BicycleGAN, MUNIT - higher is more diverse; mean
MS-SSIM over random pairs: Odena et al. 2017, AC-GAN - lower is more diverse, mode collapse pushes it up).

Pairs (i, j) are drawn independently and uniformly among the ordered pairs of distinct indices
(i uniform in [0, n), j = (i + u) mod n with u uniform in [1, n)), with replacement, from
``torch.Generator().manual_seed(seed)``: the same (n, K, seed) always gives the same pairs. The result
carries K and the seed, which the caller should record next to the score (the MLflow plugin logs them).
"""
import math
from dataclasses import dataclass

import torch

from .ssim import ms_ssim

__all__ = ["DiversityScore", "diversity_pairs", "pairwise_diversity", "lpips_diversity", "ms_ssim_diversity"]


@dataclass(frozen=True)
class DiversityScore:
    """mean and std (sample std, ddof 1; 0 for one pair) of the metric over `pairs` pairs drawn with `seed`."""

    mean: float
    std: float
    pairs: int
    seed: int


def diversity_pairs(n, pairs, seed=0):
    """`pairs` seeded random index pairs (first, second), LongTensors with first != second, among n samples."""
    if n < 2:
        raise ValueError(f"diversity needs at least 2 samples, got {n}")
    if pairs < 1:
        raise ValueError(f"pairs must be at least 1, got {pairs}")
    generator = torch.Generator().manual_seed(int(seed))
    first = torch.randint(0, n, (pairs,), generator=generator)
    offset = torch.randint(1, n, (pairs,), generator=generator)
    return first, (first + offset) % n


def pairwise_diversity(images, score, pairs=100, seed=0, batch_size=50):
    """Mean and std of ``score(x, y) -> (B,)`` over `pairs` seeded pairs of distinct images -> DiversityScore.

    images: a tensor (N, ...) indexable along dim 0 (or an array); score is evaluated on batches of at most
    `batch_size` pairs, under ``torch.no_grad()``.
    """
    images = torch.as_tensor(images)
    first, second = diversity_pairs(images.shape[0], pairs, seed)
    values = []
    with torch.no_grad():
        for start in range(0, pairs, batch_size):
            a, b = first[start:start + batch_size], second[start:start + batch_size]
            values.append(score(images[a], images[b]).reshape(-1).double().cpu())
    values = torch.cat(values)
    std = float(values.std()) if pairs > 1 else 0.0
    mean = float(values.mean())
    if not math.isfinite(mean):
        raise ValueError("the diversity score is not finite; check the images for NaN or infinite values")
    return DiversityScore(mean=mean, std=std, pairs=int(pairs), seed=int(seed))


def lpips_diversity(images, model, pairs=100, seed=0, batch_size=50):
    """Mean pairwise LPIPS (higher = more diverse). model: a :class:`genmetrics.stats.LPIPS` (inputs per its
    ``normalize``: [-1, 1], or [0, 1] with normalize=True); images are moved to the model's device per batch."""
    device = next(model.parameters()).device
    return pairwise_diversity(images, lambda x, y: model(x.to(device), y.to(device)), pairs, seed, batch_size)


def ms_ssim_diversity(images, data_range=None, pairs=100, seed=0, batch_size=50):
    """Mean pairwise MS-SSIM (lower = more diverse), data_range as for :func:`genmetrics.stats.ms_ssim`."""
    return pairwise_diversity(images, lambda x, y: ms_ssim(x, y, data_range=data_range), pairs, seed, batch_size)
