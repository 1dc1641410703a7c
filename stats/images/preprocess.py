"""Resize images to 299x299 and scale them to the Inception's input range, as each FID implementation does.

Input: a batch (N, 3, H, W), either uint8 (0..255) or float32 in [0, 1] (see ``image_input``).
Output: float32 (N, 3, 299, 299), the Inception input.

Modes (the FID of one set of images differs between them by far more than numerical noise, so reference
statistics record the mode and scores refuse to mix modes):

``clean`` (clean-fid's default, Parmar et al. 2022): each channel is resized on its own as a float32 PIL
  image (mode 'F') with PIL's antialiasing bicubic filter, then clipped to [0, 255]; no uint8 rounding
  after the resize. Inception input ``(x - 128) / 128`` (range [-1, 0.9921875]), as clean-fid feeds its
  TF-ported network. One rule decides where the resize runs: with PIL on the CPU (bit-identical to
  clean-fid's ``build_resizer("clean")``) unless the target device is CUDA; then on that device as two
  matrix products with PIL's own coefficients (:func:`~genmetrics.stats.images.resize_pil.resize_pil_bicubic`),
  equal to PIL to 1e-4 grey levels (measured in docs/performance.md), which moves Inception
  pool3 features by <= 1.9e-6 of the largest, so that a GPU is not starved by a per-image CPU resize.
  ``resize_clean(..., backend="torch")`` runs the matrix form on the CPU too (tests, benchmarks).
``legacy_tensorflow`` (TTUR's original TF code, torch-fidelity, clean-fid's ``legacy_tensorflow``):
  TensorFlow 1.x ``resize_bilinear(align_corners=False)`` on 0..255 floats: output pixel i samples the
  input at ``i * in/out`` (no half-pixel offset, no antialiasing), bilinear between the two neighbours,
  clamped at the last row/column. Inception input ``(x - 128) / 128``.
``legacy_pytorch`` (pytorch-fid): ``x / 255`` in [0, 1], ``F.interpolate(bilinear, align_corners=False)``
  (half-pixel centres, no antialiasing), Inception input ``2 x - 1`` (range [-1, 1]).

Float images in [0, 1] enter the 0..255 modes as ``255 x`` (no rounding).
"""
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..defaults import MODES
from .resize_pil import resize_pil_bicubic
from .threads import thread_map

__all__ = ["MODES", "preprocess", "resize_clean", "resize_legacy_tensorflow", "resize_legacy_pytorch"]

SIZE = 299
#: Images with more pixels (2048 x 2048) are resized one channel at a time, so that a single float copy of
#: one channel exists at a time (the resizes themselves are unchanged).
PARALLEL_PIXELS = 1 << 22


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; use one of {', '.join(MODES)} "
                         f"(clean = clean-fid, legacy_pytorch = pytorch-fid, legacy_tensorflow = TTUR/torch-fidelity)")


