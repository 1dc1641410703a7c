"""Score generated images against reference statistics and/or paired targets (no MLflow here).

`score_samples` is the one computation behind `log_gen_metrics`, deferred scoring and the evaluator:

- **FID** (Fréchet Inception Distance): float64 Gaussian moments (mean, unbiased covariance) of the
  samples' Inception pool3 features against the reference's `mu`/`sigma`,
  ``||mu_r - mu_s||² + Tr(S_r + S_s - 2 (S_r^½ S_s S_r^½)^½)`` (the reference's cached ``sqrt_sigma``
  is reused when the file has it).
- **KID** (Kernel Inception Distance): unbiased MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y / D + 1)³`` over random subsets of samples and reference *features*
  (mean and std over subsets); needs a reference file that stores features.
- **IS** (Inception Score): ``exp(E_x KL(p(y|x) || p(y)))`` from the softmax of the Inception logits,
  mean and std over splits; needs the classifier head weights.
- **SSIM / MS-SSIM / LPIPS**: with ``targets`` they are *paired* (sample i against target i, mean over
  images); without targets they measure *diversity*: the mean over ``diversity_pairs`` seeded random
  pairs of distinct samples (pairs drawn among the first ``2 * diversity_pairs`` samples), logged under
  ``*_diversity`` keys so the key always says which one it is.

Metric keys are ``prefix + name`` with names ``fid, kid, kid_std, is, is_std, ssim, ms_ssim, lpips``
and ``ssim_diversity, ms_ssim_diversity, lpips_diversity``. Provenance goes to params (stable per
run: reference id/version/sha256, mode, extractor, layer, weights sha256, sample count, seed, metric
settings) and tags (package versions, skipped metrics, allowed mismatches).

Requested vs default metrics: with ``metrics=None`` (the default set ``fid, kid, is, ssim, lpips``) a
metric whose inputs are unavailable (no reference; a reference without stored features for KID; an
Inception without classifier head for IS; LPIPS backbone weights not available offline) is skipped
with a warning and a tag ``<prefix>skipped.<metric>`` giving the reason. A metric named explicitly in
``metrics`` is never skipped: the missing input raises a clear error instead.
"""
import functools
import importlib.metadata
import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from genmetrics.stats.download import cached_file_sha256

from .sample_input import _as_float01, _as_uint8_nhwc, _check_value_range, iter_sample_batches

logger = logging.getLogger("genmetrics")

DEFAULT_METRICS = ("fid", "kid", "is", "ssim", "lpips")
KNOWN_METRICS = ("fid", "kid", "is", "ssim", "ms_ssim", "lpips")
FEATURE_LAYER = "pool3"
PREVIEW_MAX_IMAGES = 64
PACKAGES_RECORDED = ("mlflow-genmetrics", "torch", "torchvision", "numpy", "scipy", "mlflow")


@dataclass
class ScoreResult:
    """What `score_samples` computed.

    metrics: prefixed metric name -> float. params: provenance that is stable within a run (str ->
    str). tags: provenance that may change between calls (str -> str). preview: the first (up to 64)
    samples as uint8 (N, H, W, 3) numpy array, for the sample grid.
    """

    metrics: dict
    params: dict
    tags: dict
    preview: np.ndarray = field(default=None, repr=False)


# ---------------------------------------------------------------------------------------------------
# Reference and extractor provenance


def _check_metrics(metrics):
    if metrics is None:
        return list(DEFAULT_METRICS), False
    if isinstance(metrics, str):
        metrics = [metrics]
    names = [m.lower().replace("-", "_") for m in metrics]
    unknown = [m for m in names if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(KNOWN_METRICS)}.")
    return list(dict.fromkeys(names)), True


def _load_reference(reference):
    """Reference (registry ref string, .h5 path or ReferenceStats) -> (ReferenceStats, source string)."""
    if reference is None:
        return None, None
    if isinstance(reference, (str, os.PathLike)):
        source = os.fspath(reference)
        stamp = os.stat(source).st_mtime_ns if os.path.isfile(source) else None
        return _load_reference_cached(source, stamp), source
    if hasattr(reference, "mu") and hasattr(reference, "sigma"):
        return reference, getattr(reference, "path", None) or "ReferenceStats"
    raise TypeError(
        f"reference must be a registry ref such as 'cifar10-train-32', a path to an .h5 statistics file or a "
        f"ReferenceStats, got {type(reference).__name__}."
    )


