"""Build checkpoints and the one-writer lock: who may write an output, and what a checkpoint was made from.

One writer per output: a build holds ``<output>.lock`` (an OS lock that dies with its process: a killed build
leaves at most an unlocked empty file, which the next build takes over) from reading its checkpoint to renaming
the finished file into place, and removes it after (see :func:`output_lock`). A second build of the same output
does not wait (it would only redo the same work): it fails at once with :class:`BuildLockedError`, naming the
output and the lock.

A checkpoint (``<output>.ckpt.npz``, written atomically after every chunk) records

- a fingerprint (JSON) of everything that determines the result: dataset, split, mode, feature extractor,
  layer, weights (the file's sha256, or for a model without one the sha256 of its parameters), the source
  description and the sha256 of its listing (:func:`source_digest`), the number of images, the shard,
  the chunk size and whether features are kept;
- the moments so far with their shift (``GaussianMoments.state_dict()``: stable for any feature mean);
- for an iterable of batches, which cannot be listed in advance, the sha256 of the images consumed so far
  (:class:`StreamDigest`), checked against the images skipped on resume.

A checkpoint whose fingerprint differs is discarded with a warning (the build starts over); one that cannot
be read is discarded the same way.
"""
import hashlib
import json
import os
import warnings
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import numpy as np

from genmetrics.stats.messages import GenMetricsWarning

__all__ = ["BuildLockedError", "output_lock", "source_digest", "model_identity", "StreamDigest", "fingerprint",
           "save_checkpoint", "load_checkpoint"]

_FINGERPRINT_KEYS = ("dataset", "split", "mode", "feature_extractor", "feature_layer", "weights_sha256", "source",
                     "source_listing_sha256", "shard", "chunk_size")


class BuildLockedError(RuntimeError):
    """Another process is building the same output."""


@contextmanager
def output_lock(target):
    """Hold ``<target>.lock`` for the block, then remove it; BuildLockedError at once when another process holds it.

    The lock is an ``flock`` on that file (the OS drops it when its process dies). Removing the file is safe: a
    process that opened it before the removal finds, once it holds the lock, that the path no longer names the
    file it locked, and starts again on a new one. Without ``fcntl`` (Windows) ``filelock`` is used and the
    empty file stays.
    """
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    path = target + ".lock"
    if fcntl is None:
        with _filelock(path, target):
            yield
        return
    fd = _flock(path, target)
    try:
        yield
    finally:
        os.unlink(path)  # while still holding the lock (see the docstring)
        os.close(fd)


def _locked_message(target):
    return (f"{target} is being built by another process (it holds {target}.lock); wait for that build to finish, "
            f"or build to another output path")


def _flock(path, target):
    """An open descriptor of `path` holding its exclusive flock, the path still naming that file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BuildLockedError(_locked_message(target)) from None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        held = os.fstat(fd)
        if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)  # the holder removed the file we opened: lock the new one


@contextmanager
def _filelock(path, target):
    import filelock

    lock = filelock.FileLock(path, timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BuildLockedError(_locked_message(target)) from None
    try:
        yield
    finally:
        lock.release()


def _sha256_array(array):
    """sha256 of an array's dtype, shape and bytes (C order)."""
    import torch

    array = np.ascontiguousarray(array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _listing_sha256(root, names):
    """sha256 of the names with each file's size and mtime; for a zip `root`, its size and mtime once."""
    digest = hashlib.sha256()
    in_zip = os.path.isfile(root)
    if in_zip:
        stat = os.stat(root)
        digest.update(f"zip {stat.st_size} {stat.st_mtime_ns}\n".encode())
    for name in names:
        stat = None if in_zip else os.stat(os.path.join(root, name))
        digest.update(f"{name}\0{stat and stat.st_size}\0{stat and stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def source_digest(src):
    """sha256 identifying an image source's content: its files' listing, or its array's bytes.

    Folders: relative names, sizes and modification times; zips: the archive's size and mtime and the
    member names; arrays and datasets held in memory (CIFAR, MNIST, STL-10): the bytes; other datasets:
    the file list when the dataset exposes one (``samples``, ImageFolder), else description and length.
    """
    import torch

    if getattr(src, "names", None) is not None and getattr(src, "path", None):
        return _listing_sha256(src.path, src.names)
    for attribute in ("images", "data"):
        data = getattr(src, attribute, None)
        if isinstance(data, (np.ndarray, torch.Tensor)):
            return _sha256_array(data)
    samples = getattr(getattr(src, "dataset", None), "samples", None)
    if isinstance(samples, list):
        return _listing_sha256("", [str(sample[0]) for sample in samples])
    return hashlib.sha256(f"{src.description}\0{len(src)}".encode()).hexdigest()


def model_identity(model):
    """The weights' sha256 recorded on the model, else the sha256 of its parameters and buffers."""
    recorded = getattr(model, "weights_sha256", None)
    if recorded:
        return str(recorded)
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(_sha256_array(tensor).encode())
    return digest.hexdigest()


class StreamDigest:
    """Running sha256 of images in stream order, per image (so independent of how they are batched)."""

    def __init__(self):
        self._digest = hashlib.sha256()

    def update(self, batch):
        """Add the images of a batch (N, ...) in order; returns self."""
        for image in batch:
            self._digest.update(_sha256_array(image).encode())
        return self

    def hexdigest(self):
        return self._digest.hexdigest()


def fingerprint(meta, total, keep_features, model_id):
    """JSON of everything that determines a build's result (see the module docstring)."""
    return json.dumps({"total": total, "features": bool(keep_features), "model": model_id,
                       **{key: str(meta.get(key)) for key in _FINGERPRINT_KEYS}}, sort_keys=True)


def save_checkpoint(path, moments, done, build_fingerprint, first_size, stream_sha256=""):
    """Write the checkpoint atomically (temporary file, fsync, rename)."""
    state = moments.state_dict()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.savez(f, n=state["n"], shift=state["shift"], shifted_sum=state["shifted_sum"],
                 shifted_outer_sum=state["shifted_outer_sum"], done=done, fingerprint=build_fingerprint,
                 first_size=str(first_size or ""), stream_sha256=stream_sha256)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path, expected):
    """The checkpoint's contents when it exists and matches `expected`; else None (a mismatch is removed, warned).

    Returns {"done", "first_size", "stream_sha256", "moments" (GaussianMoments or None when done == 0)}.
    """
    from genmetrics.stats import GaussianMoments

    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as state:
            found = {key: state[key][()] for key in state.files}
        matches = str(found["fingerprint"]) == expected
    except (OSError, ValueError, KeyError) as error:
        matches, reason = False, f"cannot be read ({error})"
    else:
        reason = "was made from other images or arguments" + _difference(str(found["fingerprint"]), expected)
    if not matches:
        warnings.warn(f"checkpoint {path} {reason}; discarding it and starting the build over", GenMetricsWarning,
                      stacklevel=3)
        os.remove(path)
        return None
    first_size = str(found["first_size"]) or None
    done = int(found["done"])
    return {"done": done, "stream_sha256": str(found["stream_sha256"]),
            "first_size": int(first_size) if first_size and first_size.isdigit() else first_size,
            "moments": GaussianMoments.from_state(found) if done else None}


def _difference(old, new):
    """' (key: old -> new, ...)' for the fingerprint entries that differ, '' when unknown."""
    try:
        old, new = json.loads(old), json.loads(new)
    except ValueError:
        return ""
    changed = [f"{key}: {old.get(key)!r} -> {new[key]!r}" for key in sorted(new) if old.get(key) != new[key]]
    return f" ({'; '.join(changed)})" if changed else ""
