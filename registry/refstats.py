"""Reference statistics in memory (`ReferenceStats`) and on disk (the ``.h5`` format, version 1).

File layout (HDF5), format version 1:

=================  ==============================  ===========================================
dataset            dtype / shape                   meaning
=================  ==============================  ===========================================
``mu``             float64 (D,)                    mean of the features
``sigma``          float64 (D, D)                  unbiased covariance (divides by n - 1)
``n``              int64 scalar                    number of images (0 = unknown, imported files)
``sum``            float64 (D,)                    sum of the features (every build)
``outer_sum``      float64 (D, D)                  sum of x x^T (written by 0.1 only; derived)
``features``       float32/float16 (N, D)          optional; for KID / PRDC
``sqrt_sigma``     float64 (D, D)                  optional cached symmetric square root of sigma
``image_sha256``   uint8 (N, 32)                   optional; per ``features`` row, the sha256 of its image
=================  ==============================  ===========================================

Moments of further layers of the same extractor (e.g. ``spatial``, the FID Inception's sFID features, beside
``pool3``) are stored as ``<layer>.mu``, ``<layer>.sigma``, ``<layer>.n`` and optionally ``<layer>.sum`` and
``<layer>.sqrt_sigma``, with the shapes and checks of the root datasets of the same name; the root datasets are
the moments of ``feature_layer``. Readers before 0.3 ignore them (the format stays version 1);
:meth:`ReferenceStats.layer` returns them as statistics of their own.

``image_sha256`` (written by builds with features from a folder, zip or standard dataset; absent in older
files) is what the copy-detection grid checks an image against before showing it: the digest of the image
file's bytes (folders and zips) or of its decoded pixels (standard datasets; see
:func:`genmetrics.registry.datasets.pixel_digest`). It says *which* image a row was, never *where* it is:
no path stored in a file is opened (the caller names where the reference images are).

Since 0.2 the writer stores ``sigma``, ``sqrt_sigma`` and ``features`` chunked with byte shuffle and
gzip (lossless, read back bit for bit by any HDF5 reader, so the format stays version 1 and 0.1 reads
these files) and no longer writes ``outer_sum``, which is ``(n - 1) sigma + sum sum^T / n`` and which
``merge`` does not need (it works from n, mu and sigma): a file of 1000 images with features shrinks from
74.6 MB to 36.3 MB (``scripts/refstats_size.py``, docs/registry.md). Files get the mode of the user's umask
(``0666 & ~umask``), like any file ``open`` creates.

Root attributes: ``format="genmetrics-refstats"``, ``format_version=1`` and the provenance in
:data:`REQUIRED_ATTRIBUTES` (dataset, split, resolution, mode, version, feature_extractor, feature_layer,
weights_sha256, num_samples, created_at, created_by, source), plus optional ones (license, citation,
source_sha256, shard, ...). Files are written to a temporary file and renamed into place (atomic), in
the HDF5 1.10 file format (checksummed metadata) with text attributes as fixed-length UTF-8 strings (kept
in the checksummed object header, not in the unchecked global heap), so that damaged files are detected
rather than misread. The reader validates before it allocates and names the file and the failed check
in every error (see :mod:`genmetrics.registry.refstats_checks`); it reads files of every 0.x writer.
"""
import datetime
import os
import platform
import tempfile

import numpy as np

from .refstats_checks import (RefStatsFormatError, check_arrays, check_count, check_dataset, check_dim, check_full,
                              check_image_sha256, check_image_sha256_rows, check_layer_name, check_layout,
                              layer_datasets, read_attributes)

from .prompts_store import prompts_sha256, read_prompts, write_prompts

from genmetrics.stats.defaults import PROVENANCE_KEYS, weights_identity

__all__ = ["ReferenceStats", "RefStatsFormatError", "write_refstats", "read_refstats", "created_by",
           "FORMAT", "FORMAT_VERSION", "REQUIRED_ATTRIBUTES"]

