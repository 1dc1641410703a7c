"""Generated samples -> normalised image batches, for scoring and sample logging.

What is accepted, and how layout, value range and channels are read, is decided in one place:
:mod:`genmetrics.stats.images.image_input` (arrays/tensors, iterables of batches or images, PIL images, folders
and zips, with an optional ``value_range``). This module adds what only generated samples have: a
sampler callable (``sampler(n)`` or ``sampler()``, called under ``torch.no_grad()`` until
``num_samples`` images are drawn), a cap on the number of images, and batches moved to the CPU.
"""
import inspect

import numpy as np
import torch

from genmetrics.stats.images.image_input import check_value_range, iter_image_batches

__all__ = ["iter_sample_batches", "collect_samples", "as_float01", "as_uint8_nhwc"]


def _call_sampler(sampler, n):
    """Call `sampler(n)` when it takes an argument (the number of samples wanted), else `sampler()`."""
    try:
        takes_argument = any(
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            for p in inspect.signature(sampler).parameters.values()
        )
    except (TypeError, ValueError):  # builtins without a signature
        takes_argument = True
    with torch.no_grad():
        return sampler(n) if takes_argument else sampler()


def _draw(sampler, num_samples, batch_size):
    """Batches from a sampler callable until `num_samples` images are drawn."""
    if num_samples is None:
        raise ValueError("a sampler callable needs num_samples=N (how many images to draw in total)")
    drawn = 0
    while drawn < num_samples:
        batch = _call_sampler(sampler, min(batch_size, num_samples - drawn))
        if len(batch) == 0:
            raise ValueError("the sampler returned an empty batch; it must return at least one image per call")
        drawn += len(batch)
        yield batch


def _is_sampler(samples):
    return callable(samples) and not isinstance(samples, (torch.Tensor, np.ndarray))


def iter_sample_batches(samples, num_samples=None, batch_size=50, value_range=None):
    """Yield normalised CPU batches (uint8 or float32 [0, 1], (n, 3, H, W)) of at most `batch_size` images.

    `samples`: anything :func:`genmetrics.stats.images.image_input.iter_image_batches` accepts, or a sampler
    callable (needs `num_samples`). At most `num_samples` images are yielded when it is given.
    """
    value_range = check_value_range(value_range)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    source = _draw(samples, num_samples, batch_size) if _is_sampler(samples) else samples
    remaining = num_samples
    for batch in iter_image_batches(source, value_range):
        for start in range(0, batch.shape[0], batch_size):
            if remaining is not None and remaining <= 0:
                return
            chunk = batch[start:start + batch_size].cpu()
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= chunk.shape[0]
            yield chunk


def collect_samples(samples, num_samples=None, batch_size=50, value_range=None):
    """Draw and normalise all samples now (a list of batches; they may share memory with the input)."""
    return list(iter_sample_batches(samples, num_samples, batch_size, value_range))


def as_float01(batch):
    """uint8 or float [0, 1] batch -> float32 [0, 1]."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


def as_uint8_nhwc(batch):
    """uint8 or float [0, 1] (N, 3, H, W) batch -> uint8 (N, H, W, 3) numpy array (floats rounded)."""
    if batch.dtype != torch.uint8:
        batch = (batch * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return batch.permute(0, 2, 3, 1).cpu().numpy()
