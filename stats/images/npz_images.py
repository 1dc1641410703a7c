"""Images from an ``.npz`` file in the format of OpenAI's guided-diffusion evaluator, read batch by batch.

ImageNet papers (ADM, DiT, EDM2, VAR, ...) keep samples and reference batches as ``numpy.savez`` archives whose
``arr_0`` is a uint8 array (N, H, W, 3) (``arr_1``, class labels, is ignored). A 50,000-image sample file at
512x512 holds 39 GB of pixels, so the array is never loaded whole: its ``.npy`` header is checked (dtype uint8,
C order, 4 dimensions, 1, 3 or 4 channels, the declared size equal to the member's size) and then
``batch_size`` images at a time are read from the archive member, whether stored or deflated.
"""
import os
import zipfile
from typing import Iterator, Tuple

import numpy as np

from ..defaults import DEFAULT_BATCH_SIZE

__all__ = ["NPZ_IMAGES_KEY", "is_npz_file", "npz_images_shape", "iter_npz_images"]

#: The member holding the images, as ``numpy.savez(path, images)`` names it.
NPZ_IMAGES_KEY = "arr_0"
#: Largest image side read from an .npz (a header declaring more is refused before anything is read).
MAX_SIDE = 16384
_FORMAT = "uint8 images (N, H, W, 3), as numpy.savez(path, images) stores them (the ADM evaluator's format)"


def is_npz_file(path) -> bool:
    """True for an existing file whose name ends in ``.npz`` (read by this module, not as a zip of images)."""
    return isinstance(path, (str, os.PathLike)) and os.fspath(path).lower().endswith(".npz") and os.path.isfile(path)


def _member(archive, path, key):
    name = f"{key}.npy"
    if name not in archive.namelist():
        held = sorted(n[:-4] if n.endswith(".npy") else n for n in archive.namelist())
        raise ValueError(f"{path} holds {held or 'nothing'}, not {key!r}; expected {_FORMAT}")
    return archive.getinfo(name)


def _read_header(fp, path, key):
    """(shape, header bytes) of the member's ``.npy`` header, refusing anything but C-order uint8 (N, H, W, C)."""
    try:
        version = np.lib.format.read_magic(fp)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(fp)
    except (ValueError, KeyError, EOFError) as error:
        raise ValueError(f"{path}: {key} is not a readable .npy array ({error}); expected {_FORMAT}") from None
    if dtype != np.uint8 or fortran or len(shape) != 4 or shape[3] not in (1, 3, 4):
        raise ValueError(f"{path}: {key} is {dtype} {'Fortran-order ' if fortran else ''}{shape}; expected {_FORMAT}")
    if not all(0 < side <= MAX_SIDE for side in shape[1:3]):
        raise ValueError(f"{path}: {key} declares images of {shape[1]}x{shape[2]} pixels; sides must be 1..{MAX_SIDE}")
    return shape, fp.tell()


def npz_images_shape(path, key: str = NPZ_IMAGES_KEY) -> Tuple[int, int, int, int]:
    """(N, H, W, C) of the images in `path`, from the header alone; the declared size must match the member's."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = _member(archive, path, key)
            with archive.open(info) as fp:
                shape, header = _read_header(fp, path, key)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{path} is not a readable .npz archive ({error}): truncated or not made by numpy.savez; "
                         f"expected {_FORMAT}") from None
    if int(np.prod(shape, dtype=np.float64)) != info.file_size - header:
        raise ValueError(f"{path}: {key} declares {shape} ({int(np.prod(shape, dtype=np.float64))} bytes) but the "
                         f"archive member holds {info.file_size - header}; the file is truncated or corrupt")
    return tuple(int(s) for s in shape)


def iter_npz_images(path, key: str = NPZ_IMAGES_KEY, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[np.ndarray]:
    """Yield the images of `path` as uint8 arrays (n, H, W, C), `batch_size` at a time, in file order.

    Memory: one batch (`batch_size` x H x W x C bytes), whatever N is. Raises ValueError for a file that is not
    in the format above or ends early.
    """
    path = os.fspath(path)
    count, height, width, channels = npz_images_shape(path, key)
    image_bytes = height * width * channels
    with zipfile.ZipFile(path) as archive, archive.open(_member(archive, path, key)) as fp:
        _read_header(fp, path, key)
        for start in range(0, count, batch_size):
            n = min(batch_size, count - start)
            data = bytearray(n * image_bytes)  # writable, so torch.from_numpy can share it
            got = fp.readinto(data)
            if got != len(data):
                raise ValueError(f"{path}: {key} ends after {start + got // image_bytes} of {count} images; the "
                                 f"file is truncated")
            yield np.frombuffer(data, dtype=np.uint8).reshape(n, height, width, channels)
