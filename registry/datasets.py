"""Indexable image sources for `build`: folders/zips, arrays, and standard datasets read by torchvision.

Every source has a length and ``batch(start, stop)`` returning images ``start..stop-1`` in a fixed order
(an array (N, H, W, C)/(N, C, H, W) or a list of (1, 3, H, W) uint8 tensors), so a build can be split into
disjoint shards and resumed at any image index.

Standard datasets are read from their native files under ``root`` by torchvision's own classes
(``download=False``: nothing is downloaded at build time); grayscale datasets (MNIST, Fashion-MNIST) are
replicated to RGB. Images are used at their native size; the Inception preprocessing (``mode``) resizes
them to 299x299.
"""
import os

import numpy as np
import torch

__all__ = ["ImageSource", "ArraySource", "FileSource", "TorchvisionSource", "dataset_source", "DATASETS",
           "image_source"]


class ImageSource:
    """Base: ``len(source)`` images, ``batch(start, stop)``, a ``description`` for provenance."""

    description = ""
    default_name = None
    default_split = None
    default_resolution = None

    def __len__(self):
        raise NotImplementedError

    def batch(self, start, stop):
        raise NotImplementedError


class ArraySource(ImageSource):
    """A 4-D uint8 / float [0, 1] array or tensor (NCHW or NHWC), sliced along the first axis."""

    def __init__(self, images, description="in-memory array"):
        from genmetrics.stats.image_input import iter_image_batches

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
        from genmetrics.stats.image_files import list_image_files

        self.path = os.path.abspath(os.fspath(path))
        self.names = list_image_files(self.path)
        self.description = f"images of {self.path}"
        stem = os.path.basename(self.path.rstrip(os.sep))
        self.default_name = os.path.splitext(stem)[0] if stem.lower().endswith(".zip") else stem

    def __len__(self):
        return len(self.names)

    def batch(self, start, stop):
        from genmetrics.stats.image_files import iter_image_files

        return list(iter_image_files(self.path, self.names[start:stop]))


class TorchvisionSource(ImageSource):
    """A torchvision dataset: its ``data`` array when it has one (CIFAR, STL-10, MNIST), else item images."""

    def __init__(self, dataset, description, gray=False, layout="NHWC"):
        self.dataset = dataset
        self.description = description
        self.gray = gray
        self.layout = layout
        data = getattr(dataset, "data", None)
        self.data = data if isinstance(data, (np.ndarray, torch.Tensor)) else None

    def __len__(self):
        return len(self.dataset)

    def batch(self, start, stop):
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
    source = factory(os.path.expanduser(os.fspath(root)), split)
    source.default_name, source.default_split, source.default_resolution = key, split, resolution
    return source


def image_source(source, root=None, split=None):
    """An ImageSource for a folder/zip path, a dataset name, a 4-D array/tensor, or an ImageSource."""
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
