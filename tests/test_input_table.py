"""One table of image inputs against every entry point: each accepts or refuses an input identically and reads it
with the same layout, because all of them go through genmetrics.stats.images.image_input.

Entry points: extract_features, registry.build, score_samples, log_gen_metrics, log_gen_samples and the
mlflow.models.evaluate plugin. What each entry point read is compared with what it reads from the expected
uint8 NHWC images: features / mu / FID to float rounding, stored samples bit for bit.
"""
import numpy as np
import pytest
import torch
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images
from PIL import Image

N, H, W = 6, 8, 10  # non-square, so a transposed read would show
BASE = np.random.default_rng(7).integers(0, 256, (N, H, W, 3), dtype=np.uint8)
NCHW = torch.from_numpy(BASE).permute(0, 3, 1, 2).contiguous()
RGBA = np.concatenate([BASE, np.full((N, H, W, 1), 255, np.uint8)], axis=-1)
GRAY = BASE[..., :1]


def _folder(tmp_path):
    folder = tmp_path / "pngs"
    folder.mkdir(exist_ok=True)
    for i, image in enumerate(BASE):
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return str(folder)


# id -> (make(tmp_path) -> input, value_range, expected uint8 NHWC RGB)
ACCEPTED = {
    "uint8 NCHW tensor": (lambda _: NCHW, None, BASE),
    "uint8 NHWC array": (lambda _: BASE, None, BASE),
    "uint8 NHWC tensor": (lambda _: torch.from_numpy(BASE), None, BASE),
    "uint8 NCHW array": (lambda _: BASE.transpose(0, 3, 1, 2), None, BASE),
    "float32 [0, 1] NCHW tensor": (lambda _: NCHW.float() / 255, None, BASE),
    "float64 [0, 1] NHWC array": (lambda _: BASE / 255.0, None, BASE),
    "float16 [0, 1] NHWC tensor": (lambda _: torch.from_numpy(BASE).half() / 255, None, BASE),
    "float32 [-1, 1] with value_range": (lambda _: NCHW.float() / 127.5 - 1, (-1, 1), BASE),
    "float32 0..255 with value_range": (lambda _: BASE.astype(np.float32), (0, 255), BASE),
    "gray NCHW uint8": (lambda _: GRAY.transpose(0, 3, 1, 2), None, np.repeat(GRAY, 3, axis=-1)),
    "RGBA NHWC uint8": (lambda _: RGBA, None, BASE),
    "list of HWC uint8 images": (lambda _: list(BASE), None, BASE),
    "list of CHW float tensors": (lambda _: list(NCHW.float() / 255), None, BASE),
    "list of PIL images": (lambda _: [Image.fromarray(image) for image in BASE], None, BASE),
    "list of two batches": (lambda _: [BASE[:2], NCHW[2:]], None, BASE),
    "folder of PNG files": (_folder, None, BASE),
}

# id -> (input, value_range, error type, message pattern)
REFUSED = {
    "float outside [0, 1]": (NCHW.float() / 100, None, ValueError, r"outside \[0, 1\].*value_range=\(-1, 1\)"),
    "NaN": (np.full((N, H, W, 3), np.nan, np.float32), None, ValueError, "NaN"),
    "2 channels": (np.zeros((N, 2, H, W), np.uint8), None, ValueError, "colour channel"),
    "int64": (BASE.astype(np.int64), None, TypeError, "uint8"),
    "bool": (BASE > 127, None, TypeError, "uint8"),
    "uint8 with value_range (-1, 1)": (BASE, (-1, 1), ValueError, "uint8.*value_range"),
    "3-D array": (BASE[0], None, ValueError, r"3 dimensions.*x\[None\]"),
    "empty batch": (BASE[:0], None, ValueError, "no images"),
    "a dict": ({"images": BASE}, None, TypeError, "dict"),
    "inverted value_range": (NCHW.float() / 255, (1, 0), ValueError, "high > low"),
}
# float16 cannot hold k / 255 exactly (11-bit mantissa): its reading differs by rounding, not by layout
RELATIVE_TOLERANCE = {"float16 [0, 1] NHWC tensor": 1e-5}
PER_IMAGE_REFUSALS = ("float outside [0, 1]", "NaN", "2 channels", "int64", "bool", "uint8 with value_range (-1, 1)")


