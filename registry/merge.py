"""Merge shard statistics exactly: the moments of disjoint shards add.

Each shard's moments are rebuilt from its (n, mu, sigma) about its own mean (shift c = mu, s = 0,
S = (n - 1) sigma; ``GaussianMoments.from_mean_cov``), which is stable for any feature mean, and merged
with ``GaussianMoments.merge`` (rebase, then add n, s, S), equal to one pass over all images up to
rounding. The files' ``sum`` must be present (it marks files written by a build, with a known n; builds
since 0.2 no longer store the derived ``outer_sum``, which merging does not use).

Shards must agree on dataset, split, resolution, mode, feature extractor, layer, weights, the shard
count k, the total number of images and the sha256 of the source listing; no shard id may appear
twice, and no two files' image ranges (``shard_range``, "start:stop" or a list of them) may overlap:
either would count images twice. Features, when every shard has them, are put in source order, and so are
the images' digests (``image_sha256``) when every shard has them too (and the prompts of a text-to-image
reference when every shard stores the same list): a file's rows follow its ranges in
increasing order (a partial merge of shards 0 and 2 holds shard 0's rows, then shard 2's), so the rows are
cut at the ranges and sorted by their first image. Any grouping of merges, in any argument order, gives the
rows of one build over all images. (Files without ``shard_range``, from builds before 0.2, are ordered by
shard id; one of them holding non-adjacent shards cannot be ordered and is refused.)
A merge covering all k shards is recorded as ``shard = "0/1"`` (complete; its ranges must then tile all
images); a partial one lists its shard ids (e.g. ``"0/4,2/4"``) and ranges, and can be merged again with
the rest.
"""
import os
from typing import Sequence

from .refstats import ReferenceStats, read_refstats, write_refstats

__all__ = ["merge"]

_MUST_AGREE = ("dataset", "split", "resolution", "mode", "feature_extractor", "feature_layer", "weights_sha256",
               "version", "total_images", "source_listing_sha256")


def _shard_ids(stats):
    """The (i, k) shard ids a file covers (a full build is (0, 1))."""
    text = str(stats.meta.get("shard") or "0/1")
    ids = []
    for part in text.split(","):
        index, _, count = part.partition("/")
        ids.append((int(index), int(count)))
    return ids


def _image_ranges(stats):
    """[(start, stop), ...] from the file's ``shard_range`` ("a:b" or "a:b,c:d"); [] when it has none."""
    text = stats.meta.get("shard_range")
    if text is None:
        return []
    ranges = []
    for part in str(text).split(","):
        start, _, stop = part.partition(":")
        if not (start.strip().isdigit() and stop.strip().isdigit()) or int(start) > int(stop):
            raise ValueError(f"{stats.path}: shard_range {text!r} is not a list of start:stop image ranges; the "
                             f"file is corrupt or was not written by `genmetrics stats build`")
        ranges.append((int(start), int(stop)))
    return ranges


def _check_ranges(shards, complete):
    """No two files' image ranges overlap; a complete merge tiles 0..total_images. Returns the ranges' text."""
    ranges = sorted((start, stop, stats.path) for stats in shards for start, stop in _image_ranges(stats))
    for (start, stop, path), (_, previous_stop, previous_path) in zip(ranges[1:], ranges):
        if start < previous_stop:
            raise ValueError(f"{path} (images {start}:{stop}) and {previous_path} (images up to {previous_stop}) "
                             f"overlap: merging them would count those images twice; merge disjoint shards only")
    total = shards[0].meta.get("total_images")
    covered = sum(stop - start for start, stop, _ in ranges)
    if complete and ranges and total is not None and (ranges[0][0], covered) != (0, int(total)):
        raise ValueError(f"the shards' image ranges cover {covered} of {total} images although every shard id is "
                         f"present; the shard files do not belong to one build: rebuild the missing shards")
    joined = []
    for start, stop, _ in ranges:  # adjacent ranges coalesce: 0:5 and 5:10 -> 0:10
        if joined and joined[-1][1] == start:
            joined[-1][1] = stop
        else:
            joined.append([start, stop])
    return ",".join(f"{start}:{stop}" for start, stop in joined) or None