@functools.lru_cache(maxsize=4)
def _load_reference_cached(source, file_stamp):
    """registry.load, once per process for a ref string or an unchanged file (`file_stamp` = mtime)."""
    from genmetrics import registry

    return registry.load(source, progress=False)


def _meta_str(meta, key):
    value = meta.get(key)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    return str(value)


def _reference_id(meta, source):
    """The pinned registry ref (``cifar10-train-32-clean@1``), from the file's provenance when it has it."""
    if _meta_str(meta, "registry_ref"):
        return _meta_str(meta, "registry_ref")
    parts = [_meta_str(meta, k) for k in ("dataset", "split", "resolution", "mode")]
    if parts[0] is None:
        return source
    ref_id = "-".join(p for p in parts if p)
    version = _meta_str(meta, "version")
    return f"{ref_id}@{version}" if version else ref_id


def _reference_sha256(ref, meta, source):
    for candidate in (getattr(ref, "sha256", None), _meta_str(meta, "sha256"), _meta_str(meta, "file_sha256")):
        if candidate:
            return candidate
    path = getattr(ref, "path", None) or source
    if path and os.path.isfile(str(path)):
        return cached_file_sha256(str(path))
    return None


def _extractor_name(model):
    """The name statistics files record for the extractor (the FID Inception's is ``inception-v3-compat``)."""
    return getattr(model, "feature_extractor", None) or f"custom:{type(model).__name__}"


def _check_compatible(sample_value, reference_value, what, allow_mismatch, mismatches):
    """Refuse comparing samples and reference processed differently (unless explicitly allowed)."""
    if reference_value is None or sample_value is None or str(sample_value) == str(reference_value):
        return
    description = f"{what}: samples use {sample_value!r}, reference was made with {reference_value!r}"
    if not allow_mismatch:
        raise ValueError(
            f"refusing to compare samples with the reference because the {description}; scores would not be "
            f"comparable. Use matching settings (e.g. mode={reference_value!r}) or pass allow_mismatch=True "
            f"to override."
        )
    mismatches.append(description)


def _package_versions():
    versions = {}
    for package in PACKAGES_RECORDED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


# ---------------------------------------------------------------------------------------------------
# Models (loaded once per process and device)


def _resolve_device(device):
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


@functools.lru_cache(maxsize=4)
def _default_inception(device, weights_env, require_logits):
    """The FID Inception from default weight resolution (GENMETRICS_INCEPTION_WEIGHTS, cache, ...), once."""
    from genmetrics.stats import load_inception

    return load_inception(weights=weights_env or None, device=device, require_logits=require_logits,
                          progress=False)


_lpips_models = {}


def _lpips_model(net, device, backbone_weights=None):
    """LPIPS on `device` (backbone from `backbone_weights` or default resolution), built once per process; a
    failure to load it (weights unavailable offline) is remembered too, so a training loop does not retry
    the weight resolution at every call."""
    key = (net, device, None if backbone_weights is None else os.path.abspath(os.fspath(backbone_weights)))
    if key not in _lpips_models:
        from genmetrics.stats import LPIPS

        try:
            _lpips_models[key] = LPIPS(net=net, backbone_weights=backbone_weights, progress=False).to(device).eval()
        except (RuntimeError, OSError, ValueError) as exc:
            _lpips_models[key] = exc
    model = _lpips_models[key]
    if isinstance(model, Exception):
        raise model
    return model


# ---------------------------------------------------------------------------------------------------
# Scoring


class _Skips:
    """Metrics requested by default whose inputs are missing: skipped with a warning and a tag."""

    def __init__(self, explicit, prefix):
        self.explicit, self.prefix, self.tags = explicit, prefix, {}

    def skip(self, name, reason, error=None):
        if self.explicit:
            if error is not None:
                raise error
            raise ValueError(f"cannot compute {name!r}: {reason}")
        logger.warning("genmetrics: skipping %s: %s", name, reason)
        self.tags[f"{self.prefix}skipped.{name}"] = reason[:5000]


