"""A streaming accumulator of Inception statistics: the one place images become features and moments.

Scoring (``genmetrics.plugin.score_samples``), reference builds (``genmetrics.registry.build``) and users'
own loops share it, the way torchmetrics' ``update()/compute()`` metrics are used::

    acc = FeatureAccumulator(mode="clean", keep_features=True)     # the FID Inception by default
    for images in loader:                                          # any input of image_input
        acc.update(images)
    stats = acc.compute()                                          # FeatureStats
    fid = frechet_distance(ref.mu, ref.sigma, stats.mean, stats.cov, features2=stats.features)

State: float64 :class:`~genmetrics.stats.streaming.moments.GaussianMoments` of the ``layer`` features (always),
the float32 features themselves (``keep_features``, for KID / PRDC) and the float64 logits
(``keep_logits``, for the Inception Score). Memory does not grow with the number of images unless features
or logits are kept. ``merge(other)`` adds another accumulator's state (shards computed elsewhere);
``reset()`` empties it.

Inside an initialised ``torch.distributed`` process group every rank accumulates its own images and
``compute()`` combines all ranks (:mod:`~genmetrics.stats.streaming.distributed`: an all-reduce of the float64
moments, a gather of kept features and logits; ranks without images take part too), so every rank gets
the statistics of all images. ``distributed=False`` keeps a rank's own statistics.
"""
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODE, FEATURE_EXTRACTOR, FEATURE_LAYER, LOGITS_LAYER
from .distributed import all_gather_rows, all_reduce_moments, is_distributed
from .moments import GaussianMoments
from ..images.preprocess import _check_mode

__all__ = ["FeatureAccumulator", "FeatureStats", "extractor_name"]


def extractor_name(model):
    """The name statistics files record for `model` (the FID Inception's is ``inception-v3-compat``)."""
    return getattr(model, "feature_extractor", None) or f"custom:{type(model).__name__}"


def _is_feature_extractor(model):
    """True for a :class:`genmetrics.stats.networks.extractor.FeatureExtractor` (imported only when one could exist)."""
    if model is None or "genmetrics.stats.networks.extractor" not in sys.modules:
        return False
    return isinstance(model, sys.modules["genmetrics.stats.networks.extractor"].FeatureExtractor)


def _extractor_mode_and_layer(model, mode, layer):
    """A FeatureExtractor preprocesses in its own mode: that mode is recorded (`mode` is ignored), and the
    default ``pool3`` layer becomes the extractor's default layer when it has no ``pool3``."""
    if not _is_feature_extractor(model):
        return mode, layer
    if layer == FEATURE_LAYER and layer not in model.spec.layers:
        layer = model.spec.default_layer
    if layer not in model.spec.layers:
        raise ValueError(f"extractor {model.name} provides layers {', '.join(model.spec.layers)}, not {layer!r}")
    return model.mode, layer


@dataclass
class FeatureStats:
    """What :meth:`FeatureAccumulator.compute` returns.

    moments: float64 moments of the features; features: (N, D) float32 or None; logits: (N, C) float64 or
    None (None also when the model has no classifier head); provenance: mode, feature_extractor,
    feature_layer and weights_sha256 of the features (the keys statistics files record).
    """

    moments: GaussianMoments
    features: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]
    provenance: dict

    @property
    def n(self) -> int:
        """Number of images."""
        return self.moments.n

    @property
    def mu(self):
        """float64 (D,) mean of the features (the name ``ReferenceStats`` uses: the two are the sides of a metric)."""
        return self.moments.mean

    @property
    def sigma(self):
        """float64 (D, D) unbiased covariance of the features."""
        return self.moments.cov

    @property
    def meta(self):
        """The provenance, under the name ``ReferenceStats`` uses."""
        return self.provenance

    @property
    def mean(self):
        """float64 (D,) mean of the features (same as :attr:`mu`)."""
        return self.moments.mean

    @property
    def cov(self):
        """float64 (D, D) unbiased covariance of the features (same as :attr:`sigma`)."""
        return self.moments.cov


