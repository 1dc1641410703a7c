"""Turn any accepted image input into a stream of checked batches (N, 3, H, W).

Accepted inputs:

- a 4-D uint8 array/tensor (0..255) or float array/tensor with values in [0, 1] (float16/32/64), in
  NCHW or NHWC layout (rule below);
- an iterable (list, tuple, generator, DataLoader, ...) whose items are such 4-D batches, single images
  (3-D, CHW or HWC; 2-D = one grayscale image) or PIL images; items may differ in size;
- a path (str or os.PathLike) to a folder (recursive) or zip file of images (see ``image_files``).

Layout rule (never guessed from the values): a batch is NCHW when ``shape[1]`` is 1, 3 or 4, otherwise
NHWC when ``shape[-1]`` is 1, 3 or 4, otherwise an error; a single image likewise, CHW when ``shape[0]``
is 1, 3 or 4, else HWC when ``shape[-1]`` is. When both axes qualify (e.g. a 4x4 NHWC batch of shape
(N, 4, 4, 3)) NCHW wins: pass such tiny images as NCHW.

Channels: 1 is replicated to RGB, 4 (RGBA) loses alpha, anything else is an error. Each batch comes out
as a torch tensor (N, 3, H, W), uint8 or float32 in [0, 1], on the device it came on.
"""
import os

import numpy as np
import torch
from PIL import Image

from .image_files import iter_image_files, list_image_files

__all__ = ["iter_image_batches", "count_images", "_check_images"]

CHANNEL_COUNTS = (1, 3, 4)
_FIX_RANGE = ("scale [-1, 1] images with (x + 1) / 2; divide 0..255 floats by 255 or cast them to uint8")


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
        f"{what} has shape {tuple(shape)}: no channel axis of size 1 (gray), 3 (RGB) or 4 (RGBA) at position "
        f"{first} or last ({layout}); {shape[first]} or {shape[-1]} channels are not supported - convert to "
        f"RGB first"
    )


def _check_dtype_and_values(t, what):
    """uint8 as is; floats -> float32 checked finite and within [0, 1]; anything else refused."""
    if t.dtype == torch.uint8:
        return t
    if not t.dtype.is_floating_point:
        raise TypeError(f"{what} has dtype {t.dtype}; pass uint8 (0..255) or float in [0, 1] "
                        f"(e.g. x.to(torch.uint8) for integer pixel values 0..255)")
    t = t.to(torch.float32)
    finite = torch.isfinite(t)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{what} has {bad} NaN/Inf pixel value(s); fix the images (e.g. the generator output) "
                         f"before computing metrics")
    if t.numel():
        low, high = float(t.min()), float(t.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(f"{what} is float with values in [{low:.4g}, {high:.4g}], outside [0, 1]; {_FIX_RANGE}")
    return t


def _check_images(x, what="images", single=False):
    """One batch (N, C, H, W)/(N, H, W, C) or, with `single`, one image (C, H, W)/(H, W, C)/(H, W).

    Returns a tensor (N, 3, H, W), uint8 or float32 in [0, 1]; raises ValueError/TypeError naming the
    problem and the fix (see the module docstring for the rules).
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
    t = _check_dtype_and_values(t, what)
    channels = t.shape[1]
    if channels == 1:
        t = t.expand(-1, 3, -1, -1)
    elif channels == 4:
        t = t[:, :3]
    return t.contiguous()


def _is_path(images):
    return isinstance(images, (str, os.PathLike))


def _is_array(x):
    return isinstance(x, np.ndarray) or torch.is_tensor(x)


def _iter_items(images):
    if _is_path(images):
        yield from iter_image_files(images)
    elif _is_array(images):
        yield _check_images(images)
    elif isinstance(images, Image.Image):
        yield _check_images(images, single=True)
    elif isinstance(images, (dict, bytes)) or not hasattr(images, "__iter__"):
        _as_tensor(images, "images")  # raises the TypeError naming what is accepted
    else:
        for i, item in enumerate(images):
            what = f"item {i} of the image iterable"
            if isinstance(item, (tuple, list, dict)):
                raise TypeError(f"{what} is a {type(item).__name__}; yield image batches only, e.g. "
                                f"(x for x, _ in loader) for a DataLoader of (images, labels)")
            single = isinstance(item, Image.Image) or (_is_array(item) and item.ndim in (2, 3))
            yield _check_images(item, what, single=single)


def iter_image_batches(images):
    """Yield checked batches (N, 3, H, W) (uint8 or float32 in [0, 1]) from any accepted input.

    Raises ValueError when the input holds no image at all.
    """
    total = 0
    for batch in _iter_items(images):
        if batch.shape[0]:
            total += batch.shape[0]
            yield batch
    if total == 0:
        raise ValueError("no images were given (empty input); pass at least one image")


def count_images(images):
    """Number of images when known without reading them (arrays, folders, lists of arrays), else None."""
    if _is_path(images):
        return len(list_image_files(images))
    if _is_array(images):
        return int(images.shape[0]) if images.ndim == 4 else None
    if isinstance(images, Image.Image):
        return 1
    if isinstance(images, (list, tuple)):
        counts = [1 if isinstance(item, Image.Image) or (_is_array(item) and item.ndim in (2, 3))
                  else int(item.shape[0]) if _is_array(item) and item.ndim == 4 else None for item in images]
        return None if None in counts else sum(counts)
    return None
