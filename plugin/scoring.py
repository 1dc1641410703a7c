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
- **CLIP score** (``clip_score``): sample i against prompt i of ``prompts``,
  ``mean_i 100 max(cos(image_i, text_i), 0)`` with CLIP, in the same pass (:mod:`genmetrics.plugin.prompt_scoring`).

Metric keys are ``prefix + name`` with names ``fid, kid, kid_std, is, is_std, ssim, ms_ssim, lpips``,
``fd_dinov2, cmmd, copy, clip_score`` and ``ssim_diversity, ms_ssim_diversity, lpips_diversity``. Provenance is
returned in ``ScoreResult.params`` (reference id/version/sha256, mode, extractor, layer, weights sha256, sample
count, seed, metric settings, clip_score's model and prompts_sha256) and ``ScoreResult.tags`` (package versions,
skipped metrics, allowed mismatches); `log_gen_metrics` logs both as MLflow tags.

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
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from genmetrics.stats.defaults import (DEFAULT_BATCH_SIZE, DEFAULT_LPIPS_NET, DEFAULT_METRICS, DEFAULT_MODE,
                                       DEFAULT_PRECISION, DEFAULT_PREFIX, DEFAULT_SEED, DIVERSITY_PAIRS,
                                       FEATURE_EXTRACTOR, FEATURE_LAYER, IS_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS,
                                       SPATIAL_LAYER)
from genmetrics.stats.environment import INCEPTION_WEIGHTS
from genmetrics.stats.metric_table import METRICS, compare
from genmetrics.stats.streaming.distributed import all_reduce_sum, check_all_ranks, check_same_call, rank_and_world, shard_size
from genmetrics.stats.messages import first_time

from .distributed_call import call_settings
from .grid import gather_images, stack_images
from .options import OPTION_NAMES, ScoreOptions
from .prompt_scoring import check_prompts, prompt_scores
from .sample_input import SampleBatches, as_float01, as_uint8_nhwc

__all__ = ["score_samples", "ScoreResult", "ScoreOptions"]

logger = logging.getLogger("genmetrics")

PREVIEW_MAX_IMAGES = 64
PACKAGES_RECORDED = ("mlflow-genmetrics", "torch", "torchvision", "numpy", "scipy", "mlflow")


@dataclass
class ScoreResult:
    """What `score_samples` computed.

    metrics: prefixed metric name -> float. params: provenance that is stable within a run (str ->
    str). tags: provenance that may change between calls (str -> str). preview: the first (up to 64)
    samples as uint8 (N, H, W, 3) numpy array, for the sample grid; samples of different sizes are each fitted
    (aspect kept, centred on white) into one square cell (:func:`genmetrics.plugin.grid.stack_images`).
    copy_pairs: with ``copy_pairs=True``, the grid of flagged samples beside their nearest reference images as one
    uint8 (H, W, 3) array (:mod:`genmetrics.plugin.copy_grid`), or None.
    """

    metrics: dict
    params: dict
    tags: dict
    preview: np.ndarray = field(default=None, repr=False)
    copy_pairs: np.ndarray = field(default=None, repr=False)


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


@functools.lru_cache(maxsize=4)
def _default_extractor(name, device):
    """A DINOv2 / CLIP extractor from default weight resolution ($GENMETRICS_<NAME>_WEIGHTS, cache, ...), once."""
    from genmetrics.stats import load_extractor

    return load_extractor(name, device=device, progress=False)


@functools.lru_cache(maxsize=8)
def _loaded_lpips(net, device, backbone_path):
    """LPIPS on `device` (backbone from the absolute `backbone_path` or default resolution), or the exception
    that loading it raised; once per process and key (see :func:`clear_lpips_models`)."""
    from genmetrics.stats import LPIPS

    try:
        return LPIPS(net=net, backbone_weights=backbone_path, progress=False).to(device).eval()
    except (RuntimeError, OSError, ValueError) as exc:
        return exc


def _lpips_model(net, device, backbone_weights=None):
    """LPIPS on `device` (backbone from `backbone_weights` or default resolution), built once per process; a
    failure to load it (weights unavailable offline) is remembered too and raised again, so a training loop does
    not retry the weight resolution at every call."""
    path = None if backbone_weights is None else os.path.abspath(os.fspath(backbone_weights))
    model = _loaded_lpips(net, device, path)
    if isinstance(model, Exception):
        raise model
    return model


