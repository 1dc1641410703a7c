"""genmetrics.stats: the FID Inception, feature extraction and the metrics, as pure functions.

Never imports MLflow, the registry or the plugin. The subpackages show the architecture:

- ``images``: images in (the one normaliser, folders and zips, the resize to each network's input);
- ``networks``: the feature extractors (FID Inception, DINOv2, CLIP, LPIPS) and where their weights come from;
- ``streaming``: images -> features -> float64 moments, kept features, and their reduction over ranks;
- ``metrics``: pure ``features -> number`` functions (FID, KID, IS, PRDC, CMMD, SSIM, ...);
- at the top: the shared names (``defaults``), warnings (``messages``), validators (``checks``), the
  downloader, exact float32 blocks (``tf32``) and the metric table that names every metric.

Dependencies point one way: ``metrics`` imports only the top-level modules; ``images`` the top level;
``networks`` images and the top level; ``streaming`` all of those. Names are loaded on first use (PEP 562),
so ``import genmetrics.stats.defaults`` (the shared names, used by the command line) does not load torch.
"""
from .lazy import lazy_exports

_EXPORTS = {
    "defaults": ("MODES", "DEFAULT_MODE", "FEATURE_LAYER", "FEATURE_EXTRACTOR", "DEFAULT_METRICS", "DEFAULT_PREFIX"),
    "metric_table": ("METRICS", "Metric", "MetricValue", "MetricError", "register_metric", "unregister_metric",
                     "compare"),
    "messages": ("GenMetricsWarning",),
    "streaming.moments": ("GaussianMoments",),
    "streaming.accumulator": ("FeatureAccumulator", "FeatureStats"),
    "streaming.distributed": ("DistributedError", "is_distributed", "all_reduce_moments", "all_gather_rows"),
    "metrics.frechet": ("frechet_distance", "sqrtm_psd"),
    "metrics.kid": ("kernel_inception_distance", "polynomial_mmd_unbiased"),
    "metrics.inception_score": ("inception_score", "inception_score_from_logits"),
    "metrics.prdc": ("prdc",),
    "metrics.precision_recall": ("precision_recall",),
    "metrics.copy_detection": ("copy_detection",),
    "metrics.cmmd": ("cmmd",),
    "metrics.fid_infinity": ("fid_infinity",),
    "networks.inception": ("FIDInception", "load_inception"),
    "networks.extractor": ("ExtractorSpec", "FeatureExtractor", "EXTRACTORS", "extractor_spec", "load_extractor"),
    "networks.dinov2": ("DinoV2", "build_dinov2"),
    "networks.clip": ("ClipVisual", "build_clip"),
    "networks.clip_tokenizer": ("clip_tokenize",),
    "streaming.clip_score": ("clip_score",),
    "streaming.features": ("extract_features",),
    "images.preprocess": ("preprocess",),
    "images.image_input": ("to_image_batch", "iter_image_batches", "check_value_range"),
    "images.image_files": ("list_image_files",),
    "networks.weights": ("KNOWN_WEIGHTS", "resolve_inception_weights"),
    "metrics.ssim": ("MS_SSIM_WEIGHTS", "ms_ssim", "ssim"),
    "networks.lpips": ("LPIPS",),
    "metrics.diversity": ("DiversityScore", "diversity_pairs", "pairwise_diversity", "lpips_diversity", "ms_ssim_diversity"),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