@pytest.fixture(scope="module")
def reference():
    return make_tiny_reference(tiny_images(24, seed=3, size=16))


def _features(images, value_range=None):
    from genmetrics.stats import extract_features

    return extract_features(images, model=TinyExtractor(), value_range=value_range, progress=False)["pool3"]


def _fid(images, reference, value_range=None):
    from genmetrics.plugin import score_samples

    return score_samples(images, reference=reference, metrics=["fid"], model=TinyExtractor(),
                         value_range=value_range).metrics["gen/fid"]


def _build_mu(images, path, value_range=None):
    from genmetrics.registry import build

    stats = build(images, str(path), name="table", split="test", resolution=8, model=TinyExtractor(),
                  value_range=value_range, progress=False)
    return stats.mu


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    import mlflow

    folder = tmp_path_factory.mktemp("input-table-store")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = mlflow.create_experiment("input-table", artifact_location=str(folder / "artifacts"))
    yield experiment
    mlflow.set_tracking_uri(previous)


@pytest.mark.parametrize("case", list(ACCEPTED))
def test_accepted_inputs_read_the_same_everywhere(case, tmp_path, reference):
    make, value_range, expected = ACCEPTED[case]
    images = make(tmp_path)
    rel = RELATIVE_TOLERANCE.get(case, 1e-6)
    want_features = _features(expected)
    assert torch.allclose(_features(images, value_range), want_features, rtol=1e-5, atol=1e-3)
    assert _fid(images, reference, value_range) == pytest.approx(_fid(expected, reference), rel=rel)
    want_mu = _build_mu(expected, tmp_path / "expected.h5")
    assert np.allclose(_build_mu(images, tmp_path / "case.h5", value_range), want_mu, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_inputs_are_refused_the_same_everywhere(case, tmp_path, reference):
    images, value_range, error, pattern = REFUSED[case]
    with pytest.raises(error, match=pattern):
        _features(images, value_range)
    with pytest.raises(error, match=pattern):
        _fid(images, reference, value_range)
    with pytest.raises(error, match=pattern):
        _build_mu(images, tmp_path / "refused.h5", value_range)
    left = [p.name for p in tmp_path.glob("refused.h5*") if not p.name.endswith(".lock")]
    assert not left, f"a refused build left {left} behind"


def _log_everywhere(images, value_range, reference, experiment):
    """log_gen_metrics and log_gen_samples in one run; returns (logged FID, stored uint8 samples)."""
    import mlflow

    from genmetrics.plugin import log_gen_metrics, log_gen_samples
    from genmetrics.plugin.samples import read_samples_file

    with mlflow.start_run(experiment_id=experiment) as run:
        logged = log_gen_metrics(images, reference=reference, metrics=["fid"], model=TinyExtractor(),
                                 value_range=value_range, step=0, log_grid=False)
        path = log_gen_samples(images, step=0, value_range=value_range)
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path)
    return logged["gen/fid"], read_samples_file(local)[0]


def _evaluate(cells, value_range, reference, experiment):
    import mlflow
    import pandas as pd

    config = {"reference": reference, "metrics": ["fid"], "model": TinyExtractor(), "image_column": "image"}
    if value_range is not None:
        config["value_range"] = value_range
    with mlflow.start_run(experiment_id=experiment):
        result = mlflow.models.evaluate(data=pd.DataFrame({"image": cells}), model_type="image-generation",
                                        evaluators=["genmetrics"], evaluator_config={"genmetrics": config})
    return result.metrics["gen/fid"]


