"""The copy-detection grid: each flagged sample beside its nearest reference image, one pair per row.

`score_samples(..., copy_pairs=True)` (which `log_gen_metrics` asks for unless ``log_grid=False``) builds it
when metric ``copy`` flags samples, from the result of ``genmetrics.stats.metrics.copy_detection``:

- **rows**: the flagged samples whose image is available, most suspicious first, at most :data:`MAX_PAIRS`;
  left the sample, right its nearest reference image (``result["nearest"]``) or, when that image is not shown,
  a grey placeholder cell labelled with its index (:func:`placeholder_cell`); all fitted into one square cell
  (the largest side among the shown images, between :data:`MIN_CELL` and :data:`MAX_CELL` pixels; enlarged
  with nearest-neighbour pixels, reduced with Lanczos; a non-square image is centred on white).
- **sample images**: the samples kept for the preview grid (the first 64, more when diversity metrics keep
  pairs), else the rows the call's sample stream gives by index (:class:`~genmetrics.plugin.sample_input.SampleBatches`:
  the batches drawn for background scoring; or, only the shown rows, read again from an input that can be
  read again: arrays and tensors sliced, folders and zips the named files, lists and tuples of arrays the
  named items). From a generator, iterator, ``DataLoader``, ``.npz`` file or sampler callable only the kept
  samples are available, and likewise under ``torch.distributed``; flagged samples beyond them are left out
  of the grid (their indices stay in the ``copy.indices`` tag).
- **reference images** are read only from the location the caller names, ``reference_images=`` (a folder or
  zip of the images the statistics were built from, or the root of the standard dataset they were built
  from; ``genmetrics.registry.datasets.open_reference_images``). Paths stored in the statistics file
  (``source_images`` / ``source_root``) are never opened. Feature row -> image index through the file's
  ``shard_range``; the image is read from inside the named location only (a symlink leading out of it is
  refused) and shown only when its sha256 equals the one the file recorded at build (``image_sha256``).
- **the reference index instead**: without ``reference_images``, for files without ``image_sha256`` (built
  before it was recorded, or from arrays), and for each image that is missing, outside the location or not
  the recorded one, the row shows the sample and a placeholder labelled ``#index`` (the image's index in
  the sorted folder/zip listing or the dataset); the rows text says why.

When no flagged sample is available there is no grid; the caller says why (see ``scoring``).
"""
import numpy as np

from .grid import make_grid
from .sample_input import as_uint8_nhwc

__all__ = ["MAX_PAIRS", "MIN_CELL", "MAX_CELL", "copy_pairs", "pairs_grid", "fit_cell", "placeholder_cell",
           "sample_images", "reference_labels", "verified_references"]

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
    """[(sample, reference), ...] -> one uint8 (H, W, 3) grid, a pair per row.

    Each image is uint8 (h, w, 3); a reference given as text is drawn as :func:`placeholder_cell` of that label.
    """
    if not pairs:
        raise ValueError("pairs_grid needs at least one (sample, reference) pair")
    side = max(max(image.shape[:2]) for pair in pairs for image in pair if not isinstance(image, str))
    cell = min(MAX_CELL, max(MIN_CELL, side))
    tiles = np.stack([placeholder_cell(image, cell) if isinstance(image, str) else fit_cell(image, cell)
                      for pair in pairs for image in pair])
    return make_grid(tiles, columns=2, max_images=len(tiles), padding=padding)


def sample_images(samples, indices, kept):
    """{index: uint8 (H, W, 3)} for the `indices` whose image is available (see the module docstring).

    kept: the preview samples (N, 3, H, W) (sample i is row i), or None. samples: the call's
    :class:`~genmetrics.plugin.sample_input.SampleBatches` (the rows beyond `kept` it can give), or None when only
    `kept` may be used.
    """
    found = {i: as_uint8_nhwc(kept[i:i + 1])[0] for i in indices if kept is not None and i < kept.shape[0]}
    missing = [i for i in indices if i not in found]
    if missing and samples is not None:
        found.update(samples.rows(missing))
    return found


