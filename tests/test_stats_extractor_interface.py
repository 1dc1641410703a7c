"""The explicit extractor interface: the FID Inception as a member gives the same numbers as before, the ViTs
load from files (argument or environment variable), weights fail offline with where to put the file, the
table is declared consistently."""
import numpy as np
import pytest
import torch
from tolerances import frechet_tol

from genmetrics.stats import EXTRACTORS, FEATURE_EXTRACTOR, MODES, extractor_spec, load_extractor, preprocess
from genmetrics.stats.networks.dinov2 import build_dinov2, preprocess_dinov2
from genmetrics.stats.networks.weights import KNOWN_WEIGHTS, WeightsUnavailableError


@pytest.fixture(scope="module")
def small_photos(photos):
    crops = [p[:90, :120] for p in photos[:3]]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("mode", MODES)
def test_inception_member_keeps_its_numbers(fid_weights_path, inception, small_photos, mode):
    """Fast by default (equal to the reference module to float rounding); fast=False is the module itself."""
    extractor = load_extractor(FEATURE_EXTRACTOR, weights=fid_weights_path, device="cpu", mode=mode)
    reference = load_extractor(FEATURE_EXTRACTOR, weights=fid_weights_path, device="cpu", mode=mode, fast=False)
    assert extractor.name == extractor.feature_extractor == "inception-v3-compat" and extractor.mode == mode
    assert type(extractor.network).__name__ == "FastFIDInception" and type(reference.network).__name__ == "FIDInception"
    with torch.no_grad():
        expected = inception(preprocess(small_photos, mode))["pool3"]
    assert torch.equal(reference(small_photos)["pool3"], expected)
    torch.testing.assert_close(extractor(small_photos)["pool3"], expected, rtol=1e-5, atol=1e-5)
    assert extractor.weights_sha256 == reference.weights_sha256 == inception.weights_sha256


def test_table_is_declared_consistently():
    for name, spec in EXTRACTORS.items():
        assert spec.name == name and spec.default_layer in spec.layers and spec.weights in KNOWN_WEIGHTS
        assert set(spec.modes) <= set(MODES) and spec.input_size in (224, 299, 336)
        assert spec.weights_env.startswith("GENMETRICS_") and spec.weights_env.endswith("_WEIGHTS")
    assert EXTRACTORS["dinov2-vit-l-14"].weights_env == "GENMETRICS_DINOV2_VIT_L_14_WEIGHTS"
    assert [KNOWN_WEIGHTS[n].sha256 is not None for n in ("clip-vit-b-32", "clip-vit-l-14", "clip-vit-l-14-336px")] \
        == [True] * 3


@pytest.fixture(scope="module")
def dinov2_s_file(dinov2_file):
    """The tests' random ViT-S/14 state dict (release layout), and a network built from it independently."""
    network = build_dinov2("dinov2-vit-s-14")
    network.load_state_dict(torch.load(dinov2_file, weights_only=True))
    return dinov2_file, network.eval()


def test_dinov2_from_argument_and_environment(dinov2_s_file, small_photos, monkeypatch):
    path, network = dinov2_s_file
    with torch.no_grad():
        expected = network(preprocess_dinov2(small_photos))["dinov2"]
    extractor = load_extractor("dinov2-vit-s-14", weights=path, device="cpu")
    assert extractor.weights_source == "argument" and extractor.mode == "legacy_tensorflow"
    assert torch.allclose(extractor(small_photos)["dinov2"], expected, rtol=1e-5, atol=1e-6)
    monkeypatch.setenv("GENMETRICS_DINOV2_VIT_S_14_WEIGHTS", path)
    assert load_extractor("dinov2-vit-s-14", device="cpu").weights_source == "$GENMETRICS_DINOV2_VIT_S_14_WEIGHTS"


