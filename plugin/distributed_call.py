"""The settings of a `score_samples` call that every rank of a process group must pass alike.

:func:`genmetrics.stats.streaming.distributed.check_same_call` compares them (one small all-gather of digests) before
any other collective, so that ranks called with another ``num_samples``, reference, metrics, targets on one
rank only, or other options all raise a ``DistributedError`` naming the difference, instead of scoring over a
wrong total, returning different dicts or waiting for ever in mismatched collectives. Settings that may differ
per rank (the samples, ``device``, ``batch_size``, ``value_range``, paths only rank 0 opens) are not compared.
"""
import hashlib
import os

__all__ = ["call_settings", "reference_identity"]


def reference_identity(ref):
    """``none``, ``sha256:<hex>`` of a statistics file's bytes (the hash the provenance records), or, for statistics
    in memory, ``in-memory sha256:<hex>`` of their n, mu and sigma."""
    if ref is None:
        return "none"
    if ref.path and os.path.isfile(ref.path):
        from genmetrics.stats.download import cached_file_sha256

        return f"sha256:{cached_file_sha256(ref.path)}"
    digest = hashlib.sha256(str(ref.n).encode("ascii"))
    digest.update(ref.mu.tobytes())
    digest.update(ref.sigma.tobytes())
    return f"in-memory sha256:{digest.hexdigest()}"


def _model_name(model):
    if model is None:
        return "default"
    return str(getattr(model, "feature_extractor", None) or type(model).__qualname__)


def call_settings(opts, ref, targets):
    """{name: value} of the settings of one call (``ScoreOptions`` `opts`, loaded reference `ref`) that every rank
    must pass alike."""
    return {
        "num_samples": opts.num_samples,
        "reference": reference_identity(ref),
        "metrics": "default" if opts.metrics is None else ",".join(map(str, opts.metrics)),
        "targets": "given" if targets is not None else "none",
        "prefix": opts.prefix,
        "mode": opts.mode,
        "model": _model_name(opts.model),
        "lpips_net": opts.lpips_net,
        "seed": opts.seed,
        "allow_mismatch": opts.allow_mismatch,
        "kid_subsets": opts.kid_subsets,
        "kid_subset_size": opts.kid_subset_size,
        "is_splits": opts.is_splits,
        "diversity_pairs": opts.diversity_pairs,
        "precision": opts.precision,
        "metric_options": sorted((opts.metric_options or {}).items()),
    }
