"""Images -> features -> statistics: feature extraction in batches, the float64 moment accumulator, kept
features and logits, and their reduction across torch.distributed ranks.

May import ``networks``, ``images`` and the top-level modules of ``genmetrics.stats``; never ``metrics``.
"""

__all__ = []
