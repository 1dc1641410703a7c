"""CLIP text encoders (Radford et al. 2021) of ViT-B/32, ViT-L/14 and ViT-L/14@336px, and both towers loaded together.

The text half of OpenAI's release checkpoints, the same files as the image tower
(:mod:`genmetrics.stats.networks.clip`): a TorchScript archive (``ViT-B-32.pt``, ...; its tensors read without
running its code, cast from float16 to float32) or a state dict in OpenAI's key layout (``open_clip``'s
``model.state_dict()`` for the OpenAI architectures is one). Parameter names equal the checkpoint's:
``token_embedding.weight`` (V x W, V = 49,408), ``positional_embedding`` (C x W, C = 77),
``transformer.resblocks.<i>.*`` (as the image tower's blocks), ``ln_final``, ``text_projection`` (W x E).
The checkpoint's other top-level entries are not text weights and are not read: ``visual.*`` (the image tower),
``logit_scale``, and ``input_resolution``, ``context_length``, ``vocab_size`` (numbers OpenAI's archives carry);
neither is an attention mask stored beside the blocks (``attn_mask``: the causal mask is built in).

Forward (tokens: (N, L) integer ids from :func:`~genmetrics.stats.networks.clip_tokenizer.clip_tokenize`,
L <= C, each row ``[49406, ..., 49407, 0, ...]``):

1. ``x = token_embedding[tokens] + positional_embedding[:L]`` (N, L, W);
2. W / 64-head residual blocks, ``x += attn(ln_1(x))``, ``x += c_proj(QuickGELU(c_fc(ln_2(x))))``,
   ``QuickGELU(z) = z sigmoid(1.702 z)`` as OpenAI's models use, with the causal mask: token i attends to the
   tokens j <= i only, ``softmax_{j <= i}(q_i k_j / sqrt(64)) v_j``;
3. at ``e_n = argmax_j tokens[n, j]`` (the end token 49407 has the largest id), ``ln_final(x[n, e_n])`` times
   ``text_projection``: the text embedding (N, E), E = 512 for B/32, 768 for L/14 and L/14@336px.

Because the mask is causal, ``x[n, e_n]`` depends only on ``tokens[n, :e_n + 1]``: the forward drops the columns
after the batch's last end token (``max_n e_n + 1`` of them are kept), which changes no embedding beyond float
rounding and skips the work on padding (a 15-word prompt uses ~20 of the 77 positions).

:func:`load_clip_model` reads one checkpoint once and returns both towers (:class:`ClipModel`), the image tower
as a :class:`~genmetrics.stats.networks.extractor.FeatureExtractor` (its preprocessing included), weights found
as for the image tower alone: argument, ``$GENMETRICS_CLIP_VIT_B_32_WEIGHTS`` (etc.), cache, download.
"""
import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..defaults import CLIP_CONTEXT_LENGTH
from .clip import build_clip, clip_state_dict, _Transformer
from .clip_tokenizer import END_TOKEN
from .extractor import FeatureExtractor, _load_strict, _state_dict, extractor_spec
from .torchscript_tensors import is_torchscript, read_torchscript_tensors
from .weights import resolve_weights

__all__ = ["CLIP_TEXT_ARCHS", "ClipTextArch", "ClipText", "ClipModel", "build_clip_text", "clip_text_state_dict",
           "load_clip_model", "VOCAB_SIZE"]

#: Token ids 0..49407: 512 byte symbols, 48,894 merges, the start and end tokens (the end token is the last).
VOCAB_SIZE = END_TOKEN + 1
_TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


@dataclass(frozen=True)
class ClipTextArch:
    """Width, depth and embedding size of one release text tower (heads = width / 64; 77 positions, 49,408 ids)."""

    width: int
    layers: int
    embed_dim: int
    context_length: int = CLIP_CONTEXT_LENGTH
    vocab_size: int = VOCAB_SIZE

    @property
    def heads(self):
        return self.width // 64


CLIP_TEXT_ARCHS = {
    "clip-vit-b-32": ClipTextArch(512, 12, 512),
    "clip-vit-l-14": ClipTextArch(768, 12, 768),
    "clip-vit-l-14-336px": ClipTextArch(768, 12, 768),
}


