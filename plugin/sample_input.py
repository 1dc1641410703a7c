"""Generated samples -> normalised image batches, decoded once at the door, for scoring and sample logging.

What is accepted, and how layout, value range and channels are read, is decided in one place:
:mod:`genmetrics.stats.images.image_input` (arrays/tensors, iterables of batches or images, PIL images, folders
and zips, with an optional ``value_range``). This module adds what only generated samples have: a
sampler callable (``sampler(n)`` or ``sampler()``, called under ``torch.no_grad()`` until
``num_samples`` images are drawn), a cap on the number of images, and batches moved to the CPU.

:class:`SampleBatches` is the one stream of a call's samples (or targets): made once from the user's input, it
decodes each image once and is what scoring, the sample grid, the copy-pairs grid and the spool consume.
"""
import inspect
import itertools
import os
from typing import Dict, Optional

import numpy as np
import torch
from PIL import Image

from genmetrics.stats.defaults import DEFAULT_BATCH_SIZE
from genmetrics.stats.images.image_input import check_value_range, iter_image_batches, to_image_batch

__all__ = ["SampleBatches", "iter_sample_batches", "as_float01", "as_uint8_nhwc"]


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


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return batch_size


def iter_sample_batches(samples, num_samples=None, batch_size=DEFAULT_BATCH_SIZE, value_range=None):
    """Yield normalised CPU batches (uint8 or float32 [0, 1], (n, 3, H, W)) of at most `batch_size` images.

    `samples`: anything :func:`genmetrics.stats.images.image_input.iter_image_batches` accepts, or a sampler
    callable (needs `num_samples`). At most `num_samples` images are yielded when it is given.
    """
    value_range = check_value_range(value_range)
    _check_batch_size(batch_size)
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


def as_float01(batch):
    """uint8 or float [0, 1] batch -> float32 [0, 1]."""
    return batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch


def as_uint8_nhwc(batch):
    """uint8 or float [0, 1] (N, 3, H, W) batch -> uint8 (N, H, W, 3) numpy array (floats rounded)."""
    if batch.dtype != torch.uint8:
        batch = (batch * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return batch.permute(0, 2, 3, 1).cpu().numpy()


def _is_single(item):
    """One image (PIL, or an array of 2 or 3 dimensions) rather than a batch, as the normaliser reads an item."""
    return isinstance(item, Image.Image) or item.ndim in (2, 3)


def _array_rows(samples, value_range):
    """Rows by index of an array or tensor batch: the rows sliced, normalised again on their own."""
    def read(indices):
        rows = samples[torch.as_tensor(indices)] if isinstance(samples, torch.Tensor) else samples[indices]
        return dict(zip(indices, as_uint8_nhwc(to_image_batch(rows, value_range).cpu())))
    return read


def _file_rows(path):
    """Rows by index of a folder or zip: the named files (list_image_files order) decoded, and no other."""
    def read(indices):
        from genmetrics.stats.images.image_files import iter_image_files, list_image_files

        names = list_image_files(path)
        batches = iter_image_files(path, [names[i] for i in indices])
        return {i: as_uint8_nhwc(batch)[0] for i, batch in zip(indices, batches)}
    return read


def _item_rows(items, value_range):
    """Rows by index of a list or tuple of batches and single images: row i is in the item whose cumulative
    count first exceeds i; only that item's row is normalised."""
    def read(indices):
        sizes = [1 if _is_single(items[k]) else int(items[k].shape[0]) for k in range(len(items))]
        ends = np.cumsum(sizes)
        found = {}
        for i in indices:
            j = int(np.searchsorted(ends, i, side="right"))
            item, offset = items[j], i - int(ends[j] - sizes[j])
            image = to_image_batch(item, value_range, single=True) if _is_single(item) else \
                to_image_batch(item[offset:offset + 1], value_range)
            found[i] = as_uint8_nhwc(image.cpu())[0]
        return found
    return read


def _row_reader(samples, value_range):
    """How rows of `samples` are read again by index (a function indices -> {index: uint8 (H, W, 3)}), or None for
    an input that cannot be read again (generators, iterators, DataLoaders, samplers, ``.npz`` files)."""
    from genmetrics.stats.images.npz_images import is_npz_file

    if isinstance(samples, (np.ndarray, torch.Tensor)):
        return _array_rows(samples, value_range)
    if isinstance(samples, (str, os.PathLike)):
        return None if is_npz_file(samples) else _file_rows(samples)
    if isinstance(samples, (list, tuple)):
        return _item_rows(samples, value_range)
    return None


def _held_rows(batches, indices):
    """{index: uint8 (H, W, 3)} of the rows `indices` of the held `batches` (row i of their concatenation)."""
    found, position = {}, 0
    for batch in batches:
        for i in [i for i in indices if position <= i < position + batch.shape[0]]:
            found[i] = as_uint8_nhwc(batch[i - position:i - position + 1])[0]
        position += batch.shape[0]
    return found


class SampleBatches:
    """One call's samples (or targets), decoded once at the door.

    Iterating yields the normalised CPU batches (uint8 or float32 [0, 1], (n, 3, H, W); at most `batch_size`
    images each, at most `num_samples` in all; see :func:`iter_sample_batches`) and remembers ``count`` (images
    yielded) and ``kept``: the batches holding the first ``keep`` images (the sample grid's, and the pairs of the
    diversity metrics). The input is decoded by the first iteration only; another one raises, unless the batches
    are held (:meth:`drawn`: read now, iterated any number of times without decoding).

    Rows asked for by index (:meth:`rows`: the copy-pairs grid's flagged samples) come from the held batches, or
    are read again by index, only those rows, from an input that can be (decided here, once): arrays and tensors
    (sliced), folders and zips (the named files), lists and tuples of arrays (the named items). A generator,
    iterator, ``DataLoader``, ``.npz`` file or sampler callable gives no rows beyond ``kept``.
    """

    def __init__(self, samples, num_samples: Optional[int] = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 value_range=None, keep: int = 0):
        value_range, self.keep = check_value_range(value_range), keep
        self._reread = _row_reader(samples, value_range)  # decided once, here
        self._stream = iter(()) if num_samples == 0 else iter_sample_batches(samples, num_samples,
                                                                               _check_batch_size(batch_size),
                                                                               value_range)
        self._first, self._held, self._read = None, None, False
        self.kept, self.count = [], 0

    @classmethod
    def of(cls, samples, num_samples=None, batch_size=DEFAULT_BATCH_SIZE, value_range=None):
        """`samples` itself when it is already a SampleBatches (drawn earlier, e.g. for background scoring), else
        a new one of the user's input."""
        return samples if isinstance(samples, cls) else cls(samples, num_samples, batch_size, value_range)

    def peek(self):
        """Decode the first batch now, so that input the normaliser refuses (a float array on the 0..255 scale, a
        wrong layout) fails before any network loads; iterating yields it first."""
        if self._held is None and not self._read and self._first is None:
            self._first = next(self._stream, None)
        return self

    def _batches(self):
        if self._held is not None:
            return iter(self._held)
        if self._read:
            raise RuntimeError("these samples were read once already; an input is decoded once per call (hold the "
                               "batches with drawn() to read them again)")
        self._read = True
        first, self._first = self._first, None
        return self._stream if first is None else itertools.chain([first], self._stream)

    def __iter__(self):
        self.kept, self.count = [], 0
        for batch in self._batches():
            if self.count < self.keep:
                self.kept.append(batch)
            self.count += batch.shape[0]
            yield batch

    def drawn(self) -> "SampleBatches":
        """Read every batch now and hold it (cloned, so the caller may change its input afterwards): a sampler is
        called now, at this training step, and the held batches are iterated again without decoding."""
        self._held = [batch.clone() for batch in self]
        return self

    @property
    def rereadable(self) -> bool:
        """Whether :meth:`rows` may give any row, not only the kept ones."""
        return self._held is not None or self._reread is not None

    def rows(self, indices) -> Dict[int, np.ndarray]:
        """{index: uint8 (H, W, 3)} of the rows `indices` (sample i is the i-th image yielded) that can be given
        without decoding the whole input again (see the class docstring); {} for an input that cannot be re-read."""
        wanted = sorted({int(i) for i in indices})
        if self._held is not None:
            return _held_rows(self._held, wanted)
        return self._reread(wanted) if self._reread is not None and wanted else {}
