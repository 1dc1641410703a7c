"""Build reference statistics from images: a folder, a zip, an array/tensor, an iterator, or a standard dataset.

The images are read in a fixed order and processed in chunks of ``checkpoint_every`` images, through the
one image normaliser and the streaming accumulator (``genmetrics.stats.FeatureAccumulator``: Inception
pool3 features, float64 moments n, sum, outer_sum). After each chunk the moments (and the features so far,
with ``features=True``, and their images' digests) are checkpointed atomically to ``<output>.ckpt.npz``; an
interrupted build called again with the same arguments resumes after the last finished chunk and gives the
same arrays as an uninterrupted one (same chunks, same order). A finished build removes its checkpoint. A checkpoint
made from other images or arguments is discarded with a warning, and a second build of the same output
fails at once while the first holds ``<output>.lock`` (see ``registry.checkpoint``).

Sharding for batch schedulers (Slurm arrays, Ray, Spark): ``shard=(i, k)`` (or ``"i/k"``) processes only
images ``i*N//k .. (i+1)*N//k - 1`` into its own file; shards are disjoint and ``merge`` combines them
exactly. Under ``torchrun`` (or inside an initialised ``torch.distributed`` process group) a build without
``shard`` shards itself over the ranks, each checkpointing ``<stem>.shard<r>of<k>.h5.ckpt.npz`` locally;
the ranks then combine their moments with an all-reduce and gather kept features
(``genmetrics.stats.streaming.distributed``) and rank 0 alone writes ``output``: no shared filesystem is needed. A
rank that fails makes every rank fail with an error naming it, and nothing is written.
"""
import os
import warnings

import numpy as np

from genmetrics.stats.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODE, FEATURE_EXTRACTOR
from genmetrics.stats.messages import GenMetricsWarning

from .checkpoint import StreamDigest, fingerprint, load_checkpoint, model_identity, output_lock, save_checkpoint, \
    source_digest
from .datasets import image_source
from .refstats import ReferenceStats, read_refstats, write_refstats

__all__ = ["build", "parse_shard"]


def parse_shard(shard):
    """"i/k" or (i, k) -> (i, k) with 0 <= i < k; None -> None."""
    if shard is None:
        return None
    if isinstance(shard, str):
        parts = shard.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"shard must look like 'i/k' (e.g. '0/4' = the first of 4 shards), got {shard!r}")
        shard = tuple(int(p) for p in parts)
    index, count = shard
    if not (isinstance(index, int) and isinstance(count, int)) or count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: need 0 <= i < k (shards are numbered from 0)")
    return index, count


def _process_group(device):
    """(rank, world, owned) of the torch.distributed group this build combines over, or None.

    An initialised group of more than one rank is used as it is; under ``torchrun`` (``WORLD_SIZE`` > 1 and
    ``MASTER_ADDR`` set) one is initialised from the environment (gloo, or NCCL for a CUDA `device`), with
    the timeout ``GENMETRICS_DIST_TIMEOUT`` seconds when set, and destroyed when the build ends.
    """
    import datetime

    import torch.distributed as dist

    from genmetrics.stats.streaming.distributed import call_timeout, rank_and_world

    if dist.is_available() and dist.is_initialized():
        rank, world = rank_and_world()
        return (rank, world, False) if world > 1 else None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return None
    if not os.environ.get("MASTER_ADDR"):
        raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR is not set: start multi-process builds with torchrun, "
                           "or build shards with --shard i/k and combine them with `genmetrics stats merge`")
    timeout = call_timeout()
    backend = "nccl" if str(device or "").startswith("cuda") else "gloo"
    dist.init_process_group(backend, **({"timeout": datetime.timedelta(seconds=timeout)} if timeout else {}))
    return dist.get_rank(), dist.get_world_size(), True


def _shard_output(output, index, count):
    stem, ext = os.path.splitext(output)
    return f"{stem}.shard{index}of{count}{ext or '.h5'}"