FORMAT = "genmetrics-refstats"
FORMAT_VERSION = 1
REQUIRED_ATTRIBUTES = ("dataset", "split", "resolution", "mode", "version", "feature_extractor", "feature_layer",
                       "weights_sha256", "num_samples", "created_at", "created_by", "source")


_PROVENANCE_LABELS = {"mode": "mode", "feature_extractor": "feature extractor", "feature_layer": "feature layer",
                      "weights_sha256": "Inception weights"}


def _text(value):
    return None if value is None else str(value)


def _comparable_value(key, value):
    """What must be equal for two sides to be comparable (weights: the identity of known files)."""
    return weights_identity(value) if key == "weights_sha256" else _text(value)


class ReferenceStats:
    """Gaussian statistics of a reference image set, with provenance.

    mu (D,), sigma (D, D) float64; n (int, 0 = unknown); optional ``features`` (N, D) float32 (read from
    the file on first access when loaded from disk), ``sqrt_sigma`` (D, D), ``sum``/``outer_sum``
    (the exact moments: mu = sum / n, sigma = (outer_sum - n mu mu^T) / (n - 1)), optional ``image_sha256``
    (N, 32) uint8, the sha256 of each feature row's image (read on first access); ``meta`` holds every
    root attribute of the file (bytes decoded to str, numpy scalars to Python ones); ``path`` the file it
    came from (or None). ``prompts``: the captions of a text-to-image reference, in order, or None. ``layers`` maps
    the names of further layers (e.g. ``spatial``) to their moments, each a
    ReferenceStats without features (see :meth:`layer`).

    Every comparison (scoring, the CLI, deferred scoring, the evaluator) goes through this class:
    :attr:`provenance` says how the features were made and :meth:`check_comparable` refuses to compare
    statistics made differently.
    """

    def __init__(self, mu, sigma, n, features=None, sqrt_sigma=None, sum=None, outer_sum=None, meta=None,
                 path=None, image_sha256=None, layers=None, prompts=None):
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.n = int(n)
        self._features = features
        self.sqrt_sigma = None if sqrt_sigma is None else np.asarray(sqrt_sigma, dtype=np.float64)
        self.sum = None if sum is None else np.asarray(sum, dtype=np.float64)
        self.outer_sum = None if outer_sum is None else np.asarray(outer_sum, dtype=np.float64)
        self.meta = {key: _decode(value) for key, value in (meta or {}).items()}
        self.path = path
        _check_arrays(self._arrays(), "the statistics", self.n)
        self._image_sha256 = image_sha256
        if image_sha256 is not None and not callable(image_sha256):
            self._image_sha256 = self._checked_digests(image_sha256)
        self.layers = {}
        for name, stats in (layers or {}).items():
            self.add_layer(name, stats)
        self._prompts = prompts

    @property
    def prompts(self):
        """The prompts a text-to-image reference was built for, in order (a list of str), or None; read from the
        file on first access (:mod:`genmetrics.registry.prompts_store`)."""
        if callable(self._prompts):
            self._prompts = self._prompts()
        return self._prompts

    @prompts.setter
    def prompts(self, value):
        if value is not None and not all(isinstance(p, str) for p in value):
            raise TypeError("prompts must be a list of str")
        self._prompts = None if value is None else list(value)

    @classmethod
    def from_moments(cls, moments, features=None, meta=None):
        """From a :class:`genmetrics.stats.GaussianMoments` (keeps n, sum and outer_sum)."""
        return cls(moments.mean, moments.cov, moments.n, features=features, sum=moments.sum,
                   outer_sum=moments.outer_sum, meta=meta)

    @property
    def provenance(self) -> dict:
        """How the features were made: ``{key: str or None}`` for mode, feature_extractor, feature_layer and
        weights_sha256 (None where the file does not say)."""
        return {key: _text(self.meta.get(key)) for key in PROVENANCE_KEYS}

    @property
    def reference_id(self) -> str:
        """The pinned registry ref (``cifar10-train-32-clean@1``) when known, else ``dataset-split-...``
        from the provenance, else the file path."""
        if self.meta.get("registry_ref"):
            return str(self.meta["registry_ref"])
        parts = [_text(self.meta.get(k)) for k in ("dataset", "split", "resolution", "mode")]
        if parts[0] is None:
            return self.path or "in-memory statistics"
        version = _text(self.meta.get("version"))
        ident = "-".join(p for p in parts if p)
        return f"{ident}@{version}" if version else ident

    def file_sha256(self):
        """sha256 of the statistics: as recorded in the metadata, else of the file; None in memory."""
        for key in ("sha256", "file_sha256"):
            if self.meta.get(key):
                return str(self.meta[key])
        if self.path and os.path.isfile(self.path):
            from genmetrics.stats.download import cached_file_sha256

            return cached_file_sha256(self.path)
        return None

    def check_comparable(self, other, allow_mismatch=False, names=("samples", "reference")) -> list:
        """Refuse to compare with `other` (a ReferenceStats or a provenance dict) when the preprocessing mode,
        feature extractor, feature layer or Inception weights differ; values a side does not record are not
        checked, and the known files of the FID Inception weights count as the same weights.

        Returns the descriptions of the differences (empty when none); with ``allow_mismatch`` they are
        returned instead of raised. ``names`` name `other` and this side in the message.
        """
        theirs = other.provenance if isinstance(other, ReferenceStats) else other
        mismatches = []
        for key, label in _PROVENANCE_LABELS.items():
            a, b = _comparable_value(key, theirs.get(key)), _comparable_value(key, self.provenance.get(key))
            if a is not None and b is not None and a != b:
                mismatches.append(f"{label} ({names[0]}: {theirs.get(key)!r}, {names[1]}: "
                                  f"{self.provenance.get(key)!r})")
        if mismatches and not allow_mismatch:
            raise ValueError(
                f"refusing to compare: the {names[0]} and the {names[1]} differ in {'; '.join(mismatches)}, so the "
                f"score would not measure the images alone. Use matching settings (mode={self.provenance['mode']!r} "
                f"in Python, or pass the matching --mode on the command line), or allow_mismatch=True "
                f"(--allow-mismatch) to compare anyway")
        return mismatches

    def describe(self) -> str:
        """One line: where from, how many samples, D, and how the features were made."""
        made = ", ".join(f"{k} {v}" for k, v in self.provenance.items() if v and k != "weights_sha256")
        return f"{self.path or self.reference_id}: {self.n or 'unknown number of'} samples, D={self.dim}, " \
               f"{made or 'provenance unknown'}"

    @property
    def features(self):
        """(N, D) float32 features or None; a lazily loaded file dataset is read on first access."""
        if callable(self._features):
            self._features = self._features()
        return self._features

    @features.setter
    def features(self, value):
        self._features = value

    @property
    def has_features(self):
        return self._features is not None

    def add_layer(self, name, stats):
        """Store the moments of another layer of the same extractor (`stats`: a ReferenceStats or a
        GaussianMoments); they take this side's provenance with ``feature_layer`` = `name`."""
        check_layer_name(name, self.path or "the statistics")
        if name == self.meta.get("feature_layer"):
            raise ValueError(f"layer {name!r} is this statistics' own feature_layer; its moments are mu and sigma")
        mu, sigma = (stats.mu, stats.sigma) if isinstance(stats, ReferenceStats) else (stats.mean, stats.cov)
        self.layers[name] = ReferenceStats(mu, sigma, stats.n, sqrt_sigma=getattr(stats, "sqrt_sigma", None),
                                           sum=stats.sum, meta={**self.meta, "feature_layer": name}, path=self.path)

    def layer(self, name):
        """The statistics of layer `name`: this object for its own ``feature_layer`` (or when `name` is None), else
        the stored moments of that layer (a ReferenceStats without features, same provenance but the layer)."""
        if name is None or name == self.meta.get("feature_layer", name):
            return self
        if name not in self.layers:
            held = [self.meta.get("feature_layer") or "its feature_layer", *sorted(self.layers)]
            raise ValueError(f"{self.describe()} holds no moments of layer {name!r} (it has {', '.join(held)}); "
                             f"build it with that layer or import a "
                             f"reference that stores it (an ADM reference batch stores spatial)")
        return self.layers[name]

    @property
    def image_sha256(self):
        """(N, 32) uint8: the sha256 digest of each feature row's image (see the module docstring), or None
        (files built before it was recorded, or from arrays and iterables); read from the file on first access."""
        if callable(self._image_sha256):
            self._image_sha256 = self._image_sha256()
        return self._image_sha256

    @image_sha256.setter
    def image_sha256(self, value):
        self._image_sha256 = None if value is None else self._checked_digests(value)

    def _checked_digests(self, digests):
        """uint8 (N, 32) with one row per feature row (when the features are in memory)."""
        rows = None
        if self._features is not None and not callable(self._features):
            rows = len(self._features)
        elif self._features is None:
            raise ValueError("image_sha256 needs features: it holds one digest per feature row")
        return check_image_sha256(digests, rows, self.path or "the statistics")

    @property
    def dim(self):
        return self.mu.shape[0]

    def _arrays(self):
        arrays = {"mu": self.mu, "sigma": self.sigma, "sqrt_sigma": self.sqrt_sigma, "sum": self.sum,
                  "outer_sum": self.outer_sum}
        if self._features is not None and not callable(self._features):
            arrays["features"] = np.asarray(self._features)
        return {k: v for k, v in arrays.items() if v is not None}

    def __repr__(self):
        ident = "-".join(str(self.meta[k]) for k in ("dataset", "split", "resolution", "mode") if k in self.meta)
        return (f"ReferenceStats({ident or 'unnamed'}, n={self.n}, dim={self.dim}, "
                f"features={'yes' if self.has_features else 'no'}, path={self.path!r})")