def _rows(images, tmp_path):
    """The evaluator takes one image per row (a DataFrame cell that MLflow can hash: a path or a numpy array): a
    batch's rows, a list's items, a folder's files."""
    if isinstance(images, str):
        return sorted(str(p) for p in (tmp_path / "pngs").iterdir())
    if isinstance(images, list):
        rows = [row for item in images for row in (list(item) if getattr(item, "ndim", 3) == 4 else [item])]
    else:
        rows = list(images)
    return [row.numpy() if torch.is_tensor(row) else np.asarray(row) for row in rows]


def test_mlflow_entry_points_read_the_table_the_same(tmp_path, reference, tracking):
    """log_gen_metrics, log_gen_samples and the evaluator, against a sqlite MLflow store."""
    expected_fid = _fid(BASE, reference)
    for case, (make, value_range, expected) in ACCEPTED.items():
        images = make(tmp_path)
        fid, stored = _log_everywhere(images, value_range, reference, tracking)
        want = _fid(expected, reference)
        rel = RELATIVE_TOLERANCE.get(case, 1e-6)
        assert fid == pytest.approx(want, rel=rel), case
        assert np.array_equal(stored, expected), case
        assert _evaluate(_rows(images, tmp_path), value_range, reference, tracking) == pytest.approx(want, rel=rel)
    assert expected_fid > 0
    for case, (images, value_range, error, pattern) in REFUSED.items():
        with pytest.raises(error, match=pattern):
            _log_everywhere(images, value_range, reference, tracking)
        if case in PER_IMAGE_REFUSALS:
            with pytest.raises(error, match=pattern):
                _evaluate(_rows(images, tmp_path), value_range, reference, tracking)


MIXED = [np.random.default_rng(9).integers(0, 256, (h, w, 3), dtype=np.uint8)
         for h, w in [(8, 10), (12, 9), (8, 10), (16, 16), (10, 20), (9, 9)]]


def test_images_of_different_sizes_read_the_same_everywhere(tmp_path, reference, tracking):
    """Images of different sizes (issue 19 item 3): every entry point takes them as extract_features does, with its
    numbers; log_gen_metrics logs its grid, log_gen_samples stores each image as it is, deferred scoring reads them."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin import log_gen_metrics, log_gen_samples
    from genmetrics.plugin.deferred import score_run
    from genmetrics.plugin.samples import read_samples_file
    from genmetrics.stats import GaussianMoments, frechet_distance

    features = _features(MIXED)
    assert torch.equal(features[1], _features([MIXED[1]])[0])  # each image as alone
    moments = GaussianMoments.from_features(features)
    want = frechet_distance(reference.mu, reference.sigma, moments.mean, moments.cov, features2=features)
    # scoring sums the float64 moments image by image, here all at once: rounding, amplified by a covariance of
    # rank 5 < 48 (6 images): the table's tolerance
    assert _fid(MIXED, reference) == pytest.approx(want, rel=1e-6)
    assert np.allclose(_build_mu(MIXED, tmp_path / "mixed.h5"), features.double().mean(0).numpy(), atol=1e-6)
    client = MlflowClient()
    with mlflow.start_run(experiment_id=tracking) as run:
        logged = log_gen_metrics(MIXED, reference=reference, metrics=["fid"], model=TinyExtractor(), step=0)
        path = log_gen_samples(MIXED, step=1, targets=MIXED)
    assert logged["gen/fid"] == pytest.approx(want, rel=1e-6)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "images") if a.path.endswith(".png")]
    stored, targets = read_samples_file(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path))
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(MIXED, stored, targets))
    assert len(stored) == len(targets) == len(MIXED)
    assert score_run(run.info.run_id, reference, metrics=["fid"], model=TinyExtractor()) == [1]
    history = client.get_metric_history(run.info.run_id, "gen/fid")
    assert [m.value for m in history if m.step == 1] == [pytest.approx(want, rel=1e-6)]
    assert _evaluate(list(MIXED), None, reference, tracking) == pytest.approx(want, rel=1e-6)
