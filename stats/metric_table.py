"""The metric table: every metric that compares generated samples with a reference, declared once.

A :class:`Metric` says which keys a metric logs, what it needs, its options with their defaults, and the one
function that computes it from two *sides*. A side is anything with

- ``mu`` (D,) and ``sigma`` (D, D): float64 mean and unbiased covariance of the features;
- ``n``: the number of images; ``features``: the (n, D) features when kept, else None;
- ``meta``: provenance (mode, feature_extractor, feature_layer, weights_sha256, ...);
- where there is one, ``sqrt_sigma`` (a cached square root of sigma) and ``logits`` (the classifier's outputs).

The sample side is the accumulator's :class:`~genmetrics.stats.streaming.accumulator.FeatureStats`, the reference side a
``genmetrics.registry.ReferenceStats``. Scoring (``log_gen_metrics``, deferred scoring, the evaluator) and the
``genmetrics fid`` command line both call :func:`compare`, so they cannot disagree; ``--help`` and the docs'
metric list read :data:`METRICS`. SSIM, MS-SSIM and LPIPS are declared here too (``kind="images"``): they
compare images, pairwise, not two sides, and are computed by the plugin's scoring (paired with targets, or
diversity: ``<name>_diversity``); so is the CLIP score (``clip_score``, needs ``"prompts"``: sample i against
prompt i, ``genmetrics.plugin.prompt_scoring``).

A metric of your own is one call (:func:`register_metric`)::

    from genmetrics.stats import register_metric

    register_metric("mean_gap", lambda samples, reference: float(((samples.mu - reference.mu) ** 2).sum()))
    log_gen_metrics(samples, reference="cifar10-train-32", metrics=["fid", "mean_gap"])   # gen/mean_gap

This module imports neither torch nor numpy at import time (the command line lists the table).
"""
from dataclasses import dataclass, field
from typing import Callable, Optional

from .defaults import (ADM_PR_K, CLIP_SCORE_MODEL, COPY_THRESHOLD, FID_INF_MIN_SAMPLES, FID_INF_POINTS, IS_SPLITS,
                       KID_SUBSET_SIZE, KID_SUBSETS, PRDC_K, SPATIAL_LAYER)

__all__ = ["Metric", "MetricValue", "MetricError", "METRICS", "register_metric", "unregister_metric", "metric",
           "compare", "metric_options", "check_options", "frechet_order", "Comparison"]


class MetricError(RuntimeError):
    """A metric's compute function failed, or returned something that is not a number or a dict of numbers."""


@dataclass(frozen=True)
class MetricValue:
    """What a compute function may return instead of a float or a dict of floats.

    values: key -> float (logged as ``<prefix><key>``); tags / params: str -> str provenance that goes with
    them (logged as ``<prefix><key>``); detail: anything the caller may use (copy detection's result, for the
    copy-pairs grid).
    """

    values: dict
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    detail: object = None


@dataclass(frozen=True)
class Metric:
    """One metric.

    name: what callers ask for (``metrics=["kid"]``). keys: the keys it may log (without the prefix); empty for
    a registered metric that did not say (then every key it returns is logged). compute: ``compute(samples,
    reference, **options) -> float | dict | MetricValue`` (a float is logged under `name`). options: its
    settings and their defaults; a caller sets one as ``<name>_<option>`` (``kid_subsets=50``) and ``seed``
    as ``seed``. needs: ``"reference"`` (a reference side), ``"features"`` (the features of both sides),
    ``"sample_features"`` (the samples' features), ``"logits"`` (the samples' classifier outputs),
    ``"spatial"`` (both sides' moments of the Inception's ``spatial`` layer, through ``side.layer("spatial")``),
    ``"prompts"`` (one text per sample, ``prompts=`` of the scoring call; an image metric).
    extractor: the feature space it is defined on, as a prefix of the recorded extractor name
    (``"inception"``, ``"dinov2-"``, ``"clip-"``), or None for any. min_samples: fewer samples are an error.
    kind: ``"features"`` (computed here from two sides) or ``"images"`` (pairwise on images, by the plugin).
    """

    name: str
    description: str
    compute: Optional[Callable] = None
    keys: tuple = ()
    options: dict = field(default_factory=dict)
    needs: frozenset = frozenset({"reference"})
    extractor: Optional[str] = "inception"
    min_samples: int = 2
    kind: str = "features"

    def feature_space_problem(self, extractor):
        """Why this metric cannot use the features of `extractor` (a recorded extractor name), or None."""
        if not extractor or self.extractor is None:
            return None
        if self.extractor == "inception":
            others = tuple(m.extractor for m in METRICS.values() if m.extractor not in (None, "inception"))
            return None if not extractor.startswith(others) else (
                f"the reference holds {extractor} features, and {self.name} is defined on the FID Inception's; "
                f"use fd_dinov2 (DINOv2 references) or cmmd (CLIP references)")
        if not extractor.startswith(self.extractor):
            return (f"the reference holds {extractor} features; {self.name} needs a reference built with a "
                    f"{self.extractor}* extractor (genmetrics stats build ... --extractor)")
        return None

    def logged_keys(self):
        """The keys this metric logs, for the docs and ``--help`` (registered metrics without keys: the name)."""
        return self.keys or (self.name,)


