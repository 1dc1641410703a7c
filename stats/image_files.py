"""Image files from a folder (recursive) or a zip archive, in a sorted, deterministic order.

Extensions (case-insensitive): png, jpg, jpeg, bmp, webp, tif, tiff. Files are decoded with PIL and
converted to RGB (``Image.convert("RGB")``, as pytorch-fid and clean-fid do: grayscale is replicated,
alpha dropped, palettes expanded; 16-bit images are clipped to 0..255 by PIL). Order: relative paths
sorted as strings, so the same folder gives the same features on every machine.
"""
import io
import os
import zipfile

import numpy as np
from PIL import Image, UnidentifiedImageError

from .threads import thread_map

__all__ = ["IMAGE_EXTENSIONS", "is_image_source", "list_image_files", "iter_image_files", "load_image"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Largest zip member read (its uncompressed size, as the archive declares it; zipfile never reads past
#: that): a member of a crafted archive cannot make the reader allocate more than this.
MAX_ZIP_MEMBER_BYTES = 256 << 20


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

    Images over PIL's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS`` x 2, ~179 megapixels) and files
    PIL cannot decode are refused with a ValueError naming the file.
    """
    try:
        with Image.open(file) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError as error:
        raise ValueError(f"image {name} is too large to decode safely ({error}); remove it, or downscale it with "
                         f"a trusted tool") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ValueError(f"cannot decode image {name}: {error}; remove or replace the file") from error


def _open_regular(path):
    """Open `path` for reading only when it is a regular file (a FIFO or device would block or never end)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path} is not a regular file (a FIFO, device or folder); remove it from the image folder")
    return open(path, "rb")


def iter_image_files(path, names=None, chunk=64):
    """Yield each image of folder/zip `path` as a uint8 tensor (1, 3, H, W), in list_image_files order.

    names: the relative paths to read (default: all of list_image_files(path)). Files are decoded `chunk`
    at a time on the shared thread pool.
    """
    names = list_image_files(path) if names is None else names
    path = os.fspath(path)
    if os.path.isdir(path):
        def read(name):
            full = os.path.join(path, name)
            with _open_regular(full) as f:
                return _as_batch(load_image(f, full))
        for start in range(0, len(names), chunk):
            yield from thread_map(read, names[start:start + chunk])
    else:
        with zipfile.ZipFile(path) as archive:
            for start in range(0, len(names), chunk):
                blobs = [(name, _read_member(archive, name, path)) for name in names[start:start + chunk]]
                yield from thread_map(lambda item: _as_batch(load_image(io.BytesIO(item[1]), f"{path}:{item[0]}")),
                                      blobs)


def _read_member(archive, name, path):
    """The bytes of one zip member, refused when it declares more than :data:`MAX_ZIP_MEMBER_BYTES`."""
    size = archive.getinfo(name).file_size
    if size > MAX_ZIP_MEMBER_BYTES:
        raise ValueError(f"image {path}:{name} unpacks to {size} bytes, more than the {MAX_ZIP_MEMBER_BYTES >> 20} MiB "
                         f"an image file may take; remove it from the archive")
    return archive.read(name)


def _as_batch(array):
    import torch  # here: listing a folder (the command line's first check) does not load torch

    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]
