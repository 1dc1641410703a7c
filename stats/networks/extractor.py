"""Feature extractors behind one small, explicit interface: what each network is, declared in a table.

An :class:`ExtractorSpec` declares, for one network:

- ``name``: the name statistics files record (``feature_extractor``) and comparisons enforce;
- ``layers`` / ``default_layer``: the features it provides; ``on_request``: those of its layers the network
  computes only when asked for (``network(x, <layer>=True)``; the FID Inception's ``spatial``), so that the
  default outputs cost nothing more;
- ``input_size``: the side of the square network input;
- ``modes`` / ``preprocess(images, mode)``: how a normalised batch (N, 3, H, W), uint8 or float in [0, 1]
  (:mod:`genmetrics.stats.images.image_input`), becomes the network input; the first mode is the default;
- ``precisions``: the arithmetic it runs in (``fp32``; the FID Inception also ``bf16``, its fast form in bfloat16);
- ``weights`` / ``weights_env`` / ``fallback`` / ``load_network(path)``: how its weights resolve (explicit path,
  environment variable, cache, sha256-verified download, installed substitute; see
  :mod:`genmetrics.stats.networks.weights`) and become the network.

The spec is where a request is validated, for every extractor alike: :meth:`ExtractorSpec.check_mode`,
:meth:`~ExtractorSpec.check_precision`, :meth:`~ExtractorSpec.check_layers`, combined for a model (or the
default FID Inception, ``model=None``) by :func:`check_extraction`, which
:func:`~genmetrics.stats.extract_features` and :class:`~genmetrics.stats.FeatureAccumulator` call.

Members (:data:`EXTRACTORS`): the FID Inception (``inception-v3-compat``: preprocessing =
:func:`genmetrics.stats.images.preprocess.preprocess` in its mode, numbers unchanged; layers ``pool3``,
``logits``, ``spatial``, see :mod:`genmetrics.stats.networks.inception`), DINOv2 ViT-S/B/L/G-14
(:mod:`genmetrics.stats.networks.dinov2`) and CLIP ViT-B/32, L/14, L/14@336px (:mod:`genmetrics.stats.networks.clip`). The ViTs
follow torch-fidelity's preprocessing, whose resize is the ``legacy_tensorflow`` one, so that is their only mode.

Example:
    >>> extractor = load_extractor("dinov2-vit-l-14", device="cuda")  # doctest: +SKIP
    >>> extractor(images)["dinov2"].shape                                 # doctest: +SKIP
    torch.Size([16, 1024])
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..defaults import (DEFAULT_BATCH_SIZE, DEFAULT_PRECISION, FEATURE_EXTRACTOR, FEATURE_LAYER, LOGITS_LAYER, MODES,
                        PRECISIONS, SPATIAL_LAYER)
from ..download import cached_file_sha256
from ..environment import weights_variable
from ..images.preprocess import preprocess
from .inception import FIDInception, load_inception
from .inception_fast import FastFIDInception, build_fast_inception, check_precision
from .weights import INCEPTION, INCEPTION_WEIGHTS_ENV, installed_fid_helper_weights, resolve_weights

__all__ = ["ExtractorSpec", "FeatureExtractor", "EXTRACTORS", "extractor_spec", "load_extractor", "spec_of",
           "check_extraction", "has_logits"]


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that identifies a feature extractor and how to run it (see the module docstring)."""

    name: str
    layers: Tuple[str, ...]
    default_layer: str
    input_size: int
    modes: Tuple[str, ...]
    preprocess: Callable[[torch.Tensor, str], torch.Tensor]
    weights: str
    weights_env: str
    load_network: Callable[[str], nn.Module]
    fallback: Optional[Callable[[], Optional[str]]] = None
    description: str = ""
    on_request: Tuple[str, ...] = ()
    precisions: Tuple[str, ...] = (DEFAULT_PRECISION,)

    def check_mode(self, mode: Optional[str]) -> str:
        """`mode`, or the default one when None; a mode this extractor does not use is refused."""
        if mode is None:
            return self.modes[0]
        if mode not in self.modes:
            raise ValueError(f"extractor {self.name} preprocesses with mode {' or '.join(self.modes)}, not {mode!r}; "
                             f"pass one of those, or mode=None for its default ({self.modes[0]})")
        return mode

    def check_precision(self, precision: str) -> str:
        """`precision` when this extractor runs in it; an unknown name or one it does not run in is refused."""
        check_precision(precision)
        if precision not in self.precisions:
            raise ValueError(f"precision={precision!r} is not available for extractor {self.name}, which runs in "
                             f"{' or '.join(self.precisions)}; use precision={self.precisions[0]!r}")
        return precision

    def check_layers(self, layers: Union[None, str, Sequence[str]]) -> Optional[Tuple[str, ...]]:
        """None (the network's default outputs), else the requested layer names as a tuple without repeats (one
        name may be given as a str); an empty request or a layer this extractor does not provide is refused."""
        if layers is None:
            return None
        names = _layer_names(layers)
        unknown = [name for name in names if name not in self.layers]
        if unknown:
            raise ValueError(f"extractor {self.name} provides layers {', '.join(self.layers)}, not "
                             f"{', '.join(map(repr, unknown))}; pass some of those, or layers=None for its default "
                             f"outputs")
        return names


