"""PIL's bicubic resize of float ('F') images as two matrix products, on any torch device.

clean-fid's ``clean`` mode resizes each channel as a float32 PIL image with ``Image.BICUBIC``. This module
computes the same resize with torch, so that it can run on the GPU next to the network instead of on the
CPU, one channel at a time. It follows Pillow's ``libImaging/Resample.c``:

Kernel (Keys' cubic convolution with a = -0.5, support 2 input pixels)::

    k(x) = (a + 2)|x|³ - (a + 3)|x|² + 1       for |x| < 1
    k(x) = a (|x|³ - 5|x|² + 8|x| - 4)          for 1 <= |x| < 2
    k(x) = 0                                    otherwise

(torch's ``interpolate(mode="bicubic")`` uses a = -0.75 and no antialiasing and differs from PIL by tens
of grey levels; with ``antialias=True`` it uses this kernel but is up to ~4e-3 grey levels off.)

For a side of ``n_in`` pixels resized to ``n_out``: ``scale = n_in / n_out``, ``fs = max(scale, 1)`` (on
downscale the kernel is stretched by ``fs``: antialiasing), ``support = 2 fs`` input pixels. Output pixel
i (0-based) has its centre at ``c = (i + 0.5) scale`` in input coordinates; it reads the input pixels
``j`` in ``[max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in))`` (``int`` truncates, as C
does) with raw weights ``k((j - c + 0.5) / fs)``, divided by their sum so that each row sums to 1 (Pillow
skips the division if the sum is 0, which the bicubic kernel never gives). The weights are computed in
float64 in Pillow's order of operations (:func:`pil_bicubic_weights`).

Two passes, one per axis, each a product with a dense (n_out, n_in) weight matrix; a pass is skipped when
its side does not change (Pillow does too: with scale 1 the weights are the identity anyway). Pillow
computes each output pixel as a float64 sum and stores it as float32, so the intermediate image between
the passes is float32. Pillow runs the horizontal pass first, except (Pillow >= 13, python-pillow/Pillow
#9549) when the height shrinks by more than twice as many pixels as the width: ``in_h > out_h`` and
``in_h - out_h > 2 (in_w - out_w)`` (:func:`pil_vertical_first`; the rule was read off Pillow 13.0.0's
output). The order only moves results by float32 rounding (1 unit in the last place, ~1.5e-5 grey levels).

Precision (values on the 0..255 scale): with ``dtype=torch.float64`` the products are float64 sums rounded
to float32 after each pass, as Pillow computes them: the results equal PIL's bit for bit, except where two
differently ordered float64 sums round to neighbouring float32 values (1 unit in the last place, 1.5e-5
grey levels; not seen in the tests). The default ``dtype=torch.float32`` uses float32 weights and float32
accumulation: at most ~1e-4 grey levels from PIL (measured: <= 7.6e-5 for 32..2048 px inputs to 299 px),
which moves Inception pool3 features by <= 1.9e-6 of the largest (docs/performance.md). The products run under
:func:`~genmetrics.stats.tf32.exact_float32` (no TF32, whose 10-bit mantissa would cost ~0.1 grey
levels).
"""
import functools
import math

import numpy as np
import torch

from ..tf32 import exact_float32

__all__ = ["pil_bicubic_weights", "pil_vertical_first", "resize_pil_bicubic", "BICUBIC_A", "BICUBIC_SUPPORT"]

BICUBIC_A = -0.5
"""Pillow's cubic convolution parameter (torch and OpenCV use -0.75)."""
BICUBIC_SUPPORT = 2.0
"""Half-width of the kernel in input pixels before antialiasing stretches it by the downscale factor."""


