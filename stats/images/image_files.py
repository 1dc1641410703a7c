"""Image files from a folder (recursive) or a zip archive, in a sorted, deterministic order.

Extensions (case-insensitive): png, jpg, jpeg, bmp, webp, tif, tiff. Files are decoded with PIL and
converted to RGB (``Image.convert("RGB")``, as pytorch-fid and clean-fid do: grayscale is replicated,
alpha dropped, palettes expanded; 16-bit images are clipped to 0..255 by PIL). Order: relative paths
sorted as strings, so the same folder gives the same features on every machine.
"""
import contextlib
import io
import os
import threading
import zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from .threads import pool_size, thread_imap

__all__ = ["IMAGE_EXTENSIONS", "is_image_source", "list_image_files", "iter_image_files", "load_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Largest zip member read (its uncompressed size, as the archive declares it; zipfile never reads past
#: that): a member of a crafted archive cannot make the reader allocate more than this.
MAX_ZIP_MEMBER_BYTES = 256 << 20
#: Largest image decoded (width x height, read from the file's header before decoding): PIL's own
#: decompression-bomb limit (twice its default ``Image.MAX_IMAGE_PIXELS``: ~179 megapixels, so 13000 x 13000 is
#: read), enforced here whatever ``Image.MAX_IMAGE_PIXELS`` is set to (some libraries disable it). Raise it to
#: read larger images; PIL warns (``DecompressionBombWarning``) above its default, ~89 megapixels.
MAX_IMAGE_PIXELS = 2 * 89478485
#: Images with more pixels (2048 x 2048) are decoded one at a time, in the reading thread (see iter_image_files).
LARGE_IMAGE_PIXELS = 1 << 22
#: Images decoded ahead of the consumer by the shared thread pool.
DECODE_AHEAD = 2 * pool_size()
_STRIP_PIXELS = 1 << 20


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_image_source(path):
    """True for an existing folder or ``.zip`` file (the sources this module reads); other zip-based files
    such as ``.npz`` statistics are not image sources."""
    path = os.fspath(path)
    return os.path.isdir(path) or (os.path.isfile(path) and path.lower().endswith(".zip"))


def list_image_files(path):
    """Sorted relative paths of the images in folder or zip `path` (zip: member names; macOS ``__MACOSX``
    resource-fork entries skipped; in folders only regular files, so a FIFO or device named ``x.png`` is
    skipped, never opened). Raises when `path` is neither or holds no image."""
    path = os.fspath(path)
    if os.path.isdir(path):
        names = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            rel_root = os.path.relpath(root, path)
            names += [f if rel_root == "." else os.path.join(rel_root, f) for f in files
                      if _is_image_name(f) and os.path.isfile(os.path.join(root, f))]
    elif os.path.isfile(path) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist()
                     if _is_image_name(n) and not n.endswith("/") and not n.startswith("__MACOSX/")]
    elif os.path.exists(path):
        raise ValueError(f"{path!r} is neither a folder nor a zip file; pass a folder or .zip of images")
    else:
        raise FileNotFoundError(f"image source {path!r} does not exist; pass a folder or .zip of images")
    if not names:
        raise ValueError(f"no images in {path!r}: looked for {', '.join(IMAGE_EXTENSIONS)} files "
                         f"(recursively); add images or point at the folder that holds them")
    return sorted(names)


def load_image(file, name):
    """uint8 RGB (H, W, 3) array from an open binary file; `name` is used in errors.

    Images of more than :data:`MAX_IMAGE_PIXELS` pixels (checked from the file's header, before decoding) and
    files PIL cannot decode are refused with a ValueError naming the file.
    """
    with _decoding(file, name) as image:
        return _rgb_array(image)


class _ImageTooLarge(ValueError):
    """An image over MAX_IMAGE_PIXELS (its own message, not wrapped as a decoding error)."""


@contextlib.contextmanager
def _decoding(file, name):
    """The opened PIL image of `file` (header read, pixels not yet decoded), size checked; decoding errors inside
    the block become a ValueError naming `name`."""
    try:
        with Image.open(file) as image:
            _check_pixels(image.size, name)
            yield image
    except _ImageTooLarge:
        raise
    except Image.DecompressionBombError as error:  # PIL's own limit, when set lower than ours
        raise ValueError(f"image {name} is too large to decode safely ({error}); remove it, or downscale it with "
                         f"a trusted tool") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"cannot decode image {name}: {error}; remove or replace the file") from error