def placeholder_cell(label, cell, background=200, ink=0):
    """uint8 (cell, cell, 3): a grey cell reading ``reference`` and `label` (e.g. ``#17``) in its centre, standing
    in for a reference image that is not shown (PIL's default font, about an eighth of the cell high)."""
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=max(10, cell // 8))
    except (ImportError, OSError, TypeError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    image = Image.new("RGB", (cell, cell), (background,) * 3)
    draw = ImageDraw.Draw(image)
    text = f"reference\n{label}"
    left, top, right, bottom = draw.multiline_textbbox((0, 0), text, font=font, align="center")
    draw.multiline_text(((cell - (right - left)) // 2 - left, (cell - (bottom - top)) // 2 - top), text,
                        fill=(ink,) * 3, font=font, align="center")
    return np.asarray(image)


NOT_NAMED = ("no reference_images given: pass the folder, zip or dataset root the statistics were built from "
             "(reference_images= / --reference-images) to show them")
NO_DIGESTS = ("the statistics file records no image digests (image_sha256: built before they were recorded, "
              "without features, or from an array), so no reference image can be checked")


def reference_labels(meta, rows):
    """{feature row: "#index"} (the image index through the file's ``shard_range``; "row r" when it does not
    map). Arithmetic on the file's attributes only: nothing is read."""
    from genmetrics.registry.datasets import SourceUnavailableError, source_indices

    rows = sorted({int(r) for r in rows})
    try:
        return {row: f"#{int(index)}" for row, index in zip(rows, source_indices(meta, rows))}
    except SourceUnavailableError:
        return {row: f"row {row}" for row in rows}


def verified_references(ref, rows, location):
    """({row: (uint8 (H, W, 3), name)}, {row: reason}, general reason or None) for feature rows `rows` of `ref`.

    An image is returned only when read from `location` (the caller's folder, zip, dataset root or ImageSource;
    see the module docstring) and its sha256 equals ``ref.image_sha256[row]``; each other row gets a reason.
    Without `location` or digests nothing is read and the general reason says why.
    """
    from genmetrics.registry.datasets import SourceUnavailableError, image_name, open_reference_images, \
        source_indices

    rows = sorted({int(r) for r in rows})
    if location is None:
        return {}, {}, NOT_NAMED
    try:
        digests = ref.image_sha256
    except ValueError as error:  # RefStatsFormatError: the dataset is damaged or crafted
        return {}, {}, f"the statistics file's image digests cannot be read: {error}"
    if digests is None:
        return {}, {}, NO_DIGESTS
    try:
        source = open_reference_images(location, ref.meta)
        indices = [int(i) for i in source_indices(ref.meta, rows)]
    except SourceUnavailableError as error:
        return {}, {}, str(error)
    found, why = {}, {}
    for row, index in zip(rows, indices):
        if not 0 <= index < len(source):
            why[row] = f"reference_images holds {len(source)} images, none with index {index}"
            continue
        name = image_name(source, index)
        try:
            image, digest = source.read_image(index)
        except (OSError, ValueError, RuntimeError) as error:
            why[row] = f"{name} cannot be read: {error}"
            continue
        if digest != bytes(np.asarray(digests[row], dtype=np.uint8)):
            why[row] = f"{name} is not the image recorded at build (its sha256 differs)"
            continue
        found[row] = (as_uint8_nhwc(image)[0], name)
    return found, why, None


def _rows_text(shown, result, labels, found, why, general):
    """The grid's rows as one line each, then the general reason (when no reference image could be read)."""
    lines = []
    for i in shown:
        row = int(result["nearest"][i])
        score = f"(score {float(result['scores'][i]):.3f})"
        if row in found:
            lines.append(f"sample {i} ~ reference {found[row][1]} {score}")
        else:
            reason = f": not shown, {why[row]}" if row in why else ""
            lines.append(f"sample {i} ~ reference {labels[row]} {score}{reason}")
    if general:
        lines.append(f"reference images not shown: {general}")
    return "; ".join(lines)


def copy_pairs(result, ref, samples, kept, reference_images=None):
    """(grid, rows) for a ``copy_detection`` `result`, or (None, reason) when no flagged sample is available.

    grid: uint8 (H, W, 3) (see :func:`pairs_grid`); rows: one line per row, ``sample i ~ reference NAME
    (score s)`` for a verified reference image, ``sample i ~ reference #index (score s)`` (with ``: not shown,
    <reason>`` for an image that failed) for a placeholder, and a last line saying why no reference image was
    read when none could be (no `reference_images`, no digests in the file, the location cannot be opened).
    `ref`: the reference ``ReferenceStats``; `samples` / `kept` as in :func:`sample_images`;
    `reference_images`: the caller's location of the reference images (see the module docstring), or None.
    A location given whose images cannot all be shown is warned about (once per process and reason).
    """
    from genmetrics.stats.messages import warn_once

    flagged = [int(i) for i in result["indices"]]
    if samples is None or not samples.rereadable:
        flagged = [i for i in flagged if kept is not None and i < kept.shape[0]]
    flagged = flagged[:MAX_PAIRS]
    if not flagged:
        return None, ("no flagged sample is among those available for the grid (from a generator or sampler only "
                      "the first preview samples are kept)")
    images = sample_images(samples, flagged, kept)
    shown = [i for i in flagged if i in images]
    rows = [int(result["nearest"][i]) for i in shown]
    labels = reference_labels(ref.meta, rows)
    found, why, general = verified_references(ref, rows, reference_images)
    pairs = [(images[i], found[row][0] if row in found else labels[row]) for i, row in zip(shown, rows)]
    text = _rows_text(shown, result, labels, found, why, general)
    if reference_images is not None and (general or why):
        reason = general or next(iter(why.values()))
        warn_once(("copy_pairs reference images", reason), f"copy-pairs grid: reference images not shown: {reason}")
    return pairs_grid(pairs), text
