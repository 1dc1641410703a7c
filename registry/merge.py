"""Merge shard statistics exactly: n, sum and outer_sum add; mean and covariance follow from the totals.

    n = sum_s n_s,  sum = sum_s sum_s,  outer_sum = sum_s outer_sum_s
    mu = sum / n,   sigma = (outer_sum - n mu mu^T) / (n - 1)

Shards must agree on dataset, split, resolution, mode, feature extractor, layer, weights and the shard
count k, and no shard id may appear twice (overlap). Features, when every shard has them, are
concatenated in shard order. A merge covering all k shards is recorded as ``shard = "0/1"`` (complete);
a partial one lists its shard ids (e.g. ``"0/4,2/4"``) and can be merged again with the rest.
"""
import os

from .refstats import ReferenceStats, read_refstats, write_refstats

__all__ = ["merge"]

_MUST_AGREE = ("dataset", "split", "resolution", "mode", "feature_extractor", "feature_layer", "weights_sha256",
               "version")


def _shard_ids(stats):
    """The (i, k) shard ids a file covers (a full build is (0, 1))."""
    text = str(stats.meta.get("shard") or "0/1")
    ids = []
    for part in text.split(","):
        index, _, count = part.partition("/")
        ids.append((int(index), int(count)))
    return ids


def merge(paths, output, sqrt_sigma=False):
    """Merge shard .h5 files (written by `build`) into `output`; returns the merged ReferenceStats."""
    import numpy as np

    if len(paths) < 2:
        raise ValueError(f"merge needs at least 2 shard files, got {len(paths)}")
    shards = [read_refstats(p) for p in paths]
    first = shards[0]
    for stats in shards[1:]:
        for key in _MUST_AGREE:
            if str(stats.meta.get(key)) != str(first.meta.get(key)):
                raise ValueError(f"cannot merge {stats.path} with {first.path}: {key} differs "
                                 f"({stats.meta.get(key)!r} vs {first.meta.get(key)!r}); only shards of one "
                                 f"dataset, extractor and preprocessing mode can be merged")
    seen = {}
    for stats in shards:
        if stats.sum is None or stats.outer_sum is None:
            raise ValueError(f"{stats.path} has no sum/outer_sum (an imported upstream file); only files written by "
                             f"`genmetrics stats build` can be merged exactly")
        for shard_id in _shard_ids(stats):
            if shard_id in seen:
                raise ValueError(f"{stats.path} and {seen[shard_id]} both contain shard {shard_id[0]}/{shard_id[1]}: "
                                 f"the shards overlap and merging would count those images twice")
            seen[shard_id] = stats.path
    counts = {k for _, k in seen}
    if len(counts) != 1:
        raise ValueError(f"the files come from different shardings (k = {sorted(counts)}); merge shards of one "
                         f"`--shard i/k` split")
    count = counts.pop()
    order = sorted(range(len(shards)), key=lambda i: min(_shard_ids(shards[i])))
    shards = [shards[i] for i in order]
    moments = shards[0].moments()
    for stats in shards[1:]:
        moments.merge(stats.moments())
    features = None
    if all(s.has_features for s in shards):
        features = np.concatenate([np.asarray(s.features, dtype=np.float32) for s in shards])
    complete = sorted(seen) == [(i, count) for i in range(count)]
    meta = {k: v for k, v in first.meta.items() if k not in ("format", "format_version", "created_at", "created_by",
                                                              "shard_range", "num_samples")}
    meta["shard"] = "0/1" if complete else ",".join(f"{i}/{k}" for i, k in sorted(seen))
    meta["merged_from"] = ", ".join(os.path.basename(s.path) for s in shards)
    merged = ReferenceStats.from_moments(moments, features=features, meta=meta)
    if sqrt_sigma:
        from genmetrics.stats import sqrtm_psd

        merged.sqrt_sigma = sqrtm_psd(merged.sigma)
    write_refstats(output, merged)
    return read_refstats(output)
