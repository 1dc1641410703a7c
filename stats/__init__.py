"""genmetrics.stats: the FID Inception, feature extraction and the metrics, as pure functions.

Never imports MLflow, the registry or the plugin. Names are loaded on first use (PEP 562), so
``import genmetrics.stats.defaults`` (the shared names, used by the command line) does not load torch.
"""
import sys
import types

from .lazy import lazy_exports

_EXPORTS = {
    "defaults": ("MODES", "DEFAULT_MODE", "FEATURE_LAYER", "FEATURE_EXTRACTOR", "DEFAULT_METRICS", "DEFAULT_PREFIX"),
    "metric_table": ("METRICS", "Metric", "MetricValue", "MetricError", "register_metric", "unregister_metric",
                     "compare"),
    "messages": ("GenMetricsWarning",),
    "moments": ("GaussianMoments",),
    "accumulator": ("FeatureAccumulator", "FeatureStats"),
    "distributed": ("DistributedError", "is_distributed", "all_reduce_moments", "all_gather_rows"),
    "frechet": ("frechet_distance", "sqrtm_psd"),
    "kid": ("kernel_inception_distance", "polynomial_mmd_unbiased"),
    "inception_score": ("inception_score", "inception_score_from_logits"),
    "prdc": ("prdc",),
    "copy_detection": ("copy_detection",),
    "cmmd": ("cmmd",),
    "fid_infinity": ("fid_infinity",),
    "inception": ("FIDInception", "load_inception"),
    "extractor": ("ExtractorSpec", "FeatureExtractor", "EXTRACTORS", "extractor_spec", "load_extractor"),
    "dinov2": ("DinoV2", "build_dinov2"),
    "clip": ("ClipVisual", "build_clip"),
    "features": ("extract_features",),
    "preprocess": ("preprocess",),
    "image_input": ("to_image_batch", "iter_image_batches", "check_value_range"),
    "image_files": ("list_image_files",),
    "weights": ("KNOWN_WEIGHTS", "resolve_inception_weights"),
    "ssim": ("MS_SSIM_WEIGHTS", "ms_ssim", "ssim"),
    "lpips": ("LPIPS",),
    "diversity": ("DiversityScore", "diversity_pairs", "pairwise_diversity", "lpips_diversity", "ms_ssim_diversity"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _StatsPackage(types.ModuleType):
    """Importing a submodule named like its function (``ssim``, ``prdc``, ...) binds the package attribute to
    the function, not to the submodule, as the eager ``from .ssim import ssim`` did."""

    def __setattr__(self, name, value):
        if isinstance(value, types.ModuleType) and _MODULE_OF.get(name) == name:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _StatsPackage