def clear_lpips_models():
    """Forget the LPIPS models and load failures remembered by this process (the next call loads again)."""
    _loaded_lpips.cache_clear()


# ---------------------------------------------------------------------------------------------------
# Step 1: the plan (which metrics, with which model and preprocessing; the skip policy)


class _Skips:
    """Metrics requested by default whose inputs are missing: skipped with a tag at every call and a warning
    once per process for each (metric, reason), so a training loop that scores every few steps warns once."""

    def __init__(self, explicit, prefix):
        self.explicit, self.prefix, self.tags, self.names = explicit, prefix, {}, set()

    def skip(self, name, reason, error=None, line=None, quiet=False):
        """Skip `name` (tag ``<prefix>skipped.<name>`` = `reason`), or raise when it was asked for by name.

        line: what the once-per-process warning says (default `reason`); quiet: no warning (the tag stays).
        """
        if self.explicit:
            if error is not None:
                raise error
            raise ValueError(f"cannot compute {name!r}: {reason}")
        self.names.add(name)
        if not quiet and first_time(("skipped", name, reason)):
            logger.warning("genmetrics: skipping %s: %s", name, line or reason)
        self.tags[f"{self.prefix}skipped.{name}"] = reason[:5000]


@dataclass
class _Plan:
    """What one call computes: metric names (as requested), the feature and image metrics that remain after
    the skip policy, the feature extractor and its provenance, allowed mismatches."""

    names: list
    skips: _Skips
    feature_metrics: list
    image_metrics: list
    device: str
    model: object = None
    mode: str = DEFAULT_MODE
    layer: str = FEATURE_LAYER
    mismatches: list = field(default_factory=list)
    tags: dict = field(default_factory=dict)  #: tags a metric adds (copy detection's flagged indices)
    copies: Optional[dict] = None  #: copy_detection's result, when metric copy was computed
    accumulator: object = None  #: the FeatureAccumulator of the feature metrics (None without them)
    metric_params: dict = field(default_factory=dict)  #: the settings the metrics report (KID's subsets, ...)
    prompts: object = None  #: the PromptScores of clip_score (None without it; prompt_scoring.py)
    prompt_params: dict = field(default_factory=dict)  #: clip_score's provenance (model, prompts_sha256)


def _check_metrics(metrics):
    """(names, explicit): the requested metric names, and whether they were named (else the default set)."""
    if metrics is None:
        return list(DEFAULT_METRICS), False
    if isinstance(metrics, str):
        metrics = [metrics]
    names = [m.lower().replace("-", "_") for m in metrics]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {list(METRICS)}")
    return list(dict.fromkeys(names)), True


def _plan(opts, ref):
    names, explicit = _check_metrics(opts.metrics)
    plan = _Plan(names, _Skips(explicit, opts.prefix), [m for m in names if METRICS[m].kind == "features"],
                 [m for m in names if METRICS[m].kind == "images" and not _needs(m, "prompts")],
                 _resolve_device(opts.device))
    if ref is None:
        for m in [m for m in plan.feature_metrics if _needs(m, "reference")]:
            plan.skips.skip(m, "no reference given; pass reference='<registry ref>' or a path to an .h5 file")
        plan.feature_metrics = [m for m in plan.feature_metrics if not _needs(m, "reference")]
    _check_feature_spaces(plan, ref)
    for m in [m for m in plan.feature_metrics if _needs(m, "features") and ref is not None and not ref.has_features]:
        plan.skips.skip(m, "the reference stores no features (only mu/sigma); rebuild it with --features")
        plan.feature_metrics.remove(m)
    _check_spatial(plan, ref)
    if plan.feature_metrics:
        _plan_extractor(plan, opts, ref, explicit)
    if "lpips" in plan.image_metrics and not _lpips_available(opts, plan):
        plan.image_metrics.remove("lpips")
    return plan


def _reference_extractor(ref):
    """The extractor name the reference records, or None."""
    return None if ref is None else ref.provenance.get("feature_extractor")


def _needs(name, need):
    """Whether metric `name` needs `need` (see :class:`genmetrics.stats.metric_table.Metric`)."""
    return need in METRICS[name].needs


