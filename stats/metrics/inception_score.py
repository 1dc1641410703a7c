"""Inception Score (Salimans et al. 2016).

For class probabilities p(y|x_i) of N generated images, split into `splits` consecutive groups
(group s = rows [s*N//splits, (s+1)*N//splits), as in the original OpenAI code and torch-fidelity):

    IS_s = exp( mean_{i in s} KL( p(y|x_i) || p_s(y) ) ),   p_s(y) = mean_{i in s} p(y|x_i)

and the score is mean_s IS_s with the population std (ddof=0) over the groups. Unitless, between 1 and
the number of classes C. It never looks at real data: it rewards confident (low-entropy) and varied
(high-entropy marginal) ImageNet-classifier predictions, so it is only meaningful for ImageNet-like
images, and its std measures the spread over splits, not the uncertainty of the estimate.

Published numbers use the 1008-way softmax of the TF-2015 Inception on logits = pool3 @ W, without the
classifier bias (OpenAI code; torch-fidelity's ``logits_unbiased``). Differences between the peers:
torch-fidelity shuffles the rows first by default (``numpy.random.RandomState(2020).permutation``,
reproduced here by ``shuffle_seed=2020``); torchmetrics shuffles with ``torch.randperm`` (unseeded),
splits with ``torch.chunk`` (ceil(N/splits) rows per group, which can give fewer groups) and reports
the std with ddof=1. OpenAI's guided-diffusion evaluator (the ADM suite) splits into groups of a fixed
``split_size`` = 5000 consecutive rows instead, the last group possibly shorter, and reports the mean.
Everything here is float64.
"""
from typing import Optional, Tuple

import numpy as np
import torch

from ..checks import ArrayLike, _check_features, _check_positive_int, _check_probabilities

__all__ = ["inception_score", "inception_score_from_logits"]


def inception_score(probs: ArrayLike, splits: int = 10, shuffle_seed: Optional[int] = None,
                    split_size: Optional[int] = None) -> Tuple[float, float]:
    """IS (mean, std) from softmax rows `probs` (N, C) (numpy or torch; rows >= 0 summing to 1).

    split_size: groups of this many consecutive rows (the last one shorter) instead of `splits` groups (the ADM
    evaluator's rule, 5000).
    """
    _check_probabilities(probs, "probs")
    p = torch.as_tensor(probs).detach().to(torch.float64)
    return _split_scores(p, torch.log(p), _groups(p.shape[0], splits, split_size), shuffle_seed)


def inception_score_from_logits(logits: ArrayLike, splits: int = 10, shuffle_seed: Optional[int] = None,
                                split_size: Optional[int] = None) -> Tuple[float, float]:
    """IS (mean, std) from classifier logits (N, C): softmax and log-softmax in float64, then as above."""
    _check_features(logits, "logits", min_samples=1)
    z = torch.as_tensor(logits).detach().to(torch.float64)
    return _split_scores(z.softmax(dim=1), z.log_softmax(dim=1), _groups(z.shape[0], splits, split_size),
                         shuffle_seed)


def _groups(n, splits, split_size):
    """Row slices of the groups: `splits` near-equal ones, or consecutive ones of `split_size` rows."""
    if split_size is not None:
        _check_positive_int(split_size, "split_size")
        return [slice(start, start + split_size) for start in range(0, n, split_size)]
    _check_positive_int(splits, "splits")
    if n < splits:
        raise ValueError(f"inception score needs at least one sample per split: got {n} samples for {splits} splits; "
                         f"pass more samples or fewer splits")
    return [slice(s * n // splits, (s + 1) * n // splits) for s in range(splits)]


def _split_scores(p, log_p, groups, shuffle_seed):
    n = p.shape[0]
    if shuffle_seed is not None:
        order = torch.from_numpy(np.random.RandomState(shuffle_seed).permutation(n)).to(p.device)
        p, log_p = p[order], log_p[order]
    scores = []
    for rows in groups:
        p_split, log_p_split = p[rows], log_p[rows]
        log_marginal = p_split.mean(dim=0, keepdim=True).log()
        # 0 * log 0 = 0: classes with p = 0 contribute nothing (log p may be -inf there).
        kl = torch.where(p_split > 0, p_split * (log_p_split - log_marginal), torch.zeros_like(p_split))
        scores.append(float(kl.sum(dim=1).mean().exp()))
    return float(np.mean(scores)), float(np.std(scores))