def _as_0_255(images):
    """float32 on the 0..255 scale: uint8 exactly, [0, 1] floats times 255."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32)
    return images.to(torch.float32) * 255.0


def _as_0_1(images):
    """float32 in [0, 1]: uint8 / 255 (as torchvision's ToTensor), floats unchanged."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def _pil_bicubic(channel, size):
    """One channel (H, W) tensor, uint8 or float [0, 1], -> float32 (size, size) on the 0..255 scale: a float32
    PIL image (mode 'F', made only now, from this channel alone), PIL bicubic, clipped to [0, 255]."""
    channel = channel.cpu()
    if channel.dtype == torch.uint8:  # 'L' -> 'F' holds the same float32 values as the channel cast to float32
        image = Image.fromarray(channel.numpy()).convert("F")
    else:
        image = Image.fromarray(_as_0_255(channel).numpy())
    resized = image.resize((size, size), resample=Image.BICUBIC)
    del image
    return np.asarray(resized).clip(0, 255)


def resize_clean(images, size=SIZE, backend=None):
    """clean-fid's clean resizer: per channel float32 PIL bicubic to (size, size), clip to [0, 255].

    images: (N, 3, H, W) uint8 or float in [0, 1]; returns float32 (N, 3, size, size) on the 0..255 scale.
    backend: ``"pil"``: PIL on the CPU, bit-identical to clean-fid; each channel becomes a float32 image only
    when it is resized, the channels of images up to :data:`PARALLEL_PIXELS` in parallel threads, those of
    larger images one after another (one float copy of one channel at a time); the result is on the CPU.
    ``"torch"``: :func:`~genmetrics.stats.images.resize_pil.resize_pil_bicubic` on the device of `images` (PIL's
    coefficients as two float32 matrix products, equal to PIL to 1e-4 grey levels); the result stays on that
    device. ``None`` (default): ``"torch"`` for CUDA tensors, else ``"pil"``.
    """
    if backend is None:
        backend = "torch" if images.device.type == "cuda" else "pil"
    if backend == "torch":
        return resize_pil_bicubic(_as_0_255(images), size)
    if backend != "pil":
        raise ValueError(f"backend must be 'pil', 'torch' or None, got {backend!r}")
    channels = [images[n, c] for n in range(images.shape[0]) for c in range(images.shape[1])]
    mapper = thread_map if images.shape[2] * images.shape[3] <= PARALLEL_PIXELS else _serial_map
    resized = mapper(lambda channel: _pil_bicubic(channel, size), channels)
    out = np.stack(resized).astype(np.float32, copy=False) if resized else np.empty((0, size, size), np.float32)
    return torch.from_numpy(out.reshape(tuple(images.shape[:2]) + (size, size)))


def _serial_map(fn, items):
    return [fn(item) for item in items]


def _tf1_source_index(in_size, out_size, device):
    """TF1 resize_bilinear (align_corners=False) sampling positions: lower index, upper index, weight."""
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    position = torch.arange(out_size, dtype=torch.float32, device=device) * scale.to(device)
    lower = position.floor()
    weight = position - lower
    lower = lower.long()
    upper = (lower + 1).clamp(max=in_size - 1)
    return lower, upper, weight


def resize_legacy_tensorflow(images, size=SIZE):
    """TensorFlow 1.x bilinear resize (align_corners=False) of (N, C, H, W) values, float32, same device.

    out[i, j] = lerp_y(lerp_x(in[y0, x0], in[y0, x1]), lerp_x(in[y1, x0], in[y1, x1])) at source position
    (i * H/size, j * W/size), with x0 = floor, x1 = min(x0 + 1, W - 1), in TF's order of operations
    (a + (b - a) * t). The x-interpolation is done once per input row, then rows are picked.
    """
    return _tf1_resize(images, size, lambda t: t.to(torch.float32))


def _tf1_resize(images, size, to_float):
    """:func:`resize_legacy_tensorflow` with the input columns it reads mapped by `to_float` (float32 values)
    after they are picked, so that no float copy of a whole large image is made (same values as mapping first)."""
    y0, y1, wy = _tf1_source_index(images.shape[2], size, images.device)
    x0, x1, wx = _tf1_source_index(images.shape[3], size, images.device)
    left, right = to_float(images.index_select(3, x0)), to_float(images.index_select(3, x1))
    rows = left + (right - left) * wx
    top, bottom = rows.index_select(2, y0), rows.index_select(2, y1)
    return top + (bottom - top) * wy[:, None]


def resize_legacy_pytorch(images, size=SIZE):
    """pytorch-fid's resize: bilinear F.interpolate (align_corners=False) of [0, 1] floats, same device.

    One channel at a time (the same values: bilinear interpolation treats each channel on its own), so that a
    large image has one float copy of one channel at a time.
    """
    return torch.cat([F.interpolate(_as_0_1(images[:, c:c + 1]), size=(size, size), mode="bilinear",
                                    align_corners=False) for c in range(images.shape[1])], dim=1)


def preprocess(images, mode="clean", device=None):
    """Batch (N, 3, H, W) uint8 or float [0, 1] -> float32 Inception input (N, 3, 299, 299), per `mode`.

    device: where the resize runs and the result is (default: the device of `images`); ``clean`` resizes
    with PIL on the CPU unless this is a CUDA device (then on it, see the module docstring).
    """
    _check_mode(mode)
    if mode == "clean":
        target = torch.device(device) if device is not None else images.device
        x = resize_clean(images.to(target)).to(target)  # resize_clean's rule: the matrix form on CUDA, else PIL
        return (x - 128.0) / 128.0
    images = images.to(device) if device is not None else images
    if mode == "legacy_tensorflow":
        return (_tf1_resize(images, SIZE, _as_0_255) - 128.0) / 128.0
    return 2.0 * resize_legacy_pytorch(images) - 1.0