class ClipText(nn.Module):
    """CLIP's text transformer (module docstring). forward(tokens (N, L) int) -> text embeddings (N, E)."""

    def __init__(self, arch: ClipTextArch):
        super().__init__()
        self.arch = arch
        self.token_embedding = nn.Embedding(arch.vocab_size, arch.width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(arch.context_length, arch.width))
        self.transformer = _Transformer(arch.width, arch.layers, arch.heads, causal=True)
        self.ln_final = nn.LayerNorm(arch.width)
        self.text_projection = nn.Parameter(arch.width ** -0.5 * torch.randn(arch.width, arch.embed_dim))

    def _check(self, tokens):
        arch = self.arch
        integer = torch.is_tensor(tokens) and not tokens.dtype.is_floating_point and not tokens.dtype.is_complex \
            and tokens.dtype != torch.bool
        if not integer or tokens.dim() != 2 or not tokens.shape[0] or not 0 < tokens.shape[1] <= arch.context_length:
            raise ValueError(f"ClipText takes integer token ids (N, L) with N >= 1 and 1 <= L <= "
                             f"{arch.context_length}, got {getattr(tokens, 'dtype', type(tokens).__name__)} of shape "
                             f"{tuple(getattr(tokens, 'shape', ()))}; use clip_tokenize(texts)")
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= arch.vocab_size:
            raise ValueError(f"token ids must lie in 0..{arch.vocab_size - 1}, got {low}..{high}; use clip_tokenize")

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        self._check(tokens)
        tokens = tokens.to(self.token_embedding.weight.device, torch.long)
        end = tokens.argmax(dim=1)
        tokens = tokens[:, :int(end.max()) + 1]  # causal: nothing after an end token reaches it
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        x = self.transformer(x)[torch.arange(x.shape[0], device=x.device), end]
        return self.ln_final(x) @ self.text_projection


def build_clip_text(name: str) -> ClipText:
    """The named release text tower (``clip-vit-b-32``, ``clip-vit-l-14``, ``clip-vit-l-14-336px``), randomly
    initialised, eval mode."""
    if name not in CLIP_TEXT_ARCHS:
        raise ValueError(f"unknown CLIP model {name!r}; use one of {', '.join(CLIP_TEXT_ARCHS)}")
    return ClipText(CLIP_TEXT_ARCHS[name]).eval()


def clip_text_state_dict(tensors: dict) -> dict:
    """Our text tower's state dict (float32) from the tensors of a full OpenAI CLIP checkpoint: its top-level
    text entries (module docstring), without stored attention masks."""
    state = {k: v.float() for k, v in tensors.items()
             if k.startswith(_TEXT_PREFIXES) and k.rsplit(".", 1)[-1] != "attn_mask"}
    if "text_projection" not in state:
        raise ValueError("not a full OpenAI CLIP checkpoint (no text_projection tensor: the text tower is missing); "
                         "pass ViT-B-32.pt, ViT-L-14.pt or ViT-L-14-336px.pt from "
                         "openaipublic.azureedge.net/clip/models or a state dict in their key layout")
    return state


class ClipModel(nn.Module):
    """Both towers of one CLIP release: ``image`` (a FeatureExtractor: normalised images in, layers ``clip`` and
    ``clip_l2`` out, preprocessing included) and ``text`` (:class:`ClipText`); ``name`` is the model's name."""

    def __init__(self, image: FeatureExtractor, text: ClipText):
        super().__init__()
        self.image, self.text, self.name = image, text, image.name


def load_clip_model(name: str = "clip-vit-b-32", weights: Optional[str] = None, device=None,
                    progress: bool = True) -> ClipModel:
    """Both towers of the named CLIP model from one checkpoint read once, eval mode, gradients off, on `device`
    (None: CUDA if available).

    weights: a TorchScript release archive or a state dict in OpenAI's layout; None resolves
    ``$GENMETRICS_<NAME>_WEIGHTS`` -> cache -> sha256-verified download (as ``load_extractor(name)``).

    Raises:
        ValueError: an unknown model name, or a file that is not a full checkpoint of that model.
        WeightsUnavailableError: no weights found (the message says how to provide them).
    """
    if name not in CLIP_TEXT_ARCHS:
        raise ValueError(f"unknown CLIP model {name!r}; use one of {', '.join(CLIP_TEXT_ARCHS)}")
    spec = extractor_spec(name)
    resolved = resolve_weights(spec.weights, path=weights, env_var=spec.weights_env, progress=progress)
    path = resolved.path
    tensors = read_torchscript_tensors(path) if is_torchscript(path) else _state_dict(path, name)
    image = _load_strict(build_clip(name), clip_state_dict(tensors), path, name)
    text = _load_strict(build_clip_text(name), clip_text_state_dict(tensors), path, f"the {name} text tower")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = ClipModel(FeatureExtractor(spec, image, None, os.path.abspath(path), resolved.source), text)
    return model.to(device).eval().requires_grad_(False)
