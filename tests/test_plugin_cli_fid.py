"""`genmetrics fid A B` end to end: .npz statistics, image folders and zips through the real Inception."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fixtures_data import make_photo_folder
from genmetrics.plugin.cli import main
from genmetrics.stats import GaussianMoments, frechet_distance, kernel_inception_distance


def _write_npz(path, x, with_features=False):
    moments = GaussianMoments.from_features(x)
    arrays = {"mu": moments.mean, "sigma": moments.cov}
    if with_features:
        arrays["features"] = x
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def npz_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 16)), rng.normal(0.3, 1.2, size=(150, 16))
    expected = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    return _write_npz(root / "a.npz", x, with_features=True), _write_npz(root / "b.npz", y, True), expected, root


def _printed(capsys, name):
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith(f"{name}: "))
    return float(line.split()[1])


def test_npz_statistics(npz_pair, capsys):
    from genmetrics.plugin.cli_fid import MODES
    from genmetrics.stats import MODES as STATS_MODES

    assert MODES == STATS_MODES
    a, b, expected, _ = npz_pair
    assert main(["fid", a, b]) == 0
    assert _printed(capsys, "FID") == pytest.approx(expected, abs=1e-6)
    assert main(["fid", a, b, "--kid", "--kid-subsets", "3", "--kid-subset-size", "100"]) == 0
    out = capsys.readouterr().out
    assert "FID: " in out and "KID: " in out


def test_console_script_entry_point(npz_pair):
    a, b, expected, _ = npz_pair
    done = subprocess.run([sys.executable, "-m", "genmetrics.plugin.cli", "fid", a, b], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split("FID: ")[1].split()[0]) == pytest.approx(expected, abs=1e-6)


def test_clear_errors(npz_pair, capsys):
    a, _, _, root = npz_pair
    np.savez(root / "other_dim.npz", mu=np.zeros(8), sigma=np.eye(8))
    np.savez(root / "no_sigma.npz", mu=np.zeros(16))
    np.savez(root / "only_stats.npz", mu=np.zeros(16), sigma=np.eye(16))
    (root / "notes.txt").write_text("not statistics")
    cases = [
        ([a, str(root / "other_dim.npz")], "A has 16 features per sample but B has 8"),
        ([a, str(root / "no_sigma.npz")], "holds ['mu']; expected mu and sigma"),
        ([a, str(root / "only_stats.npz"), "--kid"], "kid need(s) features on both sides"),
        ([a, str(root / "missing" / "x.npz")], "does not exist"),
        ([a, str(root / "notes.txt")], "unsupported file type"),
        ([a, "nosuchdataset-train-32"], "is no existing folder or file, and unknown registry ref"),
    ]
    for argv, message in cases:
        assert main(["fid", *argv]) == 2
        assert message in capsys.readouterr().err


@pytest.fixture(scope="module")
def photo_folders(photos, tmp_path_factory):
    """Two folders of 3 real photographs each, and a zip of the first folder."""
    root = tmp_path_factory.mktemp("cli_photos")
    small = [img[:160, :160] for img in photos]  # keep decoding and resizing cheap
    first = make_photo_folder(root / "first", small[:3])
    second = make_photo_folder(root / "second" / "nested", small[3:6])
    archive = shutil.make_archive(str(root / "first_zip"), "zip", first)
    return first, os.path.dirname(second), archive


def test_zip_and_folder_end_to_end(photo_folders, fid_weights_path, inception, capsys):
    """The CLI on a zip and a nested folder equals FID/KID from extract_features on the plain folders."""
    from genmetrics.stats import extract_features

    first, second, archive = photo_folders
    argv = ["fid", archive, second, "--weights", fid_weights_path, "--device", "cpu", "--batch-size", "2",
            "--mode", "legacy_pytorch", "--kid", "--kid-subsets", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    fid = float(captured.out.split("FID: ")[1].split()[0])
    kid = float(captured.out.split("KID: ")[1].split()[0])
    # Small-sample caveats reach the user as one-line warnings on stderr.
    assert "genmetrics fid: warning: covariance of D=2048 features estimated from only n=3" in captured.err
    assert "(every subset is the whole set of 3: no std)" in captured.out  # 3 vs 3 images: subsets cannot differ

    feats = [extract_features(path, model=inception, mode="legacy_pytorch", device="cpu", progress=False)["pool3"]
             for path in (first, second)]
    moments = [GaussianMoments.from_features(f) for f in feats]  # n=3 <= D: warned once per process, above
    expected = frechet_distance(moments[0].mean, moments[0].cov, moments[1].mean, moments[1].cov)
    assert fid == pytest.approx(expected, rel=1e-5)
    with pytest.warns(UserWarning, match="subsets of 3"):
        expected_kid = kernel_inception_distance(feats[0], feats[1], subsets=2)[0]
    assert kid == pytest.approx(expected_kid, rel=1e-4)


def _write_h5(path, x, mode, with_features=True):
    from genmetrics.registry import ReferenceStats
    from genmetrics.registry.refstats import write_refstats
    from genmetrics.stats import sqrtm_psd

    stats = ReferenceStats.from_moments(
        GaussianMoments.from_features(x), features=x.astype(np.float32) if with_features else None,
        meta=dict(dataset="toy", split="train", resolution=32, mode=mode, feature_extractor="inception-v3-compat",
                  feature_layer="pool3"))
    stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    return write_refstats(path, stats)


def test_a_side_with_fewer_samples_than_dimensions_goes_second_with_its_features():
    from genmetrics.stats.metric_table import frechet_order as _frechet_order
    from genmetrics.registry import ReferenceStats
    from genmetrics.stats import sqrtm_psd

    rng = np.random.default_rng(2)
    big, small = rng.normal(size=(100, 16)), rng.normal(size=(10, 16))
    with pytest.warns(UserWarning, match="n=10"):
        sides = [ReferenceStats.from_moments(GaussianMoments.from_features(x), features=x) for x in (small, big)]
    sides[1].sqrt_sigma = sqrtm_psd(sides[1].sigma)
    first, second, features = _frechet_order(sides)
    assert (first, second) == (sides[1], sides[0]) and np.array_equal(features, small)
    fid = frechet_distance(first.mu, first.sigma, second.mu, second.sigma, features2=features)
    assert fid == pytest.approx(frechet_distance(sides[0].mu, sides[0].sigma, sides[1].mu, sides[1].sigma), rel=1e-6)
    sides[0].features = None  # no features: the side with a cached root goes first
    assert _frechet_order(sides) == (sides[1], sides[0], None)


def test_h5_statistics_with_features_and_provenance_checks(npz_pair, tmp_path, capsys):
    _, b_npz, _, _ = npz_pair
    rng = np.random.default_rng(1)
    x = rng.normal(0.1, 1.1, size=(300, 16))
    clean_h5 = _write_h5(tmp_path / "clean.h5", x, "clean")
    y = np.load(b_npz)["features"]

    assert main(["fid", b_npz, clean_h5, "--kid", "--kid-subsets", "3", "--kid-subset-size", "100"]) == 0
    captured = capsys.readouterr()
    moments = GaussianMoments.from_features(x)
    expected = frechet_distance(y.mean(0), np.cov(y, rowvar=False), moments.mean, moments.cov)
    assert float(captured.out.split("FID: ")[1].split()[0]) == pytest.approx(expected, abs=1e-6)
    expected_kid = kernel_inception_distance(y, x.astype(np.float32), subsets=3, subset_size=100)[0]
    assert float(captured.out.split("KID: ")[1].split()[0]) == pytest.approx(expected_kid, rel=1e-5)
    assert "clean.h5: 300 samples, D=16, mode clean, feature_extractor inception-v3-compat" in captured.err

    # Statistics made with another preprocessing mode are refused unless asked for.
    other_h5 = _write_h5(tmp_path / "tf.h5", x[:200], "legacy_tensorflow", with_features=False)
    assert main(["fid", clean_h5, other_h5]) == 2
    assert "differ in mode" in capsys.readouterr().err
    assert main(["fid", clean_h5, other_h5, "--allow-mismatch"]) == 0
    capsys.readouterr()
    # Refused before any image is read: images would be preprocessed with --mode, the file used clean.
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "0.png")  # listed, never decoded
    assert main(["fid", str(tmp_path / "images"), clean_h5, "--mode", "legacy_pytorch"]) == 2
    assert "pass the matching --mode" in capsys.readouterr().err
    assert main(["fid", clean_h5, other_h5, "--kid"]) == 2
    assert "tf.h5 hold(s) only mu/sigma" in capsys.readouterr().err


def test_other_extractors_precision_and_cmmd(photo_folders, dinov2_file, fid_weights_path, inception, tmp_path,
                                             capsys):
    """--extractor: the Fréchet distance in that network's features, equal to its features through the Python
    API; a statistics file's extractor is the default for the image side; --precision bf16 moves FID only a
    little; --cmmd on CLIP statistics equals genmetrics.stats.metrics.cmmd; unsupported combinations are refused."""
    from genmetrics.registry import ReferenceStats
    from genmetrics.registry.refstats import write_refstats
    from genmetrics.stats import cmmd, load_extractor

    first, second, _ = photo_folders
    assert main(["fid", first, second, "--extractor", "dinov2-vit-s-14", "--weights", dinov2_file,
                 "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    fd = float(captured.out.split("FD (dinov2-vit-s-14): ")[1].split()[0])
    assert "extracting dinov2-vit-s-14 features" in captured.err
    extractor = load_extractor("dinov2-vit-s-14", weights=dinov2_file, device="cpu")
    features = [extractor.extract(path)["dinov2"] for path in (first, second)]
    moments = [GaussianMoments.from_features(f) for f in features]
    assert fd == pytest.approx(frechet_distance(moments[0].mean, moments[0].cov, moments[1].mean, moments[1].cov),
                               abs=2e-6)  # printed with 6 decimals

    # A DINOv2 statistics file as B: the image side A is extracted with DINOv2 without being told.
    side = ReferenceStats.from_moments(moments[1], features=features[1].numpy(), meta=dict(
        dataset="toy", split="train", resolution=160, mode="legacy_tensorflow", feature_extractor="dinov2-vit-s-14",
        feature_layer="dinov2", weights_sha256=extractor.weights_sha256))
    dinov2_h5 = write_refstats(tmp_path / "dinov2.h5", side)
    assert main(["fid", first, dinov2_h5, "--weights", dinov2_file, "--device", "cpu"]) == 0
    assert float(capsys.readouterr().out.split("FD (dinov2-vit-s-14): ")[1].split()[0]) == pytest.approx(fd, abs=2e-6)
    assert main(["fid", first, dinov2_h5, "--extractor", "dinov2-vit-s-14", "--precision", "bf16"]) == 2
    assert "--precision bf16 exists for the FID Inception only" in capsys.readouterr().err
    assert main(["fid", first, second, "--extractor", "dinov2-vit-s-14", "--mode", "clean"]) == 2
    assert "preprocesses in its own mode (legacy_tensorflow); leave out --mode clean" in capsys.readouterr().err

    # bf16 (opt-in) against the exact Inception on the same folders.
    exact = ["fid", first, second, "--weights", fid_weights_path, "--device", "cpu", "--mode", "legacy_pytorch"]
    assert main(exact) == 0 and main(exact + ["--precision", "bf16"]) == 0
    fid_fp32, fid_bf16 = (float(part.split()[0]) for part in capsys.readouterr().out.split("FID: ")[1:])
    assert fid_bf16 != fid_fp32 and fid_bf16 == pytest.approx(fid_fp32, rel=0.05)

    # CMMD between two CLIP statistics files with features; refused for other feature spaces.
    rng = np.random.default_rng(2)
    clip = [rng.normal(size=(40, 8)).astype(np.float32), rng.normal(0.5, 1, size=(30, 8)).astype(np.float32)]
    paths = []
    for i, x in enumerate(clip):
        stats = ReferenceStats.from_moments(GaussianMoments.from_features(x), features=x, meta=dict(
            dataset="toy", split="train", resolution=32, mode="legacy_tensorflow", feature_extractor="clip-vit-b-32",
            feature_layer="clip"))
        paths.append(write_refstats(tmp_path / f"clip{i}.h5", stats))
    assert main(["fid", *paths, "--cmmd"]) == 0
    out = capsys.readouterr().out
    unit = [x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True) for x in clip]
    assert float(out.split("CMMD: ")[1].split()[0]) == pytest.approx(cmmd(*unit), rel=1e-5)
    assert "FD (clip-vit-b-32): " in out
    assert main(["fid", dinov2_h5, dinov2_h5, "--cmmd"]) == 2
    assert ("cmmd cannot be computed here: the sides hold dinov2-vit-s-14 features; cmmd needs a reference built with "
            "a clip-* extractor") in capsys.readouterr().err
