"""The FID Inception rewritten for speed, computing the same function as :class:`FIDInception` in float32.

:func:`build_fast_inception` turns a loaded :class:`~genmetrics.stats.networks.inception.FIDInception` (the reference,
which stays unchanged) into a :class:`FastFIDInception` with the same forward contract: float
(N, 3, 299, 299) in [-1, 1] -> ``{"pool3": (N, 2048), "logits": (N, 1008)}`` (``logits`` only with the
head; ``"spatial": (N, 2023)`` added by ``forward(x, spatial=True)``, taken from the fused Mixed_6d 1x1 output
after its ReLU, :func:`~genmetrics.stats.networks.inception.spatial_features`). Every rewrite below is an
identity of real arithmetic; only float32 rounding differs (pool3 within ~1e-6 relative of the reference, see
``tests/test_stats_inception_fast.py``):

- **BatchNorm folded into the convolution.** ``bn(conv(x)) = conv(x; w * s) + (beta - mean * s)`` with
  ``s = gamma / sqrt(var + 1e-3)``, computed in float64 and rounded once to float32.
- **1x1 convolutions that read the same input fused into one** (output channels stacked), then split.
- **Pool branch reordered.** In Mixed_5b..5d, 6b..6e and 7b the pool branch is
  ``relu(conv1x1(avgpool(x)))``. A 1x1 convolution acts on each pixel alone and the TF ``SAME`` average
  pool (padding not counted) is a per-pixel weighted mean whose weights sum to 1, so the two commute,
  bias included: ``conv1x1(avgpool(x)) = avgpool(conv1x1(x))``. The 1x1 convolution therefore joins the
  fused one above and the pool runs on its 32..192 output channels instead of the 192..1280 input channels.
- **Channels-last memory** (NHWC), the layout oneDNN's and cuDNN's convolutions run fastest in.
- **Small chunks on the CPU**: a batch is run :data:`CPU_CHUNK` images at a time (same results up to
  rounding, faster because the activations stay in the caches).
- **Convolution and ReLU in one oneDNN call** on the CPU (``torch.ops.mkldnn._convolution_pointwise``, the
  kernel ``torch.compile`` emits); elsewhere ``F.conv2d`` then ``F.relu``.

Measured and not used (2-core AVX-512 CPU, torch 2.14; see docs/performance.md): the average pool as a
3x3 sum pool times a precomputed border-count map is exact but 10-30 % slower than PyTorch's own
``count_include_pad=False`` pool in channels-last; ``torch.jit.freeze`` (and ``optimize_for_inference``)
of the traced module gave no gain over the eager module above; ``torch.compile`` (inductor, freezing) ran
at the same speed (31 vs 30-33 images/s, batch 16) after 27-70 s of compilation in every process.

The forward runs under :func:`~genmetrics.stats.tf32.exact_float32` (no TF32, no reduced precision)
and ``torch.no_grad``. :func:`fast_inception` returns the fast module of a reference, built once per
weights, device and dtype and cached for that reference object.

**Opt-in bfloat16** (``precision="bf16"``, :data:`PRECISIONS`): the folded weights and the activations are
rounded to bfloat16 (8 significant bits), the convolutions run in bf16 (oneDNN's AVX-512-BF16/AMX kernels on
the CPU, tensor cores on a GPU) and the global average pool and classifier head in float32. Not exact: on
the benchmark's photos pool3 features move by ~2-3 % (relative L2) and FID by 0.74 % (docs/performance.md,
section (e)), for more speed on an AVX-512-BF16 CPU; reference statistics are always built in float32.
"""
import threading
import weakref
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..defaults import DEFAULT_PRECISION, FEATURE_LAYER, LOGITS_LAYER, PRECISIONS, SPATIAL_LAYER
from ..tf32 import exact_float32
from .inception import INPUT_SIZE, BasicConv2d, FIDInception, spatial_features

__all__ = ["FastFIDInception", "build_fast_inception", "fast_inception", "CPU_CHUNK", "check_precision"]

#: Images per network call on the CPU: a batch is run in chunks of this size, whose activations stay in
#: the caches (2-core AVX-512 CPU, photos: 37.7 images/s in chunks of 4, 36.1 of 8, 33.5 of 16, 27.5 of 48).
CPU_CHUNK = 8


