"""Validation of reference statistics: an ``.h5`` file's layout before anything is read, then its values.

Statistics files come from strangers (a team server, a paper's repository, a mirror), so a reader must
neither be led to other files nor allocate what a small file merely declares, nor hand back statistics
that give a wrong FID. The checks, in the order the reader runs them:

1. layout, before any data is read (:func:`check_layout`): every root entry is a hard link to a dataset
   (no soft or external links, no groups), no dataset uses external storage or is virtual;
2. attributes (:func:`read_attributes`): each one a scalar int, float or UTF-8 string, with the type its
   name requires (``format_version``, ``version``, ``num_samples`` integers, ``resolution`` an integer or
   a string, the rest of :data:`STRING_ATTRIBUTES` strings);
3. each dataset before it is read (:func:`check_dataset`): its dtype, its shape against D (from ``mu``)
   and :data:`MAX_DIM` (``image_sha256``: uint8 (N, 32), one row per ``features`` row,
   :func:`check_image_sha256_rows`), and its storage: a contiguous dataset must be fully written, a chunked
   one must hold at least 1/:data:`MAX_COMPRESSION_RATIO` of its declared bytes (a 16 KB file cannot declare
   gigabytes of zeros or unwritten chunks);
4. values, on every read (:func:`check_arrays`, O(D^2), no D x D temporaries but one: ~0.05-0.15 s at
   D = 2048, about as long as reading the moments): finite and at most 1e100 in magnitude; sigma, outer_sum
   and sqrt_sigma symmetric; diag(sigma) >= 0 and |sigma_ij| <= sqrt(sigma_ii sigma_jj) (necessary for
   PSD); sum = n mu and outer_sum = (n - 1) sigma + n mu mu^T within float64 rounding;
   ``sqrt_sigma @ sqrt_sigma @ V == sigma @ V`` for 4 fixed random vectors V (a symmetric S with
   S S = sigma also proves sigma positive semi-definite, so files with a cached root, such as every
   fetched entry, are checked for PSD at this cost);
5. ``full=True`` (``genmetrics stats verify``, fetch and import; :func:`check_full`, ~0.5-2 s at D = 2048):
   sigma PSD by a Cholesky factorisation of sigma + 1e-9 max(diag) I (:func:`check_psd`, ~0.5 s; an
   eigendecomposition, ~1.5 s, only to report a failure), ``sqrt_sigma @ sqrt_sigma == sigma`` entry by
   entry, and, when the file stores one feature row per image (N == n), the features' mean equals mu.

Why PSD is not factorised on every read: at D = 2048 it would triple the cost of loading a reference
during training, and ``frechet_distance`` itself refuses a non-PSD sigma; files reach the cache through
fetch/import (checked in full) and any file can be checked with ``genmetrics stats verify``.

What these checks cannot cover is libhdf5 itself, a C library: a file crafted against it can hang or
crash the reading process (fuzzing found a loop on a damaged global heap, where files of the older layout
keep their text attributes). Files written by genmetrics 0.2 use checksummed metadata and keep text in
the object header, so damage is detected; verify and fetch read in a child process first
(:func:`genmetrics.registry.refstats.read_refstats_isolated`).

Every error is a :class:`RefStatsFormatError` (a ValueError), one line naming the file and the failed check.
"""
import re

import numpy as np

__all__ = ["RefStatsFormatError", "MAX_DIM", "MAX_COMPRESSION_RATIO", "MAX_FEATURE_BYTES", "MAX_MAGNITUDE",
           "STRING_ATTRIBUTES", "INT_ATTRIBUTES", "check_layout", "read_attributes", "check_dataset", "check_dim",
           "check_arrays", "check_count", "check_psd", "check_full", "check_image_sha256", "check_image_sha256_rows",
           "DIGEST_SIZE", "LAYER_ARRAYS", "check_layer_name", "layer_datasets"]

MAX_DIM = 16384  # feature dimension: sigma then takes 2 GiB
MAX_FEATURE_BYTES = 64 << 30  # stored features, uncompressed (ImageNet train at D=2048, float32: 10.5 GB)
MAX_COMPRESSION_RATIO = 64  # float features compress ~1.1x; a higher ratio is zeros or a bomb
MAX_COUNT = 1 << 53  # n and num_samples: whole numbers a float64 represents exactly
MAX_MAGNITUDE = 1e100  # any stored value; products of two values and sums over n stay finite in float64
DIGEST_SIZE = 32  # bytes of one sha256 digest: a row of the image_sha256 dataset
STRING_ATTRIBUTES = ("format", "dataset", "split", "mode", "feature_extractor", "feature_layer", "weights_sha256",
                     "created_at", "created_by", "source")