def _check_spatial(plan, ref):
    """Skip (or refuse, when named) the metrics needing the ``spatial`` layer's moments (sFID) when the reference
    stores none (:meth:`ReferenceStats.layer` says which layers it holds and how to get one that has it)."""
    for m in [m for m in plan.feature_metrics if _needs(m, SPATIAL_LAYER) and ref is not None]:
        try:
            ref.layer(SPATIAL_LAYER)
        except ValueError as error:
            plan.skips.skip(m, str(error), error=error)
            plan.feature_metrics.remove(m)


def _check_feature_spaces(plan, ref):
    """Skip (or refuse, when named) the feature metrics that the reference's feature space cannot give."""
    for m in list(plan.feature_metrics):
        problem = METRICS[m].feature_space_problem(_reference_extractor(ref))
        if problem:
            plan.skips.skip(m, problem)
            plan.feature_metrics.remove(m)


def _plan_extractor(plan, opts, ref, explicit):
    """The model, mode and layer of the features, checked against the reference's provenance: the FID
    Inception, or the DINOv2 / CLIP extractor the reference records (its own mode and the reference's layer);
    the accumulator of the pass (features kept for the metrics comparing features, logits for IS, the ``spatial``
    layer's moments too for sFID), whose provenance is what the reference is checked against."""
    from genmetrics.stats import FeatureAccumulator, FeatureExtractor

    named = _reference_extractor(ref)
    if opts.model is None and named and named != FEATURE_EXTRACTOR and named.startswith(("dinov2-", "clip-")):
        plan.model = _default_extractor(named, plan.device)
    else:
        plan.model = opts.model or _default_inception(plan.device, INCEPTION_WEIGHTS.value(),
                                                      explicit and any(_needs(m, "logits") for m in
                                                                       plan.feature_metrics))
    plan.mode = opts.mode or (ref.provenance["mode"] if ref is not None else None) or DEFAULT_MODE
    if isinstance(plan.model, FeatureExtractor):
        recorded = ref.provenance.get("feature_layer") if ref is not None else None
        plan.mode = plan.model.mode
        plan.layer = recorded if recorded in plan.model.spec.layers else plan.model.spec.default_layer
    needs = set().union(*(METRICS[m].needs for m in plan.feature_metrics))
    plan.accumulator = FeatureAccumulator(plan.model, mode=plan.mode, layer=plan.layer,
                                          keep_features=bool(needs & {"features", "sample_features"}),
                                          keep_logits="logits" in needs, batch_size=opts.batch_size,
                                          distributed=opts.distributed, precision=opts.precision,
                                          extra_layers=(SPATIAL_LAYER,) if SPATIAL_LAYER in needs else ())
    if ref is not None:
        plan.mismatches = ref.check_comparable(plan.accumulator.provenance, opts.allow_mismatch)


def _lpips_available(opts, plan):
    """Load LPIPS once; its backbone weights may be unavailable offline (skipped, or raised if requested)."""
    try:
        _lpips_model(opts.lpips_net, plan.device, opts.lpips_backbone_weights)
        return True
    except (RuntimeError, OSError, ValueError) as exc:
        from genmetrics.stats.download import offline

        short = getattr(exc, "short", None)  # missing weights: one line, and none when the user said offline
        line = f"LPIPS ({opts.lpips_net}): {short} (how to provide it: tag {opts.prefix}skipped.lpips)"
        plan.skips.skip("lpips", f"LPIPS ({opts.lpips_net}) could not be loaded: {exc}", error=exc,
                        line=line if short else None, quiet=bool(short) and offline())
        return False


# ---------------------------------------------------------------------------------------------------
# Step 2: one pass over the samples