class FeatureAccumulator:
    """Streaming feature statistics: ``update(images or features)``, ``compute()``, ``merge()``, ``reset()``.

    Args:
        model: feature extractor taking float (N, 3, 299, 299) in [-1, 1] and returning a dict of features;
            None = the FID Inception (``load_inception(device=device)``), loaded on the first image update;
            or a :class:`~genmetrics.stats.networks.extractor.FeatureExtractor` (``load_extractor("dinov2-vit-l-14")``),
            which preprocesses in its own mode (then `mode` is ignored and the extractor's is recorded).
        mode: preprocessing of images (``clean``, ``legacy_tensorflow``, ``legacy_pytorch``).
        layer: the feature whose moments are accumulated (``pool3``; a FeatureExtractor without ``pool3``
            uses its default layer, e.g. ``dinov2``).
        keep_features: keep the (N, D) float32 features (KID, PRDC).
        keep_logits: keep the classifier logits (Inception Score), when the model has them.
        batch_size: images per network batch.
        device: where the default model runs (a given model runs where its parameters are).
        value_range: range of float images when not [0, 1], e.g. (-1, 1).
        distributed: combine all ranks of an initialised process group in ``compute()`` (every rank must
            call it); False = this rank's images only. Outside a process group it changes nothing.
        precision: ``fp32`` (exact, default) or ``bf16``: the FID Inception's fast form in bfloat16 (opt-in,
            not exact; see :func:`~genmetrics.stats.extract_features`).

    Example:
        >>> acc = FeatureAccumulator(model=my_extractor)
        >>> acc.update(features=torch.randn(100, 8)).n
        100
    """

    def __init__(self, model=None, mode: str = DEFAULT_MODE, layer: str = FEATURE_LAYER, keep_features: bool = False,
                 keep_logits: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, device=None, value_range=None,
                 distributed: bool = True, precision: str = "fp32"):
        from ..networks.inception_fast import check_precision

        _check_mode(mode)
        if check_precision(precision) != "fp32" and _is_feature_extractor(model):
            raise ValueError(f"precision={precision!r} exists for the FID Inception only; extractor {model.name} "
                             f"runs in fp32")
        mode, layer = _extractor_mode_and_layer(model, mode, layer)
        self.precision = precision
        self.model, self.mode, self.layer = model, mode, layer
        self.keep_features, self.keep_logits = keep_features, keep_logits
        self.batch_size, self.device, self.value_range = batch_size, device, value_range
        self.distributed = distributed
        self.reset()

    def reset(self) -> "FeatureAccumulator":
        """Forget every image seen so far (the model stays loaded)."""
        self.moments = GaussianMoments()
        self._features, self._logits = [], []
        return self

    @property
    def n(self) -> int:
        """Number of images (feature rows) accumulated."""
        return self.moments.n

    def _extract(self, images):
        from .features import extract_features
        from ..networks.inception import load_inception

        if self.model is None:
            self.model = load_inception(device=self.device, progress=False)
        return extract_features(images, model=self.model, mode=self.mode, batch_size=self.batch_size,
                                progress=False, value_range=self.value_range, precision=self.precision)

    def update(self, images=None, *, features=None, logits=None) -> dict:
        """Add images (any input of :mod:`~genmetrics.stats.images.image_input`), or precomputed ``features``
        (N, D) and optional ``logits`` (N, C) of the same images. Returns this batch's features
        (``{layer: (N, D) float32 CPU tensor, "logits": ...}``), e.g. to store them elsewhere.
        """
        if (images is None) == (features is None):
            raise ValueError("pass either images or features= to update(), not both or neither")
        if images is not None:
            batch = self._extract(images)
        else:
            batch = {self.layer: torch.as_tensor(features, dtype=torch.float32)}
            if logits is not None:
                batch[LOGITS_LAYER] = torch.as_tensor(logits)
        self.moments.update(batch[self.layer])
        if self.keep_features:
            self._features.append(batch[self.layer])
        if self.keep_logits and LOGITS_LAYER in batch:
            self._logits.append(batch[LOGITS_LAYER].double())
        return batch

    def merge(self, other: "FeatureAccumulator") -> "FeatureAccumulator":
        """Add another accumulator's images (same layer; kept features/logits are concatenated)."""
        if not isinstance(other, FeatureAccumulator):
            raise TypeError(f"can only merge another FeatureAccumulator, got {type(other).__name__}")
        if other.keep_features != self.keep_features:
            raise ValueError("cannot merge accumulators of which only one keeps features; create both with the "
                             "same keep_features")
        self.moments.merge(other.moments)
        self._features += other._features
        self._logits += other._logits
        return self

    @property
    def provenance(self) -> dict:
        """mode, feature_extractor, feature_layer, weights_sha256 of the accumulated features."""
        model = self.model
        return {"mode": self.mode,
                "feature_extractor": FEATURE_EXTRACTOR if model is None else extractor_name(model),
                "feature_layer": self.layer,
                "weights_sha256": getattr(model, "weights_sha256", None)}

    def compute(self) -> FeatureStats:
        """The accumulated statistics, of all ranks when distributed (raises when there are no images)."""
        moments = self.moments
        features = torch.cat(self._features) if self._features else None
        logits = torch.cat(self._logits) if self._logits else None
        if self.distributed and is_distributed():
            moments = all_reduce_moments(moments)
            features, logits = all_gather_rows(features), all_gather_rows(logits)
        if moments.n == 0:
            raise ValueError("no images accumulated yet; call update(images) first")
        return FeatureStats(moments, features, logits, self.provenance)