def fold_batchnorm(layers: Sequence[BasicConv2d]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``bn(conv(x))`` for each layer, stacked along the output channels.

    Per layer: ``s = bn.weight / sqrt(bn.running_var + bn.eps)``, ``weight = conv.weight * s`` and
    ``bias = bn.bias - bn.running_mean * s``, in float64, then rounded to the layer's dtype. All layers
    must have the same kernel, stride and padding (they read the same input).
    """
    weights, biases = [], []
    for layer in layers:
        bn = layer.bn
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        weights.append(layer.conv.weight.double() * scale[:, None, None, None])
        biases.append(bn.bias.double() - bn.running_mean.double() * scale)
    dtype = layers[0].conv.weight.dtype
    return torch.cat(weights).to(dtype), torch.cat(biases).to(dtype)


def _pointwise_available() -> bool:
    """True when this torch build has oneDNN's fused convolution + ReLU operator."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


class FusedConv(nn.Module):
    """One convolution (BatchNorm folded in) standing for `layers`, which all read the same input.

    forward(x) = relu(conv(x) + bias) when `relu`, else conv(x) + bias (a fused layer whose outputs are
    split and finished differently is built with ``relu=False``). ``sizes`` are the output channels per
    layer. On the CPU conv and ReLU are one oneDNN call.
    """

    def __init__(self, layers: Sequence[BasicConv2d], relu: bool = True):
        super().__init__()
        conv = layers[0].conv
        weight, bias = fold_batchnorm(layers)
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last), requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.stride, self.padding, self.relu = list(conv.stride), list(conv.padding), relu
        self.sizes: List[int] = [layer.conv.out_channels for layer in layers]

    def forward(self, x):
        if x.device.type == "cpu" and x.dtype == torch.float32 and _pointwise_available():
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                           [1, 1], 1, "relu" if self.relu else "none", [], "")
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return F.relu(y) if self.relu else y