def _check_arrays(arrays, where, n):
    """Shapes (D,), (D, D), (N, D), float dtypes, finite values, n >= 0: what every ReferenceStats holds.

    Files get the value checks too (:func:`read_refstats`).
    """
    check_arrays(arrays, where, n, values=False)


def created_by():
    """'mlflow-genmetrics X; torch Y; python Z' for the created_by attribute."""
    from importlib import metadata

    import torch

    try:
        version = metadata.version("mlflow-genmetrics")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return f"mlflow-genmetrics {version}; torch {torch.__version__}; numpy {np.__version__}; " \
           f"python {platform.python_version()}"


def _now():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _write_attribute(f, key, value):
    """int64, float64, or text as a fixed-length UTF-8 string (stored in the object header)."""
    import h5py

    if isinstance(value, (bool, np.bool_)):
        f.attrs[key] = np.int64(value)
    elif isinstance(value, (int, np.integer)):
        f.attrs[key] = np.int64(value)
    elif isinstance(value, (float, np.floating)):
        f.attrs[key] = np.float64(value)
    else:
        data = str(value).encode("utf-8")
        f.attrs.create(key, data=data, dtype=h5py.string_dtype("utf-8", max(1, len(data))))


def write_refstats(path, stats, features_dtype="float32", outer_sum=False):
    """Write `stats` (a ReferenceStats) to `path` in format v1, atomically; returns the absolute path.

    Missing provenance gets defaults: created_at (now, UTC), created_by (package versions), num_samples (n),
    version 1, weights_sha256/source "unknown"; dataset, split, resolution, mode and feature_extractor/
    feature_layer must be in ``stats.meta``. `outer_sum`: also store ``stats.outer_sum`` as 0.1 did (it is
    derived from n, sum and sigma; tests of 0.1 files use it). The file's mode follows the umask.
    """
    import h5py

    path = os.path.abspath(os.fspath(path))
    meta = dict(stats.meta)
    meta.update(format=FORMAT, format_version=FORMAT_VERSION)
    meta.setdefault("created_at", _now())
    meta.setdefault("created_by", created_by())
    meta.setdefault("num_samples", stats.n)
    meta.setdefault("version", 1)
    meta.setdefault("weights_sha256", "unknown")
    meta.setdefault("source", "unknown")
    if stats.prompts is not None:
        meta["prompts_sha256"] = prompts_sha256(stats.prompts)
    missing = [k for k in REQUIRED_ATTRIBUTES if meta.get(k) is None]
    if missing:
        raise ValueError(f"cannot write {path}: provenance attributes {missing} are missing; pass them "
                         f"(e.g. dataset=..., split=..., resolution=..., mode=...)")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; the file gets the mode open() would give it
        with h5py.File(tmp, "w", libver=("v110", "v110")) as f:  # checksummed metadata (see docstring)
            for key in sorted(meta):
                _write_attribute(f, key, meta[key])
            f.create_dataset("mu", data=stats.mu.astype(np.float64))
            _write_array(f, "sigma", stats.sigma.astype(np.float64))
            f.create_dataset("n", data=np.int64(stats.n))
            # outer_sum is derived, (n - 1) sigma + sum sum^T / n, and merge works from n, mu and sigma.
            for name in ("sum", "outer_sum", "sqrt_sigma") if outer_sum else ("sum", "sqrt_sigma"):
                value = getattr(stats, name)
                if value is not None:
                    _write_array(f, name, np.asarray(value, dtype=np.float64))
            for layer, moments in sorted(stats.layers.items()):
                _write_layer(f, layer, moments)
            if stats.prompts is not None:
                write_prompts(f, stats.prompts)
            if stats.features is not None:
                _write_array(f, "features", np.asarray(stats.features, dtype=features_dtype))
                if stats.image_sha256 is not None:  # incompressible: stored as it is
                    f.create_dataset("image_sha256", data=np.asarray(stats.image_sha256, dtype=np.uint8))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _write_layer(f, layer, moments):
    """The moments of a further layer as ``<layer>.mu``, ``<layer>.sigma``, ``<layer>.n`` (+ sum, sqrt_sigma)."""
    f.create_dataset(f"{layer}.mu", data=moments.mu.astype(np.float64))
    _write_array(f, f"{layer}.sigma", moments.sigma.astype(np.float64))
    f.create_dataset(f"{layer}.n", data=np.int64(moments.n))
    for name in ("sum", "sqrt_sigma"):
        if getattr(moments, name) is not None:
            _write_array(f, f"{layer}.{name}", np.asarray(getattr(moments, name), dtype=np.float64))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_array(f, name, value):
    """Matrices and features chunked with byte shuffle + gzip (lossless; any HDF5 reader decompresses them),
    unless most entries are zero: such data would compress past the reader's ratio limit
    (``refstats_checks.MAX_COMPRESSION_RATIO``), so it is stored as it is."""
    if value.ndim != 2 or np.count_nonzero(value) < value.size / 8:
        f.create_dataset(name, data=value)
        return
    f.create_dataset(name, data=value, chunks=(max(1, min(len(value), max(1, 2 ** 21 // value[0].nbytes))),
                                               value.shape[1]),
                     compression="gzip", compression_opts=4, shuffle=True)


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


_MOMENT_ARRAYS = ("mu", "sigma", "sum", "outer_sum", "sqrt_sigma")
_ROW_ARRAYS = ("features", "image_sha256")  # one row per image; read on first access
_READ_ERRORS = (OSError, KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError)


def _regular_file(path):
    """Absolute path of an existing regular file (FIFOs, devices and folders are refused: never read them)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"statistics file {path} does not exist")
    if not os.path.isfile(path):
        raise RefStatsFormatError(f"{path} is not a regular file (a folder, FIFO or device); pass an .h5 "
                                  f"statistics file")
    return path


def _corrupt(path, error):
    return RefStatsFormatError(f"cannot read statistics file {path}: it is corrupt or truncated "
                               f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                               f"delete it and fetch or build it again")


def _read_moments(f, path):
    """(meta, arrays, n, datasets present) of an open file; everything is validated before it is read."""
    check_layout(f, path)
    meta = read_attributes(f, path)
    _check_header(meta, path)
    if "mu" not in f or "sigma" not in f or "n" not in f:
        raise RefStatsFormatError(f"{path} lacks the mu, sigma or n dataset; the file is incomplete, "
                                  f"fetch or build it again")
    dim = check_dim(f["mu"], path)
    for name in ("n",) + _MOMENT_ARRAYS + _ROW_ARRAYS:
        if name in f:
            check_dataset(f[name], name, dim, path)
    check_image_sha256_rows(f, path)
    arrays = {name: f[name][()] for name in _MOMENT_ARRAYS if name in f}
    n = int(f["n"][()])
    check_count(meta, n, path)
    present = {name for name in _ROW_ARRAYS if name in f}
    return meta, arrays, n, present | ({"prompts"} if "prompts_utf8" in f or "prompt_ends" in f else set())


def _read_layers(f, path):
    """{layer: (arrays, n)} of the further layers, each validated like the root moments (before reading)."""
    layers = {}
    for layer, datasets in layer_datasets(f, path).items():
        where = f"{path} (layer {layer})"
        dim = check_dim(datasets["mu"], where)
        for name, dset in datasets.items():
            check_dataset(dset, name, dim, where)
        arrays = {name: dset[()] for name, dset in datasets.items() if name != "n"}
        layers[layer] = arrays, int(datasets["n"][()])
    return layers


def read_refstats(path, lazy_features=True, full=False):
    """Read and validate a format-v1 file -> ReferenceStats (``features`` read on first access if lazy).

    Before anything is read: a regular file; no links, external storage or virtual datasets; attribute
    types; every dataset's dtype, shape (against D and bounds) and stored size. Then on every read the
    O(D^2) value checks: finite, symmetric, variances >= 0 and |correlations| <= 1,
    sum/outer_sum consistent with mu/sigma, sqrt_sigma the root of sigma (sampled; it then also proves
    sigma PSD). ``full=True`` adds the expensive checks (sigma PSD by Cholesky, exact root, features' mean
    == mu; reads the features): what ``genmetrics stats verify``, fetch and import run.
    Their costs, details and the reasons in :mod:`genmetrics.registry.refstats_checks`.

    Raises RefStatsFormatError (a ValueError), one line naming the file and the failed check.
    """
    import h5py

    path = _regular_file(path)
    try:
        with h5py.File(path, "r") as f:
            meta, arrays, n, present = _read_moments(f, path)
            layers = _read_layers(f, path)
    except RefStatsFormatError:
        raise
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error
    check_arrays(arrays, path, n)
    for layer, (layer_arrays, layer_n) in layers.items():
        check_arrays(layer_arrays, f"{path} (layer {layer})", layer_n)
    has_features = "features" in present
    lazy = has_features and lazy_features and not full
    features = (lambda: _read_features(path)) if lazy else (_read_features(path) if has_features else None)
    digests = (lambda: _read_image_sha256(path)) if "image_sha256" in present else None
    prompts = (lambda: _read_prompts(path, meta.get("prompts_sha256"))) if "prompts" in present else None
    stats = ReferenceStats(arrays["mu"], arrays["sigma"], n, features=features,
                           sqrt_sigma=arrays.get("sqrt_sigma"), sum=arrays.get("sum"),
                           outer_sum=arrays.get("outer_sum"), meta=meta, path=path, image_sha256=digests,
                           prompts=prompts)
    for layer, (layer_arrays, layer_n) in layers.items():
        stats.add_layer(layer, ReferenceStats(layer_arrays["mu"], layer_arrays["sigma"], layer_n,
                                              sqrt_sigma=layer_arrays.get("sqrt_sigma"), sum=layer_arrays.get("sum")))
    if full:
        check_full(stats, path)
        stats.prompts  # noqa: B018 - read now: their offsets, UTF-8 and hash are checked
        for layer, moments in stats.layers.items():
            check_full(moments, f"{path} (layer {layer})")
    return stats


def _read_features(path):
    """The features dataset as float32, its layout, dtype, shape and stored size checked before reading."""
    import h5py

    try:
        with h5py.File(_regular_file(path), "r") as f:
            check_layout(f, path)
            check_dataset(f["features"], "features", check_dim(f["mu"], path), path)
            features = f["features"][()]
    except RefStatsFormatError:
        raise
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error
    if not np.isfinite(features).all():
        raise RefStatsFormatError(f"{path}: features contain NaN or Inf values (check: finite); rebuild the file")
    return features.astype(np.float32, copy=False)


def _read_prompts(path, recorded):
    """The stored prompts, validated (:func:`genmetrics.registry.prompts_store.read_prompts`)."""
    import h5py

    try:
        with h5py.File(_regular_file(path), "r") as f:
            check_layout(f, path)
            return read_prompts(f, path, recorded)
    except RefStatsFormatError:
        raise
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error


def _read_image_sha256(path):
    """The image_sha256 dataset as uint8 (N, 32), validated (dtype, shape, rows == feature rows) before reading."""
    import h5py

    try:
        with h5py.File(_regular_file(path), "r") as f:
            check_layout(f, path)
            check_dataset(f["image_sha256"], "image_sha256", check_dim(f["mu"], path), path)
            check_image_sha256_rows(f, path)
            return f["image_sha256"][()]
    except RefStatsFormatError:
        raise
    except _READ_ERRORS as error:
        raise _corrupt(path, error) from error


def _check_header(meta, path):
    """format and format_version (an integer, 1 .. FORMAT_VERSION) and the required provenance attributes."""
    if meta.get("format") != FORMAT:
        raise RefStatsFormatError(f"{path} is not a genmetrics statistics file (format attribute "
                                  f"{meta.get('format')!r}, expected {FORMAT!r}); convert .npz files with "
                                  f"`genmetrics stats import`")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise RefStatsFormatError(f"{path}: format_version attribute is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise RefStatsFormatError(f"{path} was written by a newer genmetrics (format version {version}; this "
                                  f"one reads up to {FORMAT_VERSION}); upgrade mlflow-genmetrics to read it")
    if version < 1:
        raise RefStatsFormatError(f"{path}: invalid format_version {version}")
    missing = [k for k in REQUIRED_ATTRIBUTES if k not in meta]
    if missing:
        raise RefStatsFormatError(f"{path} lacks the required provenance attributes {missing}; the file is "
                                  f"incomplete or was not written by genmetrics")


ISOLATED_READ_TIMEOUT_S = 300
_CHILD_READ = ("import sys; from genmetrics.registry.refstats import read_refstats; "
               "read_refstats(sys.argv[1], full=True)")


def read_refstats_isolated(path, timeout=None):
    """Every check of ``read_refstats(path, full=True)`` run in a child process (~3 s more), then the file read
    here with the cheap checks (features lazily): what verify and fetch use.

    HDF5 is a C library; a file crafted against it (fuzzing found a loop on a damaged global heap, which
    holds the variable-length strings of files in the older, unchecksummed layout) could hang or crash the
    process that reads it. Here it fails with a RefStatsFormatError (check: hdf5) instead. `timeout`
    (seconds) defaults to :data:`ISOLATED_READ_TIMEOUT_S`, plus one second per 20 MB of file.
    """
    import subprocess
    import sys

    path = _regular_file(path)
    if timeout is None:
        timeout = ISOLATED_READ_TIMEOUT_S + os.path.getsize(path) // 20_000_000
    try:
        child = subprocess.run([sys.executable, "-c", _CHILD_READ, path], capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RefStatsFormatError(f"{path}: reading it did not finish within {timeout} s (check: hdf5); the file is "
                                  f"damaged or crafted to hang the HDF5 library; delete it") from None
    if child.returncode < 0:
        raise RefStatsFormatError(f"{path}: the HDF5 library crashed reading it (signal {-child.returncode}) (check: "
                                  f"hdf5); the file is damaged or crafted; delete it")
    return read_refstats(path, full=child.returncode != 0)  # a failed check raises here again, with its message
