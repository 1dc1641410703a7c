"""Import upstream ``.npz`` statistics (TTUR, clean-fid, pytorch-fid) into the ``.h5`` format with provenance.

Accepted keys: ``mu`` (D,) and ``sigma`` (D, D) (TTUR, pytorch-fid, clean-fid FID files), and/or a
feature matrix ``feats`` / ``features`` (N, D) (clean-fid's KID files). With features only, mu and sigma
are their mean and unbiased covariance (float64) and n/sum/outer_sum are stored too. Files are read with
``allow_pickle=False``, and only after every member's ``.npy`` header was checked against the archive
(:func:`check_npz_members`: a declared shape must match the stored bytes, compression at most
``MAX_COMPRESSION_RATIO``, D at most ``MAX_DIM``), so a small "bomb" file is refused before anything is
allocated. The statistics then pass the reader's value checks and the full ones (sigma PSD, ...; see
:mod:`genmetrics.registry.refstats_checks`).
"""
import os
import zipfile

import numpy as np

from .adm_import import ADM_MODE, import_adm_batch, is_adm_reference_batch, read_adm_batch
from .refstats import RefStatsFormatError, ReferenceStats, write_refstats
from .refstats_checks import MAX_COMPRESSION_RATIO, MAX_DIM, MAX_FEATURE_BYTES, check_arrays, check_full

from genmetrics.stats.defaults import FEATURE_LAYER

__all__ = ["read_npz", "import_npz", "check_npz_members"]

_FEATURE_KEYS = ("features", "feats")


def _npy_header(archive, info, path):
    """(shape, dtype, header bytes) of one ``.npy`` member, read from its first bytes only."""
    with archive.open(info) as fp:
        version = np.lib.format.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            raise RefStatsFormatError(f"{path}: member {info.filename} has .npy format version {version}; "
                                      f"save it again with numpy.savez")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fp)
        return shape, dtype, fp.tell()


