"""score_samples with the new feature spaces: fd_dinov2 and copy on a DINOv2 reference, cmmd on a CLIP reference
(small random-weight extractors under the release names), the extractor the reference records is loaded by
default, and metrics refused in the wrong feature space."""
import dataclasses

import numpy as np
import pytest
import torch

from genmetrics.plugin.scoring import score_samples
from genmetrics.registry.refstats import ReferenceStats
from genmetrics.stats import EXTRACTORS, FeatureAccumulator, cmmd, copy_detection, load_extractor
from genmetrics.stats.networks.clip import ClipArch, ClipVisual, preprocess_clip
from genmetrics.stats.networks.extractor import FeatureExtractor


@pytest.fixture(scope="module")
def crops(photos):
    rng = np.random.default_rng(0)
    out = []
    for p in photos[:6]:
        for _ in range(4):
            y, x = rng.integers(0, p.shape[0] - 64), rng.integers(0, p.shape[1] - 64)
            out.append(p[y:y + 64, x:x + 64])
    return np.stack(out)  # (24, 64, 64, 3) uint8


def reference_of(extractor, images, layer=None):
    kwargs = {"layer": layer} if layer else {}
    acc = FeatureAccumulator(model=extractor, keep_features=True, **kwargs)
    acc.update(images)
    stats = acc.compute()
    return ReferenceStats.from_moments(stats.moments, features=stats.features.numpy(), meta=stats.provenance)


@pytest.fixture(scope="module")
def dinov2_reference(dinov2_file, crops):
    extractor = load_extractor("dinov2-vit-s-14", weights=dinov2_file, device="cpu")
    return extractor, reference_of(extractor, crops[:16])


def test_fd_dinov2_and_copy_on_a_dinov2_reference(dinov2_reference, crops):
    extractor, reference = dinov2_reference
    samples = np.concatenate([crops[16:], crops[[3, 9]]])  # 8 fresh crops, then copies of references 3 and 9
    result = score_samples(samples, reference=reference, metrics=["fd_dinov2", "copy"], model=extractor, device="cpu")
    assert result.metrics["gen/fd_dinov2"] > 0
    with torch.no_grad():
        features = extractor(torch.from_numpy(samples).permute(0, 3, 1, 2))["dinov2"].numpy()
    direct = copy_detection(features, reference.features)
    assert result.metrics["gen/copy"] == pytest.approx(direct["fraction"])
    flagged = result.tags["gen/copy.indices"].split(",")
    assert flagged == [str(i) for i in direct["indices"][:20]] and sorted(flagged[:2]) == ["8", "9"]  # exact copies
    assert result.params["gen/extractor"] == "dinov2-vit-s-14" and result.params["gen/feature_layer"] == "dinov2"
    assert result.params["gen/mode"] == "legacy_tensorflow"
    same = score_samples(crops[:16], reference=reference, metrics=["fd_dinov2"], model=extractor, device="cpu")
    assert abs(same.metrics["gen/fd_dinov2"]) < 1e-3


def test_the_recorded_extractor_is_loaded_by_default(dinov2_reference, dinov2_file, crops, monkeypatch):
    monkeypatch.setenv("GENMETRICS_DINOV2_VIT_S_14_WEIGHTS", dinov2_file)
    extractor, reference = dinov2_reference
    with_model = score_samples(crops[16:], reference=reference, metrics=["fd_dinov2"], model=extractor, device="cpu")
    default = score_samples(crops[16:], reference=reference, metrics=["fd_dinov2"], device="cpu")
    assert default.metrics["gen/fd_dinov2"] == pytest.approx(with_model.metrics["gen/fd_dinov2"], rel=1e-6)


def test_inception_metrics_are_refused_or_skipped_on_a_dinov2_reference(dinov2_reference, crops):
    extractor, reference = dinov2_reference
    with pytest.raises(ValueError, match="defined on the FID Inception's"):
        score_samples(crops[16:], reference=reference, metrics=["fid"], model=extractor, device="cpu")
    result = score_samples(crops[16:], reference=reference, model=extractor, device="cpu")  # default set
    assert "gen/fid" not in result.metrics and "FID Inception" in result.tags["gen/skipped.fid"]
    assert "gen/skipped.is" in result.tags and "gen/skipped.kid" in result.tags


def test_cmmd_on_a_clip_reference(crops):
    """A tiny CLIP under the name clip-vit-b-32 (32 px), reference in its clip_l2 layer."""
    arch = ClipArch(resolution=32, patch=8, width=128, layers=2, embed_dim=48)
    torch.manual_seed(1)
    spec = dataclasses.replace(EXTRACTORS["clip-vit-b-32"], input_size=32,
                               preprocess=lambda images, mode: preprocess_clip(images, 32))
    extractor = FeatureExtractor(spec, ClipVisual(arch).eval())
    reference = reference_of(extractor, crops[:16], layer="clip_l2")
    result = score_samples(crops[16:], reference=reference, metrics=["cmmd"], model=extractor, device="cpu")
    expected_x = reference.features
    with torch.no_grad():
        expected_y = extractor(torch.from_numpy(crops[16:]).permute(0, 3, 1, 2))["clip_l2"].numpy()
    assert result.metrics["gen/cmmd"] == pytest.approx(cmmd(expected_x, expected_y), rel=1e-5)
    assert result.params["gen/feature_layer"] == "clip_l2"
    with pytest.raises(ValueError, match="cmmd needs a reference built with a clip-"):
        score_samples(crops[16:], reference=_inception_like(reference), metrics=["cmmd"], device="cpu")


def _inception_like(reference):
    meta = dict(reference.provenance, feature_extractor="inception-v3-compat", feature_layer="pool3")
    return ReferenceStats(reference.mu, reference.sigma, reference.n, features=reference.features, meta=meta)
