"""Images in: the one normaliser every entry point uses, image files from folders and zips, and the resize
to a network's input size as each FID implementation does it.

May import the top-level modules of ``genmetrics.stats`` only (never ``networks``, ``streaming`` or ``metrics``).
"""

__all__ = []
