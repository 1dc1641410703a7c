"""The one image normaliser: every entry point (feature extraction, scoring, sample logging, builds, the
evaluator) reads images through it, so the same input is accepted or refused identically everywhere and
read with the same layout.

Containers:

- a 4-D array/tensor batch (numpy or torch, any device);
- an iterable (list, tuple, generator, DataLoader, ...) whose items are 4-D batches, single images
  (3-D; 2-D = one grayscale image) or PIL images; items may differ in size;
- a PIL image;
- a path (str or os.PathLike) to a folder (recursive) or zip file of images (see ``image_files``), or to an
  ``.npz`` whose ``arr_0`` is uint8 (N, H, W, 3), the ADM evaluator's format, read batch by batch (see
  ``npz_images``).

Layout (decided from the shape, never from the values or the array library): a batch is NCHW when
``shape[1]`` is 1, 3 or 4, otherwise NHWC when ``shape[-1]`` is, otherwise refused; a single image
likewise CHW when ``shape[0]`` is 1, 3 or 4, else HWC. When both axes qualify (a 4x4 NHWC batch of
shape (N, 4, 4, 3)) NCHW wins: pass such tiny images as NCHW. A 3-D array on its own is refused as
ambiguous (one image or a grayscale batch?): pass ``x[None]`` or ``x[:, None]``.

Values: uint8 is read as 0..255 (``value_range`` may only be None or (0, 255)). Floats (16/32/64 bit)
are read in ``value_range`` (default (0, 1)) and mapped to [0, 1] with ``(x - low) / (high - low)``;
values may overshoot the range by 1e-3 of its width (rounding in the caller's arithmetic) and are then
clamped; anything further out, NaN or Inf is refused. Other dtypes (int64, bool, ...) are refused.

Channels: 1 is replicated to RGB, 4 (RGBA) loses its alpha, anything else is refused.

Output: torch tensors (N, 3, H, W), uint8 or float32 in [0, 1], on the device the input came on.
Errors are ``ValueError``/``TypeError`` naming the input and saying how to fix it.
"""
import os
from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from .image_files import iter_image_files, list_image_files
from .npz_images import is_npz_file, iter_npz_images, npz_images_shape

__all__ = ["to_image_batch", "iter_image_batches", "count_images", "check_value_range", "CHANNEL_COUNTS",
           "RANGE_TOLERANCE"]

CHANNEL_COUNTS = (1, 3, 4)
#: How far float values may overshoot their range, as a fraction of its width, before they are refused.
RANGE_TOLERANCE = 1e-3
_FIX_RANGE = ("pass value_range=(-1, 1) for generator outputs in [-1, 1] (or scale them with (x + 1) / 2); "
              "divide 0..255 floats by 255 or cast them to uint8")


def check_value_range(value_range) -> Optional[Tuple[float, float]]:
    """None or a pair (low, high) with high > low -> None or (float, float); else ValueError."""
    if value_range is None:
        return None
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be a pair (low, high) such as (-1, 1), got {value_range!r}") from None
    if not high > low:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range!r}; e.g. (-1, 1)")
    return low, high


def _as_tensor(x, what):
    if isinstance(x, Image.Image):
        return torch.from_numpy(np.array(x.convert("RGB"), dtype=np.uint8))
    if isinstance(x, np.ndarray):
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise TypeError(f"{what} has dtype {x.dtype}; pass uint8 (0..255) or float (0..1) pixel values")
        x = np.ascontiguousarray(x)
        return torch.from_numpy(x if x.flags.writeable else x.copy())
    if torch.is_tensor(x):
        return x.detach()
    raise TypeError(f"{what} is a {type(x).__name__}; pass a uint8/float array or tensor, a PIL image, an "
                    f"iterable of those, or the path of an image folder / zip")


def _channel_axis(shape, first, what):
    """Index of the channel axis: `first` (NCHW/CHW) if its size is 1/3/4, else the last one."""
    if shape[first] in CHANNEL_COUNTS:
        return first
    if shape[-1] in CHANNEL_COUNTS:
        return len(shape) - 1
    layout = "NCHW or NHWC" if first == 1 else "CHW or HWC"
    raise ValueError(
        f"{what} has shape {tuple(shape)}: no colour channel axis of size 1 (gray), 3 (RGB) or 4 (RGBA) at "
        f"position {first} or last ({layout}); {shape[first]} or {shape[-1]} channels are not supported - convert "
        f"to RGB first"
    )


def _to_unit_range(t, value_range, what):
    """uint8 as is; floats mapped from `value_range` to float32 [0, 1] (checked, see the module docstring)."""
    if t.dtype == torch.uint8:
        if value_range not in (None, (0.0, 255.0)):
            raise ValueError(f"{what} is uint8, which is always read as 0..255; drop value_range={value_range}")
        return t
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what} has dtype {t.dtype}; pass uint8 (0..255) or float in [0, 1] "
                        f"(e.g. x.to(torch.uint8) for integer pixel values 0..255)")
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        raise ValueError(f"{what} has {int((~finite).sum())} NaN/Inf pixel value(s); fix the images (e.g. the "
                         f"generator output) before computing metrics")
    low, high = value_range or (0.0, 1.0)
    t = t.to(torch.float32) if value_range is None else ((t.double() - low) / (high - low)).float()
    if t.numel():
        lowest, highest = float(t.min()), float(t.max())
        if lowest < -RANGE_TOLERANCE or highest > 1 + RANGE_TOLERANCE:
            found = [low + v * (high - low) for v in (lowest, highest)]
            raise ValueError(f"{what} is float with values in [{found[0]:.4g}, {found[1]:.4g}], outside "
                             f"[{low:g}, {high:g}]; {_FIX_RANGE}")
        if lowest < 0 or highest > 1:
            t = t.clamp(0.0, 1.0)
    return t