def _is_size(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _bicubic_kernel(x):
    """Pillow's ``bicubic_filter`` on a float64 array, in its order of operations."""
    x = np.abs(x)
    near = ((BICUBIC_A + 2.0) * x - (BICUBIC_A + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * BICUBIC_A
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def _weights(in_size, out_size):
    """The cached float64 (out, in) matrix of :func:`pil_bicubic_weights` (callers must not modify it)."""
    scale = float(in_size) / out_size
    filter_scale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filter_scale
    taps = np.arange(math.ceil(support) * 2 + 1)
    center = (np.arange(out_size) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)
    count = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64) - first
    used = taps[None, :] < count[:, None]
    raw = _bicubic_kernel((taps[None, :] + first[:, None] - center[:, None] + 0.5) * (1.0 / filter_scale))
    raw = np.where(used, raw, 0.0)
    total = np.zeros(out_size)
    for tap in range(taps.size):  # left to right, as Pillow sums them
        total += raw[:, tap]
    normalised = np.where(total[:, None] != 0.0, raw / np.where(total != 0.0, total, 1.0)[:, None], raw)
    matrix = np.zeros((out_size, in_size))
    rows, cols = np.nonzero(used)
    matrix[rows, first[rows] + cols] = normalised[rows, cols]
    matrix.setflags(write=False)
    return matrix


@functools.lru_cache(maxsize=32)
def _weights_on(in_size, out_size, device, dtype):
    """:func:`_weights` as a tensor on `device` in `dtype`, cached so that batches do not copy it again (a
    1024 -> 299 matrix is 1.2 MB in float32; callers must not modify it)."""
    return torch.from_numpy(_weights(in_size, out_size).copy()).to(device=device, dtype=dtype)


def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """Pillow's bicubic resampling coefficients for one axis, as a dense float64 (out_size, in_size) matrix.

    Row i holds the weights of output pixel i over the input pixels (zero outside its support); each
    row sums to 1 (to float64 rounding). Resizing a 1-D signal v is ``W @ v``. The kernel, support and
    normalisation are in the module docstring.

    Raises:
        ValueError: if a size is not a positive integer.

    Example:
        >>> w = pil_bicubic_weights(4, 2)       # 2x downscale: support 4 input pixels
        >>> w.shape, bool(abs(w.sum(1) - 1).max() < 1e-15)
        ((2, 4), True)
    """
    for name, value in (("in_size", in_size), ("out_size", out_size)):
        if not _is_size(value):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return _weights(int(in_size), int(out_size)).copy()


@functools.lru_cache(maxsize=1)
def _pillow_major():
    import PIL

    return int(PIL.__version__.split(".")[0])


def pil_vertical_first(in_h: int, in_w: int, out_h: int, out_w: int) -> bool:
    """Whether the installed Pillow resizes (in_h, in_w) -> (out_h, out_w) vertically first.

    Pillow <= 12: never (horizontal pass, then vertical). Pillow >= 13: when the height shrinks and by more
    than twice as many pixels as the width, ``in_h > out_h and in_h - out_h > 2 (in_w - out_w)``.
    """
    return _pillow_major() >= 13 and in_h > out_h and in_h - out_h > 2 * (in_w - out_w)


def _size_pair(size):
    """(height, width) from an int or a pair of ints."""
    pair = (size, size) if _is_size(size) else tuple(size) if isinstance(size, (tuple, list)) else ()
    if len(pair) != 2 or not all(_is_size(side) for side in pair):
        raise ValueError(f"size must be a positive integer or a (height, width) pair of them, got {size!r}")
    return int(pair[0]), int(pair[1])


def _pass(x, axis, out_size, dtype):
    """Resize `x` (float32, ..., H, W) along `axis` (-1: width, -2: height); float32 result."""
    in_size = x.shape[axis]
    if in_size == out_size:
        return x
    weights = _weights_on(in_size, out_size, x.device, dtype)
    if axis == -1:
        return torch.matmul(x.to(dtype), weights.T).to(torch.float32)
    return torch.matmul(weights, x.to(dtype)).to(torch.float32)


def resize_pil_bicubic(images: torch.Tensor, size=299, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """PIL 'F' bicubic resize of every (H, W) plane of `images`, clipped to [0, 255], on their device.

    Equals ``Image.fromarray(plane, "F").resize((width, height), Image.BICUBIC)`` per channel followed by
    ``clip(0, 255)`` (clean-fid's ``clean`` resizer) to ~1e-4 grey levels in float32, to float32
    rounding with ``dtype=torch.float64`` (module docstring).

    Args:
        images: (..., H, W) real tensor, typically (N, C, H, W) on the 0..255 scale, on any device. It is
            first converted to float32, as a PIL 'F' image holds it.
        size: output side (square) or (height, width), in pixels.
        dtype: accumulation precision of the two products, ``torch.float32`` or ``torch.float64``.

    Returns:
        float32 (..., height, width) on the device of `images`, clipped to [0, 255].

    Raises:
        ValueError: for a bad `size`, `dtype` or a tensor with fewer than 2 dimensions.

    Example:
        >>> x = torch.full((1, 3, 64, 48), 100.0)
        >>> y = resize_pil_bicubic(x, 299)
        >>> tuple(y.shape), bool((y - 100).abs().max() < 1e-3)
        ((1, 3, 299, 299), True)
    """
    out_h, out_w = _size_pair(size)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if images.dim() < 2:
        raise ValueError(f"images must have at least 2 dimensions (..., H, W), got shape {tuple(images.shape)}")
    x = images.to(torch.float32)
    in_h, in_w = x.shape[-2:]
    passes = [(-1, out_w), (-2, out_h)]
    if pil_vertical_first(in_h, in_w, out_h, out_w):
        passes.reverse()
    resized = x
    with exact_float32():
        for axis, out_size in passes:
            resized = _pass(resized, axis, out_size, dtype)
    # in place when the passes made a new tensor (saves one full-size allocation), else a copy of the input
    return resized.clamp_(0.0, 255.0) if resized is not x else x.clamp(0.0, 255.0)