class _PairedSums:
    """Running sums of per-image similarity between samples and their targets (sample i vs target i, of one size;
    the pairs may differ in size from each other)."""

    def __init__(self, targets, opts, plan):
        self.targets = [image for batch in targets for image in as_float01(batch)]  # (3, H, W) each (one decode)
        self.sums = {m: 0.0 for m in plan.image_metrics}
        self.count, self.opts, self.plan = 0, opts, plan

    def update(self, batch):
        x = as_float01(batch)
        y = self.targets[self.count:self.count + x.shape[0]]
        if len(y) != x.shape[0] or any(t.shape != x.shape[1:] for t in y):
            raise ValueError(
                f"targets must pair one-to-one with samples of the same size: sample images {self.count}.."
                f"{self.count + x.shape[0] - 1} have shape {tuple(x.shape[1:])}, their targets "
                f"{sorted({tuple(t.shape) for t in y}) or 'none (too few targets)'}")
        y = torch.stack(y)
        for m in self.sums:
            self.sums[m] += float(_image_similarity(m, x, y, self.opts, self.plan.device).double().sum())
        self.count += x.shape[0]

    def check_count(self):
        """Raise unless there is one target per sample."""
        _check_target_count(self.count, len(self.targets))

    def means(self, distributed):
        """Mean similarity per metric, over all ranks' pairs when `distributed`."""
        totals = np.array([self.count, *self.sums.values()], dtype=np.float64)
        if distributed:
            totals = all_reduce_sum(totals)
        return {m: total / totals[0] for m, total in zip(self.sums, totals[1:])}


def _check_target_count(samples, targets):
    """Raise unless there are as many targets as samples (counts of images)."""
    if samples != targets:
        raise ValueError(f"got {samples} samples but {targets} targets; pass one target per sample")


@dataclass
class _Pass:
    """What one pass over this rank's samples gave: the feature accumulator, paired sums, the kept images
    (the preview grid's, and the pairs' for diversity) and the number of samples, per rank."""

    accumulator: object
    paired: Optional[_PairedSums]
    kept: Optional[torch.Tensor]
    counts: list
    mixed_sizes: Optional[str] = None  #: the samples' sizes when they differ (kept images fitted to one cell)


def _local_share(opts, rank, world):
    """How many samples this rank draws: its share of `num_samples` under a process group."""
    if opts.num_samples is None or world == 1:
        return opts.num_samples
    return shard_size(opts.num_samples, rank, world)


def _accumulate(batches, targets, opts, plan):
    """One pass over this rank's `batches` (a :class:`SampleBatches`; none when its share of `num_samples` is 0):
    each batch, decoded once, feeds the feature accumulator, the paired sums and the CLIP score's sums, and the
    stream keeps the first images (the preview's, and the diversity pairs'). `targets` (a SampleBatches or None)
    are decoded once too. Local work only: :func:`_combine` meets the other ranks once every rank succeeded."""
    paired = _PairedSums(targets, opts, plan) if targets is not None and plan.image_metrics else None
    batches.keep = PREVIEW_MAX_IMAGES if paired or not plan.image_metrics else max(PREVIEW_MAX_IMAGES,
                                                                                   2 * opts.diversity_pairs)
    for batch in batches:
        if plan.accumulator is not None:
            plan.accumulator.update(batch)
        if paired is not None:
            paired.update(batch)
        if plan.prompts is not None:
            plan.prompts.update(batch)
    if paired is not None:
        paired.check_count()
    elif targets is not None:  # targets are checked even when no image metric uses them
        _check_target_count(batches.count, sum(batch.shape[0] for batch in targets))
    if plan.prompts is not None:
        plan.prompts.check_count()
    kept, mixed_sizes = stack_images(batches.kept, batches.keep)  # samples of different sizes: fitted into one cell
    return _Pass(plan.accumulator, paired, kept, [batches.count], mixed_sizes)


def _combine(done, keep, rank, world):
    """Under a process group, after every rank's pass succeeded: the kept images of all ranks (at most `keep`)
    and every rank's number of samples (collectives, in the same order on every rank)."""
    if world > 1:
        done.kept, done.mixed_sizes = gather_images(done.kept, done.mixed_sizes, keep)
        done.counts = [int(c) for c in all_reduce_sum(np.eye(world)[rank] * done.counts[0])]
    return done


# ---------------------------------------------------------------------------------------------------
# Step 3: the metrics


def _image_similarity(name, x, y, opts, device):
    """Per-image similarity of float [0, 1] batches x, y (N, 3, H, W) -> tensor (N,)."""
    from genmetrics.stats import ms_ssim, ssim

    if name == "ssim":
        return ssim(x, y, data_range=1.0)
    if name == "ms_ssim":
        return ms_ssim(x, y, data_range=1.0)
    model = _lpips_model(opts.lpips_net, device, opts.lpips_backbone_weights)
    with torch.no_grad():
        return model(x.to(device) * 2 - 1, y.to(device) * 2 - 1).reshape(-1).cpu()