def frechet_order(sides):
    """(first, second, features2) of two sides for ``frechet_distance``, which is symmetric: a side with fewer
    samples than feature dimensions whose features are kept goes second (the smaller such side) with its
    features, so that the N x N Gram form is used (exact there); else a side with a cached square root (a
    reference's, usually) goes first. Features are read only for such a small side."""
    def small(side):
        return side.features is not None and side.n < len(side.mu)

    for second in sorted(filter(small, sides), key=lambda side: side.n):
        features = second.features
        if len(features) == second.n:
            return sides[1] if second is sides[0] else sides[0], second, features
    first, second = sorted(sides, key=lambda side: getattr(side, "sqrt_sigma", None) is None)
    return first, second, None


def _frechet(samples, reference):
    """FID's formula on the two sides: the Fréchet distance of their Gaussian moments (:mod:`.frechet`),
    in the order :func:`frechet_order` picks."""
    from .metrics.frechet import frechet_distance

    first, second, features2 = frechet_order([reference, samples])
    return float(frechet_distance(first.mu, first.sigma, second.mu, second.sigma,
                                  sqrt_sigma1=getattr(first, "sqrt_sigma", None), features2=features2))


def _sfid(samples, reference):
    """sFID (Nash et al. 2021, as the ADM evaluator computes it): the Fréchet distance of the moments of the FID
    Inception's ``spatial`` layer (the first 7 channels of Mixed_6d's 1x1 branch, 17x17, (H, W, C) order)."""
    return _frechet(samples.layer(SPATIAL_LAYER), reference.layer(SPATIAL_LAYER))


def _kid(samples, reference, subsets, subset_size, seed):
    """KID: unbiased MMD² with the cubic kernel over random subsets (:mod:`.kid`). When the subset size equals
    both sides' counts every subset is the whole set: one is computed and no ``kid_std`` is given."""
    import numpy as np

    from .metrics.kid import kernel_inception_distance

    size = min(subset_size, len(samples.features), len(reference.features))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples and 2 reference features, got {len(samples.features)} "
                         f"and {len(reference.features)}")
    whole = size == len(samples.features) == len(reference.features)
    mean, std = kernel_inception_distance(np.asarray(reference.features, dtype=np.float32), samples.features,
                                          subsets=1 if whole else subsets,
                                          subset_size=size, seed=seed)
    why = (f"not logged: every subset is the whole set ({size} samples, {size} reference features), so subsets "
           f"cannot differ") if whole else None
    params = {"kid_subsets": 1 if whole else subsets, "kid_subset_size": size, "kid_std": why}
    values = {"kid": float(mean)} if whole else {"kid": float(mean), "kid_std": float(std)}
    return MetricValue(values, params={k: str(v) for k, v in params.items() if v is not None})


