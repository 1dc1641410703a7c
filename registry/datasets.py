"""Indexable image sources for `build`: folders/zips, arrays, and standard datasets read by torchvision.

Every source has a length and ``batch(start, stop)`` returning images ``start..stop-1`` in a fixed order
(an array (N, H, W, C)/(N, C, H, W) or a list of (1, 3, H, W) uint8 tensors), so a build can be split into
disjoint shards and resumed at any image index.

Sources that can be found again (folders, zips, standard datasets) record, at build, what identifies them:

- ``source_images`` / ``source_root`` (``locator``): the absolute path of the folder or zip, or the dataset
  name (``cifar10``, ...) and its root folder. Descriptive provenance only: nothing ever opens them;
- per feature row, the sha256 of its image (:meth:`ImageSource.digests`, the file's ``image_sha256`` dataset):
  of the image file's bytes (folders, zips) or of its decoded pixels (standard datasets, :func:`pixel_digest`).

To read reference images again (the copy-detection grid does), the *caller* names where they are:
:func:`open_reference_images` opens that folder, zip or dataset root, never a path from the file;
:func:`source_indices` maps the file's feature rows to image indices (through ``shard_range``: shards and
merges keep their rows in source order), and :meth:`ImageSource.read_image` reads one image with the digest
of what it read, from inside that location only (a symlink leading out of it is refused), so that the caller
can compare it with the recorded one. Arrays and iterables of batches record neither.

Standard datasets are read from their native files under ``root`` by torchvision's own classes
(``download=False``: nothing is downloaded at build time); grayscale datasets (MNIST, Fashion-MNIST) are
replicated to RGB. Images are used at their native size; the Inception preprocessing (``mode``) resizes
them to 299x299.
"""
import os

import numpy as np

__all__ = ["ImageSource", "ArraySource", "FileSource", "TorchvisionSource", "dataset_source", "DATASETS",
           "image_source", "SourceUnavailableError", "ImageOutsideError", "open_reference_images", "source_indices",
           "image_name", "pixel_digest"]


def pixel_digest(image):
    """sha256 digest (32 bytes) of one decoded image, a uint8 (3, H, W) array: of ``"3xHxW:"`` and its bytes."""
    import hashlib

    array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    shape = "x".join(str(d) for d in array.shape)
    return hashlib.sha256(shape.encode("ascii") + b":" + array.tobytes()).digest()


def _digest_rows(digests):
    """A list of 32-byte digests -> (n, 32) uint8."""
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)


class ImageOutsideError(ValueError):
    """An image to read lies outside the location the caller named (a symlink leading out of it)."""