def _feature_metrics(stats, ref, opts, plan):
    """The feature metrics, through the metric table's one comparison (``genmetrics.stats.metric_table.compare``,
    which ``genmetrics fid`` calls too); a metric needing the Inception's logits is skipped (or refused when
    named) when the network has no classifier head."""
    for m in [m for m in plan.feature_metrics if _needs(m, "logits") and stats.logits is None]:
        plan.skips.skip(m, "the Inception has no classifier head weights (pool3-only weights); pass weights with "
                           "the 1008-way fc layer (pytorch-fid's pt_inception-2015-12-05 file)")
        plan.feature_metrics.remove(m)
    done = compare(stats, ref, plan.feature_metrics, opts.metric_settings())
    plan.tags.update({f"{opts.prefix}{key}": value for key, value in done.tags.items()})
    plan.metric_params, plan.copies = done.params, done.details.get("copy")
    return done.values


def _diversity(images, opts, plan, mixed_sizes=None):
    """Mean similarity over seeded pairs of distinct samples, per image metric (keys `*_diversity`); skipped
    when the samples differ in size (`mixed_sizes` names them)."""
    from genmetrics.stats import pairwise_diversity

    if mixed_sizes:
        for m in plan.image_metrics:
            plan.skips.skip(f"{m}_diversity", f"the samples differ in size ({mixed_sizes}); SSIM / MS-SSIM / LPIPS "
                                              f"diversity compares samples of one size: resize them to one size")
        return {}
    if images is None or images.shape[0] < 2:
        for m in plan.image_metrics:
            plan.skips.skip(f"{m}_diversity", "diversity needs at least 2 samples")
        return {}
    return {f"{m}_diversity": pairwise_diversity(
        images, lambda x, y, m=m: _image_similarity(m, as_float01(x), as_float01(y), opts, plan.device),
        pairs=opts.diversity_pairs, seed=opts.seed).mean for m in plan.image_metrics}


def _compute(done, ref, opts, plan):
    results = {}
    if done.accumulator is not None:
        results.update(_feature_metrics(done.accumulator.compute(), ref, opts, plan))
    if done.paired is not None:
        results.update(done.paired.means(len(done.counts) > 1))
    elif plan.image_metrics:
        results.update(_diversity(done.kept, opts, plan, done.mixed_sizes))
    if plan.prompts is not None:
        results["clip_score"], plan.prompt_params = plan.prompts.finish(len(done.counts) > 1)
    return results


def _copy_pairs(batches, done, ref, opts, plan):
    """The grid of flagged samples beside their nearest reference images (:mod:`.copy_grid`), or None.

    `batches`: the call's :class:`SampleBatches`, whose rows the grid asks for by index (read again only from an
    input that can be), or None under a process group (then only the kept preview samples, gathered from all
    ranks, are shown).

    Only when asked (``copy_pairs``) and copies were flagged. Never raises: when it cannot be made (no flagged
    sample available) the reason is warned once per process and tagged ``<prefix>skipped.copy_pairs``; when made,
    ``<prefix>copy.pairs`` names its rows (reference images shown only from ``reference_images``, verified).
    """
    from genmetrics.registry.datasets import SourceUnavailableError
    from genmetrics.stats.messages import warn_once

    from .copy_grid import copy_pairs

    if not opts.copy_pairs or plan.copies is None or not len(plan.copies["indices"]):
        return None
    try:
        grid, rows = copy_pairs(plan.copies, ref, batches, done.kept, opts.reference_images)
    except SourceUnavailableError as exc:
        grid, rows = None, str(exc)
    except Exception as exc:  # noqa: BLE001 - the grid is an illustration: scoring must not fail for it
        grid, rows = None, f"reading the images failed: {type(exc).__name__}: {exc}"
    if grid is None:
        warn_once(("copy_pairs", rows), f"no copy-pairs grid (flagged sample | nearest reference): {rows}")
        plan.tags[f"{opts.prefix}skipped.copy_pairs"] = rows[:5000]
        return None
    plan.tags[f"{opts.prefix}copy.pairs"] = rows[:5000]
    return grid


# ---------------------------------------------------------------------------------------------------
# Step 4: provenance