def test_wrong_file_is_refused_in_one_line(dinov2_s_file):
    with pytest.raises(ValueError, match="does not fit dinov2-vit-b-14") as error:
        load_extractor("dinov2-vit-b-14", weights=dinov2_s_file[0], device="cpu")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["dinov2-vit-l-14", "clip-vit-l-14-336px"])
def test_offline_failure_says_where_to_put_the_file(name, tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path))
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    monkeypatch.delenv(EXTRACTORS[name].weights_env, raising=False)
    with pytest.raises(WeightsUnavailableError) as error:
        load_extractor(name, device="cpu")
    message = str(error.value)
    entry = KNOWN_WEIGHTS[name]
    assert str(tmp_path / "weights" / entry.filename) in message and EXTRACTORS[name].weights_env in message
    assert entry.urls[0] in message and "\n" not in message


def test_unknown_name_and_mode_are_refused():
    with pytest.raises(ValueError, match="unknown feature extractor 'dinov3'"):
        extractor_spec("dinov3")
    with pytest.raises(ValueError, match="mode legacy_tensorflow, not 'clean'"):
        load_extractor("clip-vit-b-32", mode="clean")


def test_accumulator_takes_an_extractor_and_records_it(dinov2_s_file, small_photos):
    """FeatureAccumulator(model=extractor): the extractor's features, mode, layer and weights are recorded,
    and ReferenceStats.check_comparable refuses to compare them with Inception statistics."""
    from genmetrics.registry.refstats import ReferenceStats
    from genmetrics.stats import FeatureAccumulator, frechet_distance

    extractor = load_extractor("dinov2-vit-s-14", weights=dinov2_s_file[0], device="cpu")
    acc = FeatureAccumulator(model=extractor, keep_features=True, batch_size=2)
    acc.update([small_photos[:2], small_photos[2:]])
    acc.update(small_photos.permute(0, 2, 3, 1).numpy())  # NHWC uint8, the same images
    stats = acc.compute()
    expected = extractor(small_photos)["dinov2"]
    assert torch.allclose(stats.features, torch.cat([expected, expected]), rtol=1e-5, atol=1e-6)
    assert stats.provenance == {"mode": "legacy_tensorflow", "feature_extractor": "dinov2-vit-s-14",
                                "feature_layer": "dinov2", "weights_sha256": extractor.weights_sha256}
    self_distance = frechet_distance(stats.mean, stats.cov, stats.mean, stats.cov)
    assert abs(self_distance) <= frechet_tol(stats.mean, stats.cov, stats.mean, stats.cov)  # 8 rows, D = 384
    inception_side = {"mode": "legacy_tensorflow", "feature_extractor": "inception-v3-compat",
                      "feature_layer": "pool3", "weights_sha256": None}
    reference = ReferenceStats.from_moments(stats.moments, meta=stats.provenance)
    with pytest.raises(ValueError, match="refusing to compare.*feature extractor"):
        reference.check_comparable(inception_side)
    with pytest.raises(ValueError, match="provides layers dinov2, not 'logits'"):
        FeatureAccumulator(model=extractor, layer="logits")


def test_extract_features_takes_an_extractor(dinov2_s_file, small_photos, tmp_path):
    """extract_features(images, model=extractor): the extractor's own preprocessing and layers, any input
    (here a PNG folder, read in the prefetching thread), the same rows as calling the extractor."""
    from PIL import Image

    from genmetrics.stats import extract_features

    extractor = load_extractor("dinov2-vit-s-14", weights=dinov2_s_file[0], device="cpu")
    for i, image in enumerate(small_photos.permute(0, 2, 3, 1).numpy()):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    features = extract_features(str(tmp_path), model=extractor, batch_size=2, progress=False)
    assert set(features) == {"dinov2"}
    torch.testing.assert_close(features["dinov2"], extractor(small_photos)["dinov2"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="precision='bf16' is not available for extractor dinov2-vit-s-14"):
        extract_features(small_photos, model=extractor, progress=False, precision="bf16")
