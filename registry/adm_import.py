"""Import an OpenAI guided-diffusion reference batch (``VIRTUAL_imagenet256_labeled.npz``, ...) as an ``.h5``.

ImageNet and LSUN results (ADM, DiT, EDM2, VAR, ...) are measured against these batches with the evaluator of
guided-diffusion (``evaluations/evaluator.py``). A reference batch is a ``numpy.savez`` archive holding

- ``arr_0``: uint8 (N, H, W, 3) images (N = 10,000 for the published ones), for precision and recall;
- ``mu``, ``sigma``: the pool3 moments over the whole dataset, computed by OpenAI (TensorFlow graph
  ``inception-2015-12-05``, the one our FID Inception reproduces);
- ``mu_s``, ``sigma_s``: the same for the spatial features (sFID), 2023-D;
- optionally ``arr_1`` (class labels), ignored.

The ``.h5`` written here keeps the stored moments as they are (pool3 at the root, ``spatial`` as a further layer;
``n`` = 0, unknown: the file does not say how many images they cover) and adds the pool3 ``features`` of the
batch's images, computed by our FID Inception in the evaluator's preprocessing (``legacy_tensorflow``: TF1
bilinear resize to 299, ``(x - 128) / 128``), read batch by batch
(:mod:`genmetrics.stats.images.npz_images`). FID and sFID then use OpenAI's moments; precision and recall use
the features.
"""
import os
import zipfile

import numpy as np

from .refstats import RefStatsFormatError, ReferenceStats, read_refstats, write_refstats
from .refstats_checks import check_arrays, check_full

from genmetrics.stats.defaults import FEATURE_EXTRACTOR, FEATURE_LAYER

__all__ = ["ADM_MODE", "is_adm_reference_batch", "read_adm_batch", "import_adm_batch"]

#: The evaluator's preprocessing, in our names.
ADM_MODE = "legacy_tensorflow"
_MOMENT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
_SPATIAL = "spatial"


def _members(path):
    with zipfile.ZipFile(path) as archive:
        return {name[:-4] for name in archive.namelist() if name.endswith(".npy")}


def is_adm_reference_batch(path) -> bool:
    """True for an ``.npz`` holding images (``arr_0``) and pool3 and spatial moments (``mu_s``): a reference batch."""
    try:
        return {"arr_0", "mu_s"} <= _members(path)
    except (zipfile.BadZipFile, OSError):
        return False


def _moments(path):
    """{mu, sigma, mu_s, sigma_s} as float64, their headers checked before they are read (never ``arr_0``)."""
    from .npz_import import check_npz_members

    declared = check_npz_members(path, max_bytes=None)
    missing = [k for k in _MOMENT_KEYS if k not in declared]
    if missing:
        raise RefStatsFormatError(f"{path} lacks {missing}: a reference batch of the ADM evaluator holds arr_0, mu, "
                                  f"sigma, mu_s and sigma_s")
    with np.load(path, allow_pickle=False) as data:
        return {k: np.asarray(data[k], dtype=np.float64) for k in _MOMENT_KEYS}


def _features(path, weights, device, batch_size, progress):
    """(N, 2048) float32 pool3 features of the batch's images, in the evaluator's preprocessing."""
    from genmetrics.stats import extract_features, load_inception

    model = load_inception(weights, device=device, progress=progress)
    features = extract_features(path, model=model, mode=ADM_MODE, batch_size=batch_size, progress=progress)
    return features[FEATURE_LAYER].numpy(), getattr(model, "weights_sha256", None) or "unknown"


def read_adm_batch(path, weights=None, device=None, batch_size=None, progress=True, source=None, **meta):
    """A reference batch -> ReferenceStats (pool3 moments, the ``spatial`` layer, the images' pool3 features).

    weights / device: the FID Inception that computes the features (default weight resolution, as
    ``load_inception``). `meta` becomes the provenance (dataset, split, resolution, ...). The moments are checked in
    full (PSD, ...), as every imported file is.
    """
    from genmetrics.stats.defaults import DEFAULT_BATCH_SIZE
    from genmetrics.stats.download import file_sha256
    from genmetrics.stats.images.npz_images import npz_images_shape

    path = os.path.abspath(os.fspath(path))
    arrays = _moments(path)
    count, height, width, _ = npz_images_shape(path)
    features, weights_sha256 = _features(path, weights, device, batch_size or DEFAULT_BATCH_SIZE, progress)
    provenance = {"source": source or path, "source_sha256": file_sha256(path), "source_format": "adm_npz",
                  "mode": ADM_MODE, "feature_extractor": FEATURE_EXTRACTOR, "feature_layer": FEATURE_LAYER,
                  "weights_sha256": weights_sha256, "resolution": height if height == width else f"{height}x{width}",
                  "num_samples": 0, "feature_images": count,
                  "moments_by": "the ADM evaluator's reference batch (TensorFlow), over the whole dataset"}
    provenance.update({k: v for k, v in meta.items() if v is not None})
    check_arrays({"mu": arrays["mu"], "sigma": arrays["sigma"], "features": features}, path, 0)
    check_arrays({"mu": arrays["mu_s"], "sigma": arrays["sigma_s"]}, f"{path} (spatial)", 0)
    stats = ReferenceStats(arrays["mu"], arrays["sigma"], 0, features=features, meta=provenance)
    stats.add_layer(_SPATIAL, ReferenceStats(arrays["mu_s"], arrays["sigma_s"], 0))
    check_full(stats, path)
    check_full(stats.layer(_SPATIAL), f"{path} (spatial)")
    return stats


def import_adm_batch(npz_path, output=None, name=None, split="train", version=1, weights=None, device=None,
                     batch_size=None, progress=True, **meta):
    """Convert a reference batch into a format-v1 ``.h5`` (default: beside it, same stem); returns it as read back.

    name: the dataset name (default: the file's stem, e.g. ``VIRTUAL_imagenet256_labeled``).
    """
    npz_path = os.fspath(npz_path)
    stem = os.path.splitext(os.path.basename(npz_path))[0]
    stats = read_adm_batch(npz_path, weights=weights, device=device, batch_size=batch_size, progress=progress,
                           dataset=name or stem, split=split, version=version, **meta)
    output = output or os.path.join(os.path.dirname(os.path.abspath(npz_path)), stem + ".h5")
    return read_refstats(write_refstats(output, stats))
