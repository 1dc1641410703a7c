"""The copy-detection grid: each flagged sample beside its nearest reference image, one pair per row.

`score_samples(..., copy_pairs=True)` (which `log_gen_metrics` asks for unless ``log_grid=False``) builds it
when metric ``copy`` flags samples, from the result of ``genmetrics.stats.copy_detection``:

- **rows**: the flagged samples whose image is available, most suspicious first, at most :data:`MAX_PAIRS`;
  left the sample, right its nearest reference image (``result["nearest"]``), both fitted into one square
  cell (the largest side among the shown images, between :data:`MIN_CELL` and :data:`MAX_CELL` pixels;
  enlarged with nearest-neighbour pixels, reduced with Lanczos; a non-square image is centred on white).
- **sample images**: samples that can be read again are re-read by index, only the shown ones (memory stays
  bounded): arrays and tensors (sliced), folders and zips (the named files), lists and tuples of batches
  (iterated again). From a generator, iterator, ``DataLoader`` or sampler callable only the samples kept for
  the preview grid (the first 64, more when diversity metrics keep pairs) are available, and likewise under
  ``torch.distributed``; flagged samples beyond them are left out of the grid (their indices stay in the
  ``copy.indices`` tag).
- **reference images**: read again from the source the statistics file records (``source_images`` /
  ``source_root``, see ``genmetrics.registry.datasets.reopen_source``), after checking its listing against
  ``source_listing_sha256``; feature row -> image index through the file's ``shard_range``.

When the reference images cannot be read (no source recorded, the folder moved or deleted, files changed)
or no flagged sample is available, there is no grid; the caller says why (see ``scoring``).
"""
import os

import numpy as np
import torch

from genmetrics.stats.image_input import iter_image_batches, to_image_batch

from .grid import make_grid
from .sample_input import as_uint8_nhwc, iter_sample_batches

__all__ = ["MAX_PAIRS", "MIN_CELL", "MAX_CELL", "copy_pairs", "pairs_grid", "fit_cell", "sample_images",
           "reference_images"]

#: At most this many pairs (rows) in one grid.
MAX_PAIRS = 16
#: Bounds of the cell side in pixels: small images are enlarged to MIN_CELL, large ones reduced to MAX_CELL.
MIN_CELL, MAX_CELL = 64, 256


def fit_cell(image, cell, background=255):
    """uint8 (h, w, 3) -> uint8 (cell, cell, 3): scaled to fit (aspect kept), centred on `background`."""
    from PIL import Image

    height, width = image.shape[:2]
    scale = cell / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
        image = np.asarray(Image.fromarray(image).resize(size, resample))
    out = np.full((cell, cell, 3), background, np.uint8)
    top, left = (cell - image.shape[0]) // 2, (cell - image.shape[1]) // 2
    out[top:top + image.shape[0], left:left + image.shape[1]] = image
    return out


def pairs_grid(pairs, padding=2):
    """[(sample, reference), ...] uint8 (h, w, 3) images -> one uint8 (H, W, 3) grid, a pair per row."""
    if not pairs:
        raise ValueError("pairs_grid needs at least one (sample, reference) pair")
    side = max(max(image.shape[:2]) for pair in pairs for image in pair)
    cell = min(MAX_CELL, max(MIN_CELL, side))
    tiles = np.stack([fit_cell(image, cell) for pair in pairs for image in pair])
    return make_grid(tiles, columns=2, max_images=len(tiles), padding=padding)


def _rereadable(samples):
    """Samples that can be read again by index: arrays/tensors, folders/zips, lists/tuples of batches."""
    return isinstance(samples, (np.ndarray, torch.Tensor, str, os.PathLike, list, tuple))


def sample_images(samples, indices, kept, value_range=None, num_samples=None, batch_size=50):
    """{index: uint8 (H, W, 3)} for the `indices` whose image is available (see the module docstring).

    kept: the preview samples (N, 3, H, W) (sample i is row i), or None. samples: the samples as given to
    scoring, or None when only `kept` may be used.
    """
    found = {i: as_uint8_nhwc(kept[i:i + 1])[0] for i in indices if kept is not None and i < kept.shape[0]}
    missing = sorted(i for i in indices if i not in found)
    if not missing or samples is None or not _rereadable(samples):
        return found
    if isinstance(samples, (str, os.PathLike)):
        from genmetrics.stats.image_files import iter_image_files, list_image_files

        names = list_image_files(samples)
        batches = iter_image_files(samples, [names[i] for i in missing])
        found.update((i, as_uint8_nhwc(batch)[0]) for i, batch in zip(missing, batches))
    elif isinstance(samples, (np.ndarray, torch.Tensor)):
        rows = samples[torch.as_tensor(missing)] if isinstance(samples, torch.Tensor) else samples[missing]
        found.update(zip(missing, as_uint8_nhwc(to_image_batch(rows, value_range).cpu())))
    else:
        wanted, position = set(missing), 0
        for batch in iter_sample_batches(samples, num_samples, batch_size, value_range):
            for row in [i for i in wanted if position <= i < position + batch.shape[0]]:
                found[row] = as_uint8_nhwc(batch[row - position:row - position + 1])[0]
                wanted.discard(row)
            position += batch.shape[0]
            if not wanted:
                break
    return found


def reference_images(meta, rows):
    """{feature row: (uint8 (H, W, 3), name)} of a statistics file's reference images (attributes `meta`).

    Raises:
        genmetrics.registry.datasets.SourceUnavailableError: the images cannot be found again (see
            ``reopen_source``).
    """
    from genmetrics.registry.datasets import image_name, reopen_source, source_indices

    source = reopen_source(meta)
    rows = sorted({int(r) for r in rows})
    out = {}
    for row, index in zip(rows, source_indices(meta, rows)):
        index = int(index)
        batch = next(iter_image_batches(source.batch(index, index + 1)))
        out[row] = (as_uint8_nhwc(batch)[0], image_name(source, index))
    return out


def copy_pairs(result, meta, samples, kept, value_range=None, num_samples=None, batch_size=50):
    """(grid, rows) for a ``copy_detection`` `result`, or (None, reason) when no flagged sample is available.

    grid: uint8 (H, W, 3) (see :func:`pairs_grid`); rows: one line per row, ``sample i ~ reference NAME
    (score s)``. `meta`: the reference file's attributes; `samples` / `kept` as in :func:`sample_images`.

    Raises:
        genmetrics.registry.datasets.SourceUnavailableError: the reference images cannot be read again.
    """
    flagged = [int(i) for i in result["indices"]]
    if samples is None or not _rereadable(samples):
        flagged = [i for i in flagged if kept is not None and i < kept.shape[0]]
    flagged = flagged[:MAX_PAIRS]
    if not flagged:
        return None, ("no flagged sample is among those available for the grid (from a generator or sampler only "
                      "the first preview samples are kept)")
    references = reference_images(meta, [result["nearest"][i] for i in flagged])
    images = sample_images(samples, flagged, kept, value_range, num_samples, batch_size)
    shown = [i for i in flagged if i in images]
    pairs, lines = [], []
    for i in shown:
        reference, name = references[int(result["nearest"][i])]
        pairs.append((images[i], reference))
        lines.append(f"sample {i} ~ reference {name} (score {float(result['scores'][i]):.3f})")
    return pairs_grid(pairs), "; ".join(lines)