def build(source, output, name=None, split=None, resolution=None, mode=DEFAULT_MODE, features=False, root=None,
          shard=None, weights=None, batch_size=DEFAULT_BATCH_SIZE, device=None, progress=True, checkpoint_every=1000,
          model=None, sqrt_sigma=False, version=1, license=None, citation=None, on_checkpoint=None, value_range=None,
          extractor=None):
    """Compute the statistics of `source` and write them to `output` (.h5, format v1); returns ReferenceStats.

    source: a folder or zip of images; a dataset name (cifar10, cifar100, stl10, mnist, fashion_mnist,
      celeba, lsun_<category>, imagenet) read from its native files under `root`; a 4-D uint8 / float
      [0, 1] array or tensor; or an iterable of image batches (not shardable); any layout the image
      normaliser accepts (``genmetrics.stats.images.image_input``), floats in ``value_range`` when given.
    name / split / resolution: recorded identity (defaults: the folder or dataset name, the dataset's
      split or "custom", the dataset's resolution or the first image's size).
    mode: preprocessing (clean, legacy_tensorflow, legacy_pytorch). features: also store the (N, 2048)
      float32 features (for KID / PRDC). shard: "i/k" (see module docstring). weights / device / model:
      the Inception (default ``load_inception(weights, device)``). batch_size: images per network batch.
    checkpoint_every: images per chunk (and checkpoint). on_checkpoint(done, total): called after each
      chunk's checkpoint is written. sqrt_sigma: also store the square root of sigma.
    extractor: a feature extractor's name (``genmetrics.stats.EXTRACTORS``, e.g. ``dinov2-vit-l-14``,
      ``clip-vit-l-14-336px``) loaded with `weights` / `device` instead of the Inception; the file records it,
      its mode and default layer (`mode` is ignored), and comparisons enforce them.

    Provenance: ``source`` describes the images for people; a folder, zip or standard dataset also records
    ``source_images`` (its absolute path, or the dataset name) and, for a dataset, ``source_root`` (descriptive:
    nothing opens them) and, with `features`, ``image_sha256``: per feature row the sha256 of its image (file
    bytes, or decoded pixels for a standard dataset; ``registry.datasets``). The copy-detection grid of
    ``log_gen_metrics`` shows a reference image only when the caller names where the images are
    (``reference_images=``) and the image read there has the recorded digest. The ``features`` rows are in
    source order within ``shard_range`` (shards, torchrun builds and merges alike).
    """
    from genmetrics.stats import FeatureAccumulator

    output = os.path.abspath(os.fspath(output))
    shard = parse_shard(shard)
    group = _process_group(device) if shard is None else None
    if group is not None:
        shard = group[:2]
    src = image_source(source, root=root, split=split)
    if src is None and shard is not None and shard[1] > 1:
        raise ValueError("an iterator of batches cannot be split into shards; pass a folder, zip, array or "
                         "dataset name, or build without --shard / torchrun")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of images, got {checkpoint_every}")
    index, count = shard or (0, 1)
    target = _shard_output(output, index, count) if group else output
    model = _build_model(model, extractor, weights, device)
    # An iterable is normalised once, by the chunking loop (value_range there); the accumulator then sees [0, 1].
    accumulator = FeatureAccumulator(model=model, mode=mode, batch_size=batch_size,
                                     value_range=value_range if src is not None else None)
    meta = {
        "dataset": name or getattr(src, "default_name", None) or "custom",
        "split": split or getattr(src, "default_split", None) or "custom",
        "mode": accumulator.mode, "version": version,
        "feature_extractor": getattr(model, "feature_extractor", None) or f"custom:{type(model).__name__}",
        "feature_layer": accumulator.layer,
        "weights_sha256": getattr(model, "weights_sha256", None) or "unknown",
        "source": getattr(src, "description", None) or "iterable of image batches",
        "shard": f"{index}/{count}", "chunk_size": checkpoint_every,
    }
    meta.update({k: v for k, v in (("license", license), ("citation", citation)) if v})
    if src is not None:
        meta["source_listing_sha256"] = source_digest(src)
        meta.update(src.locator or {})
        meta.update(getattr(src, "extra_meta", None) or {})
    try:
        with output_lock(target):
            run = _Run(target, meta, accumulator, features, checkpoint_every,
                       digests=features and getattr(src, "locator", None) is not None)
            run.prompts = getattr(src, "prompts", None)
            if group is None:
                _run_chunks(src, source, (index, count), run, progress, on_checkpoint, value_range)
            else:
                _run_rank(src, source, (index, count), run, progress, on_checkpoint, value_range)
            meta["resolution"] = resolution or getattr(src, "default_resolution", None) or run.first_size or "unknown"
            return run.finish(sqrt_sigma) if group is None else _finish_ranks(run, output, sqrt_sigma)
    finally:
        if group is not None and group[2]:
            import torch.distributed as dist

            dist.destroy_process_group()


