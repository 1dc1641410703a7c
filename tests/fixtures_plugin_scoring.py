"""A tiny real feature extractor and references built with it, so plugin tests need not run Inception.

`TinyExtractor` is a genuine (if crude) extractor: the 4x4 average-pooled colours of the resized
image, 48 features. References built from it carry its name, so the mismatch checks apply as they do
for the FID Inception.
"""
import numpy as np
import pytest
import torch

__all__ = ["TinyExtractor", "tiny_images", "make_tiny_reference", "tiny_reference_path", "no_downloads"]


class TinyExtractor(torch.nn.Module):
    feature_extractor = "test-avgpool-4x4"

    def forward(self, x):
        return {"pool3": torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)}


def tiny_images(count, seed, size=32, shift=0.0):
    """`count` uint8 NHWC images: smooth random colour fields, brightened by `shift` (0..1)."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((count, 4, 4, 3))
    images = np.repeat(np.repeat(coarse, size // 4, axis=1), size // 4, axis=2)
    images = np.clip(images * (1 - shift) + shift, 0, 1)
    return (images * 255).round().astype(np.uint8)


def make_tiny_reference(images, features=True, **meta):
    """A ReferenceStats of `images` under TinyExtractor (mode clean unless given in `meta`)."""
    from genmetrics.registry.refstats import ReferenceStats
    from genmetrics.stats import GaussianMoments, extract_features

    feats = extract_features(images, model=TinyExtractor(), mode=meta.get("mode", "clean"), progress=False)["pool3"]
    moments = GaussianMoments.from_features(feats)
    attrs = dict(dataset="tiny", split="train", resolution=32, mode="clean", version=1,
                 feature_extractor=TinyExtractor.feature_extractor, feature_layer="pool3", num_samples=len(images))
    attrs.update(meta)
    return ReferenceStats.from_moments(moments, features=feats.numpy() if features else None, meta=attrs)


@pytest.fixture(scope="session")
def tiny_reference_path(tmp_path_factory):
    """An .h5 reference (with features) of 24 tiny images."""
    path = tmp_path_factory.mktemp("tiny-reference") / "tiny-train-32.h5"
    from genmetrics.registry.refstats import write_refstats

    write_refstats(str(path), make_tiny_reference(tiny_images(24, seed=1)))
    return str(path)


@pytest.fixture
def no_downloads(monkeypatch):
    """GENMETRICS_OFFLINE=1: nothing may download, so LPIPS backbone weights are unavailable (the default metrics
    skip LPIPS). Scoring tests use it for every test: ``pytestmark = pytest.mark.usefixtures("no_downloads")``."""
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