def _layer_names(layers: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    """Layer names as a tuple without repeats, in order (one name may be a str); an empty request is refused."""
    names = tuple(dict.fromkeys((layers,) if isinstance(layers, str) else layers))
    if not names:
        raise ValueError("layers is empty; name the layers to return, or pass layers=None for the default outputs")
    return names


class FeatureExtractor(nn.Module):
    """A spec with its loaded network. ``extractor(images)`` -> ``{layer: (N, dim) float32}`` for a normalised
    batch (N, 3, H, W) uint8 or float [0, 1]; preprocessing per the spec and `mode`, on the network's device.

    Attributes: ``spec``, ``network``, ``mode``, ``name`` (= ``spec.name``, recorded in files),
    ``weights_path``, ``weights_sha256``, ``weights_source``.
    """

    def __init__(self, spec: ExtractorSpec, network: nn.Module, mode: Optional[str] = None,
                 weights_path: Optional[str] = None, weights_source: Optional[str] = None):
        super().__init__()
        self.spec, self.network, self.mode = spec, network, spec.check_mode(mode)
        self.name = spec.name
        self.weights_path, self.weights_source = weights_path, weights_source
        self.weights_sha256 = cached_file_sha256(weights_path) if weights_path else None

    @property
    def feature_extractor(self) -> str:
        """The name statistics files record (as ``FIDInception.feature_extractor``)."""
        return self.spec.name

    def _device(self):
        parameter = next(self.network.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised batch (N, 3, H, W) uint8 or float [0, 1] -> the network's input, on its device (preprocessed
        there: on a GPU, ``clean`` resizes with :func:`~genmetrics.stats.images.resize_pil.resize_pil_bicubic`)."""
        device = self._device()
        return self.spec.preprocess(images.to(device), self.mode).to(device)

    def forward(self, images: torch.Tensor) -> Dict[str, torch.Tensor]:
        with torch.no_grad():
            out = self.network(self.prepare(images))
        return {layer: value.float() for layer, value in out.items()}

    def extract(self, images, batch_size: int = DEFAULT_BATCH_SIZE, value_range=None,
                progress: bool = False, layers: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """Features of any input :mod:`genmetrics.stats.images.image_input` accepts (arrays, tensors, PIL images,
        iterables of batches, a folder or zip path), `batch_size` images per network call:
        ``{layer: (N, dim) float32 CPU tensor}`` (:func:`~genmetrics.stats.extract_features` with this model;
        `layers` as there)."""
        from ..streaming.features import extract_features

        return extract_features(images, model=self, batch_size=batch_size, value_range=value_range,
                                progress=progress, layers=layers)


# ---- the members -------------------------------------------------------------------------------------------


def _inception_network(path):
    return load_inception(path, device="cpu")


def _state_dict(path, what):
    """``torch.load(weights_only=True)`` of a state dict file; one-line error naming the file otherwise."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read {what} weights {path} ({str(error).splitlines()[0]}); pass the release "
                         f"state dict file") from error
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a state dict; pass the {what} release checkpoint")
    return state


def _load_strict(network, state, path, what):
    try:
        network.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path} does not fit {what}: {' '.join(str(error).split())[:300]}") from error
    return network.float().eval().requires_grad_(False)


def _dinov2_network(name):
    def load(path):
        from .dinov2 import build_dinov2

        return _load_strict(build_dinov2(name), _state_dict(path, name), path, name)
    return load


def _clip_network(name):
    def load(path):
        from .clip import build_clip, clip_state_dict
        from .torchscript_tensors import is_torchscript, read_torchscript_tensors

        tensors = read_torchscript_tensors(path) if is_torchscript(path) else _state_dict(path, name)
        return _load_strict(build_clip(name), clip_state_dict(tensors), path, name)
    return load


def _dinov2_preprocess(images, mode):
    from .dinov2 import preprocess_dinov2

    return preprocess_dinov2(images)


def _clip_preprocess(size):
    def run(images, mode):
        from .clip import preprocess_clip

        return preprocess_clip(images, size)
    return run


def _dinov2_spec(name, dim):
    return ExtractorSpec(
        name=name, layers=("dinov2",), default_layer="dinov2", input_size=224, modes=("legacy_tensorflow",),
        preprocess=_dinov2_preprocess, weights=name, weights_env=weights_variable(name).name,
        load_network=_dinov2_network(name),
        description=f"DINOv2 {name[7:].upper()} class token ({dim}-D), torch-fidelity's 224 px preprocessing")


def _clip_spec(name, size, dim):
    return ExtractorSpec(
        name=name, layers=("clip", "clip_l2"), default_layer="clip", input_size=size, modes=("legacy_tensorflow",),
        preprocess=_clip_preprocess(size), weights=name, weights_env=weights_variable(name).name,
        load_network=_clip_network(name),
        description=f"CLIP {name[5:].upper()} image embedding ({dim}-D; clip_l2: L2-normalised, for CMMD)")