def _lpips_available(net, device, backbone_weights, skips):
    """Load LPIPS once; its backbone weights may be unavailable offline (skipped, or raised if requested)."""
    try:
        _lpips_model(net, device, backbone_weights)
        return True
    except (RuntimeError, OSError, ValueError) as exc:
        skips.skip("lpips", f"LPIPS ({net}) could not be loaded: {exc}", error=exc)
        return False


def _paired_targets(targets, value_range, batch_size):
    if targets is None:
        return None
    batches = list(iter_sample_batches(targets, None, batch_size, value_range))
    if not batches:
        raise ValueError("targets is empty; pass one target image per sample, or targets=None for diversity.")
    return torch.cat([_as_float01(b) for b in batches])


def _image_similarity(name, x, y, device, lpips_net, lpips_backbone_weights):
    """Per-image similarity of float [0, 1] batches x, y (N, 3, H, W) -> tensor (N,)."""
    from genmetrics.stats import ms_ssim, ssim

    if name == "ssim":
        return ssim(x, y, data_range=1.0)
    if name == "ms_ssim":
        return ms_ssim(x, y, data_range=1.0)
    model = _lpips_model(lpips_net, device, lpips_backbone_weights)
    with torch.no_grad():
        return model(x.to(device) * 2 - 1, y.to(device) * 2 - 1).reshape(-1).cpu()