def _inception_score(samples, reference, splits, split_size):
    """IS: exp(E KL(p(y|x) || p(y))) over contiguous splits of the softmax of the logits (:mod:`.inception_score`):
    `splits` near-equal ones, or ones of `split_size` rows when set (the ADM evaluator's rule, 5000)."""
    from .metrics.inception_score import inception_score_from_logits

    mean, std = inception_score_from_logits(samples.logits, splits=min(splits, samples.n), split_size=split_size)
    rule = {"is_split_size": str(split_size)} if split_size else {"is_splits": str(splits)}
    return MetricValue({"is": float(mean), "is_std": float(std)}, params=rule)


def _cmmd(samples, reference):
    """CMMD (Jayasumana et al. 2024): MMD with a Gaussian kernel between L2-normalised CLIP embeddings."""
    import numpy as np

    from .metrics.cmmd import cmmd

    return cmmd(np.asarray(reference.features), samples.features, normalize=True)


def _copies(samples, reference, threshold):
    """The share of samples that are (near-)copies of reference images; their indices as a tag (most suspicious
    first, at most 20) and copy_detection's result as the detail (the copy-pairs grid reads it)."""
    import numpy as np

    from .metrics.copy_detection import copy_detection

    result = copy_detection(samples.features, np.asarray(reference.features), threshold=threshold)
    worst = ",".join(str(int(i)) for i in result["indices"][:20])
    return MetricValue({"copy": result["fraction"]}, tags={"copy.indices": worst or "none"}, detail=result)


def _prdc(samples, reference, k):
    """PRDC (Naeem et al. 2020): k-NN precision, recall, density and coverage (:mod:`.prdc`)."""
    from .metrics.prdc import prdc

    values = prdc(reference.features, samples.features, k=k)
    return MetricValue({"prdc_precision": values["precision"], "prdc_recall": values["recall"],
                        "density": values["density"], "coverage": values["coverage"]}, params={"prdc_k": str(k)})


def _adm_precision(samples, reference, k):
    """Precision by the ADM evaluator's rule (Kynkäänniemi et al. 2019): the share of samples inside or on some
    reference feature's ball, radius the squared distance to its k-th nearest other reference feature
    (:mod:`.metrics.precision_recall`)."""
    import numpy as np

    from .metrics.precision_recall import fraction_in_balls

    value = fraction_in_balls(np.asarray(reference.features), samples.features, k=k)
    return MetricValue({"precision": value}, params={"precision_k": str(k)})


def _adm_recall(samples, reference, k):
    """Recall by the ADM evaluator's rule: the share of reference features inside or on some sample's ball (the
    roles of :func:`_adm_precision` swapped)."""
    import numpy as np

    from .metrics.precision_recall import fraction_in_balls

    value = fraction_in_balls(samples.features, np.asarray(reference.features), k=k)
    return MetricValue({"recall": value}, params={"recall_k": str(k)})


def _fid_infinity(samples, reference, min_samples, num_points, seed):
    """FID∞ (Chong & Forsyth 2020): the intercept of FID_N against 1/N (:mod:`.fid_infinity`)."""
    from .metrics.fid_infinity import fid_infinity

    return fid_infinity(samples.features, reference.mu, reference.sigma, getattr(reference, "sqrt_sigma", None),
                        min_samples=min_samples, num_points=num_points, seed=seed)


_FEATURES = frozenset({"reference", "features"})