def _inside(root, path):
    """Real path of `path` when it is a regular file inside folder `root` (real paths); else ImageOutsideError."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise ImageOutsideError(f"{path} leads outside {root} (to {real}), so it is not read")
    if not os.path.isfile(real):
        raise ImageOutsideError(f"{path} is not a regular file, so it is not read")
    return real


class ImageSource:
    """Base: ``len(source)`` images, ``batch(start, stop)``, a ``description`` for provenance, and a
    ``locator`` (``{"source_images": ..., "source_root": ...}``, see the module docstring) for sources that can
    be named again, else None."""

    description = ""
    locator = None
    default_name = None
    default_split = None
    default_resolution = None

    def __len__(self):
        raise NotImplementedError

    def batch(self, start, stop):
        raise NotImplementedError

    def digests(self, start, stop, images):
        """(stop - start, 32) uint8: the sha256 of each image ``start..stop-1``; `images` is ``batch(start, stop)``
        (already read). Here: of the decoded pixels (:func:`pixel_digest`)."""
        from genmetrics.stats.images.image_input import iter_image_batches

        return _digest_rows([pixel_digest(image.numpy()) for batch in iter_image_batches(images) for image in batch])

    def read_image(self, index):
        """(uint8 (1, 3, H, W) tensor, 32-byte digest) of image `index`, the digest computed as :meth:`digests`
        does, from what was read."""
        from genmetrics.stats.images.image_input import iter_image_batches

        batch = next(iter_image_batches(self.batch(index, index + 1)))
        return batch, pixel_digest(batch[0].numpy())


class ArraySource(ImageSource):
    """A 4-D uint8 / float [0, 1] array or tensor (NCHW or NHWC), sliced along the first axis."""

    def __init__(self, images, description="in-memory array"):
        from genmetrics.stats.images.image_input import iter_image_batches

        # the normaliser's emptiness, layout and channel rules, before any work starts (values: per batch)
        next(iter_image_batches(np.zeros(tuple(images[:1].shape), np.uint8)))
        self.images = images
        self.description = f"{description} {tuple(images.shape)} {images.dtype}"

    def __len__(self):
        return int(self.images.shape[0])

    def batch(self, start, stop):
        return self.images[start:stop]


class FileSource(ImageSource):
    """Image files of a folder (recursive) or zip, in sorted relative-path order."""

    def __init__(self, path):
        from genmetrics.stats.images.image_files import list_image_files

        self.path = os.path.abspath(os.fspath(path))
        self.names = list_image_files(self.path)
        self.description = f"images of {self.path}"
        self.locator = {"source_images": self.path}
        stem = os.path.basename(self.path.rstrip(os.sep))
        self.default_name = os.path.splitext(stem)[0] if stem.lower().endswith(".zip") else stem

    def __len__(self):
        return len(self.names)

    def batch(self, start, stop):
        from genmetrics.stats.images.image_files import iter_image_files

        return list(iter_image_files(self.path, self.names[start:stop]))

    def digests(self, start, stop, images=None):
        """(stop - start, 32) uint8: the sha256 of each image file's bytes (folder file or zip member)."""
        import hashlib

        return _digest_rows([hashlib.sha256(data).digest() for data in self._file_bytes(self.names[start:stop])])

    def read_image(self, index):
        """(uint8 (1, 3, H, W) tensor, sha256 of the file's bytes) of image `index`, decoded from the bytes that
        were hashed. In a folder the file must be a regular file inside it (real paths: a symlink leading out
        of the folder raises :class:`ImageOutsideError`); a zip's members are read from the archive."""
        import hashlib
        import io

        import torch

        from genmetrics.stats.images.image_files import load_image

        name = self.names[index]
        if os.path.isdir(self.path):
            _inside(self.path, os.path.join(self.path, name))
        (data,) = self._file_bytes([name])
        image = load_image(io.BytesIO(data), f"{self.path}:{name}")
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None], hashlib.sha256(data).digest()

    def _file_bytes(self, names):
        """The bytes of the named files (folder: regular files only; zip: members within the size limit)."""
        import zipfile

        from genmetrics.stats.images.image_files import _open_regular, _read_member

        if os.path.isdir(self.path):
            out = []
            for name in names:
                with _open_regular(os.path.join(self.path, name)) as f:
                    out.append(f.read())
            return out
        with zipfile.ZipFile(self.path) as archive:
            return [_read_member(archive, name, self.path) for name in names]


class TorchvisionSource(ImageSource):
    """A torchvision dataset: its ``data`` array when it has one (CIFAR, STL-10, MNIST), else item images."""

    def __init__(self, dataset, description, gray=False, layout="NHWC"):
        self.dataset = dataset
        self.description = description
        self.gray = gray
        self.layout = layout
        import torch

        data = getattr(dataset, "data", None)
        self.data = data if isinstance(data, (np.ndarray, torch.Tensor)) else None

    def __len__(self):
        return len(self.dataset)

    def read_image(self, index):
        """As :meth:`ImageSource.read_image`; a dataset of image files (``samples``, e.g. ImageFolder) is read
        only when the file lies inside ``root`` (set by :func:`dataset_source`), else ImageOutsideError."""
        samples = getattr(self.dataset, "samples", None)
        if samples is not None and getattr(self, "root", None):
            _inside(self.root, samples[index][0])
        return super().read_image(index)

    def batch(self, start, stop):
        import torch

        if self.data is not None:
            images = self.data[start:stop]
            if isinstance(images, torch.Tensor):
                images = images.numpy()
            if self.gray:
                images = np.repeat(np.asarray(images)[..., None], 3, axis=-1)
            return np.ascontiguousarray(images)
        out = []
        for i in range(start, stop):
            image = self.dataset[i][0]
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            out.append(torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None])
        return out


def _missing(name, root, how):
    return FileNotFoundError(f"{name} files were not found under root={root!r}. {how} Then pass that folder "
                             f"as root (--root).")


def _train_test(cls_name, how_to_get, gray=False):
    """Maker for a torchvision dataset class with a ``train=`` flag (CIFAR, MNIST families)."""
    def make(root, split):
        import torchvision.datasets as tvd

        if split not in ("train", "test"):
            raise ValueError(f"{cls_name} splits are 'train' and 'test', got {split!r}")
        try:
            dataset = getattr(tvd, cls_name)(root, train=split == "train", download=False)
        except RuntimeError as error:
            raise _missing(cls_name, root, how_to_get(root)) from error
        description = f"torchvision.datasets.{cls_name}(root={root!r}, train={split == 'train'})"
        return TorchvisionSource(dataset, description + (" as RGB" if gray else ""), gray=gray)
    return make