def to_image_batch(x, value_range: Optional[Tuple[float, float]] = None, what: str = "images",
                   single: bool = False) -> torch.Tensor:
    """One batch (N, C, H, W)/(N, H, W, C) or, with `single`, one image (C, H, W)/(H, W, C)/(H, W)/PIL.

    Returns a tensor (N, 3, H, W), uint8 or float32 in [0, 1], on the input's device; raises
    ValueError/TypeError naming the problem and the fix (rules in the module docstring).
    """
    t = _as_tensor(x, what)
    if single:
        if t.dim() == 2:
            t = t[None]
        if t.dim() != 3:
            raise ValueError(f"{what} has shape {tuple(t.shape)}; a single image must be (C, H, W), (H, W, C) "
                             f"or (H, W), a batch (N, C, H, W) or (N, H, W, C)")
        t = t.movedim(_channel_axis(t.shape, 0, what), 0)[None]
    else:
        if t.dim() != 4:
            hint = {0: "a scalar is not an image", 3: "for one image use x[None]; for a grayscale batch "
                    "(N, H, W) use x[:, None]", 2: "for one grayscale image use x[None, None]"}.get(t.dim(), "")
            raise ValueError(f"{what} has {t.dim()} dimensions (shape {tuple(t.shape)}); pass a batch (N, C, H, W) "
                             f"or (N, H, W, C)" + (f" - {hint}" if hint else ""))
        t = t.movedim(_channel_axis(t.shape, 1, what), 1)
    if t.shape[2] == 0 or t.shape[3] == 0:
        raise ValueError(f"{what} has empty images (height x width {t.shape[2]} x {t.shape[3]}); pass real images")
    t = _to_unit_range(t, value_range, what)
    channels = t.shape[1]
    if channels == 1:
        t = t.expand(-1, 3, -1, -1)
    elif channels == 4:
        t = t[:, :3]
    return t.contiguous()


def _is_path(images):
    return isinstance(images, (str, os.PathLike))


def _is_file_source(images):
    """A folder or zip of image files: decoded one image per batch (an ``.npz`` of images is read in batches)."""
    return _is_path(images) and not is_npz_file(images)


def _is_array(x):
    return isinstance(x, np.ndarray) or torch.is_tensor(x)


def _is_single(item):
    return isinstance(item, Image.Image) or (_is_array(item) and item.ndim in (2, 3))


def _iter_items(images, value_range, transform):
    """The input's batches as given; files already transformed (one image each), others not yet."""
    if is_npz_file(images):
        for batch in iter_npz_images(images):
            yield to_image_batch(torch.from_numpy(batch).permute(0, 3, 1, 2), None, f"images of {images}")
    elif _is_path(images):
        yield from iter_image_files(images, transform=transform)
    elif _is_array(images):
        yield to_image_batch(images, value_range)
    elif isinstance(images, Image.Image):
        yield to_image_batch(images, value_range, single=True)
    elif isinstance(images, (dict, bytes)) or not hasattr(images, "__iter__"):
        _as_tensor(images, "images")  # raises the TypeError naming what is accepted
    else:
        for i, item in enumerate(images):
            what = f"item {i} of the image iterable"
            if isinstance(item, (tuple, list, dict)):
                raise TypeError(f"{what} is a {type(item).__name__}; yield image batches only, e.g. "
                                f"(x for x, _ in loader) for a DataLoader of (images, labels)")
            yield to_image_batch(item, value_range, what, single=_is_single(item))


def iter_image_batches(images, value_range: Optional[Tuple[float, float]] = None, transform=None,
                       batch_size: Optional[int] = None) -> Iterator[torch.Tensor]:
    """Yield checked batches (N, 3, H, W) (uint8 or float32 in [0, 1]) from any accepted input.

    `value_range` (see the module docstring) applies to float arrays and tensors; files are uint8.
    batch_size: batches of more images are split into batches of at most this many (default: as given).
    transform: a function applied to each batch before it is yielded (the resize to a network's input, for
      example); what is yielded is its result. Images from a folder or zip come one per batch and are
      transformed right after decoding, each on its own (:func:`~genmetrics.stats.images.image_files.iter_image_files`),
      so full-size decoded images are never held together.
    Images of different sizes come in different batches. Raises ValueError when the input holds no image at all.
    """
    value_range = check_value_range(value_range)
    total = 0
    for batch in _iter_items(images, value_range, transform):
        if _is_file_source(images):
            parts = [batch]
        else:
            step = batch_size or max(1, batch.shape[0])
            parts = (batch[start:start + step] for start in range(0, batch.shape[0], step))
            parts = parts if transform is None else map(transform, parts)
        for part in parts:
            if part.shape[0]:
                total += part.shape[0]
                yield part
    if total == 0:
        raise ValueError("no images were given (empty input); pass at least one image")


def count_images(images) -> Optional[int]:
    """Number of images when known without reading them (arrays, folders, .npz, lists of arrays), else None."""
    if is_npz_file(images):
        return npz_images_shape(images)[0]
    if _is_path(images):
        return len(list_image_files(images))
    if _is_array(images):
        return int(images.shape[0]) if images.ndim == 4 else None
    if isinstance(images, Image.Image):
        return 1
    if isinstance(images, (list, tuple)):
        counts = [1 if _is_single(item) else int(item.shape[0]) if _is_array(item) and item.ndim == 4 else None
                  for item in images]
        return None if None in counts else sum(counts)
    return None