def _row_pieces(shards):
    """[(file index, first row, stop row), ...]: the files' feature rows cut at their image ranges, in source order.

    `shards` are sorted by their first shard id. Raises when a file's rows cannot be placed.
    """
    if all(_image_ranges(stats) for stats in shards):
        pieces = []
        for index, stats in enumerate(shards):
            row = 0
            for start, stop in sorted(_image_ranges(stats)):
                pieces.append((start, index, row, row + stop - start))
                row += stop - start
            if row != len(stats.features):
                raise ValueError(f"{stats.path} has {len(stats.features)} feature rows but its shard_range "
                                 f"{stats.meta.get('shard_range')} covers {row} images; the file is corrupt")
        return [piece[1:] for piece in sorted(pieces)]
    for stats in shards:
        ids = sorted(index for index, _ in _shard_ids(stats))
        if ids != list(range(ids[0], ids[0] + len(ids))):
            raise ValueError(f"{stats.path} holds non-adjacent shards {stats.meta.get('shard')} and no shard_range: "
                             f"its feature rows cannot be put in source order; merge it without features, or rebuild "
                             f"it with this version")
    return [(index, 0, len(stats.features)) for index, stats in enumerate(shards)]


def _ordered_rows(shards, pieces, read):
    """One array of the rows `read(stats)` of every file, in the order of `pieces` (:func:`_row_pieces`)."""
    import numpy as np

    arrays = [read(stats) for stats in shards]
    return np.concatenate([arrays[index][start:stop] for index, start, stop in pieces])


def merge(paths: Sequence[str], output: str, sqrt_sigma: bool = False) -> ReferenceStats:
    """Merge shard .h5 files (written by `build`) into `output`; returns the merged ReferenceStats."""
    import numpy as np

    from genmetrics.stats import GaussianMoments

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
        if stats.sum is None:  # the mark of a build (0.2 writes no outer_sum: merging needs only n, mu, sigma)
            raise ValueError(f"{stats.path} has no sum (an imported upstream file); only files written by "
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
    complete = sorted(seen) == [(i, count) for i in range(count)]
    ranges = _check_ranges(shards, complete)
    moments = GaussianMoments.from_mean_cov(shards[0].n, shards[0].mu, shards[0].sigma)
    for stats in shards[1:]:
        moments.merge(GaussianMoments.from_mean_cov(stats.n, stats.mu, stats.sigma))
    features = digests = None
    if all(s.has_features for s in shards):
        pieces = _row_pieces(shards)
        features = _ordered_rows(shards, pieces, lambda s: np.asarray(s.features, dtype=np.float32))
        if all(s.image_sha256 is not None for s in shards):  # one digest per feature row, in the same order
            digests = _ordered_rows(shards, pieces, lambda s: s.image_sha256)
    meta = {k: v for k, v in first.meta.items() if k not in ("format", "format_version", "created_at", "created_by",
                                                              "shard_range", "num_samples", "prompts_sha256")}
    meta["shard"] = "0/1" if complete else ",".join(f"{i}/{k}" for i, k in sorted(seen))
    if ranges:
        meta["shard_range"] = ranges
    meta["merged_from"] = ", ".join(os.path.basename(s.path) for s in shards)
    merged = ReferenceStats.from_moments(moments, features=features, meta=meta)
    merged.image_sha256 = digests
    if all(s.prompts is not None and s.prompts == first.prompts for s in shards):  # every shard stores the full list
        merged.prompts = first.prompts
    if sqrt_sigma:
        from genmetrics.stats import sqrtm_psd

        merged.sqrt_sigma = sqrtm_psd(merged.sigma)
    write_refstats(output, merged)
    return read_refstats(output)