def score_samples(
    samples,
    reference=None,
    metrics=None,
    targets=None,
    prefix="gen/",
    value_range=None,
    mode=None,
    model=None,
    lpips_net="alex",
    lpips_backbone_weights=None,
    num_samples=None,
    batch_size=50,
    device=None,
    seed=0,
    allow_mismatch=False,
    kid_subsets=100,
    kid_subset_size=1000,
    is_splits=10,
    diversity_pairs=100,
):
    """Compute generative metrics of `samples`; returns a `ScoreResult` (metrics, params, tags, preview).

    samples: uint8 images (0..255), float images in [0, 1] (or in `value_range`, e.g. (-1, 1)), as
        (N, C, H, W) / (N, H, W, C) tensors or arrays, an iterable of such batches, or a sampler
        callable called repeatedly (``sampler(n)`` or ``sampler()``) until `num_samples` images are drawn.
    reference: registry ref (``"cifar10-train-32"``), ``.h5`` path or `ReferenceStats`; needed by FID/KID.
    metrics: names among ``fid, kid, is, ssim, ms_ssim, lpips``; None = ``fid, kid, is, ssim, lpips``
        with unavailable ones skipped (see module docstring).
    targets: images paired one-to-one with the samples (same form, same `value_range`) for
        SSIM/MS-SSIM/LPIPS; without targets those metrics measure diversity.
    mode: preprocessing (``clean``, ``legacy_tensorflow``, ``legacy_pytorch``); None = the reference's.
    model: feature extractor (default: the FID Inception from default weight resolution).
    lpips_backbone_weights: path to the torchvision state dict of the LPIPS backbone (e.g.
        ``alexnet-owt-7be5be79.pth``); None = cache, torch.hub's folder, then download.
    allow_mismatch: compare even when mode / extractor / layer differ from the reference's.
    seed: seeds KID subsets and diversity pairs.
    """
    from genmetrics.stats import GaussianMoments, extract_features

    names, explicit = _check_metrics(metrics)
    skips = _Skips(explicit, prefix)
    value_range = _check_value_range(value_range)
    device = _resolve_device(device)
    ref, ref_source = _load_reference(reference)
    meta = dict(getattr(ref, "meta", None) or {}) if ref is not None else {}

    needs_features = [m for m in names if m in ("fid", "kid", "is")]
    if ref is None:
        for m in [m for m in needs_features if m != "is"]:
            skips.skip(m, "no reference given; pass reference='<registry ref>' or a path to an .h5 file")
        needs_features = [m for m in needs_features if m == "is"]
    if "kid" in needs_features and getattr(ref, "features", None) is None:
        skips.skip("kid", "the reference stores no features (only mu/sigma); rebuild it with --features")
        needs_features.remove("kid")

    if needs_features and model is None:
        model = _default_inception(device, os.environ.get("GENMETRICS_INCEPTION_WEIGHTS"),
                                   explicit and "is" in needs_features)
    mode = mode or _meta_str(meta, "mode") or "clean"
    extractor = _extractor_name(model)
    mismatches = []
    if ref is not None and needs_features:
        _check_compatible(mode, _meta_str(meta, "mode"), "preprocessing mode", allow_mismatch, mismatches)
        _check_compatible(extractor, _meta_str(meta, "feature_extractor"), "feature extractor", allow_mismatch,
                          mismatches)
        _check_compatible(FEATURE_LAYER, _meta_str(meta, "feature_layer"), "feature layer", allow_mismatch,
                          mismatches)

    target_images = _paired_targets(targets, value_range, batch_size)
    image_metrics = [m for m in names if m in ("ssim", "ms_ssim", "lpips")]
    if "lpips" in image_metrics and not _lpips_available(lpips_net, device, lpips_backbone_weights, skips):
        image_metrics.remove("lpips")
    paired_sums = {m: 0.0 for m in image_metrics} if target_images is not None else {}
    keep_images = PREVIEW_MAX_IMAGES if target_images is not None or not image_metrics else max(
        PREVIEW_MAX_IMAGES, 2 * diversity_pairs)

    moments = GaussianMoments() if "fid" in needs_features else None
    pool3_parts, logit_parts, kept, count = [], [], [], 0
    for batch in iter_sample_batches(samples, num_samples, batch_size, value_range):
        if needs_features:
            features = extract_features(batch, model=model, mode=mode, batch_size=batch_size, progress=False)
            if moments is not None:
                moments.update(features[FEATURE_LAYER])
            if "kid" in needs_features:
                pool3_parts.append(features[FEATURE_LAYER].float())
            if "is" in needs_features and "logits" in features:
                logit_parts.append(features["logits"].double())
        if paired_sums:
            x = _as_float01(batch)
            y = target_images[count:count + x.shape[0]]
            if y.shape != x.shape:
                raise ValueError(
                    f"targets must pair one-to-one with samples of the same size: sample images "
                    f"{count}..{count + x.shape[0] - 1} have shape {tuple(x.shape[1:])}, targets left: "
                    f"{tuple(y.shape)}."
                )
            for m in image_metrics:
                similarity = _image_similarity(m, x, y, device, lpips_net, lpips_backbone_weights)
                paired_sums[m] += float(similarity.double().sum())
        if sum(k.shape[0] for k in kept) < keep_images:
            kept.append(batch)
        count += batch.shape[0]
    if count == 0:
        raise ValueError("no samples were given; pass at least 2 images.")
    if target_images is not None and count != target_images.shape[0]:
        raise ValueError(f"got {count} samples but {target_images.shape[0]} targets; pass one target per sample.")

    results = {}
    if moments is not None:
        results.update(_fid(moments, ref, count))
    if "kid" in needs_features:
        kid_subset_size = min(kid_subset_size, count, len(ref.features))
        results.update(_kid(torch.cat(pool3_parts), ref, kid_subsets, kid_subset_size, seed))
    if "is" in needs_features:
        if logit_parts:
            from genmetrics.stats import inception_score_from_logits

            is_splits = min(is_splits, count)
            mean, std = inception_score_from_logits(torch.cat(logit_parts), splits=is_splits)
            results.update({"is": float(mean), "is_std": float(std)})
        else:
            skips.skip("is", "the Inception has no classifier head weights (pool3-only weights); pass weights "
                             "with the 1008-way fc layer (pytorch-fid's pt_inception-2015-12-05 file)")
    kept_images = torch.cat(kept)[:keep_images] if kept else None
    if paired_sums:
        results.update({m: paired_sums[m] / count for m in image_metrics})
    elif image_metrics:
        results.update(_diversity(image_metrics, kept_images, diversity_pairs, seed, device, lpips_net,
                                  lpips_backbone_weights, skips))

    params = _params(prefix, ref, meta, ref_source, mode, extractor, model, count, seed, names, needs_features,
                     image_metrics, target_images is not None, kid_subsets, kid_subset_size, is_splits,
                     diversity_pairs, lpips_net)
    tags = dict(skips.tags)
    tags.update({f"genmetrics.version.{k}": v for k, v in _package_versions().items()})
    if mismatches:
        tags[f"{prefix}mismatch_allowed"] = "; ".join(mismatches)
    preview = _as_uint8_nhwc(kept_images[:PREVIEW_MAX_IMAGES]) if kept_images is not None else None
    return ScoreResult(
        metrics={f"{prefix}{k}": float(v) for k, v in results.items()},
        params=params,
        tags=tags,
        preview=preview,
    )