def _package_versions():
    versions = {}
    for package in PACKAGES_RECORDED:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _reference_params(ref):
    """The reference's params: what we computed or verified, never what its file claims (DESIGN, 0.3 "Trust").

    A file: ``reference_sha256`` is computed from its bytes; ``reference`` is the registry ref (with the
    entry's version and source hash) only when the file verifies as that entry's cached file
    (:func:`genmetrics.registry.fetch.verified_entry`), else the file's path, and the ref its attributes
    claim is logged as ``reference_claimed_ref``. Statistics in memory (no file) are named by their metadata,
    which the caller gave, and log no hash.
    """
    from genmetrics.registry.fetch import expected_source_sha256, verified_entry
    from genmetrics.stats.download import cached_file_sha256

    params = {"reference_num_samples": ref.n or None}
    if not (ref.path and os.path.isfile(ref.path)):
        return dict(params, reference=ref.reference_id, reference_version=ref.meta.get("version"))
    params["reference_sha256"] = cached_file_sha256(ref.path)
    entry = verified_entry(ref.path)
    if entry is not None:
        return dict(params, reference=entry.ref, reference_version=entry.version,
                    reference_source_sha256=expected_source_sha256(entry))
    claimed = ref.reference_id
    path = os.path.abspath(ref.path)
    return dict(params, reference=path, reference_claimed_ref=claimed if claimed not in (ref.path, path) else None)


def _params(ref, done, opts, plan):
    """Provenance that is stable for a run (str -> str, keys prefixed). ``metrics``: the metrics computed
    (skipped ones left out; their reasons are ``skipped.<metric>`` tags); ``metrics_requested``: the set asked
    for, ``default:...`` when none was named."""
    count, paired = sum(done.counts), done.paired is not None
    computed = [m for m in plan.names if m not in plan.skips.names and f"{m}_diversity" not in plan.skips.names]
    params = {"metrics": ",".join(computed) or "none",
              "metrics_requested": ("" if plan.skips.explicit else "default:") + ",".join(plan.names),
              "num_samples": count, "seed": opts.seed}
    if len(done.counts) > 1:
        params.update({"world_size": len(done.counts), "rank_num_samples": ",".join(map(str, done.counts))})
    if ref is not None:
        params.update(_reference_params(ref))
    if plan.feature_metrics:
        provenance = plan.accumulator.provenance
        params.update({"mode": plan.mode, "extractor": provenance["feature_extractor"], "feature_layer": plan.layer,
                       "weights_sha256": provenance["weights_sha256"], "precision": opts.precision})
    params.update(plan.metric_params)  # the metrics' own settings as computed (KID's subsets, PRDC's k, ...)
    params.update(plan.prompt_params)  # clip_score's model and the hash of the prompts
    if plan.image_metrics:
        params["image_metrics"] = "paired" if paired else "diversity"
        if not paired:
            params["diversity_pairs"] = opts.diversity_pairs
        if "lpips" in plan.image_metrics:
            params["lpips_net"] = opts.lpips_net
    return {f"{opts.prefix}{k}": str(v) for k, v in params.items() if v is not None}


def _tags(opts, plan):
    tags = dict(plan.skips.tags)
    tags.update(plan.tags)
    tags.update({f"genmetrics.version.{k}": v for k, v in _package_versions().items()})
    if plan.mismatches:
        tags[f"{opts.prefix}mismatch_allowed"] = "; ".join(plan.mismatches)
    return tags


# ---------------------------------------------------------------------------------------------------