#: Every metric by name, in the order ``--help`` and the docs list them. :func:`register_metric` adds to it.
METRICS = {m.name: m for m in (
    Metric("fid", "Fréchet Inception Distance: Fréchet distance of the Inception pool3 moments", _frechet,
           keys=("fid",)),
    Metric("kid", "Kernel Inception Distance: unbiased MMD² (cubic kernel) over random subsets, mean and std",
           _kid, keys=("kid", "kid_std"), options={"subsets": KID_SUBSETS, "subset_size": KID_SUBSET_SIZE, "seed": 0},
           needs=_FEATURES),
    Metric("is", "Inception Score: exp(E KL(p(y|x) || p(y))) over splits, mean and std (needs the classifier head)",
           _inception_score, keys=("is", "is_std"), options={"splits": IS_SPLITS, "split_size": None},
           needs=frozenset({"logits"})),
    Metric("sfid", "sFID: Fréchet distance of the Inception's spatial features (Mixed_6d, 2023-D; the ADM suite)",
           _sfid, keys=("sfid",), needs=frozenset({"reference", "spatial"})),
    Metric("fd_dinov2", "Fréchet distance in DINOv2 features (Stein et al. 2023; a DINOv2 reference)", _frechet,
           keys=("fd_dinov2",), extractor="dinov2-"),
    Metric("cmmd", "CMMD: Gaussian-kernel MMD of CLIP embeddings (Jayasumana et al. 2024; a CLIP reference)",
           _cmmd, keys=("cmmd",), needs=_FEATURES, extractor="clip-"),
    Metric("copy", "share of samples that are (near-)copies of reference images (indices in a tag)", _copies,
           keys=("copy",), options={"threshold": COPY_THRESHOLD}, needs=_FEATURES, extractor=None),
    Metric("prdc", "precision, recall, density, coverage of k-NN manifolds (Naeem et al. 2020, k = 5)", _prdc,
           keys=("prdc_precision", "prdc_recall", "density", "coverage"), options={"k": PRDC_K}, needs=_FEATURES,
           min_samples=6),
    Metric("precision", "precision as ImageNet papers print it (ADM evaluator, Kynkäänniemi et al. 2019): share of "
           "samples inside or on a reference feature's k-NN ball, squared distances, k = 3", _adm_precision,
           keys=("precision",), options={"k": ADM_PR_K}, needs=_FEATURES),
    Metric("recall", "recall as ImageNet papers print it (ADM evaluator): share of reference features inside or on a "
           "sample's k-NN ball, squared distances, k = 3", _adm_recall,
           keys=("recall",), options={"k": ADM_PR_K}, needs=_FEATURES, min_samples=ADM_PR_K + 1),
    Metric("fid_inf", "FID∞: FID extrapolated to infinitely many samples (Chong & Forsyth 2020; > 5,000 samples)",
           _fid_infinity, keys=("fid_inf",),
           options={"min_samples": FID_INF_MIN_SAMPLES, "num_points": FID_INF_POINTS, "seed": 0},
           needs=frozenset({"reference", "sample_features"})),
    Metric("ssim", "SSIM: paired with targets, else mean over random pairs of samples (ssim_diversity)",
           keys=("ssim", "ssim_diversity"), needs=frozenset(), extractor=None, kind="images"),
    Metric("ms_ssim", "MS-SSIM: paired with targets, else diversity (ms_ssim_diversity)",
           keys=("ms_ssim", "ms_ssim_diversity"), needs=frozenset(), extractor=None, kind="images"),
    Metric("lpips", "LPIPS distance: paired with targets, else diversity (lpips_diversity)",
           keys=("lpips", "lpips_diversity"), needs=frozenset(), extractor=None, kind="images"),
    Metric("clip_score", "CLIP score (Hessel et al. 2021): mean over pairs of 100 max(cos(image_i, prompt_i), 0) "
           "in CLIP's space; needs prompts=[...], one per sample", keys=("clip_score",),
           options={"model": CLIP_SCORE_MODEL}, needs=frozenset({"prompts"}), extractor=None, kind="images"),
)}
_BUILT_IN = frozenset(METRICS)


def register_metric(name, compute, keep_features=False, keys=(), options=None, extractor=None,
                    needs_reference=True, min_samples=2, description=""):
    """Add a metric of your own to the table; ``metrics=[..., name]`` then logs ``gen/<name>``.

    Args:
        name: a new name (lower case letters, digits and ``_``); a name that exists is refused.
        compute: ``compute(samples, reference, **options) -> float | dict of floats``: the two sides (see the
            module docstring: ``mu``, ``sigma``, ``n``, ``meta`` and, with `keep_features`, ``features``).
        keep_features: the features of both sides are kept and given (a reference built with features).
        keys: the keys it returns as a dict (default: it returns a float, logged under `name`).
        options: its settings with their defaults (set by callers as ``<name>_<option>``).
        extractor: the recorded extractor-name prefix its feature space must have (None: any).
        needs_reference: False for a metric of the samples alone (``reference`` is then None).
        min_samples: fewer samples are an error.

    Returns:
        The :class:`Metric`.
    """
    import re

    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"metric names are lower case letters, digits and _ (a key suffix), got {name!r}")
    if name in METRICS:
        raise ValueError(f"a metric named {name!r} is already registered; choose another name (or "
                         f"unregister_metric({name!r}) first if it is yours)")
    if not callable(compute):
        raise TypeError(f"compute must be a function compute(samples, reference, **options), got {compute!r}")
    needs = ({"reference"} if needs_reference else set()) | ({"features"} if keep_features else set())
    entry = Metric(name, description or f"registered metric {name}", compute, keys=tuple(keys),
                   options=dict(options or {}), needs=frozenset(needs), extractor=extractor, min_samples=min_samples)
    METRICS[name] = entry
    return entry


