"""A grid of sample images, as one uint8 (H, W, 3) numpy array for `mlflow.log_image`."""
import math

import numpy as np


__all__ = ["make_grid"]

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