INT_ATTRIBUTES = ("format_version", "version", "num_samples")
LAYER_ARRAYS = ("n", "mu", "sigma", "sum", "sqrt_sigma")  # what a further layer stores, as ``<layer>.<name>``
_LAYER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_REBUILD = "delete it and fetch or build it again"
_SYMMETRY_RTOL = 1e-9
_MOMENTS_RTOL = 1e-8
_SQRT_RTOL = 1e-8
_PSD_SHIFT = 1e-9  # below frechet_distance's own PSD tolerance (1e-9 of the largest eigenvalue)


class RefStatsFormatError(ValueError):
    """A statistics file is missing, corrupt, truncated, inconsistent, of an unknown format or of a newer version."""


def _fail(where, check, problem, fix=_REBUILD):
    raise RefStatsFormatError(f"{where}: {problem} (check: {check}); {fix}")


def check_layout(f, where):
    """Every root entry a hard link to a dataset stored inside the file (no links, external storage, VDS)."""
    import h5py

    for name in f:
        link = f.get(name, getlink=True)
        if not isinstance(link, h5py.HardLink):
            _fail(where, "layout", f"{name!r} is a {type(link).__name__} (data from another file or place)",
                  "refusing to follow it; use a file written by genmetrics")
        obj = f[name]
        if not isinstance(obj, h5py.Dataset):
            _fail(where, "layout", f"{name!r} is a {type(obj).__name__}, not a dataset",
                  "use a file written by genmetrics")
        if obj.is_virtual or obj.external:
            kind = "a virtual dataset" if obj.is_virtual else "stored in external files"
            _fail(where, "layout", f"dataset {name!r} is {kind}", "refusing to read other files; use a file "
                                                                   "written by genmetrics")


def check_layer_name(name, where):
    """A layer name: lower-case letters, digits and ``_``, starting with a letter, at most 32 characters."""
    if not isinstance(name, str) or not _LAYER_NAME.match(name):
        _fail(where, "layers", f"layer name {name!r} is not a lower-case identifier of at most 32 characters",
              "name layers like pool3 or spatial")


def layer_datasets(f, where):
    """{layer: {array name: dataset}} of the further layers' datasets (``<layer>.<array>``), names checked; each
    layer must have mu, sigma and n. Root datasets without a dot are not included."""
    layers = {}
    for name in f:
        if "." not in name:
            continue
        layer, _, array = name.partition(".")
        check_layer_name(layer, where)
        if array not in LAYER_ARRAYS:
            _fail(where, "layers", f"dataset {name!r}: a layer stores only {', '.join(LAYER_ARRAYS)}")
        layers.setdefault(layer, {})[array] = f[name]
    for layer, arrays in layers.items():
        missing = [a for a in ("mu", "sigma", "n") if a not in arrays]
        if missing:
            _fail(where, "layers", f"layer {layer!r} lacks {', '.join(missing)}")
    return layers


def _attribute(f, name, where):
    """One root attribute as int, float or str (UTF-8), refusing arrays and other types."""
    import h5py

    attr = h5py.h5a.open(f.id, name.encode("utf-8"))
    if attr.shape not in ((), None):
        _fail(where, "attributes", f"attribute {name!r} has shape {attr.shape}, expected a scalar")
    try:
        value = f.attrs[name]
    except UnicodeDecodeError:
        _fail(where, "attributes", f"attribute {name!r} is not valid UTF-8 text")
    try:
        if isinstance(value, bytes):
            return value.decode("utf-8")
        if isinstance(value, str):
            value.encode("utf-8")  # h5py keeps undecodable bytes as lone surrogates
            return value
    except UnicodeError:
        _fail(where, "attributes", f"attribute {name!r} is not valid UTF-8 text")
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    _fail(where, "attributes", f"attribute {name!r} has type {type(value).__name__}, expected int, float or text")


