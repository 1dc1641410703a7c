"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric").

For images x, y in [-1, 1] (N, 3, H, W) and a backbone with taps l = 1..L:

    x' = (x - shift) / scale              shift = (-0.030, -0.088, -0.188), scale = (0.458, 0.448, 0.450)
    f_l = features of x' at tap l         (C_l, H_l, W_l)
    u_l = f_l / (sqrt(sum_c f_l²) + 1e-10)    unit length along channels, per position
    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (u_l(x) - u_l(y))²

with the non-negative LPIPS v0.1 linear weights w_l (1x1 convolutions without bias). Taps, exactly as the
``lpips`` package's ``pretrained_networks`` slices of torchvision's ``features``:

- ``alex``: AlexNet ReLU outputs after features[1, 4, 7, 9, 11] (64, 192, 384, 256, 256 channels);
- ``vgg``: VGG-16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 = features[3, 8, 15, 22, 29];
- ``squeeze``: SqueezeNet 1.1 features[1, 4, 7, 9, 10, 11, 12] (64, 128, 256, 384, 384, 512, 512).

The spatial mean is taken before the channel weighting (both are linear, so this equals the ``lpips``
package's 1x1 convolution followed by the mean, to float rounding). The forward pass runs in full IEEE
float32 (no TF32 on CUDA, via :func:`genmetrics.stats.tf32.exact_float32`), so GPU and CPU agree.

Weights: ``backbone_weights`` is a path to torchvision's state dict of the architecture (the file
torchvision itself downloads, e.g. ``alexnet-owt-7be5be79.pth``; only its ``features.*`` tensors are used).
Without a path: the cache ``$GENMETRICS_HOME/weights``, then torch.hub's checkpoint folder (where
torchvision keeps it), then a download from torchvision's URL through :mod:`genmetrics.stats.download`.
torchvision publishes only the first 8 hex digits of the file's sha256 (in its name); like torch.hub,
that prefix is verified (a cached or downloaded file that fails is deleted). ``lin_weights`` is a path to
the LPIPS v0.1 file (``alex.pth`` etc.); without it the installed ``lpips`` package's
``weights/v0.1/<net>.pth`` is used (sha256 checked, no network), else the cache or a sha256-pinned download.
Everything is read with ``torch.load(weights_only=True)``.
"""
import importlib.util
import os
import re
from dataclasses import dataclass

import torch
import torch.nn as nn
import torchvision

from ..download import cached_file_sha256
from ..tf32 import exact_float32
from .weights import KNOWN_WEIGHTS, WeightsUnavailableError, resolve_weights, weights_dir

__all__ = ["LPIPS", "LPIPS_NETS", "resolve_lpips_backbone", "resolve_lpips_lin"]

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10
_RANGE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class _Net:
    architecture: str  # torchvision constructor
    taps: tuple  # indices into features whose outputs are compared
    channels: tuple
    min_size: int  # smallest input side the backbone accepts


LPIPS_NETS = {
    "alex": _Net("alexnet", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), 31),
    "vgg": _Net("vgg16", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), 16),
    "squeeze": _Net("squeezenet1_1", (1, 4, 7, 9, 10, 11, 12), (64, 128, 256, 384, 384, 512, 512), 17),
}


def _check_net(net):
    if net not in LPIPS_NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(LPIPS_NETS)} ('alex' is the usual one)")
    return LPIPS_NETS[net]


# ---------------------------------------------------------------------------------------------------
# Weight files


def _hash_prefix(filename):
    """The sha256 prefix torchvision puts in its file names (torch.hub's rule: ``-<hex>.`` in the name)."""
    match = re.search(r"-([a-f0-9]+)\.", filename)
    return match.group(1) if match else None


def _check_hash_prefix(path, filename, delete):
    prefix = _hash_prefix(filename)
    digest = cached_file_sha256(path)
    if prefix and not digest.startswith(prefix):
        if delete:
            os.remove(path)
        raise ValueError(f"{path} has sha256 {digest}, but its published name {filename} says it starts with "
                         f"{prefix}{' (deleted)' if delete else ''}; download it again or pass backbone_weights= "
                         f"with the correct file")


def _torch_hub_file(filename):
    path = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    if os.path.isfile(path) and cached_file_sha256(path).startswith(_hash_prefix(filename) or ""):
        return path
    return None


def resolve_lpips_backbone(net, path=None, progress=True):
    """Path of the torchvision backbone weights: path -> cache -> torch.hub's folder -> download (prefix-verified)."""
    _check_net(net)
    name = f"lpips-{net}-backbone"
    entry = KNOWN_WEIGHTS[name]
    if path is not None:
        return resolve_weights(name, path=path).path
    cached = os.path.join(weights_dir(), entry.filename)
    if os.path.isfile(cached):
        _check_hash_prefix(cached, entry.filename, delete=True)
        return cached
    hub = _torch_hub_file(entry.filename)
    if hub:
        return hub
    try:
        resolved = resolve_weights(name, progress=progress)
    except WeightsUnavailableError as error:
        raise WeightsUnavailableError(f"{error} Or pass LPIPS({net!r}, backbone_weights=<path of that file>) "
                                      f"(its sha256 starts with {_hash_prefix(entry.filename)}).",
                                      short=error.short) from error
    _check_hash_prefix(resolved.path, entry.filename, delete=resolved.source in ("cache", "download"))
    return resolved.path


def _installed_lpips_lin(net):
    spec = importlib.util.find_spec("lpips")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "weights", "v0.1", f"{net}.pth")
        if os.path.isfile(path):
            return path
    return None


