"""A streaming accumulator of Inception statistics: the one place images become features and moments.

Scoring (``genmetrics.plugin.score_samples``), reference builds (``genmetrics.registry.build``) and users'
own loops share it, the way torchmetrics' ``update()/compute()`` metrics are used::

    acc = FeatureAccumulator(mode="clean", keep_features=True)     # the FID Inception by default
    for images in loader:                                          # any input of image_input
        acc.update(images)
    stats = acc.compute()                                          # FeatureStats
    fid = frechet_distance(ref.mu, ref.sigma, stats.mean, stats.cov, features2=stats.features)

State: float64 :class:`~genmetrics.stats.streaming.moments.GaussianMoments` of the ``layer`` features (always)
and of each of ``extra_layers`` (e.g. ``spatial`` for sFID, from the same network pass), the float32 features
themselves (``keep_features``, for KID / PRDC) and the float64 logits (``keep_logits``, for the Inception Score).
Memory does not grow with the number of images unless features or logits are kept. ``merge(other)`` adds
another accumulator's state (shards computed elsewhere); ``reset()`` empties it.

Inside an initialised ``torch.distributed`` process group every rank accumulates its own images and
``compute()`` combines all ranks (:mod:`~genmetrics.stats.streaming.distributed`: an all-reduce of the float64
moments, a gather of kept features and logits; ranks without images take part too), so every rank gets
the statistics of all images. ``distributed=False`` keeps a rank's own statistics.

Images become features through :func:`~genmetrics.stats.streaming.features.extract_features` (this module uses
it; it never uses this one); mode, precision and layers are validated by the extractor spec
(:func:`~genmetrics.stats.networks.extractor.check_extraction`).
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence

import torch

from ..defaults import DEFAULT_BATCH_SIZE, DEFAULT_MODE, DEFAULT_PRECISION, FEATURE_LAYER, LOGITS_LAYER
from ..networks.extractor import check_extraction, has_logits, spec_of
from ..networks.inception import load_inception
from .distributed import all_gather_rows, all_reduce_moments, is_distributed
from .features import extract_features
from .moments import GaussianMoments

__all__ = ["FeatureAccumulator", "FeatureStats"]


def _recorded_name(model):
    """The name statistics files record for `model`: its spec's (the FID Inception's is ``inception-v3-compat``),
    else the name a user's module declares as ``feature_extractor``, else ``custom:<class name>``."""
    spec = spec_of(model)
    if spec is not None:
        return spec.name
    return getattr(model, "feature_extractor", None) or f"custom:{type(model).__name__}"


def _default_layer(model, layer):
    """`layer`, except that the default ``pool3`` becomes the extractor's default layer when it has no ``pool3``
    (``dinov2``, ``clip``)."""
    spec = spec_of(model)
    if spec is not None and layer == FEATURE_LAYER and layer not in spec.layers:
        return spec.default_layer
    return layer