def _avg_pool_same(x):
    """3x3 stride-1 average over the pixels inside the image (TF ``SAME``, padding not counted)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FastA(nn.Module):
    """Mixed_5b/5c/5d: fused 1x1 (branch1x1 | 5x5_1 | 3x3dbl_1 | pool conv) -> 5x5 / 3x3-3x3 / avgpool."""

    def __init__(self, ref):
        super().__init__()
        self.heads = FusedConv([ref.branch1x1, ref.branch5x5_1, ref.branch3x3dbl_1, ref.branch_pool], relu=False)
        self.b5 = FusedConv([ref.branch5x5_2])
        self.b3_2, self.b3_3 = FusedConv([ref.branch3x3dbl_2]), FusedConv([ref.branch3x3dbl_3])

    def forward(self, x):
        a, b5, b3, p = self.heads(x).split(self.heads.sizes, 1)
        return torch.cat([F.relu(a), self.b5(F.relu(b5)), self.b3_3(self.b3_2(F.relu(b3))),
                          F.relu(_avg_pool_same(p))], 1)


class FastB(nn.Module):
    """Mixed_6a: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2 (nothing to fuse)."""

    def __init__(self, ref):
        super().__init__()
        self.b3 = FusedConv([ref.branch3x3])
        self.dbl = nn.Sequential(FusedConv([ref.branch3x3dbl_1]), FusedConv([ref.branch3x3dbl_2]),
                                 FusedConv([ref.branch3x3dbl_3]))

    def forward(self, x):
        return torch.cat([self.b3(x), self.dbl(x), F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FastC(nn.Module):
    """Mixed_6b..6e: fused 1x1 (branch1x1 | 7x7_1 | 7x7dbl_1 | pool conv) -> 1x7-7x1 / 7x1-1x7-7x1-1x7 / avgpool.

    ``forward(x, spatial=True)`` returns ``(output, spatial_features(relu(branch1x1)))`` (for Mixed_6d)."""

    def __init__(self, ref):
        super().__init__()
        self.heads = FusedConv([ref.branch1x1, ref.branch7x7_1, ref.branch7x7dbl_1, ref.branch_pool], relu=False)
        self.b7 = nn.Sequential(FusedConv([ref.branch7x7_2]), FusedConv([ref.branch7x7_3]))
        self.dbl = nn.Sequential(*(FusedConv([layer]) for layer in (ref.branch7x7dbl_2, ref.branch7x7dbl_3,
                                                                     ref.branch7x7dbl_4, ref.branch7x7dbl_5)))

    def forward(self, x, spatial: bool = False):
        a, b7, dbl, p = self.heads(x).split(self.heads.sizes, 1)
        a = F.relu(a)
        out = torch.cat([a, self.b7(F.relu(b7)), self.dbl(F.relu(dbl)), F.relu(_avg_pool_same(p))], 1)
        return (out, spatial_features(a)) if spatial else out


class FastD(nn.Module):
    """Mixed_7a: fused 1x1 (3x3_1 | 7x7x3_1) -> 3x3/2 / 1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self, ref):
        super().__init__()
        self.heads = FusedConv([ref.branch3x3_1, ref.branch7x7x3_1])
        self.b3 = FusedConv([ref.branch3x3_2])
        self.b7 = nn.Sequential(FusedConv([ref.branch7x7x3_2]), FusedConv([ref.branch7x7x3_3]),
                                FusedConv([ref.branch7x7x3_4]))

    def forward(self, x):
        b3, b7 = self.heads(x).split(self.heads.sizes, 1)
        return torch.cat([self.b3(b3), self.b7(b7), F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FastE(nn.Module):
    """Mixed_7b (avg pool: its 1x1 joins the fused heads) and Mixed_7c (max pool: separate 1x1 after it)."""

    def __init__(self, ref):
        super().__init__()
        self.avg = ref.pool == "avg"
        heads = [ref.branch1x1, ref.branch3x3_1, ref.branch3x3dbl_1] + ([ref.branch_pool] if self.avg else [])
        self.heads = FusedConv(heads, relu=False)
        self.b3_2a, self.b3_2b = FusedConv([ref.branch3x3_2a]), FusedConv([ref.branch3x3_2b])
        self.dbl_2 = FusedConv([ref.branch3x3dbl_2])
        self.dbl_3a, self.dbl_3b = FusedConv([ref.branch3x3dbl_3a]), FusedConv([ref.branch3x3dbl_3b])
        self.pool_conv = None if self.avg else FusedConv([ref.branch_pool])

    def forward(self, x):
        parts = self.heads(x).split(self.heads.sizes, 1)
        b3, dbl = F.relu(parts[1]), self.dbl_2(F.relu(parts[2]))
        if self.avg:
            pooled = F.relu(_avg_pool_same(parts[3]))
        else:
            pooled = self.pool_conv(F.max_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([F.relu(parts[0]), self.b3_2a(b3), self.b3_2b(b3), self.dbl_3a(dbl), self.dbl_3b(dbl),
                          pooled], 1)


class _Network(nn.Module):
    """The rewritten layers; forward(x, spatial) -> {"pool3", "logits" (with the head), "spatial" (when asked)}."""

    def __init__(self, ref: FIDInception):
        super().__init__()
        self.stem = nn.ModuleList([FusedConv([getattr(ref, name)]) for name in
                                   ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                                    "Conv2d_4a_3x3")])
        self.blocks = nn.Sequential(
            FastA(ref.Mixed_5b), FastA(ref.Mixed_5c), FastA(ref.Mixed_5d), FastB(ref.Mixed_6a),
            FastC(ref.Mixed_6b), FastC(ref.Mixed_6c), FastC(ref.Mixed_6d), FastC(ref.Mixed_6e),
            FastD(ref.Mixed_7a), FastE(ref.Mixed_7b), FastE(ref.Mixed_7c))
        self.fc_weight_t = (nn.Parameter(ref.fc.weight.detach().t().contiguous(), requires_grad=False)
                            if ref.fc is not None else None)

    def forward(self, x, spatial: bool = False):
        x = x.contiguous(memory_format=torch.channels_last)
        x = self.stem[2](self.stem[1](self.stem[0](x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.stem[4](self.stem[3](x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        out = {}
        if spatial:  # the blocks up to Mixed_6d, Mixed_6d with its 1x1 branch kept, the rest
            x, out[SPATIAL_LAYER] = self.blocks[6](self.blocks[:6](x), spatial=True)
            x = self.blocks[7:](x)
        else:
            x = self.blocks(x)
        pool3 = x.float().mean(dim=(2, 3))
        out = {FEATURE_LAYER: pool3, **out}
        if self.fc_weight_t is not None:
            out[LOGITS_LAYER] = pool3 @ self.fc_weight_t.float()
        return out


class FastFIDInception(nn.Module):
    """The FID Inception with the rewrites of the module docstring; same forward contract and attributes
    (``feature_extractor``, ``weights_path``, ``weights_sha256``, ``weights_source``, ``has_logits``)
    as the :class:`FIDInception` it was built from, plus ``precision`` (:data:`PRECISIONS`). Build it with
    :func:`build_fast_inception`. ``forward(x, spatial=False)`` as :class:`FIDInception`'s.
    """

    feature_extractor = FIDInception.feature_extractor

    def __init__(self, reference: FIDInception, precision: str = DEFAULT_PRECISION):
        super().__init__()
        self.network = _Network(reference)
        self.precision = precision
        if precision == "bf16":
            self.network.to(torch.bfloat16)
        self.has_logits = reference.has_logits
        self.weights_path = reference.weights_path
        self.weights_sha256 = reference.weights_sha256
        self.weights_source = reference.weights_source

    def forward(self, x, spatial: bool = False) -> Dict[str, torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(
                f"the FID Inception takes float images of shape (N, 3, {INPUT_SIZE}, {INPUT_SIZE}) scaled to "
                f"[-1, 1], got shape {tuple(x.shape)}; resize with genmetrics.stats.preprocess first")
        x = x.to(self.network.stem[0].weight.dtype)
        chunks = x.split(CPU_CHUNK) if x.device.type == "cpu" else [x]
        with torch.inference_mode(), exact_float32():
            outs = [self.network(chunk, spatial) for chunk in chunks]
            out = {layer: torch.cat([part[layer] for part in outs]) for layer in outs[0]}
        return {layer: value.float().clone() for layer, value in out.items()}


def check_precision(precision: str) -> str:
    """`precision` when it is one of :data:`PRECISIONS`; otherwise a ValueError naming them. The names only: which
    extractor runs in which precision is :meth:`genmetrics.stats.networks.extractor.ExtractorSpec.check_precision`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(map(repr, PRECISIONS))} (fp32: exact, the default; "
                         f"bf16: opt-in bfloat16, faster, FID moves, see docs/performance.md), got {precision!r}")
    return precision


def build_fast_inception(reference: FIDInception, precision: str = DEFAULT_PRECISION) -> FastFIDInception:
    """A :class:`FastFIDInception` computing `reference`'s function on its device; in its dtype for ``fp32``,
    in bfloat16 for ``bf16`` (see the module docstring)."""
    if not isinstance(reference, FIDInception):
        raise TypeError(f"build_fast_inception needs an FIDInception (load_inception), got {type(reference).__name__}")
    return FastFIDInception(reference, check_precision(precision)).eval().requires_grad_(False)


_cache = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _weights_key(reference):
    """Identity of the reference's current weights: storage, version counter, device and dtype per tensor."""
    return tuple((t.data_ptr(), t._version, t.device, t.dtype)
                 for t in list(reference.parameters()) + list(reference.buffers()))


def fast_inception(reference: FIDInception, precision: str = DEFAULT_PRECISION) -> FastFIDInception:
    """The :class:`FastFIDInception` of `reference` in `precision`, rebuilt only when its weights, device or
    dtype changed (``load_state_dict``, ``.to()``, in-place edits); cached per reference object and precision."""
    key = _weights_key(reference)
    with _cache_lock:
        per_reference = _cache.setdefault(reference, {})
        cached = per_reference.get(precision)
        if cached is None or cached[0] != key:
            cached = (key, build_fast_inception(reference, precision))
            per_reference[precision] = cached
        return cached[1]