#: Every known extractor by recorded name.
EXTRACTORS: Dict[str, ExtractorSpec] = {
    FEATURE_EXTRACTOR: ExtractorSpec(
        name=FEATURE_EXTRACTOR, layers=(FEATURE_LAYER, LOGITS_LAYER, SPATIAL_LAYER), default_layer=FEATURE_LAYER,
        input_size=299, modes=MODES, preprocess=preprocess, weights=INCEPTION,
        weights_env=INCEPTION_WEIGHTS_ENV, load_network=_inception_network, fallback=installed_fid_helper_weights,
        on_request=(SPATIAL_LAYER,), precisions=PRECISIONS,
        description="FID Inception-v3 (TF graph 2015-12-05): pool3 (2048-D), logits (1008, needs the fc head), "
                    "spatial (2023-D, Mixed_6d 1x1 branch, 7 channels, for sFID)"),
    **{name: _dinov2_spec(name, dim) for name, dim in (("dinov2-vit-s-14", 384), ("dinov2-vit-b-14", 768),
                                                         ("dinov2-vit-l-14", 1024), ("dinov2-vit-g-14", 1536))},
    **{name: _clip_spec(name, size, dim) for name, size, dim in (("clip-vit-b-32", 224, 512),
                                                                  ("clip-vit-l-14", 224, 768),
                                                                  ("clip-vit-l-14-336px", 336, 768))},
}


def extractor_spec(name: str) -> ExtractorSpec:
    """The spec of a known extractor; an unknown name is refused with the list of known ones."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; use one of {', '.join(EXTRACTORS)}")
    return EXTRACTORS[name]


def spec_of(model) -> Optional[ExtractorSpec]:
    """The spec describing `model`: a FeatureExtractor's own; the FID Inception's for an :class:`FIDInception`,
    a :class:`FastFIDInception` or None (the default model); None for a user's module (unknown layers)."""
    if isinstance(model, FeatureExtractor):
        return model.spec
    if model is None or isinstance(model, (FIDInception, FastFIDInception)):
        return EXTRACTORS[FEATURE_EXTRACTOR]
    return None


def has_logits(model) -> bool:
    """True when `model` returns the Inception's classifier logits: an FID Inception (plain, fast, or the network
    of a FeatureExtractor) whose weights include the 1008-way head."""
    network = model.network if isinstance(model, FeatureExtractor) else model
    return isinstance(network, (FIDInception, FastFIDInception)) and network.has_logits


def check_extraction(model, mode: Optional[str] = None, precision: str = DEFAULT_PRECISION,
                     layers: Union[None, str, Sequence[str]] = None) -> Tuple[str, str, Optional[Tuple[str, ...]]]:
    """``(mode, precision, layers)`` of a feature request to `model`, validated by its spec (:func:`spec_of`).

    mode: a FeatureExtractor preprocesses in its own mode (returned; `mode` is not used); other models (the FID
    Inception, a user's module taking its input) in `mode` of :data:`~genmetrics.stats.defaults.MODES` (None:
    ``clean``). precision: a name of :data:`~genmetrics.stats.defaults.PRECISIONS` the spec runs in (a user's
    module: any name; only the fast FID Inception runs ``bf16``, see ``extract_features``). layers: None (the
    default outputs) or layer names the spec provides (a user's module: not checked here, it returns its own).
    Raises ValueError naming the valid choices.
    """
    spec = spec_of(model)
    inception = EXTRACTORS[FEATURE_EXTRACTOR]
    mode = model.mode if isinstance(model, FeatureExtractor) else inception.check_mode(mode)
    if spec is None:
        return mode, check_precision(precision), None if layers is None else _layer_names(layers)
    return mode, spec.check_precision(precision), spec.check_layers(layers)


def load_extractor(name: str = FEATURE_EXTRACTOR, weights: Optional[str] = None, device=None,
                   mode: Optional[str] = None, progress: bool = True, fast: bool = True) -> FeatureExtractor:
    """The named extractor with its weights, eval mode, gradients off, on `device` (None: CUDA if available).

    fast: the FID Inception runs in its fast form (:mod:`genmetrics.stats.networks.inception_fast`, same features to
    ~1e-6 relative, as :func:`~genmetrics.stats.extract_features` does); False keeps the reference module.

    weights: a file path; None resolves ``$<spec.weights_env>`` -> cache -> download (sha256-verified when
    pinned) -> the spec's installed fallback, and fails offline with a message naming the URL, the cache path
    and the environment variable (:func:`genmetrics.stats.networks.weights.resolve_weights`).
    """
    spec = extractor_spec(name)
    mode = spec.check_mode(mode)
    resolved = resolve_weights(spec.weights, path=weights, env_var=spec.weights_env, fallback=spec.fallback,
                               progress=progress)
    network = spec.load_network(resolved.path)
    if fast and spec.name == FEATURE_EXTRACTOR:
        network = build_fast_inception(network)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = FeatureExtractor(spec, network, mode, os.path.abspath(resolved.path), resolved.source)
    return extractor.to(device).eval().requires_grad_(False)