def unregister_metric(name):
    """Remove a metric added with :func:`register_metric` (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in metric and cannot be removed")
    METRICS.pop(name, None)


def metric(name):
    """The table's entry for `name` (``-`` read as ``_``, any case); ValueError naming the known ones."""
    key = str(name).lower().replace("-", "_")
    if key not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose from {list(METRICS)}")
    return METRICS[key]


def check_options(options):
    """`options` ({``<metric>_<option>``: value}) must name declared options of the table's metrics: a typo such
    as ``prdc_kk`` is a ValueError listing the valid names, not silently ignored. Returns `options` as a dict."""
    options = dict(options or {})
    known = {f"{m.name}_{option}" for m in METRICS.values() for option in m.options} | {"seed"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown metric option(s) {unknown}; the metrics' options are {sorted(known)}")
    return options


def metric_options(entry, settings):
    """The keyword options of `entry`'s compute: each declared option from `settings` (``<name>_<option>``,
    ``seed`` for a seed) or its default."""
    chosen = {}
    for option, default in entry.options.items():
        chosen[option] = settings.get(f"{entry.name}_{option}", settings.get(option) if option == "seed" else None)
        if chosen[option] is None:
            chosen[option] = default
    return chosen


@dataclass
class Comparison:
    """What :func:`compare` computed: values (key -> float), tags and params (key -> str), details (name -> the
    detail of a :class:`MetricValue`)."""

    values: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


def compare(samples, reference, names, settings=None):
    """Compute the feature metrics `names` of the sample side against the reference side (see the module
    docstring); `settings` maps ``<name>_<option>`` (and ``seed``) to values. Returns a :class:`Comparison`.

    Raises:
        ValueError: an unknown name, an image metric, too few samples.
        MetricError: a compute function failed or returned something else than numbers (names the metric).
    """
    done = Comparison()
    for name in names:
        entry = metric(name)
        if entry.kind != "features":
            raise ValueError(f"{entry.name} compares images, not feature statistics; the plugin's scoring computes it")
        if samples.n < entry.min_samples:
            raise ValueError(f"{entry.name} needs at least {entry.min_samples} samples, got {samples.n}")
        _record(done, entry, _call(entry, samples, reference, metric_options(entry, settings or {})))
    return done


def _call(entry, samples, reference, options):
    """Run `entry`'s compute; a registered metric's failure is reported with its name (MetricError), a built-in
    one's error (bad input, named by its own message) as raised."""
    try:
        return entry.compute(samples, reference if "reference" in entry.needs else None, **options)
    except Exception as exc:  # noqa: BLE001
        if entry.name in _BUILT_IN:
            raise
        raise MetricError(f"metric {entry.name!r} failed: {type(exc).__name__}: {exc}") from exc


def _record(done, entry, result):
    """Add one compute result (float, dict of floats or MetricValue) to `done`, checking its keys and values."""
    if not isinstance(result, MetricValue):
        result = MetricValue(result if isinstance(result, dict) else {entry.name: result})
    for key, value in result.values.items():
        if entry.keys and key not in entry.keys:
            raise MetricError(f"metric {entry.name!r} returned key {key!r}, which it does not declare {entry.keys}")
        try:
            done.values[key] = float(value)
        except (TypeError, ValueError):
            raise MetricError(f"metric {entry.name!r} returned {value!r} for {key!r}; return a float or a dict of "
                              f"floats") from None
    done.tags.update(result.tags)
    done.params.update(result.params)
    if result.detail is not None:
        done.details[entry.name] = result.detail
