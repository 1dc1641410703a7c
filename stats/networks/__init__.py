"""The feature extractors and their weights: the FID Inception (exact and fast), DINOv2, CLIP, LPIPS, declared
in one table (``extractor.EXTRACTORS``), and where weight files are found (argument, environment, cache,
download, installed package).

May import ``genmetrics.stats.images`` and the top-level modules; never ``streaming`` or ``metrics``.
"""

__all__ = []