def _build_model(model, extractor, weights, device):
    """The given model, else the named extractor (``load_extractor``), else the FID Inception."""
    from genmetrics.stats import load_extractor, load_inception

    if model is not None and extractor is not None:
        raise ValueError("pass either model= or extractor= to build(), not both")
    if model is not None:
        return model
    if extractor is None or extractor == FEATURE_EXTRACTOR:
        return load_inception(weights, device=device)
    return load_extractor(extractor, weights=weights, device=device)


def _run_rank(src, source, shard, run, progress, on_checkpoint, value_range):
    """This rank's chunks; a failure is announced to every rank (they all raise) before the combination."""
    from genmetrics.stats.streaming.distributed import check_all_ranks

    error = None
    try:
        _run_chunks(src, source, shard, run, progress, on_checkpoint, value_range)
    except Exception as exc:  # noqa: BLE001 - every rank must learn of it, or the others wait in a collective
        error = exc
    check_all_ranks(error)


def _finish_ranks(run, output, sqrt_sigma):
    """Combine every rank's moments and features; rank 0 writes `output`; all ranks return the statistics."""
    import torch

    from genmetrics.stats.streaming.distributed import all_gather_rows, all_reduce_moments, check_all_ranks, rank_and_world

    local_features = torch.from_numpy(run.kept_features()) if run.keep_features and run.moments.n else None
    local_digests = torch.from_numpy(run.kept_digests()) if run.keep_digests and run.moments.n else None
    moments = all_reduce_moments(run.moments)
    features = all_gather_rows(local_features) if run.keep_features else None
    digests = all_gather_rows(local_digests) if run.keep_digests else None
    total = run.meta.get("total_images")
    meta = dict(run.meta, shard="0/1", num_samples=moments.n, **({"shard_range": f"0:{total}"} if total else {}))
    stats, error = None, None
    try:
        stats = run.statistics(moments, None if features is None else features.numpy(), meta, sqrt_sigma,
                               None if digests is None else digests.numpy())
        if rank_and_world()[0] == 0:
            stats.path = write_refstats(output, stats)  # the other ranks have no file: path stays None
    except Exception as exc:  # noqa: BLE001 - every rank must learn of it
        error = exc
    check_all_ranks(error)
    run.remove_checkpoint()
    return stats


def _run_chunks(src, source, shard, run, progress, on_checkpoint, value_range):
    """Resume `run` from its checkpoint and process the remaining images of this shard (or stream)."""
    if src is None:
        run.resume(None)
        _build_stream(source, run, progress, on_checkpoint, value_range)
        return
    index, count = shard
    total = len(src)
    start, stop = index * total // count, (index + 1) * total // count
    run.meta.update(total_images=total, shard_range=f"{start}:{stop}")
    run.resume(stop - start)
    _build_indexed(src, start, stop, run, progress, on_checkpoint)


def _build_indexed(src, start, stop, run, progress, on_checkpoint):
    from tqdm.auto import tqdm

    with tqdm(total=stop - start, initial=run.done, unit="img", desc="reference statistics", disable=not progress) as bar:
        while start + run.done < stop:
            position = start + run.done
            end = min(position + run.chunk, stop)
            images = src.batch(position, end)
            run.add(images, digests=src.digests(position, end, images) if run.keep_digests else None)
            bar.update(end - position)
            if on_checkpoint:
                on_checkpoint(run.done, stop - start)