def _short(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_attributes(f, where):
    """{name: int | float | str} of the root attributes, each of the type its name requires."""
    meta = {}
    for name in f.attrs:
        value = meta[name] = _attribute(f, name, where)
        if name in INT_ATTRIBUTES and (isinstance(value, bool) or not isinstance(value, int)):
            _fail(where, "attributes", f"attribute {name!r} is {_short(value)}, expected an integer")
        if name in STRING_ATTRIBUTES and not isinstance(value, str):
            _fail(where, "attributes", f"attribute {name!r} is {_short(value)}, expected text")
        if name == "resolution" and not isinstance(value, (int, str)):
            _fail(where, "attributes", f"attribute 'resolution' is {_short(value)}, expected an integer or text")
        if name == "num_samples" and not 0 <= value < MAX_COUNT:
            _fail(where, "attributes", f"attribute 'num_samples' is {value}, expected 0 <= num_samples < 2**53")
    return meta


def check_count(meta, n, where):
    """The ``num_samples`` attribute, when given, equals ``n`` (both known, i.e. non-zero)."""
    if n and meta.get("num_samples") and meta["num_samples"] != n:
        _fail(where, "attributes", f"attribute 'num_samples' is {meta['num_samples']} but the moments are of "
                                   f"n = {n} samples")


def _expected_shape(name, dset, dim):
    if name == "n":
        return ()
    if name in ("mu", "sum"):
        return (dim,)
    if name == "features":
        return (dset.shape[0] if len(dset.shape) == 2 else -1, dim)
    if name == "image_sha256":
        return (dset.shape[0] if len(dset.shape) == 2 else -1, DIGEST_SIZE)
    return (dim, dim)


def check_dataset(dset, name, dim, where):
    """dtype, shape (against D) and stored bytes of dataset `name`, before it is read."""
    shape = dset.shape
    if name == "n":
        if dset.dtype.kind not in "iu" or shape != ():
            _fail(where, "n", f"n has dtype {dset.dtype} and shape {shape}, expected an integer scalar (a count)")
        return
    if name == "features":
        if dset.dtype.kind != "f" or dset.dtype.itemsize not in (2, 4, 8):
            _fail(where, "dtypes", f"features have dtype {dset.dtype}, expected float16/32/64")
    elif name == "image_sha256":
        if dset.dtype != np.uint8:
            _fail(where, "dtypes", f"image_sha256 has dtype {dset.dtype}, expected uint8 (one sha256 digest per row)")
    elif dset.dtype != np.float64:
        _fail(where, "dtypes", f"{name} has dtype {dset.dtype}, format v1 requires float64")
    if shape != _expected_shape(name, dset, dim):
        _fail(where, "shapes", f"{name} has shape {shape}, expected {_expected_shape(name, dset, dim)} (D={dim} from "
                               f"mu); the file is corrupt or mixes statistics of different features")
    nbytes = int(np.prod(shape, dtype=np.float64)) * dset.dtype.itemsize
    if name in ("features", "image_sha256") and nbytes > MAX_FEATURE_BYTES:
        _fail(where, "shapes", f"{name} declare {shape} ({nbytes / 2 ** 30:.1f} GiB), over the "
                               f"{MAX_FEATURE_BYTES >> 30} GiB limit")
    _check_storage(dset, name, nbytes, where)


def _check_storage(dset, name, nbytes, where):
    """The dataset's bytes are in the file: all of them (contiguous) or a plausible compressed share (chunked)."""
    stored = dset.id.get_storage_size()
    if dset.chunks is None and stored != nbytes:
        _fail(where, "storage", f"{name} declares {nbytes} bytes but {stored} are stored (truncated or crafted)")
    if dset.chunks is not None and stored * MAX_COMPRESSION_RATIO < nbytes:
        _fail(where, "storage", f"{name} declares {nbytes} bytes but stores {stored} (more than "
                                f"{MAX_COMPRESSION_RATIO}x compression: a decompression bomb or unwritten data)")


def check_image_sha256_rows(f, where):
    """An ``image_sha256`` dataset comes with ``features`` and has one row per feature row (before reading)."""
    if "image_sha256" not in f:
        return
    if "features" not in f:
        _fail(where, "shapes", "image_sha256 is stored without features (it holds one digest per feature row)")
    rows, expected = f["image_sha256"].shape[0], f["features"].shape[0]
    if rows != expected:
        _fail(where, "shapes", f"image_sha256 has {rows} rows but features have {expected}; each feature row needs "
                               f"the digest of its image")


def check_image_sha256(digests, rows, where):
    """In-memory ``image_sha256``: uint8 (rows, 32) (`rows`: the features' row count, None when unknown)."""
    digests = np.asarray(digests)
    if digests.dtype != np.uint8 or digests.ndim != 2 or digests.shape[1] != DIGEST_SIZE:
        _fail(where, "dtypes", f"image_sha256 is {digests.dtype} {digests.shape}, expected uint8 (N, {DIGEST_SIZE})")
    if rows is not None and digests.shape[0] != rows:
        _fail(where, "shapes", f"image_sha256 has {digests.shape[0]} rows but features have {rows}; each feature "
                               f"row needs the digest of its image")
    return digests


def check_dim(dset, where):
    """D from the shape of ``mu`` (a vector of 1 .. MAX_DIM entries)."""
    if len(dset.shape or ()) != 1 or not 1 <= dset.shape[0] <= MAX_DIM:
        _fail(where, "shapes", f"mu has shape {dset.shape}, expected a vector (D,) with 1 <= D <= {MAX_DIM}")
    return dset.shape[0]


def _max_abs(a):
    return float(np.max(np.abs(a))) if a.size else 0.0


def _probe(dim):
    """4 fixed random vectors (D, 4): sampled checks cost O(D^2) matrix-vector products, no D x D temporaries."""
    return np.random.default_rng(0).standard_normal((dim, 4))


def _check_symmetric(name, a, where):
    """(A - A^T) V == 0 for the probe vectors V, within float64 rounding of A."""
    probe = _probe(a.shape[0])
    error = np.linalg.norm(a @ probe - a.T @ probe)
    if error > _SYMMETRY_RTOL * np.linalg.norm(a) * np.linalg.norm(probe):
        _fail(where, "symmetry", f"{name} is not symmetric (|(A - A^T) v| = {error:.3g}, "
                                 f"|A| = {np.linalg.norm(a):.3g})")


def _check_moments(arrays, n, where):
    """sum = n mu and outer_sum = (n - 1) sigma + n mu mu^T (applied to the probe vectors), within rounding."""
    mu, sigma, total, outer = (arrays.get(k) for k in ("mu", "sigma", "sum", "outer_sum"))
    if total is None and outer is None:
        return
    if n < 2:
        _fail(where, "moments", f"sum/outer_sum are stored but n is {n} (at least 2 images are needed)")
    mu_norm = np.linalg.norm(mu)
    if total is not None and np.linalg.norm(total - n * mu) > _MOMENTS_RTOL * n * mu_norm:
        _fail(where, "moments", f"sum / n differs from mu by up to {_max_abs(total / n - mu):.3g}")
    if outer is not None:
        probe = _probe(mu.shape[0])
        expected = (n - 1) * (sigma @ probe) + n * np.outer(mu, mu @ probe)
        scale = ((n - 1) * np.linalg.norm(sigma) + n * mu_norm ** 2) * np.linalg.norm(probe)
        if np.linalg.norm(outer @ probe - expected) > _MOMENTS_RTOL * scale:
            _fail(where, "moments", "outer_sum differs from (n - 1) sigma + n mu mu^T (the moments do not "
                                    "belong to mu and sigma)")


def _check_sqrt_sampled(sqrt_sigma, sigma, where):
    """S S V == sigma V for the probe vectors V: a cheap test that S is the square root of sigma."""
    probe = _probe(sigma.shape[0])
    error = np.linalg.norm(sqrt_sigma @ (sqrt_sigma @ probe) - sigma @ probe)
    if error > _SQRT_RTOL * np.linalg.norm(sigma) * np.linalg.norm(probe):
        _fail(where, "sqrt_sigma", f"sqrt_sigma is not the square root of sigma (|S S v - sigma v| = {error:.3g})")


def _check_correlations(sigma, where):
    """Necessary for PSD: variances >= 0 and every |correlation| <= 1 (all 2x2 principal minors >= 0)."""
    variances = np.diag(sigma)
    if (variances < 0).any():
        _fail(where, "sigma PSD", f"sigma has negative variances on its diagonal (min {variances.min():.3g})")
    scale = 1.0 / np.sqrt(variances + _SYMMETRY_RTOL * max(float(variances.max()), 1e-300))
    correlations = sigma * scale[:, None]
    correlations *= scale[None, :]
    worst = _max_abs(correlations)
    if worst > 1 + 1e-6:
        _fail(where, "sigma PSD", f"sigma is not positive semi-definite (a correlation of {worst:.4g} > 1)")


def check_arrays(arrays, where, n, values=True):
    """Shapes, float dtypes, finite values, 0 <= n; with `values` also the O(D^2) value checks.

    `arrays` maps names (mu, sigma, sum, outer_sum, sqrt_sigma, features) to arrays. The value checks:
    symmetry, diag(sigma) >= 0 and |sigma_ij| <= sqrt(sigma_ii sigma_jj), sum/outer_sum against mu/sigma,
    sqrt_sigma sampled.
    """
    mu = arrays.get("mu")
    if mu is None or mu.ndim != 1 or mu.shape[0] < 1:
        _fail(where, "shapes", f"mu must be a vector (D,), got shape {getattr(mu, 'shape', None)}")
    dim = mu.shape[0]
    for name, value in arrays.items():
        expected = (value.shape[0] if value.ndim else -1, dim) if name == "features" else (
            (dim,) if name in ("mu", "sum") else (dim, dim))
        if value.shape != expected:
            _fail(where, "shapes", f"{name} has shape {value.shape}, expected {expected} (D={dim} from mu); "
                                   f"the file is corrupt or mixes statistics of different features")
        if not np.issubdtype(value.dtype, np.floating):
            _fail(where, "dtypes", f"{name} has dtype {value.dtype}, expected a float dtype")
        if value.size and not float(np.abs(value).max()) <= MAX_MAGNITUDE:
            _fail(where, "finite", f"{name} contains NaN or Inf values (or magnitudes over {MAX_MAGNITUDE:g})")
    if not 0 <= n < MAX_COUNT:
        _fail(where, "n", f"n must be >= 0 (0 = unknown), got {n}")
    if values:
        _check_values(arrays, where, n)


def _check_values(arrays, where, n):
    for name in ("sigma", "outer_sum", "sqrt_sigma"):
        if name in arrays:
            _check_symmetric(name, arrays[name], where)
    sigma = arrays["sigma"]
    _check_correlations(sigma, where)
    _check_moments(arrays, n, where)
    if "sqrt_sigma" in arrays:
        _check_sqrt_sampled(arrays["sqrt_sigma"], sigma, where)


def check_psd(sigma, where):
    """sigma positive semi-definite within rounding: Cholesky of sigma + 1e-9 max(diag) I succeeds."""
    shift = _PSD_SHIFT * float(np.max(np.diag(sigma), initial=0.0)) + 1e-300
    try:
        np.linalg.cholesky(sigma + shift * np.eye(sigma.shape[0]))
    except np.linalg.LinAlgError:
        lowest = float(np.linalg.eigvalsh(sigma)[0])
        _fail(where, "sigma PSD", f"sigma is not positive semi-definite (lowest eigenvalue {lowest:.4g}); it cannot "
                                  f"be a covariance and would give a wrong (even negative) FID")


def check_full(stats, where):
    """The expensive checks (:func:`check_psd`, S S == sigma entry by entry, features' mean == mu)."""
    check_psd(stats.sigma, where)
    if stats.sqrt_sigma is not None:
        error = _max_abs(stats.sqrt_sigma @ stats.sqrt_sigma - stats.sigma)
        if error > _SQRT_RTOL * (_max_abs(stats.sigma) + 1e-300):
            _fail(where, "sqrt_sigma", f"sqrt_sigma @ sqrt_sigma differs from sigma by {error:.3g}")
    features = stats.features
    if features is not None and stats.n and len(features) == stats.n:
        mean = np.mean(features, axis=0, dtype=np.float64)
        tolerance = np.finfo(features.dtype).eps * _max_abs(features) + 1e-12 * _max_abs(stats.mu)
        if _max_abs(mean - stats.mu) > tolerance:
            _fail(where, "features", f"the mean of the {len(features)} stored features differs from mu by "
                                     f"{_max_abs(mean - stats.mu):.3g} (duplicated, missing or foreign rows)")