def _over_limits(info, nbytes, shape, max_bytes, compressible_bytes):
    """Which size limit one member exceeds, as words; '' when none."""
    if info.file_size > max(compressible_bytes, MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
        return f"it expands more than {MAX_COMPRESSION_RATIO}x: a decompression bomb?"
    if max_bytes is not None and nbytes > max_bytes:
        return f"more than {max_bytes} bytes"
    if any(d > MAX_DIM for d in shape[1:]):
        return f"a dimension after the first over {MAX_DIM}"
    return ""


def check_npz_members(path, max_bytes=MAX_FEATURE_BYTES, compressible_bytes=0):
    """Check an ``.npz`` from its headers, before anything is allocated; returns {member: (shape, dtype, nbytes)}.

    Every member must be an ``.npy`` array whose declared shape and dtype fill exactly the member's declared
    size; it may declare at most `max_bytes` bytes (None: no limit, the caller checks the total), no dimension
    after the first over ``MAX_DIM``, and a member declaring more than `compressible_bytes` may compress at
    most ``MAX_COMPRESSION_RATIO`` times (more is a decompression bomb: a small file that would expand to
    gigabytes). Raises :class:`RefStatsFormatError`.
    """
    declared = {}
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if sum(info.compress_size for info in members) > os.path.getsize(path):
            raise RefStatsFormatError(f"{path}: the archive declares more compressed bytes than the file holds")
        for info in members:
            shape, dtype, header = _npy_header(archive, info, path)
            nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if dtype.hasobject or nbytes != info.file_size - header:
                raise RefStatsFormatError(f"{path}: {info.filename} declares {dtype} {shape} ({nbytes} bytes) but "
                                          f"holds {info.file_size - header} bytes; the file is corrupt or crafted")
            over = _over_limits(info, nbytes, shape, max_bytes, compressible_bytes)
            if over:
                raise RefStatsFormatError(f"{path}: {info.filename} declares {shape} ({nbytes} bytes from "
                                          f"{info.compress_size} stored): over the size limits ({over})")
            declared[info.filename[:-4] if info.filename.endswith(".npy") else info.filename] = shape, dtype, nbytes
    return declared


def _load_arrays(path):
    """{name: numeric array} of an .npz, checked before loading (:func:`check_npz_members`)."""
    try:
        check_npz_members(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except RefStatsFormatError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as error:
        raise RefStatsFormatError(f"cannot read {path} as .npz statistics ({str(error).splitlines()[0]}); the "
                                  f"file is corrupt, truncated or not an .npz file") from error
    for name, value in arrays.items():
        if value.dtype.kind not in "fiu":
            raise RefStatsFormatError(f"{path}: {name} has dtype {value.dtype}, expected numbers")
    return arrays


def _check_adm_mode(mode, path):
    if mode not in (None, ADM_MODE):
        raise ValueError(f"{path} is a reference batch of the ADM evaluator, whose preprocessing is {ADM_MODE!r}, not "
                         f"{mode!r}; pass mode={ADM_MODE!r} (or no mode)")


def read_npz(path, source=None, **meta):
    """An upstream .npz -> ReferenceStats (not written anywhere); `meta` becomes its provenance.

    An ADM evaluator reference batch (images, pool3 and spatial moments) is read by
    :func:`genmetrics.registry.adm_import.read_adm_batch` (its images' features are computed: minutes on a CPU).

    Checked in full (the reader's value checks and :func:`~genmetrics.registry.refstats_checks.check_full`,
    costs there): imports and fetches are where untrusted statistics enter.
    """
    from genmetrics.stats.download import file_sha256

    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"statistics file {path} does not exist or is not a regular file")
    if is_adm_reference_batch(path):
        _check_adm_mode(meta.pop("mode", None), path)
        return read_adm_batch(path, source=source, **meta)
    arrays = _load_arrays(path)
    features = next((arrays[k] for k in _FEATURE_KEYS if k in arrays), None)
    if features is not None:
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2:
            raise RefStatsFormatError(f"{path}: features have shape {features.shape}, expected (N, D)")
    moments = None
    if "mu" in arrays and "sigma" in arrays:
        mu, sigma = arrays["mu"], arrays["sigma"]
    elif features is not None:
        from genmetrics.stats import GaussianMoments

        moments = GaussianMoments.from_features(features)
        mu, sigma = moments.mean, moments.cov
    else:
        raise RefStatsFormatError(f"{path} holds {sorted(arrays)}; expected mu and sigma (TTUR / pytorch-fid / "
                                  f"clean-fid statistics) or a feature matrix 'feats'")
    if np.ndim(mu) != 1 or np.shape(sigma) != (np.shape(mu)[0],) * 2:
        raise RefStatsFormatError(f"{path}: mu has shape {np.shape(mu)} and sigma {np.shape(sigma)}; expected "
                                  f"(D,) and (D, D) (save them with numpy.savez(path, mu=mu, sigma=sigma))")
    num_samples = meta.pop("num_samples", None)
    n = int(num_samples) if num_samples is not None else (len(features) if features is not None else 0)
    provenance = {
        "source": source or path,
        "source_sha256": file_sha256(path),
        "source_format": "npz",
        "num_samples": n,
        "feature_layer": FEATURE_LAYER,
    }
    provenance.update({k: v for k, v in meta.items() if v is not None})
    if "feature_extractor" not in provenance:
        from genmetrics.stats import FEATURE_EXTRACTOR

        provenance["feature_extractor"] = FEATURE_EXTRACTOR
    checked = {"mu": np.asarray(mu, dtype=np.float64), "sigma": np.asarray(sigma, dtype=np.float64)}
    if features is not None:
        checked["features"] = features
    if moments is not None and moments.n == n:
        checked.update(sum=moments.sum, outer_sum=moments.outer_sum)
    check_arrays(checked, path, n)
    stats = ReferenceStats(checked["mu"], checked["sigma"], n, features=features, sum=checked.get("sum"),
                           outer_sum=checked.get("outer_sum"), meta=provenance)
    check_full(stats, path)
    return stats


def import_npz(npz_path, output=None, mode=None, name=None, split="unknown", resolution="unknown", version=1,
               source=None, num_samples=None, citation=None, license=None, provider=None, sqrt_sigma=False,
               **meta):
    """Convert an upstream .npz into a format-v1 .h5 file; returns the written ReferenceStats.

    mode: the preprocessing the statistics were made with ("legacy_tensorflow" for TTUR, "clean",
      "legacy_tensorflow" or "legacy_pytorch" for clean-fid, "legacy_pytorch" for pytorch-fid); required,
      since FIDs are only comparable within one mode. An ADM evaluator reference batch (``arr_0`` images with
      ``mu``, ``sigma``, ``mu_s``, ``sigma_s``) is recognised by its members and is always ``legacy_tensorflow``
      (:mod:`genmetrics.registry.adm_import`: pool3 and spatial moments, the images' pool3 features).
    output: the .h5 path (default: beside the .npz, same stem). name: dataset name (default: the stem).
    source: where the .npz came from (URL or description; default its path). num_samples: images behind
    the statistics, when known (TTUR files do not say; 0 is stored for unknown).
    sqrt_sigma: also store the symmetric square root of sigma (speeds up later FIDs).
    """
    from genmetrics.stats.defaults import MODES

    if is_adm_reference_batch(npz_path):
        _check_adm_mode(mode, npz_path)
        known = {k: v for k, v in (("resolution", resolution), ("num_samples", num_samples)) if v not in (None, "unknown")}
        return import_adm_batch(npz_path, output=output, name=name, split="train" if split == "unknown" else split,
                                version=version, source=source, citation=citation, license=license, provider=provider,
                                **known, **meta)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES} (the preprocessing the .npz was made with: TTUR -> "
                         f"legacy_tensorflow, pytorch-fid -> legacy_pytorch, clean-fid -> its file name), got {mode!r}")
    npz_path = os.fspath(npz_path)
    stem = os.path.splitext(os.path.basename(npz_path))[0]
    stats = read_npz(npz_path, source=source, mode=mode, dataset=name or stem, split=split,
                     resolution=resolution, version=version, num_samples=num_samples, citation=citation,
                     license=license, provider=provider, **meta)
    if sqrt_sigma:
        from genmetrics.stats import sqrtm_psd

        stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    output = output or os.path.join(os.path.dirname(os.path.abspath(npz_path)), stem + ".h5")
    stats.path = write_refstats(output, stats)
    from .refstats import read_refstats

    return read_refstats(stats.path)