def score_samples(
    samples,
    reference=None,
    metrics: Optional[Sequence[str]] = None,
    targets=None,
    prompts: Optional[Sequence[str]] = None,
    prefix: str = DEFAULT_PREFIX,
    value_range: Optional[Tuple[float, float]] = None,
    mode: Optional[str] = None,
    model: Optional[torch.nn.Module] = None,
    lpips_net: str = DEFAULT_LPIPS_NET,
    lpips_backbone_weights: Optional[str] = None,
    num_samples: Optional[int] = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: Optional[str] = None,
    seed: int = DEFAULT_SEED,
    allow_mismatch: bool = False,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: int = KID_SUBSET_SIZE,
    is_splits: int = IS_SPLITS,
    diversity_pairs: int = DIVERSITY_PAIRS,
    distributed: bool = True,
    copy_pairs: bool = False,
    precision: str = DEFAULT_PRECISION,
    reference_images=None,
    metric_options: Optional[dict] = None,
) -> ScoreResult:
    """Compute generative metrics of `samples`; returns a `ScoreResult` (metrics, params, tags, preview).

    Args:
        samples: any image input of :mod:`genmetrics.stats.images.image_input` (uint8, float in [0, 1] or in
            `value_range` such as (-1, 1); NCHW/NHWC batches, iterables, folders), or a sampler callable called
            repeatedly (``sampler(n)`` or ``sampler()``) until `num_samples` images are drawn.
        reference: registry ref (``"cifar10-train-32"``), ``.h5`` path or `ReferenceStats`; needed by FID/KID.
        targets: images paired one-to-one with the samples (same form, same `value_range`) for
            SSIM/MS-SSIM/LPIPS; without targets those metrics measure diversity.
        prompts: texts paired one-to-one with the samples, in order, for ``clip_score`` (its CLIP model: the
            metric option ``clip_score_model``, default ``clip-vit-b-32``). Read only when ``clip_score`` is
            asked for: otherwise only checked to be strings, neither encoded nor counted. Under a process group each rank passes the
            prompts of its own samples.

    Every other keyword is an option, declared once in :class:`genmetrics.plugin.options.ScoreOptions` (its
    meaning, default and check: ``help(ScoreOptions)``); this signature lists the same names and defaults, which
    a test keeps equal to the fields, so that editors complete and check them.

    Raises:
        ValueError: bad images or options, unknown metrics, a metric named explicitly whose input is missing, a
            reference made with other preprocessing, extractor, layer or weights (without `allow_mismatch`);
            ``clip_score`` without prompts or with another number of prompts than samples (both counts named;
            before the pass when the count is known up front, else when it ends, before returning).
    """
    given = locals()  # exactly the parameters: nothing else is defined yet
    opts = ScoreOptions(**{name: given[name] for name in OPTION_NAMES})
    return _score(samples, reference, targets, opts, check_prompts(prompts))


def _score(samples, reference, targets, opts, prompts=None):
    """`score_samples` once its options are checked: plan, one pass over the samples, the metrics, provenance.
    Under a process group a failure on any rank (before the pass, or in it) raises on every rank."""
    from genmetrics.registry import load

    rank, world = rank_and_world() if opts.distributed else (0, 1)
    error = done = None
    try:  # the input is decoded here, once: its first batch now (bad input fails before any network loads)
        share = _local_share(opts, rank, world)
        batches = SampleBatches.of(samples, share, opts.batch_size, opts.value_range).peek()
        targets = None if targets is None else SampleBatches.of(targets, None, opts.batch_size, opts.value_range)
        ref = None if reference is None else load(reference, progress=False)
        plan = _plan(opts, ref)
        plan.prompts = prompt_scores(plan.names, prompts, opts, plan.device, samples, share)
        settings = call_settings(opts, ref, targets) if world > 1 else {}
    except Exception as exc:  # noqa: BLE001 - under a process group every rank must learn of it (below)
        error, settings = exc, {}
    if world > 1:  # the first collective: the ranks' calls agree, or every rank raises naming the difference
        check_same_call("score_samples", settings, error)
    try:
        done = None if error is not None else _accumulate(batches, targets, opts, plan)
    except Exception as exc:  # noqa: BLE001 - under a process group every rank must learn of it (below)
        error = exc
    check_all_ranks(error if world > 1 else None)
    if error is not None:
        raise error
    done = _combine(done, batches.keep, rank, world)
    if sum(done.counts) == 0:
        raise ValueError("no samples were given; pass at least 2 images")
    results = _compute(done, ref, opts, plan)
    pairs = _copy_pairs(batches if world == 1 else None, done, ref, opts, plan) if rank == 0 else None
    return ScoreResult(
        metrics={f"{opts.prefix}{k}": float(v) for k, v in results.items()},
        params=_params(ref, done, opts, plan),
        tags=_tags(opts, plan),
        preview=as_uint8_nhwc(done.kept[:PREVIEW_MAX_IMAGES]) if done.kept is not None else None,
        copy_pairs=pairs,
    )