def _build_stream(source, run, progress, on_checkpoint, value_range):
    """An iterable of batches: skip the images already in the checkpoint, then chunk the rest."""
    from tqdm.auto import tqdm

    from genmetrics.stats.images.image_input import iter_image_batches

    skip, pending, pending_count, digest = run.done, [], 0, StreamDigest()
    with tqdm(initial=run.done, unit="img", desc="reference statistics", disable=not progress) as bar:
        def flush():
            run.add(pending, digest.hexdigest())
            bar.update(pending_count)
            if on_checkpoint:
                on_checkpoint(run.done, None)

        for batch in iter_image_batches(source, value_range):
            if skip:
                dropped = min(skip, batch.shape[0])
                digest.update(batch[:dropped])
                batch, skip = batch[dropped:], skip - dropped
                if not skip:
                    run.check_stream(digest)
            while batch.shape[0]:
                take = min(run.chunk - pending_count, batch.shape[0])
                pending.append(batch[:take])
                digest.update(batch[:take])
                pending_count += take
                batch = batch[take:]
                if pending_count == run.chunk:
                    flush()
                    pending, pending_count = [], 0
        if skip:
            run.check_stream(digest)  # the stream ended within the images already checkpointed
        if pending_count:
            flush()


def _size_of(images, value_range):
    """Resolution label of the first image (as the normaliser reads it): H when square, else 'HxW'."""
    from genmetrics.stats.images.image_input import iter_image_batches

    h, w = next(iter_image_batches(images[:1], value_range))[0].shape[1:]
    return int(h) if h == w else f"{h}x{w}"