@dataclass
class FeatureStats:
    """What :meth:`FeatureAccumulator.compute` returns.

    moments: float64 moments of the features; features: (N, D) float32 or None; logits: (N, C) float64 or
    None (None also when the model has no classifier head); provenance: mode, feature_extractor,
    feature_layer and weights_sha256 of the features (the keys statistics files record); layer_moments: float64
    moments of each extra layer by name (``{"spatial": GaussianMoments}``; empty without ``extra_layers``).
    """

    moments: GaussianMoments
    features: Optional[torch.Tensor]
    logits: Optional[torch.Tensor]
    provenance: dict
    layer_moments: Dict[str, GaussianMoments] = field(default_factory=dict)

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

    def layer(self, name):
        """The side of layer `name`, as ``ReferenceStats.layer`` gives it: these statistics for their own layer (or
        None), else the moments of that extra layer (no features, no logits, the layer in its provenance)."""
        if name is None or name == self.provenance.get("feature_layer", name):
            return self
        if name not in self.layer_moments:
            raise ValueError(f"no moments of layer {name!r} were accumulated (extra layers: "
                             f"{sorted(self.layer_moments) or 'none'}); pass extra_layers=({name!r},)")
        return FeatureStats(self.layer_moments[name], None, None, {**self.provenance, "feature_layer": name})

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
        extra_layers: further layers of the same model whose moments are accumulated too, from the same network
            pass (e.g. ``("spatial",)``: sFID's features; in ``FeatureStats.layer_moments``). Default none: only
            `layer` is extracted, as the network's default outputs.
        keep_features: keep the (N, D) float32 features (KID, PRDC).
        keep_logits: keep the classifier logits (Inception Score), when the model has them.
        batch_size: images per network batch.
        device: where the default model runs (a given model runs where its parameters are).
        value_range: range of float images when not [0, 1], e.g. (-1, 1).
        distributed: combine all ranks of an initialised process group in ``compute()`` (every rank must
            call it); False = this rank's images only. Outside a process group it changes nothing.
        precision: ``fp32`` (exact, default) or ``bf16``: the FID Inception's fast form in bfloat16 (opt-in,
            not exact; see :func:`~genmetrics.stats.extract_features`).

    Mode, precision, `layer` and `extra_layers` are checked by the model's extractor spec (ValueError naming the
    valid choices; a user's module's layers are checked when it returns them).

    Example:
        >>> acc = FeatureAccumulator(model=my_extractor)
        >>> acc.update(features=torch.randn(100, 8)).n
        100
    """

    def __init__(self, model=None, mode: str = DEFAULT_MODE, layer: str = FEATURE_LAYER, keep_features: bool = False,
                 keep_logits: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, device=None, value_range=None,
                 distributed: bool = True, precision: str = DEFAULT_PRECISION, extra_layers: Sequence[str] = ()):
        extra_layers = (extra_layers,) if isinstance(extra_layers, str) else tuple(extra_layers)
        mode, precision, layers = check_extraction(model, mode, precision,
                                                   (_default_layer(model, layer), *extra_layers))
        self.precision, self.extra_layers = precision, layers[1:]
        self.model, self.mode, self.layer = model, mode, layers[0]
        self.keep_features, self.keep_logits = keep_features, keep_logits
        self.batch_size, self.device, self.value_range = batch_size, device, value_range
        self.distributed = distributed
        self.reset()

    def reset(self) -> "FeatureAccumulator":
        """Forget every image seen so far (the model stays loaded)."""
        self.moments = GaussianMoments()
        self.layer_moments = {name: GaussianMoments() for name in self.extra_layers}
        self._features, self._logits = [], []
        return self

    @property
    def n(self) -> int:
        """Number of images (feature rows) accumulated."""
        return self.moments.n

    def _layers_to_extract(self):
        """None (the network's default outputs) without extra layers or for a user's module (it returns what it
        returns); else `layer`, the extra layers and the logits when kept and the model has them."""
        if not self.extra_layers or spec_of(self.model) is None:
            return None
        logits = (LOGITS_LAYER,) if self.keep_logits and has_logits(self.model) else ()
        return (self.layer, *self.extra_layers, *logits)

    def _extract(self, images):
        if self.model is None:
            self.model = load_inception(device=self.device, progress=False)
        return extract_features(images, model=self.model, mode=self.mode, batch_size=self.batch_size,
                                progress=False, value_range=self.value_range, precision=self.precision,
                                layers=self._layers_to_extract())

    def _given(self, features, logits):
        """The batch of precomputed `features`: a (N, D) array of `layer`, or ``{layer: (N, D)}`` holding `layer`
        and every extra layer (needed when there are extra layers)."""
        if not isinstance(features, dict):
            if self.extra_layers:
                raise ValueError(f"this accumulator also takes layers {', '.join(self.extra_layers)}: pass "
                                 f"features={{layer: (N, D) array}} for {', '.join((self.layer, *self.extra_layers))}")
            features = {self.layer: features}
        batch = {name: torch.as_tensor(value, dtype=torch.float32) for name, value in features.items()}
        if logits is not None:
            batch[LOGITS_LAYER] = torch.as_tensor(logits)
        return batch

    def update(self, images=None, *, features=None, logits=None) -> dict:
        """Add images (any input of :mod:`~genmetrics.stats.images.image_input`), or precomputed ``features``
        (N, D) (a dict ``{layer: (N, D)}`` with extra layers) and optional ``logits`` (N, C) of the same images.
        Returns this batch's features (``{layer: (N, D) float32 CPU tensor, "logits": ...}``), e.g. to store
        them elsewhere.
        """
        if (images is None) == (features is None):
            raise ValueError("pass either images or features= to update(), not both or neither")
        batch = self._extract(images) if images is not None else self._given(features, logits)
        missing = [name for name in (self.layer, *self.extra_layers) if name not in batch]
        if missing:
            raise ValueError(f"no {', '.join(map(repr, missing))} features in this batch (it has "
                             f"{', '.join(batch) or 'none'}); the model or features= must provide them")
        self.moments.update(batch[self.layer])
        for name, moments in self.layer_moments.items():
            moments.update(batch[name])
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
        if other.extra_layers != self.extra_layers:
            raise ValueError(f"cannot merge accumulators of extra layers {other.extra_layers} into "
                             f"{self.extra_layers}; create both with the same extra_layers")
        self.moments.merge(other.moments)
        for name, moments in self.layer_moments.items():
            moments.merge(other.layer_moments[name])
        self._features += other._features
        self._logits += other._logits
        return self

    @property
    def provenance(self) -> dict:
        """mode, feature_extractor, feature_layer, weights_sha256 of the accumulated features."""
        model = self.model
        return {"mode": self.mode,
                "feature_extractor": _recorded_name(model),
                "feature_layer": self.layer,
                "weights_sha256": getattr(model, "weights_sha256", None)}

    def compute(self) -> FeatureStats:
        """The accumulated statistics, of all ranks when distributed (raises when there are no images)."""
        moments, layer_moments = self.moments, dict(self.layer_moments)
        features = torch.cat(self._features) if self._features else None
        logits = torch.cat(self._logits) if self._logits else None
        if self.distributed and is_distributed():
            moments = all_reduce_moments(moments)
            layer_moments = {name: all_reduce_moments(m) for name, m in layer_moments.items()}
            features, logits = all_gather_rows(features), all_gather_rows(logits)
        if moments.n == 0:
            raise ValueError("no images accumulated yet; call update(images) first")
        return FeatureStats(moments, features, logits, self.provenance, layer_moments)
