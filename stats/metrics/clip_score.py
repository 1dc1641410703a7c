"""CLIPScore (Hessel et al., EMNLP 2021) from paired image and text embeddings, on torchmetrics' 0..100 scale.

For N pairs (image embedding u_i, text embedding t_i), cos_i = u_i . t_i / (|u_i| |t_i|) and

    clip_score = (1 / N) sum_i 100 max(cos_i, 0)

(unitless, 0..100; Hessel et al. write ``w max(cos, 0)`` with w = 2.5, torchmetrics uses w = 100). Each pair is
clamped at 0 before the mean, as in the paper. torchmetrics' ``CLIPScore`` clamps the MEAN instead,
``max(100 mean_i cos_i, 0)``; the two agree whenever no pair has a negative cosine, which is the case for
trained CLIP models on real prompts (cosines typically 0.2..0.4); otherwise ours is the larger (it is never smaller).
Computed in float64.
"""
import torch

from .pairwise import as_feature_matrix

__all__ = ["clip_score_from_embeddings", "pair_scores", "pair_cosines"]


def pair_cosines(image_emb, text_emb) -> torch.Tensor:
    """float64 (N,) cosines ``cos_i`` of the rows of `image_emb` and `text_emb` (both (N, E), numpy or torch).

    Raises ValueError when the shapes differ (naming both counts), a set is empty or not finite, or a row is zero.
    """
    image_emb, text_emb = as_feature_matrix(image_emb, "image_emb"), as_feature_matrix(text_emb, "text_emb")
    if image_emb.shape[0] != text_emb.shape[0]:
        raise ValueError(f"got {image_emb.shape[0]} image embeddings and {text_emb.shape[0]} text embeddings; "
                         f"CLIPScore pairs image i with text i, so pass as many of each")
    if image_emb.shape[1] != text_emb.shape[1]:
        raise ValueError(f"image embeddings have {image_emb.shape[1]} dimensions but text embeddings "
                         f"{text_emb.shape[1]}; embed both with the same CLIP model")
    image_emb = image_emb.to(torch.float64)
    text_emb = text_emb.to(device=image_emb.device, dtype=torch.float64)
    norms = image_emb.norm(dim=1) * text_emb.norm(dim=1)
    if not bool((norms > 0).all()):
        raise ValueError("an image or text embedding is all zeros, so its cosine is undefined; check the inputs")
    return (image_emb * text_emb).sum(dim=1) / norms


def pair_scores(image_emb, text_emb) -> torch.Tensor:
    """``100 max(cos_i, 0)`` of each of N pairs of embeddings (float64 (N,)); their mean is the CLIPScore, and
    scoring sums them batch by batch. Raises as :func:`pair_cosines`."""
    return 100.0 * pair_cosines(image_emb, text_emb).clamp(min=0)


def clip_score_from_embeddings(image_emb, text_emb) -> float:
    """CLIPScore ``mean_i 100 max(cos_i, 0)`` of N pairs of embeddings (module docstring), a float in [0, 100].

    Args:
        image_emb: (N, E) image embeddings (numpy or torch; CLIP's ``clip`` layer, normalised or not).
        text_emb: (N, E) text embeddings of the paired prompts, same order.

    Raises:
        ValueError: different numbers of rows (both counts named) or widths, empty or non-finite input, a zero row.

    Example:
        >>> clip_score_from_embeddings(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))  # doctest: +ELLIPSIS
        70.71...
    """
    return float(pair_scores(image_emb, text_emb).mean())
