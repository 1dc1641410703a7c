"""CLIP ViT image encoders (Radford et al. 2021): ViT-B/32, ViT-L/14 and ViT-L/14@336px, the space of CMMD.

The visual half of OpenAI's release checkpoints (TorchScript archives ``ViT-B-32.pt``, ``ViT-L-14.pt``,
``ViT-L-14-336px.pt``; the same files torch-fidelity's ``FeatureExtractorCLIP`` loads), written here. Parameter
names equal the archives' ``visual.*`` tensors without the prefix: ``conv1`` (no bias), ``class_embedding``,
``positional_embedding``, ``ln_pre``, ``transformer.resblocks.<i>.{ln_1, attn.in_proj_weight, attn.in_proj_bias,
attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_post``, ``proj``. The archive's tensors are read without
running its code (:mod:`genmetrics.stats.networks.torchscript_tensors`) and cast from float16 to float32.

Forward (x: (N, 3, R, R) normalised, R the model's resolution):

1. patches ``conv1`` (P x P, stride P) -> (N, g^2, W); prepend ``class_embedding``; add
   ``positional_embedding``; ``ln_pre``;
2. residual blocks: ``x += attn(ln_1(x))``, ``x += c_proj(QuickGELU(c_fc(ln_2(x))))`` with
   ``QuickGELU(z) = z sigmoid(1.702 z)``, attention ``softmax(q k^T / sqrt(W / heads)) v``, heads = W / 64,
   LayerNorm eps 1e-5;
3. ``ln_post`` of the class token, times ``proj`` (W x E): layer ``"clip"`` (E = 512 for B/32, 768 for L/14);
   ``"clip_l2"`` is that embedding divided by its L2 norm (the input of CMMD).

Preprocessing (torch-fidelity's): images on the 0..255 scale, TensorFlow-1 bilinear resize to R x R, then
``(x - 255 mean) / (255 std)`` with CLIP's mean (0.48145466, 0.4578275, 0.40821073) and std
(0.26862954, 0.26130258, 0.27577711). (OpenAI's own pipeline resizes with PIL bicubic and centre-crops, and
Jayasumana et al. use Hugging Face's processor, so CMMD values differ slightly from theirs.)

The text tower of the same checkpoints, built from these blocks with a causal mask, is in
:mod:`genmetrics.stats.networks.clip_text`.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..images.preprocess import _as_0_255, resize_legacy_tensorflow

__all__ = ["CLIP_ARCHS", "CLIP_LAYER", "CLIP_L2_LAYER", "ClipArch", "ClipVisual", "build_clip", "preprocess_clip",
           "clip_state_dict"]

CLIP_LAYER = "clip"
CLIP_L2_LAYER = "clip_l2"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipArch:
    """Resolution, patch size, width, depth and embedding size of one release model (heads = width / 64)."""

    resolution: int
    patch: int
    width: int
    layers: int
    embed_dim: int

    @property
    def heads(self):
        return self.width // 64


CLIP_ARCHS = {
    "clip-vit-b-32": ClipArch(224, 32, 768, 12, 512),
    "clip-vit-l-14": ClipArch(224, 14, 1024, 24, 768),
    "clip-vit-l-14-336px": ClipArch(336, 14, 1024, 24, 768),
}


class _Attention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names (in_proj, out_proj); `causal`:
    token i attends to tokens j <= i only (the text tower's mask)."""

    def __init__(self, width, heads, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x):
        n, tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(n, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # softmax(q k^T / sqrt(head dim)) v
        return self.out_proj(out.transpose(1, 2).reshape(n, tokens, width))


class _QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class _ResidualBlock(nn.Module):
    def __init__(self, width, heads, causal=False):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = _Attention(width, heads, causal)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", _QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width, layers, heads, causal=False):
        super().__init__()
        self.resblocks = nn.Sequential(*(_ResidualBlock(width, heads, causal) for _ in range(layers)))

    def forward(self, x):
        return self.resblocks(x)


class ClipVisual(nn.Module):
    """CLIP's vision transformer (see the module docstring). forward(x) -> ``{"clip", "clip_l2"}`` (N, E)."""

    def __init__(self, arch: ClipArch):
        super().__init__()
        self.arch = arch
        grid = arch.resolution // arch.patch
        scale = arch.width ** -0.5
        self.conv1 = nn.Conv2d(3, arch.width, kernel_size=arch.patch, stride=arch.patch, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(arch.width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, arch.width))
        self.ln_pre = nn.LayerNorm(arch.width)
        self.transformer = _Transformer(arch.width, arch.layers, arch.heads)
        self.ln_post = nn.LayerNorm(arch.width)
        self.proj = nn.Parameter(scale * torch.randn(arch.width, arch.embed_dim))

    def forward(self, x):
        side = self.arch.resolution
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (side, side):
            raise ValueError(f"ClipVisual takes normalised images (N, 3, {side}, {side}), got shape {tuple(x.shape)}; "
                             f"use preprocess_clip first")
        tokens = self.conv1(x.to(self.proj.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(tokens.shape[0], 1, -1)
        tokens = self.ln_pre(torch.cat([cls, tokens], dim=1) + self.positional_embedding)
        embedding = self.ln_post(self.transformer(tokens)[:, 0]) @ self.proj
        return {CLIP_LAYER: embedding, CLIP_L2_LAYER: embedding / embedding.norm(dim=1, keepdim=True)}


def build_clip(name: str) -> ClipVisual:
    """The named release architecture (``clip-vit-b-32``, ``clip-vit-l-14``, ``clip-vit-l-14-336px``),
    randomly initialised, eval mode."""
    if name not in CLIP_ARCHS:
        raise ValueError(f"unknown CLIP model {name!r}; use one of {', '.join(CLIP_ARCHS)}")
    return ClipVisual(CLIP_ARCHS[name]).eval()


def clip_state_dict(tensors: dict) -> dict:
    """Our state dict (float32) from the tensors of a full OpenAI CLIP checkpoint: its ``visual.*`` entries."""
    state = {k[len("visual."):]: v.float() for k, v in tensors.items() if k.startswith("visual.")}
    if "proj" not in state:
        raise ValueError("not an OpenAI CLIP ViT checkpoint (no visual.proj tensor); pass ViT-B-32.pt, ViT-L-14.pt "
                         "or ViT-L-14-336px.pt from openaipublic.azureedge.net/clip/models")
    return state


def preprocess_clip(images, size: int):
    """(N, 3, H, W) uint8 or float [0, 1] -> float32 (N, 3, size, size) network input (module docstring)."""
    x = resize_legacy_tensorflow(_as_0_255(images), size)
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[:, None, None] * 255.0
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[:, None, None] * 255.0
    return (x - mean) / std
