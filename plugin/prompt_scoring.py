"""CLIPScore inside scoring: the prompts given with the samples, paired in order, scored in the one pass.

``score_samples(samples, prompts=[...], metrics=[..., "clip_score"])`` pairs sample i with prompt i. During the one
pass over the samples (:mod:`genmetrics.plugin.scoring`), each batch's CLIP image embeddings (layer ``clip``, the
preprocessing of :func:`genmetrics.stats.clip_score`) and its prompts' text embeddings are computed and

    sum += 100 max(cos(image_i, text_i), 0)    (float64; count += 1 per pair)

is accumulated, the formula of :mod:`genmetrics.stats.metrics.clip_score`; ``clip_score = sum / count``, unitless,
0..100, equal to ``genmetrics.stats.clip_score(images, prompts)`` on the same images and weights. No image is
held for it. Under a torch.distributed process group each rank pairs its own samples with its own prompts and
(sum, count) are all-reduced.

Prompts are data, like targets, not an option. They are read only when ``clip_score`` is asked for: otherwise
they are only checked to be strings (neither encoded nor count-checked). With ``clip_score``, no prompts, or another number of
prompts than samples, is a ValueError naming both counts, raised before the pass when the count is known up
front (arrays, folders, a sampler with ``num_samples``), else when the pass ends: before anything is logged.

The CLIP model is the metric's option ``model`` (``metric_options={"clip_score_model": ...}``, default
:data:`~genmetrics.stats.defaults.CLIP_SCORE_MODEL`): a model name, its weights resolved as for
``genmetrics.stats.clip_score`` (``$GENMETRICS_CLIP_VIT_B_32_WEIGHTS`` etc., the cache, a download) and loaded once
per process, or a ``ClipModel`` already loaded with ``genmetrics.stats.networks.clip_text.load_clip_model``.
Provenance: ``clip_score_model``, ``clip_score_weights_sha256`` and ``prompts_sha256`` (the hash of
``genmetrics.registry.prompts_store.prompts_sha256``, of all ranks' prompts in rank order).
"""
import functools
import hashlib
from typing import Optional

import numpy as np

from genmetrics.stats.metric_table import METRICS, metric_options

__all__ = ["check_prompts", "prompt_metrics", "check_prompt_count", "known_count", "PromptScores", "prompt_scores"]


def check_prompts(prompts) -> Optional[list]:
    """`prompts` as a new list of str (None stays None): a sequence of strings, one per sample, in order.

    Raises:
        ValueError: a single string, or an item that is not a string (its index and type named).
    """
    if prompts is None:
        return None
    if isinstance(prompts, (str, bytes)):
        raise ValueError("prompts must be a list of strings, one per sample, not one string; pass prompts=[text]")
    try:
        prompts = list(prompts)
    except TypeError:
        raise ValueError(f"prompts must be a list of strings, one per sample, got {type(prompts).__name__}") from None
    for index, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise ValueError(f"prompts[{index}] is {type(prompt).__name__}, not str; pass one text per sample")
    return prompts


def prompt_metrics(names):
    """The metrics among `names` (metric-table names) that pair samples with prompts."""
    return [name for name in names if "prompts" in METRICS[name].needs]


def check_prompt_count(images, prompts):
    """Raise unless there are as many prompts as images. `images`: a count, or None when not known yet;
    `prompts`: a count, or None when none were given."""
    if prompts is None:
        samples = "the samples" if images is None else f"the {images} samples"
        raise ValueError(f"clip_score pairs sample i with prompt i, but no prompts were given for {samples}; pass "
                         f"prompts=[...] (one text per sample, in order)")
    if images != prompts:
        raise ValueError(f"got {images} samples and {prompts} prompts; clip_score pairs sample i with prompt i, "
                         f"so pass one prompt per sample, in the same order")


@functools.lru_cache(maxsize=2)
def _default_clip_model(name, device, weights_env):
    """Both CLIP towers of `name` from default weight resolution (`weights_env`: the value of its environment
    variable, part of the cache key), loaded once per process."""
    from genmetrics.stats.networks.clip_text import load_clip_model

    return load_clip_model(name, device=device, progress=False)