def _check_pixels(size, name):
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise _ImageTooLarge(
            f"image {name} is too large to decode safely: {width} x {height} = {width * height / 1e6:.3g} megapixels "
            f"({width * height * 3 / 2**30:.1f} GiB decoded), more than the {MAX_IMAGE_PIXELS / 1e6:.3g} megapixels "
            f"genmetrics decodes (a decompression-bomb guard, genmetrics.stats.images.image_files.MAX_IMAGE_PIXELS); remove "
            f"it or downscale it with a trusted tool")


def _rgb_array(image):
    """uint8 (H, W, 3) of an opened PIL image (converted to RGB only when it is not RGB: no extra copy)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    return np.asarray(rgb, dtype=np.uint8)


def _chw_array(image):
    """uint8 (3, H, W) of an opened PIL image. A large image is copied out in strips of rows, so that no
    whole-image temporary (PIL's ``tobytes``, a transposed copy) exists besides the decoded image and the result."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    width, height = rgb.size
    if width * height <= _STRIP_PIXELS:
        return np.ascontiguousarray(np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1))
    out = np.empty((3, height, width), np.uint8)
    rows = max(1, _STRIP_PIXELS // width)
    for top in range(0, height, rows):
        strip = np.asarray(rgb.crop((0, top, width, min(height, top + rows))), dtype=np.uint8)
        out[:, top:top + strip.shape[0]] = strip.transpose(2, 0, 1)
    return out


def _open_regular(path):
    """Open `path` for reading only when it is a regular file (a FIFO or device would block or never end)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a regular file (a FIFO, device or folder); remove it from the image folder")
    return open(path, "rb")


class _Files:
    """Opens the images of a folder or zip by relative name; zip members are read under a lock (a ZipFile is not
    safe to use from several threads), folder files concurrently."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.archive = None if os.path.isdir(self.path) else zipfile.ZipFile(self.path)
        self.lock = threading.Lock()

    def open(self, name):
        """(binary file, name shown in errors)."""
        if self.archive is None:
            full = os.path.join(self.path, name)
            return _open_regular(full), full
        with self.lock:
            return io.BytesIO(_read_member(self.archive, name, self.path)), f"{self.path}:{name}"

    def decode(self, name, large=True):
        """uint8 (1, 3, H, W) tensor of image `name`; None when it has more than LARGE_IMAGE_PIXELS and not `large`."""
        file, shown = self.open(name)
        with file, _decoding(file, shown) as image:
            if not large and image.width * image.height > LARGE_IMAGE_PIXELS:
                return None
            array = _chw_array(image)
        import torch  # here: listing a folder (the command line's first check) does not load torch

        return torch.from_numpy(array)[None]

    def close(self):
        if self.archive is not None:
            with self.lock:
                self.archive.close()


def iter_image_files(path, names=None, transform=None):
    """Yield each image of folder/zip `path` as a uint8 tensor (1, 3, H, W), in list_image_files order.

    names: the relative paths to read (default: all of list_image_files(path)).
    transform: applied to each image right after it is decoded (e.g. the resize to a network's input); what is
      yielded is its result.

    Memory: images are decoded (and transformed) on the shared thread pool, at most :data:`DECODE_AHEAD` ahead
    of the consumer; an image of more than :data:`LARGE_IMAGE_PIXELS` pixels is decoded (and transformed) alone,
    in the consumer's thread, when its turn comes. With a `transform` that shrinks images, no full-size image
    is held beyond the one being transformed and those the pool threads are decoding (each at most
    LARGE_IMAGE_PIXELS).
    """
    names = list_image_files(path) if names is None else names
    files = _Files(path)

    def small(name):
        batch = files.decode(name, large=False)
        return batch if batch is None or transform is None else transform(batch)

    decoded = thread_imap(small, names, DECODE_AHEAD)
    try:
        for name, batch in zip(names, decoded):
            if batch is None:  # a large image: decoded here, alone
                batch = files.decode(name)
                batch = batch if transform is None else transform(batch)
            yield batch
            del batch
    finally:
        decoded.close()  # cancels what is queued, waits for running decodes, before the zip is closed
        files.close()


def _read_member(archive, name, path):
    """The bytes of one zip member, refused when it declares more than :data:`MAX_ZIP_MEMBER_BYTES`."""
    size = archive.getinfo(name).file_size
    if size > MAX_ZIP_MEMBER_BYTES:
        raise ValueError(f"image {path}:{name} unpacks to {size} bytes, more than the {MAX_ZIP_MEMBER_BYTES >> 20} MiB "
                         f"an image file may take; remove it from the archive")
    return archive.read(name)
