"""DINOv2 ViT-S/B/L/G-14 image encoders (Oquab et al. 2023), the feature space of FD_DINOv2 (Stein et al. 2023).

The architecture of facebookresearch/dinov2's release checkpoints (``dinov2_vit{s,b,l,g}14_pretrain.pth``,
loaded by ``torch.hub.load("facebookresearch/dinov2", ...)`` in torch-fidelity and dgm-eval), written here so
that no hub code is fetched or run. Parameter names equal the release state dicts (``patch_embed.proj``,
``cls_token``, ``pos_embed`` (1, 37 * 37 + 1, D) for 518 px, ``blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma,
norm2, mlp.fc1, mlp.fc2 | mlp.w12, mlp.w3, ls2.gamma}``, ``norm``, ``mask_token``), so they load strictly.

Forward (x: (N, 3, H, W) normalised, H and W multiples of 14):

1. patches: ``Conv2d(3, D, 14, stride 14)`` -> (N, h w, D); prepend ``cls_token``;
2. add ``pos_embed``, its patch part resized from 37 x 37 to h x w by bicubic interpolation with scale
   factor ``(h + 0.1) / 37`` (the release code's ``interpolate_offset``; no antialiasing);
3. blocks: ``x += ls1 * attn(norm1(x))``, ``x += ls2 * ffn(norm2(x))``; attention
   ``softmax(q k^T / sqrt(D / heads)) v``; ffn ``fc2(GELU(fc1 x))`` (S, B, L) or SwiGLU
   ``w3(silu(a) * b)`` with ``(a, b) = w12 x`` (G); LayerNorm eps 1e-6;
4. output: ``norm(x)[:, 0]`` (the class token), layer ``"dinov2"``, dimension 384 / 768 / 1024 / 1536.

Preprocessing (torch-fidelity's ``FeatureExtractorDinoV2``): images on the 0..255 scale, TensorFlow-1 bilinear
resize to 224 x 224 (:func:`genmetrics.stats.images.preprocess.resize_legacy_tensorflow`), then
``(x - 255 mean) / (255 std)`` with the ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..images.preprocess import _as_0_255, resize_legacy_tensorflow

__all__ = ["DINOV2_ARCHS", "DINOV2_LAYER", "INPUT_SIZE", "PATCH_SIZE", "RELEASE_GRID", "DinoV2Arch", "DinoV2",
           "build_dinov2", "interpolate_pos_embed", "preprocess_dinov2"]

PATCH_SIZE = 14
#: The release checkpoints' position grid: 518 px / 14 = 37 patches a side.
RELEASE_GRID = 37
#: Input side the images are resized to (torch-fidelity, Stein et al.).
INPUT_SIZE = 224
DINOV2_LAYER = "dinov2"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_INTERPOLATE_OFFSET = 0.1


@dataclass(frozen=True)
class DinoV2Arch:
    """Width, depth, heads and feed-forward kind of one release model."""

    dim: int
    depth: int
    heads: int
    ffn: str = "mlp"  # "mlp" or "swiglu"


DINOV2_ARCHS = {
    "dinov2-vit-s-14": DinoV2Arch(384, 12, 6),
    "dinov2-vit-b-14": DinoV2Arch(768, 12, 12),
    "dinov2-vit-l-14": DinoV2Arch(1024, 24, 16),
    "dinov2-vit-g-14": DinoV2Arch(1536, 40, 24, "swiglu"),
}


class _PatchEmbed(nn.Module):
    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        n, tokens, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(head dim)) v
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class _Mlp(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _SwiGLU(nn.Module):
    """DINOv2's fused SwiGLU: hidden = (int(4 D * 2 / 3) + 7) // 8 * 8 (4096 for D = 1536)."""

    def __init__(self, dim):
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class _LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class _Block(nn.Module):
    def __init__(self, arch):
        super().__init__()
        self.norm1 = nn.LayerNorm(arch.dim, eps=1e-6)
        self.attn = _Attention(arch.dim, arch.heads)
        self.ls1 = _LayerScale(arch.dim)
        self.norm2 = nn.LayerNorm(arch.dim, eps=1e-6)
        self.mlp = _SwiGLU(arch.dim) if arch.ffn == "swiglu" else _Mlp(arch.dim)
        self.ls2 = _LayerScale(arch.dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def interpolate_pos_embed(pos_embed, grid_h, grid_w):
    """(1, 1 + M^2, D) position embedding -> (1, 1 + grid_h grid_w, D), as the DINOv2 release code does it:
    bicubic, scale factor ``(grid + 0.1) / M`` per axis, no antialiasing; unchanged when the grid matches."""
    side = math.isqrt(pos_embed.shape[1] - 1)
    if (grid_h, grid_w) == (side, side):
        return pos_embed
    patches = pos_embed[:, 1:].float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    scale = ((grid_h + _INTERPOLATE_OFFSET) / side, (grid_w + _INTERPOLATE_OFFSET) / side)
    patches = F.interpolate(patches, scale_factor=scale, mode="bicubic")
    if tuple(patches.shape[-2:]) != (grid_h, grid_w):
        raise ValueError(f"position grid {side} x {side} cannot be resized to {grid_h} x {grid_w}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
    return torch.cat([pos_embed[:, :1].float(), patches], dim=1).to(pos_embed.dtype)


class DinoV2(nn.Module):
    """A DINOv2 ViT (see the module docstring). forward(x) -> ``{"dinov2": (N, D)}``."""

    def __init__(self, arch: DinoV2Arch, grid: int = RELEASE_GRID, patch: int = PATCH_SIZE):
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(arch.dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, arch.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, arch.dim))  # unused here; present in release files
        self.blocks = nn.ModuleList(_Block(arch) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.dim, eps=1e-6)

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % self.patch or x.shape[3] % self.patch:
            raise ValueError(f"DinoV2 takes normalised images (N, 3, H, W) with H, W multiples of {self.patch}, "
                             f"got shape {tuple(x.shape)}; use preprocess_dinov2 first")
        tokens = self.patch_embed(x.to(self.cls_token.dtype))
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + interpolate_pos_embed(self.pos_embed, x.shape[2] // self.patch, x.shape[3] // self.patch)
        for block in self.blocks:
            tokens = block(tokens)
        return {DINOV2_LAYER: self.norm(tokens)[:, 0]}


def build_dinov2(name: str) -> DinoV2:
    """The named release architecture (``dinov2-vit-{s,b,l,g}-14``), randomly initialised, eval mode."""
    if name not in DINOV2_ARCHS:
        raise ValueError(f"unknown DINOv2 model {name!r}; use one of {', '.join(DINOV2_ARCHS)}")
    return DinoV2(DINOV2_ARCHS[name]).eval()


def preprocess_dinov2(images, size: int = INPUT_SIZE):
    """(N, 3, H, W) uint8 or float [0, 1] -> float32 (N, 3, size, size) network input (module docstring)."""
    x = resize_legacy_tensorflow(_as_0_255(images), size)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[:, None, None] * 255.0
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[:, None, None] * 255.0
    return (x - mean) / std