def _clip_model(choice, device):
    """The ClipModel of option `choice`: a loaded ClipModel as it is, or a model name loaded once per process."""
    from genmetrics.stats.networks.clip_text import CLIP_TEXT_ARCHS, ClipModel
    from genmetrics.stats.environment import weights_variable

    if isinstance(choice, ClipModel):
        return choice
    if choice not in CLIP_TEXT_ARCHS:
        raise ValueError(f"clip_score_model must be one of {sorted(CLIP_TEXT_ARCHS)} or a loaded ClipModel, got "
                         f"{choice!r}")
    return _default_clip_model(choice, device, weights_variable(choice).value() or "")


class PromptScores:
    """Running float64 sum of ``100 max(cos(image_i, text_i), 0)`` and the pair count, batch by batch (module
    docstring). Images beyond the last prompt are counted, not scored: :meth:`check_count` then raises."""

    def __init__(self, model, prompts, batch_size):
        self.model, self.prompts, self.batch_size = model, prompts, batch_size
        self.total, self.pairs, self.images = 0.0, 0, 0

    def update(self, batch):
        """Embed one batch of samples (uint8 or float [0, 1], (n, 3, H, W)) and its prompts; add their pairs."""
        from genmetrics.stats.metrics.clip_score import pair_scores
        from genmetrics.stats.networks.clip import CLIP_LAYER
        from genmetrics.stats.networks.clip_tokenizer import clip_tokenize
        from genmetrics.stats.streaming.clip_score import text_embeddings
        from genmetrics.stats.streaming.features import extract_features

        start, self.images = self.images, self.images + batch.shape[0]
        texts = self.prompts[start:self.images]
        if len(texts) < batch.shape[0]:
            return
        image = extract_features(batch, model=self.model.image, batch_size=self.batch_size, progress=False,
                                 layers=[CLIP_LAYER])[CLIP_LAYER]
        text = text_embeddings(self.model.text, clip_tokenize(texts), self.batch_size)
        self.total += float(pair_scores(image, text).sum())
        self.pairs += len(texts)

    def check_count(self):
        """Raise unless this rank's samples and prompts paired one to one (both counts named)."""
        check_prompt_count(self.images, len(self.prompts))

    def finish(self, distributed):
        """(clip_score, provenance params), over all ranks when `distributed` (collectives: every rank calls it).
        ``prompts_sha256`` is :func:`genmetrics.registry.prompts_store.prompts_sha256` of every rank's prompts in
        rank order (the order of the samples): the sha256 of their UTF-8 bytes, each followed by a newline."""
        from genmetrics.registry.prompts_store import prompts_bytes, prompts_sha256

        totals = np.array([self.pairs, self.total], dtype=np.float64)
        digest = prompts_sha256(self.prompts)
        if distributed:
            import torch

            from genmetrics.stats.streaming.distributed import all_gather_rows, all_reduce_sum

            totals = all_reduce_sum(totals)
            text = bytearray(prompts_bytes(self.prompts))
            gathered = all_gather_rows(torch.frombuffer(text, dtype=torch.uint8) if text else None)
            digest = hashlib.sha256(b"" if gathered is None else gathered.numpy().tobytes()).hexdigest()
        params = {"clip_score_model": self.model.name, "clip_score_weights_sha256": self.model.image.weights_sha256,
                  "prompts_sha256": digest}
        return totals[1] / totals[0], params


def known_count(samples, num_samples):
    """This rank's number of samples when known before reading them (`num_samples`: this rank's share, or None):
    a sampler callable draws `num_samples`; arrays, folders and lists of arrays say how many they hold (cut at
    `num_samples`); else None (iterators, generators: counted by the pass)."""
    from genmetrics.stats.images.image_input import count_images

    if callable(samples) and not hasattr(samples, "shape"):
        return num_samples
    count = count_images(samples)
    return count if count is None or num_samples is None else min(count, num_samples)


def prompt_scores(names, prompts, opts, device, samples, share):
    """The :class:`PromptScores` of a call asking for `names` (None when no metric of them pairs with prompts).

    When this rank's number of samples is known before the pass (:func:`known_count` of `samples` and `share`, its
    part of ``num_samples``), no prompts, or a count that differs, raises here, before any network loads. The
    model comes from the metric's option ``model``.
    """
    if not prompt_metrics(names):
        return None
    expected = known_count(samples, share)
    if prompts is None or expected is not None:
        check_prompt_count(expected, None if prompts is None else len(prompts))
    choice = metric_options(METRICS["clip_score"], opts.metric_settings())["model"]
    return PromptScores(_clip_model(choice, device), prompts, opts.batch_size)