def resolve_lpips_lin(net, path=None, progress=True):
    """Path of the LPIPS v0.1 linear weights: path -> installed lpips package -> cache -> download (sha256)."""
    _check_net(net)
    name = f"lpips-{net}-lin"
    if path is not None:
        return resolve_weights(name, path=path).path
    installed = _installed_lpips_lin(net)
    if installed and cached_file_sha256(installed) == KNOWN_WEIGHTS[name].sha256:
        return installed
    return resolve_weights(name, progress=progress).path


def _load_state_dict(path, what):
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a state dict
        raise ValueError(f"{what} {path} could not be read as a PyTorch state dict: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"{what} {path} holds a {type(state).__name__}, not a state dict")
    return state


# ---------------------------------------------------------------------------------------------------
# Module


class LPIPS(nn.Module):
    """LPIPS v0.1 distance (see module docstring); ``forward(x, y)`` -> tensor (N,).

    net: "alex" (default, the one usually reported), "vgg" or "squeeze".
    backbone_weights / lin_weights: paths to the weight files (see module docstring for the defaults).
    normalize: inputs are in [0, 1] and are mapped to 2x - 1 first (as ``lpips``' ``normalize=True``).
    All parameters are frozen; gradients flow to the inputs, so it can serve as a loss.
    """

    def __init__(self, net="alex", backbone_weights=None, lin_weights=None, normalize=False, progress=True):
        super().__init__()
        spec = _check_net(net)
        self.net, self.normalize, self.taps = net, normalize, spec.taps
        backbone_path = resolve_lpips_backbone(net, backbone_weights, progress=progress)
        lin_path = resolve_lpips_lin(net, lin_weights, progress=progress)
        self.features = getattr(torchvision.models, spec.architecture)(weights=None).features[:spec.taps[-1] + 1]
        self._load_backbone(backbone_path, spec)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in spec.channels)
        self._load_lins(lin_path, spec)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def _load_backbone(self, path, spec):
        state = _load_state_dict(path, f"backbone_weights for {self.net}")
        own = self.features.state_dict()
        features = {key[len("features."):]: value for key, value in state.items() if key.startswith("features.")}
        missing = [key for key in own if key not in features or features[key].shape != own[key].shape]
        if missing:
            raise ValueError(f"backbone_weights {path} is not a torchvision {spec.architecture} state dict (missing or "
                             f"misshapen: features.{missing[0]}, ...); pass the file torchvision downloads for "
                             f"{spec.architecture}, e.g. {KNOWN_WEIGHTS[f'lpips-{self.net}-backbone'].filename}")
        self.features.load_state_dict({key: features[key] for key in own})

    def _load_lins(self, path, spec):
        state = _load_state_dict(path, f"lin_weights for {self.net}")
        for k, (lin, channels) in enumerate(zip(self.lins, spec.channels)):
            weight = state.get(f"lin{k}.model.1.weight")
            if weight is None or tuple(weight.shape) != (1, channels, 1, 1):
                raise ValueError(f"lin_weights {path} is not an LPIPS v0.1 file for {self.net}: lin{k}.model.1.weight "
                                 f"should have shape (1, {channels}, 1, 1); pass lpips/weights/v0.1/{self.net}.pth")
            lin.weight.data.copy_(weight)

    def _as_input(self, image, name):
        """A float tensor or array (any float dtype) as a tensor in the module's dtype and on its device."""
        if not isinstance(image, torch.Tensor):
            try:
                image = torch.as_tensor(image)
            except (TypeError, ValueError, RuntimeError) as error:
                raise TypeError(f"{name} must be a float tensor or array (N, 3, H, W), got "
                                f"{type(image).__name__}") from error
        if not image.is_floating_point():
            raise TypeError(f"{name} must be a float tensor or array (N, 3, H, W), got {image.dtype}; convert uint8 "
                            f"images with x.float() / 127.5 - 1 (or / 255 with normalize=True)")
        weight = self.lins[0].weight
        return image.to(device=weight.device, dtype=weight.dtype)

    def _check_inputs(self, x, y):
        if x.shape != y.shape:
            raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS takes RGB batches (N, 3, H, W), got shape {tuple(x.shape)}; repeat a grayscale "
                             f"channel with x.expand(-1, 3, -1, -1)")
        minimum = LPIPS_NETS[self.net].min_size
        if min(x.shape[-2:]) < minimum:
            raise ValueError(f"LPIPS ({self.net}) needs images of at least {minimum}x{minimum} pixels, got "
                             f"{tuple(x.shape[-2:])}")
        low, high = (0.0, 1.0) if self.normalize else (-1.0, 1.0)
        for name, image in (("x", x), ("y", y)):
            if not torch.isfinite(image).all():
                raise ValueError(f"{name} contains NaN or infinite values")
            lo, hi = float(image.detach().min()), float(image.detach().max())
            if lo < low - _RANGE_TOLERANCE or hi > high + _RANGE_TOLERANCE:
                hint = ("pass images in [0, 1] (normalize=True is set)" if self.normalize else
                        "LPIPS expects [-1, 1]: use normalize=True for [0, 1] images, or x / 127.5 - 1 for 0..255")
                raise ValueError(f"{name} has values in [{lo:g}, {hi:g}], outside [{low:g}, {high:g}]; {hint}")

    def forward(self, x, y):
        """Distances (N,) in the module's dtype (float32); x and y may be tensors or numpy arrays of any float
        dtype (float64 and float16 are converted) on any device (moved to the module's)."""
        x, y = self._as_input(x, "x"), self._as_input(y, "y")
        self._check_inputs(x, y)
        if self.normalize:
            x, y = 2 * x - 1, 2 * y - 1
        lins = dict(zip(self.taps, self.lins))
        distance = x.new_zeros(x.shape[0])
        with exact_float32():  # no TF32 on CUDA: the same numbers as on the CPU
            hx, hy = (x - self.shift) / self.scale, (y - self.shift) / self.scale
            for index, layer in enumerate(self.features):
                hx, hy = layer(hx), layer(hy)
                if index in lins:
                    diff = _unit_channels(hx) - _unit_channels(hy)
                    distance = distance + (diff * diff).mean(dim=(2, 3)) @ lins[index].weight.view(-1)
        return distance


def _unit_channels(features):
    """features / (their Euclidean norm over channels + 1e-10), per position."""
    return features / (torch.linalg.vector_norm(features, dim=1, keepdim=True) + NORM_EPS)