def _cifar(cls_name, folder, url):
    return _train_test(cls_name, lambda root: (
        f"Expected {os.path.join(root, folder)}/ in the python-pickle format. Get it with "
        f"torchvision.datasets.{cls_name}(root, download=True) or download {url} and extract it into root."))


def _stl10(root, split):
    import torchvision.datasets as tvd

    try:
        dataset = tvd.STL10(root, split=split, download=False)
    except RuntimeError as error:
        raise _missing("STL10", root, "Get it with torchvision.datasets.STL10(root, download=True) or download "
                                      "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz and extract it "
                                      "into root.") from error
    source = TorchvisionSource(dataset, f"torchvision.datasets.STL10(root={root!r}, split={split!r})")
    source.data = np.ascontiguousarray(dataset.data.transpose(0, 2, 3, 1))  # stored as NCHW
    return source


def _mnist(cls_name, url):
    return _train_test(cls_name, lambda root: (
        f"Get it with torchvision.datasets.{cls_name}(root, download=True) or download the four files from "
        f"{url} into {os.path.join(root, cls_name, 'raw')}."), gray=True)


def _celeba(root, split):
    import torchvision.datasets as tvd

    try:
        dataset = tvd.CelebA(root, split=split, target_type=[], download=False)
    except RuntimeError as error:
        raise _missing("CelebA", root, "Download img_align_celeba.zip and the list_*.txt files from "
                                       "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into root/celeba/ "
                                       "(torchvision.datasets.CelebA(root, download=True) tries Google Drive).") from error
    return TorchvisionSource(dataset, f"torchvision.datasets.CelebA(root={root!r}, split={split!r})")


def _lsun(category):
    def make(root, split):
        import torchvision.datasets as tvd

        try:
            dataset = tvd.LSUN(root, classes=[f"{category}_{split}"])
        except ImportError as error:
            raise ImportError("LSUN is stored as LMDB databases; install the lmdb package (pip install lmdb)") from error
        except Exception as error:  # noqa: BLE001 - lmdb raises its own error types for a missing database
            raise _missing(f"LSUN {category}", root, f"Download {category}_{split}_lmdb.zip with the LSUN tools "
                                                      f"(https://github.com/fyu/lsun, download.py -c {category}) and "
                                                      f"unzip it into root.") from error
        return TorchvisionSource(dataset, f"torchvision.datasets.LSUN(root={root!r}, classes=['{category}_{split}'])")
    return make


def _imagenet(root, split):
    import torchvision.datasets as tvd

    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
        raise _missing("ImageNet", root, f"Expected class folders of JPEG files under {folder} (the ILSVRC2012 "
                                         f"layout root/train/<wnid>/*.JPEG, root/val/<wnid>/*.JPEG); get the "
                                         f"archives from https://image-net.org/download.php.")
    return TorchvisionSource(tvd.ImageFolder(folder), f"torchvision.datasets.ImageFolder({folder!r})")


def _coco2014_30k(root, split):
    from .coco import CocoCaptionsSource

    return CocoCaptionsSource(root, split)


