"""Generated samples in any accepted form -> batches of uint8 or float [0, 1] (N, 3, H, W) CPU tensors.

Accepted: uint8 images (0..255); float images in [0, 1], or in a declared ``value_range`` such as
(-1, 1); as (N, C, H, W) / (N, H, W, C) torch tensors or numpy arrays (C = 1, 3 or 4: gray is
repeated, alpha dropped), single (C, H, W) / (H, W, C) images, an iterable of batches or images, or
a sampler callable (``sampler(n)`` or ``sampler()``, called under ``torch.no_grad()`` until
``num_samples`` images are drawn).
"""
import inspect
import os

import numpy as np
import torch


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu(), True
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)), False
    raise TypeError(
        f"samples must be torch tensors or numpy arrays (or an iterable of them, or a sampler callable "
        f"with num_samples); got {type(x).__name__}. Convert your images with torch.as_tensor(...)."
    )


def _to_nchw(t, channels_first_hint):
    """(N,C,H,W) / (N,H,W,C) / (C,H,W) / (H,W,C) / (N,H,W) -> (N, 3, H, W); alpha dropped, gray repeated."""
    if t.ndim == 3:
        if t.shape[-1] in (1, 3, 4) and not (channels_first_hint and t.shape[0] in (1, 3, 4)):
            t = t.permute(2, 0, 1)[None]
        elif t.shape[0] in (1, 3, 4):
            t = t[None]
        else:  # a batch of grayscale images (N, H, W)
            t = t[:, None]
    elif t.ndim == 4:
        first, last = t.shape[1] in (1, 3, 4), t.shape[-1] in (1, 3, 4)
        if last and not (first and channels_first_hint):
            t = t.permute(0, 3, 1, 2)
        elif not first:
            raise ValueError(
                f"cannot find the channel axis of an image batch of shape {tuple(t.shape)}: expected "
                f"(N, C, H, W) or (N, H, W, C) with C in 1, 3 or 4."
            )
    else:
        raise ValueError(
            f"image batches must have 3 or 4 dimensions, got shape {tuple(t.shape)}; pass (N, C, H, W) or "
            f"(N, H, W, C) batches."
        )
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    elif t.shape[1] == 4:
        t = t[:, :3]
    return t.contiguous()


def _check_value_range(value_range):
    if value_range is None:
        return None
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}; e.g. (-1, 1).")
    return lo, hi


def _normalize_batch(x, value_range):
    """One image batch -> uint8 (kept exact) or float32 in [0, 1], shape (N, 3, H, W), on the CPU.

    uint8 stays uint8 (so resizing sees the original pixel values). Floats are mapped with
    ``(x - low) / (high - low)`` when ``value_range`` is given and then clamped to [0, 1]; floats
    without ``value_range`` must already lie in [0, 1] (1e-3 tolerance).
    """
    t, is_torch = _as_tensor(x)
    t = _to_nchw(t, channels_first_hint=is_torch)
    if t.dtype == torch.uint8:
        if value_range not in (None, (0.0, 255.0)):
            raise ValueError(f"uint8 samples are always read as 0..255; drop value_range={value_range}.")
        return t
    if not torch.is_floating_point(t):
        raise TypeError(f"samples must be uint8 or floating point, got {t.dtype}; convert with .float() / 255.")
    t = t.float()
    if value_range is not None:
        lo, hi = value_range
        return ((t - lo) / (hi - lo)).clamp_(0.0, 1.0)
    if t.numel() and (float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3):
        raise ValueError(
            f"float samples must lie in [0, 1], got values in [{float(t.min()):.3g}, {float(t.max()):.3g}]; "
            f"for generator outputs in [-1, 1] pass value_range=(-1, 1)."
        )
    return t.clamp(0.0, 1.0)


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


def _raw_batches(samples, num_samples, batch_size):
    if callable(samples) and not isinstance(samples, (torch.Tensor, np.ndarray)):
        if num_samples is None:
            raise ValueError("a sampler callable needs num_samples=N (how many images to draw in total).")
        drawn = 0
        while drawn < num_samples:
            batch = _call_sampler(samples, min(batch_size, num_samples - drawn))
            count = len(batch)
            if count == 0:
                raise ValueError("the sampler returned an empty batch; it must return at least one image per call.")
            drawn += count
            yield batch
    elif isinstance(samples, (torch.Tensor, np.ndarray)):
        yield samples
    elif isinstance(samples, (str, bytes, os.PathLike, dict)):
        raise TypeError(
            f"samples must be image tensors/arrays, an iterable of batches or a sampler callable, got "
            f"{type(samples).__name__}; for image folders use genmetrics.stats.extract_features or "
            f"`genmetrics fid`."
        )
    else:
        try:
            iterator = iter(samples)
        except TypeError:
            raise TypeError(
                f"samples must be image tensors/arrays, an iterable of batches or a sampler callable, got "
                f"{type(samples).__name__}."
            ) from None
        yield from iterator


def iter_sample_batches(samples, num_samples=None, batch_size=50, value_range=None):
    """Yield normalized batches (uint8 or float32 [0, 1], (n, 3, H, W), CPU) of at most `batch_size`.

    `samples`: a tensor/array batch, an iterable of batches or single images, or a sampler callable
    (needs `num_samples`). At most `num_samples` images are yielded when it is given.
    """
    value_range = _check_value_range(value_range)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    remaining = num_samples
    for raw in _raw_batches(samples, num_samples, batch_size):
        batch = _normalize_batch(raw, value_range)
        for start in range(0, batch.shape[0], batch_size):
            if remaining is not None and remaining <= 0:
                return
            chunk = batch[start:start + batch_size]
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= chunk.shape[0]
            yield chunk


def collect_samples(samples, num_samples=None, batch_size=50, value_range=None):
    """Draw and normalize all samples now (list of batches); used before handing work to a thread."""
    return list(iter_sample_batches(samples, num_samples, batch_size, value_range))


def _as_float01(batch):
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


def _as_uint8_nhwc(batch):
    if batch.dtype != torch.uint8:
        batch = (batch * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return batch.permute(0, 2, 3, 1).numpy()
