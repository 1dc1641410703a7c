"""`genmetrics stats build ... --extractor dinov2-vit-s-14` writes statistics in that feature space, recorded in the
file (extractor, its mode and layer) and enforced when comparing; scoring a DINOv2 file gives fd_dinov2. Random
ViT-S/14 weights in the release layout stand in for the real file."""
import numpy as np
import pytest
from fixtures_data import make_photo_folder

from genmetrics.plugin.cli import main
from genmetrics.plugin.scoring import score_samples
from genmetrics.registry import load
from genmetrics.stats import EXTRACTORS
from genmetrics.stats.defaults import EXTRACTOR_NAMES


@pytest.fixture(scope="module")
def folder(photos, tmp_path_factory):
    crops = [p[y:y + 64, x:x + 64] for p in photos[:4] for y in (0, 64) for x in (0, 64)]
    return make_photo_folder(tmp_path_factory.mktemp("images"), crops), np.stack(crops)


def test_names_are_declared_once():
    assert tuple(EXTRACTORS) == EXTRACTOR_NAMES


def test_build_records_the_extractor_and_scoring_enforces_it(dinov2_file, folder, tmp_path, capsys, monkeypatch):
    images, crops = folder
    output = str(tmp_path / "dinov2.h5")
    assert main(["stats", "build", images, "-o", output, "--extractor", "dinov2-vit-s-14", "--weights", dinov2_file,
                 "--features", "--device", "cpu", "--no-progress"]) == 0
    assert "extractor=dinov2-vit-s-14" in capsys.readouterr().out
    ref = load(output)
    assert ref.provenance["feature_extractor"] == "dinov2-vit-s-14"
    assert ref.provenance["feature_layer"] == "dinov2" and ref.provenance["mode"] == "legacy_tensorflow"
    assert np.asarray(ref.features).shape == (16, 384)
    inception_side = {"mode": "legacy_tensorflow", "feature_extractor": "inception-v3-compat",
                      "feature_layer": "pool3", "weights_sha256": None}
    with pytest.raises(ValueError, match="refusing to compare"):
        ref.check_comparable(inception_side)
    monkeypatch.setenv("GENMETRICS_DINOV2_VIT_S_14_WEIGHTS", dinov2_file)  # the extractor the file records
    result = score_samples(crops, reference=output, metrics=["fd_dinov2", "copy"], device="cpu")
    assert abs(result.metrics["gen/fd_dinov2"]) < 1e-3  # the same images as the reference
    assert result.metrics["gen/copy"] == 1.0


def test_unknown_extractor_is_refused_by_the_parser(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["stats", "build", str(tmp_path), "-o", str(tmp_path / "x.h5"), "--extractor", "dinov3"])
    assert "invalid choice: 'dinov3'" in capsys.readouterr().err
