"""CLIPScore of images and their prompts: run CLIP's two towers in batches, then the formula of
:mod:`genmetrics.stats.metrics.clip_score`, ``mean_i 100 max(cos(image_i, text_i), 0)``.

Images (any input :mod:`genmetrics.stats.images.image_input` accepts) go through the image tower with CLIP's
preprocessing in :func:`genmetrics.stats.networks.clip.preprocess_clip` (torch-fidelity's, as for CMMD: the whole
image resized to the model's square input with TensorFlow-1 bilinear, no centre crop, CLIP's mean and std);
prompts are tokenized by :func:`~genmetrics.stats.networks.clip_tokenizer.clip_tokenize` (77 tokens, longer ones
truncated) and embedded by the text tower (:mod:`genmetrics.stats.networks.clip_text`). The networks equal
``open_clip``'s on the same weights (embeddings to 1e-4). OpenAI's and torchmetrics' pipelines resize the short
side with bicubic and centre-crop, so on images that are not square at the model's resolution their scores
differ slightly from ours.
"""
from typing import Optional, Sequence, Tuple, Union

import torch

from ..defaults import DEFAULT_BATCH_SIZE
from ..images.image_input import count_images
from ..metrics.clip_score import clip_score_from_embeddings
from ..networks.clip import CLIP_LAYER
from ..networks.clip_text import ClipModel, ClipText, load_clip_model
from ..networks.clip_tokenizer import clip_tokenize
from .features import _check_batch_size, _model_device, extract_features

__all__ = ["clip_score", "text_embeddings"]


def _check_counts(images: Optional[int], texts: int):
    if images is not None and images != texts:
        raise ValueError(f"got {images} images and {texts} texts; clip_score pairs image i with text i, so pass "
                         f"one prompt per image, in the same order")


def text_embeddings(text: ClipText, tokens: torch.Tensor, batch_size: int = DEFAULT_BATCH_SIZE) -> torch.Tensor:
    """float32 CPU (N, E) embeddings of token rows (N, 77), `batch_size` rows per call of the text tower."""
    device = text.text_projection.device
    with torch.no_grad():
        parts = [text(tokens[start:start + batch_size].to(device)).float().cpu()
                 for start in range(0, tokens.shape[0], batch_size)]
    return torch.cat(parts)


def clip_score(images, texts: Sequence[str], model: Union[str, ClipModel] = "clip-vit-b-32",
               weights: Optional[str] = None, batch_size: int = DEFAULT_BATCH_SIZE, device=None,
               value_range: Optional[Tuple[float, float]] = None, progress: bool = False) -> float:
    """CLIPScore of N images and their N prompts: ``mean_i 100 max(cos(image_i, text_i), 0)``, in [0, 100].

    Each pair is clamped at 0 before the mean (Hessel et al.). torchmetrics' ``CLIPScore`` clamps the mean
    instead, ``max(100 mean_i cos_i, 0)``; the two agree whenever no pair has a negative cosine (the usual case
    with trained CLIP models; see :mod:`genmetrics.stats.metrics.clip_score`).

    Args:
        images: N images in any form the image normaliser accepts (arrays, tensors, PIL images, iterables of
            batches, a folder or zip path), uint8 or float in [0, 1] (or `value_range`).
        texts: N prompts (str), text i describing image i.
        model: ``clip-vit-b-32`` (the default, as in most text-to-image papers), ``clip-vit-l-14`` or
            ``clip-vit-l-14-336px``; or a :class:`~genmetrics.stats.networks.clip_text.ClipModel` already loaded
            with :func:`~genmetrics.stats.networks.clip_text.load_clip_model` (reused across calls).
        weights: path to the model's OpenAI checkpoint (TorchScript archive or state dict in its layout); None:
            ``$GENMETRICS_CLIP_VIT_B_32_WEIGHTS`` (etc.), the cache, a sha256-verified download. Only with a name.
        batch_size: images (and prompts) per network call.
        device: None = CUDA if available (a loaded model: its own device, which `device` must then name).
        value_range: the range of float images when not [0, 1], e.g. (-1, 1).
        progress: show progress bars (weights download, image embeddings).

    Raises:
        ValueError: different numbers of images and texts (both counts named), an unknown model, a bad batch_size.
        WeightsUnavailableError: no weights found (the message says how to provide them).

    Example:
        >>> clip_score(images, ["a photo of a cat", "a red bus"])  # doctest: +SKIP
        31.2
    """
    _check_batch_size(batch_size)
    tokens = clip_tokenize(texts)
    _check_counts(count_images(images), tokens.shape[0])
    if isinstance(model, ClipModel):
        if weights is not None:
            raise ValueError("weights is for a model name; a loaded ClipModel already has its weights")
        _model_device(model.text, device)
    else:
        model = load_clip_model(model, weights=weights, device=device, progress=progress)
    image_emb = extract_features(images, model=model.image, batch_size=batch_size, value_range=value_range,
                                 progress=progress, layers=[CLIP_LAYER])[CLIP_LAYER]
    _check_counts(image_emb.shape[0], tokens.shape[0])
    return clip_score_from_embeddings(image_emb, text_embeddings(model.text, tokens, batch_size))