#: name -> (factory(root, split), default split, native resolution or None)
DATASETS = {
    "cifar10": (_cifar("CIFAR10", "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
                "train", 32),
    "cifar100": (_cifar("CIFAR100", "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
                 "train", 32),
    "stl10": (_stl10, "train", 96),
    "mnist": (_mnist("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"), "train", 28),
    "fashion_mnist": (_mnist("FashionMNIST", "https://github.com/zalandoresearch/fashion-mnist"), "train", 28),
    "celeba": (_celeba, "train", None),
    "imagenet": (_imagenet, "train", None),
    "coco2014_30k": (_coco2014_30k, "val2014", 256),
}
for _category in ("bedroom", "bridge", "church_outdoor", "classroom", "conference_room", "dining_room", "kitchen",
                  "living_room", "restaurant", "tower"):
    DATASETS[f"lsun_{_category}"] = (_lsun(_category), "train", None)
DATASETS["lsun_church"] = DATASETS["lsun_church_outdoor"]


def dataset_source(name, root, split=None):
    """A standard dataset by name, read from its native files under `root`."""
    key = name.lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} (or pass a folder or zip of images)")
    if root is None:
        raise ValueError(f"building {name} statistics needs root= (--root): the folder holding the dataset's "
                         f"files in their native format")
    factory, default_split, resolution = DATASETS[key]
    split = split or default_split
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    source = factory(root, split)
    source.default_name, source.default_split, source.default_resolution = key, split, resolution
    source.locator = {"source_images": key, "source_root": root}
    source.root = root
    return source


def image_source(source, root=None, split=None):
    """An ImageSource for a folder/zip path, a dataset name, a 4-D array/tensor, or an ImageSource."""
    import torch

    if isinstance(source, ImageSource):
        return source
    if isinstance(source, (np.ndarray, torch.Tensor)):
        return ArraySource(source)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if os.path.exists(text):
            return FileSource(text)
        if text.lower().replace("-", "_") in DATASETS:
            return dataset_source(text, root, split)
        raise FileNotFoundError(f"{text!r} is neither an existing folder/zip of images nor a known dataset name "
                                f"({', '.join(sorted(DATASETS))})")
    return None


class SourceUnavailableError(RuntimeError):
    """The reference images cannot be read from the location the caller named; the message says why."""


def _dataset_kind(meta):
    """(name, split) of the standard dataset a statistics file says it was built from, or None for a folder/zip.

    A name outside :data:`DATASETS`, or a split that is not a plain name (it becomes a folder name under the
    caller's root for ImageNet), raises SourceUnavailableError; LSUN is refused (its torchvision loader unpickles
    a ``_cache_*`` file from the working directory).
    """
    import re

    name, root = meta.get("source_images"), meta.get("source_root")
    if not root:
        return None
    key = str(name).lower().replace("-", "_")
    if key not in DATASETS:
        raise SourceUnavailableError(f"the statistics file names an unknown standard dataset {str(name)[:80]!r}")
    if key.startswith("lsun"):
        raise SourceUnavailableError(f"the reference images are LSUN ({key}), whose torchvision loader unpickles a "
                                     f"'_cache_*' file from the working directory; LSUN references are not read again")
    split = str(meta.get("split") or DATASETS[key][1])
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", split):
        raise SourceUnavailableError(f"the statistics file's split {split[:80]!r} is not a plain name")
    return key, split


def open_reference_images(location, meta) -> ImageSource:
    """The reference images at `location`, a folder, zip or dataset root named by the caller (or an ImageSource).

    `meta` (a statistics file's attributes) only says how to read `location`: when it records a standard
    dataset (``source_root`` set, ``source_images`` a name of :data:`DATASETS`), `location` is that dataset's
    root, read by torchvision with the file's ``split`` (a plain name); otherwise `location` is a folder or zip of
    image files. No path stored in `meta` is opened. Which image belongs to which feature row is for the caller
    to check, against the file's ``image_sha256``.

    Raises:
        SourceUnavailableError: `location` cannot be opened or holds no images, or the file names LSUN or an
            unknown dataset.
    """
    if isinstance(location, ImageSource):
        return location
    path = os.path.abspath(os.path.expanduser(os.fspath(location)))
    kind = _dataset_kind(meta)
    try:
        return dataset_source(kind[0], path, kind[1]) if kind else FileSource(path)
    except (OSError, ValueError, ImportError, RuntimeError) as error:
        what = f"the {kind[0]} dataset's root" if kind else "a folder or zip of images"
        raise SourceUnavailableError(f"reference_images {path} cannot be opened as {what}: {error}") from error


def source_indices(meta, rows):
    """Image indices in the source of feature rows `rows` of a file with attributes `meta` (numpy int64).

    A build stores its features in source order from the start of its ``shard_range`` ("a:b", or "a:b,c:d" for
    a partial merge, whose rows follow its ranges in order); a file without one counts from 0.

    Raises:
        SourceUnavailableError: a row beyond the ranges (the file's rows do not match its ranges).
    """
    text = str(meta.get("shard_range") or f"0:{meta.get('num_samples') or 0}")
    starts, offsets, total = [], [], 0
    for part in text.split(","):
        start, _, stop = part.partition(":")
        try:
            start, stop = int(start), int(stop)
        except ValueError:
            raise SourceUnavailableError(f"shard_range {text!r} is not a list of start:stop ranges") from None
        starts.append(start)
        offsets.append(total)
        total += stop - start
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= total):
        raise SourceUnavailableError(f"feature row {int(rows.max())} is beyond the {total} images of shard_range "
                                     f"{text!r}; the file's features do not match its ranges")
    which = np.searchsorted(np.asarray(offsets), rows, side="right") - 1
    return np.asarray(starts, dtype=np.int64)[which] + rows - np.asarray(offsets, dtype=np.int64)[which]


def image_name(source, index):
    """A human name of image `index` of `source`: its relative file name, else ``#index``."""
    names = getattr(source, "names", None)
    return names[index] if names is not None else f"#{index}"