def _fid(moments, ref, count):
    from genmetrics.stats import frechet_distance

    if count < 2:
        raise ValueError(f"FID needs at least 2 samples, got {count}.")
    sqrt_sigma = getattr(ref, "sqrt_sigma", None)
    value = frechet_distance(
        np.asarray(ref.mu, dtype=np.float64), np.asarray(ref.sigma, dtype=np.float64),
        _numpy64(moments.mean), _numpy64(moments.cov),
        sqrt_sigma1=None if sqrt_sigma is None else np.asarray(sqrt_sigma, dtype=np.float64),
    )
    return {"fid": float(value)}


def _numpy64(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _kid(sample_features, ref, subsets, subset_size, seed):
    from genmetrics.stats import kernel_inception_distance

    ref_features = torch.as_tensor(np.asarray(ref.features), dtype=torch.float32)
    if subset_size < 2:
        raise ValueError(f"KID needs at least 2 samples and 2 reference features, got {sample_features.shape[0]}.")
    mean, std = kernel_inception_distance(ref_features, sample_features, subsets=subsets, subset_size=subset_size,
                                          seed=seed)
    return {"kid": float(mean), "kid_std": float(std)}


def _diversity(image_metrics, images, pairs, seed, device, lpips_net, lpips_backbone_weights, skips):
    """Mean similarity over `pairs` seeded pairs of distinct samples, per metric (keys `*_diversity`)."""
    from genmetrics.stats import pairwise_diversity

    results = {}
    if images is None or images.shape[0] < 2:
        for m in image_metrics:
            skips.skip(f"{m}_diversity", "diversity needs at least 2 samples")
        return results
    for m in image_metrics:
        score = pairwise_diversity(
            images, lambda x, y, m=m: _image_similarity(m, _as_float01(x), _as_float01(y), device, lpips_net,
                                                lpips_backbone_weights),
            pairs=pairs, seed=seed)
        results[f"{m}_diversity"] = score.mean
    return results


def _params(prefix, ref, meta, ref_source, mode, extractor, model, count, seed, names, feature_metrics,
            image_metrics, paired, kid_subsets, kid_subset_size, is_splits, diversity_pairs, lpips_net):
    """Provenance that is stable for a run (str -> str, keys prefixed)."""
    params = {"metrics": ",".join(names), "num_samples": count, "seed": seed}
    if ref is not None:
        params.update({
            "reference": _reference_id(meta, ref_source),
            "reference_version": _meta_str(meta, "version"),
            "reference_sha256": _reference_sha256(ref, meta, ref_source),
            "reference_source_sha256": _meta_str(meta, "source_sha256"),
            "reference_num_samples": int(getattr(ref, "n", 0) or 0) or None,
        })
    if feature_metrics:
        params.update({
            "mode": mode,
            "extractor": extractor,
            "feature_layer": FEATURE_LAYER,
            "weights_sha256": getattr(model, "weights_sha256", None),
        })
    if "kid" in feature_metrics:
        params.update({"kid_subsets": kid_subsets, "kid_subset_size": kid_subset_size})
    if "is" in feature_metrics:
        params["is_splits"] = is_splits
    if image_metrics:
        params["image_metrics"] = "paired" if paired else "diversity"
        if not paired:
            params["diversity_pairs"] = diversity_pairs
        if "lpips" in image_metrics:
            params["lpips_net"] = lpips_net
    return {f"{prefix}{k}": str(v) for k, v in params.items() if v is not None}
