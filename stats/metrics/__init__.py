"""The metrics as pure functions of features, moments or images: ``features -> number``, no network inside
(Fréchet distance, FID-infinity, KID, IS, PRDC, CMMD, copy detection, SSIM/MS-SSIM, diversity).

May import only the top-level modules of ``genmetrics.stats`` (``checks``, ``messages``, ``defaults``) and
``streaming.moments``.
"""

__all__ = []
