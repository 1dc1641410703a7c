"""A grid of sample images, as one uint8 (H, W, 3) numpy array for `mlflow.log_image`."""
import math

import numpy as np


__all__ = ["make_grid", "describe_sizes", "fit_images", "stack_images", "gather_images"]

def make_grid(images, columns=None, max_images=64, padding=2, background=255):
    """Tile uint8 images (N, h, w, 3) row-major into a grid of `columns` columns.

    columns: None = ceil(sqrt(N)) (N after `max_images`), a grid as square as the count allows: MLflow's image
    card fits the image into a square box, so a square grid fills it from the top (a wide one is letterboxed
    and starts lower, below the fold of the card).

    At most `max_images` images are used; cells are separated (and framed) by `padding` pixels of
    value `background`. Returns a uint8 array of shape
    (rows * (h + padding) + padding, columns' * (w + padding) + padding, 3), where columns' is
    min(columns, N).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(
            f"make_grid needs uint8 images of shape (N, h, w, 3), got {images.dtype} {images.shape}; "
            f"use ScoreResult.preview."
        )
    if (columns is not None and columns < 1) or max_images < 1:
        raise ValueError(f"columns and max_images must be >= 1, got {columns} and {max_images}.")
    images = images[:max_images]
    count, height, width = images.shape[:3]
    if count == 0:
        raise ValueError("make_grid needs at least one image.")
    columns = min(columns or math.ceil(math.sqrt(count)), count)
    rows = -(-count // columns)
    grid = np.full(
        (rows * (height + padding) + padding, columns * (width + padding) + padding, 3), background, np.uint8
    )
    for index, image in enumerate(images):
        row, col = divmod(index, columns)
        top, left = padding + row * (height + padding), padding + col * (width + padding)
        grid[top:top + height, left:left + width] = image
    return grid


def describe_sizes(sizes, shown=3):
    """Distinct (h, w) sizes, in order, as text for messages: ``32x32, 48x40 and 2 more``."""
    sizes = list(dict.fromkeys((int(h), int(w)) for h, w in sizes))
    text = ", ".join(f"{h}x{w}" for h, w in sizes[:shown])
    return text + (f" and {len(sizes) - shown} more" if len(sizes) > shown else "")


def fit_images(images, cell):
    """Images (each a (1, 3, h, w) or (3, h, w) tensor, uint8 or float [0, 1]) -> uint8 (N, 3, cell, cell) tensor,
    each scaled to fit its square cell (aspect kept, centred on white: ``copy_grid.fit_cell``)."""
    import torch

    from .copy_grid import fit_cell
    from .sample_input import as_uint8_nhwc

    tiles = [fit_cell(as_uint8_nhwc(image.reshape(1, *image.shape[-3:]))[0], cell) for image in images]
    return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


def stack_images(batches, limit):
    """The first `limit` images of `batches` ((n, 3, h, w) tensors) as one (N, 3, H, W) tensor, and None.

    Images of different sizes cannot be stacked as they are: each is then fitted into one square cell
    (:func:`fit_images`; the cell is the largest side among them, between ``copy_grid.MIN_CELL`` and
    ``MAX_CELL`` pixels, as in the copy-pairs grid) and the second value names their sizes
    (:func:`describe_sizes`), for the messages of what needs one size (diversity metrics).
    Returns (None, None) for no images.
    """
    import torch

    from .copy_grid import MAX_CELL, MIN_CELL
    from .sample_input import as_float01

    images = [image for batch in batches for image in batch.split(1)][:limit]
    if not images:
        return None, None
    sizes = {tuple(image.shape[-2:]) for image in images}
    if len(sizes) == 1:
        if len({image.dtype for image in images}) > 1:  # uint8 and float batches: all as float in [0, 1]
            images = [as_float01(image) for image in images]
        return torch.cat(images), None
    cell = min(MAX_CELL, max(MIN_CELL, max(max(size) for size in sizes)))
    return fit_images(images, cell), describe_sizes(image.shape[-2:] for image in images)


def gather_images(images, mixed_sizes, limit):
    """Under an initialised process group: every rank's kept images (``all_gather_rows``, rank order, the first
    `limit`) and whether any rank's differ in size. When the ranks' images differ in size, dtype or mixedness,
    each rank fits its images into a cell of ``copy_grid.MAX_CELL`` pixels first, so that all gather the same
    thing. Outside a process group: the arguments unchanged."""
    import torch

    from genmetrics.stats.streaming.distributed import all_gather_rows

    from .copy_grid import MAX_CELL
    from .sample_input import as_float01

    shape = None if images is None else [*images.shape[1:], int(images.dtype == torch.uint8), int(bool(mixed_sizes))]
    shapes = all_gather_rows(None if shape is None else torch.tensor([shape], dtype=torch.int64))
    if shapes is None:
        return None, None
    rows = {tuple(row.tolist()) for row in shapes}
    if len({row[:3] + row[4:] for row in rows}) > 1:  # sizes (or mixedness) differ
        mixed_sizes = mixed_sizes or "the ranks' samples differ in size"
        images = None if images is None else fit_images(images, MAX_CELL)
    elif len(rows) > 1 and images is not None:  # only the dtypes differ: all as float in [0, 1]
        images = as_float01(images)
    gathered = all_gather_rows(images)
    return (None if gathered is None else gathered[:limit]), (mixed_sizes or None)