class _Run:
    """Moments (and features, and their images' digests) of one build, checkpointed to ``<target>.ckpt.npz``
    after every chunk; features and digests are appended to side files."""

    def __init__(self, target, meta, accumulator, keep_features, chunk, digests=False):
        self.target, self.meta, self.keep_features, self.chunk = target, meta, keep_features, chunk
        self.keep_digests = bool(digests)
        self.accumulator = accumulator  # keeps no features itself: they go to the side file
        self.ckpt = target + ".ckpt.npz"
        self.features_file = target + ".ckpt.features"
        self.digests_file = target + ".ckpt.sha256"
        self.done = 0
        self.first_size = None
        self.stream_sha256 = ""  # sha256 of the first `done` images of an iterable source
        self.fingerprint = None

    def resume(self, total):
        """Continue from a checkpoint of the same build (``registry.checkpoint``), else start over."""
        self.fingerprint = fingerprint(self.meta, total, self.keep_features, model_identity(self.accumulator.model))
        state = load_checkpoint(self.ckpt, self.fingerprint)
        if state is None or not self._features_cover(state):
            self._reset_features()
            return
        self.done, self.first_size, self.stream_sha256 = state["done"], state["first_size"], state["stream_sha256"]
        if state["moments"] is not None:
            self.accumulator.moments = state["moments"]

    @property
    def moments(self):
        return self.accumulator.moments

    def _features_cover(self, state):
        """Kept features (and digests) hold the checkpoint's rows (rows written after it are cut); else drop the
        checkpoint."""
        sides = []
        if self.keep_features:
            sides.append((self.features_file, state["done"] * (state["moments"].dim if state["moments"] else 0) * 4))
        if self.keep_digests:
            sides.append((self.digests_file, state["done"] * 32))
        for path, needed in sides:
            if not os.path.isfile(path) or os.path.getsize(path) < needed:
                warnings.warn(f"{path} is missing or short; starting the build over", GenMetricsWarning, stacklevel=4)
                os.remove(self.ckpt)
                return False
        for path, needed in sides:
            with open(path, "r+b") as f:
                f.truncate(needed)
        return True

    def check_stream(self, digest):
        """The images skipped on resume must be those checkpointed; else drop the checkpoint and say so."""
        if digest.hexdigest() == self.stream_sha256:
            return
        for leftover in (self.ckpt, self.features_file, self.digests_file):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise ValueError(f"the images given now differ from the first {self.done} images of the interrupted build "
                         f"of {self.target}; its checkpoint was discarded: call build again with the images from "
                         f"their start")

    def _reset_features(self):
        for path, keep in ((self.features_file, self.keep_features), (self.digests_file, self.keep_digests)):
            if keep:
                open(path, "wb").close()
            elif os.path.exists(path):
                os.remove(path)

    def add(self, images, stream_sha256="", digests=None):
        """Extract and accumulate a chunk of images, keep its features (and the images' `digests`, (n, 32)
        uint8), then checkpoint."""
        feats = self.accumulator.update(images)[self.accumulator.layer]
        if self.first_size is None:
            self.first_size = _size_of(images, self.accumulator.value_range)
        if self.keep_features:
            _append(self.features_file, np.ascontiguousarray(feats.numpy()).tobytes())
        if self.keep_digests:
            if digests is None or len(digests) != feats.shape[0]:
                raise RuntimeError(f"{0 if digests is None else len(digests)} image digests for {feats.shape[0]} "
                                   f"images; the source changed while it was read")
            _append(self.digests_file, np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
        self.done += int(feats.shape[0])
        save_checkpoint(self.ckpt, self.moments, self.done, self.fingerprint, self.first_size, stream_sha256)

    def statistics(self, moments, features, meta, sqrt_sigma, digests=None):
        """ReferenceStats of `moments` (and features, and their images' digests) with `meta`; at least 2 images."""
        if moments.n < 2:
            raise ValueError(f"statistics need at least 2 images, got {moments.n}; add images")
        stats = ReferenceStats.from_moments(moments, features=features, meta=meta)
        if digests is not None:
            stats.image_sha256 = digests
        if sqrt_sigma:
            from genmetrics.stats import sqrtm_psd

            stats.sqrt_sigma = sqrtm_psd(stats.sigma)
        return stats

    def finish(self, sqrt_sigma):
        """Write this build's statistics to its target, remove the checkpoint; returns the file read back."""
        features = self.kept_features() if self.keep_features and self.moments.n else None
        digests = self.kept_digests() if self.keep_digests and self.moments.n else None
        self.meta["num_samples"] = self.moments.n
        stats = self.statistics(self.moments, features, self.meta, sqrt_sigma, digests)
        stats.prompts = getattr(self, "prompts", None)
        write_refstats(self.target, stats)
        self.remove_checkpoint()
        return read_refstats(self.target)

    def remove_checkpoint(self):
        for leftover in (self.ckpt, self.features_file, self.digests_file):
            if os.path.exists(leftover):
                os.remove(leftover)

    def kept_digests(self):
        """The digests file as (n, 32) uint8, refused unless it has one row per accumulated image."""
        size = os.path.getsize(self.digests_file)
        if size != self.moments.n * 32:
            raise RuntimeError(f"{self.digests_file} holds {size // 32} image digests but {self.moments.n} images were "
                               f"accumulated; the build was disturbed: delete it and {self.ckpt} and build again")
        return np.fromfile(self.digests_file, dtype=np.uint8).reshape(self.moments.n, 32)

    def kept_features(self):
        """The features file as (n, D) float32, refused unless it has n rows whose mean is the moments' mean."""
        n, dim = self.moments.n, self.moments.dim
        size = os.path.getsize(self.features_file)
        if size != n * dim * 4:
            raise RuntimeError(f"{self.features_file} holds {size // (4 * dim)} feature rows but {n} images were "
                               f"accumulated; the build was disturbed: delete it and {self.ckpt} and build again")
        features = np.fromfile(self.features_file, dtype=np.float32).reshape(n, dim)
        mean = self.moments.mean
        if np.abs(features.mean(axis=0, dtype=np.float64) - mean).max() > 1e-4 * (1.0 + np.abs(mean).max()):
            raise RuntimeError(f"the features in {self.features_file} do not average to the accumulated mean; the "
                               f"build was disturbed: delete it and {self.ckpt} and build again")
        return features


def _append(path, data):
    """Append `data` to side file `path`, flushed to disk (a checkpoint written next counts on it)."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
