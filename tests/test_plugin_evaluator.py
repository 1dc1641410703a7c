"""`mlflow.models.evaluate(..., evaluators=["genmetrics"])` through the installed entry point, on a real server."""
import mlflow
import numpy as np
import pandas as pd
import pytest

from fixtures_data import make_photo_folder
from genmetrics.plugin.demo import make_shapes


@pytest.fixture
def tracking(mlflow_server, monkeypatch, tmp_path, fid_weights_path):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_INCEPTION_WEIGHTS", fid_weights_path)
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    # set_experiment sets a module global and MLFLOW_EXPERIMENT_ID; both are undone after the test, so later
    # tests with another tracking store do not start runs in this server's experiment
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # recorded, so that the value set below is undone
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(mlflow_server.uri)
    mlflow.set_experiment("evaluator")
    yield mlflow.tracking.MlflowClient(mlflow_server.uri)
    mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def generated_images():
    return np.rint(make_shapes(8, size=32, seed=77) * 255).astype(np.uint8)


def test_entry_point_is_registered():
    from mlflow.models.evaluation.evaluator_registry import _model_evaluation_registry

    from genmetrics.plugin.evaluator import GenMetricsEvaluator

    assert _model_evaluation_registry.get_evaluator("genmetrics").__class__ is GenMetricsEvaluator
    assert GenMetricsEvaluator.can_evaluate(model_type="image-generation", evaluator_config={})
    assert not GenMetricsEvaluator.can_evaluate(model_type="classifier", evaluator_config={})


def test_evaluate_image_paths_logs_fid_and_kid(tracking, tiny_reference, generated_images, tmp_path):
    folder = make_photo_folder(tmp_path / "generated", list(generated_images))
    paths = sorted(str(p) for p in (tmp_path / "generated").iterdir())
    data = pd.DataFrame({"image": paths, "prompt": [f"shape {i}" for i in range(len(paths))]})
    with mlflow.start_run() as run:
        result = mlflow.models.evaluate(
            data=data, model_type="image-generation", evaluators=["genmetrics"],
            evaluator_config={"genmetrics": {"reference": tiny_reference, "metrics": ["fid", "kid"],
                                             "image_column": "image", "device": "cpu"}},
        )
    assert folder
    assert set(result.metrics) == {"gen/fid", "gen/kid", "gen/kid_std"}
    logged = tracking.get_run(run.info.run_id).data
    for key, value in result.metrics.items():
        assert logged.metrics[key] == pytest.approx(value)
    assert result.metrics["gen/fid"] > 0
    assert logged.tags["gen/num_samples"] == "8"  # provenance is logged as tags (log_metrics._log_result)


def test_evaluate_paired_targets_and_a_model(tracking, generated_images):
    """SSIM paired with `targets=`; the images are the output of a (callable) model."""
    darker = (generated_images // 2).astype(np.uint8)
    data = pd.DataFrame({"index": range(len(generated_images)), "target": list(generated_images)})

    def model(frame):
        return [darker[i] for i in frame["index"]]

    with mlflow.start_run():
        same = mlflow.models.evaluate(
            model=lambda frame: [generated_images[i] for i in frame["index"]], data=data, targets="target",
            model_type="image-generation", evaluators=["genmetrics"],
            evaluator_config={"genmetrics": {"metrics": ["ssim"]}},
        )
        changed = mlflow.models.evaluate(
            model=model, data=data, targets="target", model_type="image-generation", evaluators=["genmetrics"],
            evaluator_config={"genmetrics": {"metrics": ["ssim"], "step": 1}},
        )
    assert same.metrics == {"gen/ssim": pytest.approx(1.0)}
    assert 0 < changed.metrics["gen/ssim"] < 0.99


def test_evaluate_names_the_missing_column(tracking):
    data = pd.DataFrame({"a": ["x.png"], "b": ["y.png"]})
    with mlflow.start_run(), pytest.raises(ValueError, match="image_column"):
        mlflow.models.evaluate(data=data, model_type="image-generation", evaluators=["genmetrics"],
                               evaluator_config={"genmetrics": {"metrics": ["fid"]}})


def test_evaluate_image_files_of_different_sizes(tracking, tmp_path, monkeypatch):
    """Image files of different sizes, each paired with a target of its size (issue 19 item 3); files are decoded as
    image folders are: a file over the pixel limit is refused, naming it."""
    from PIL import Image

    from genmetrics.stats.images import image_files

    rng = np.random.default_rng(3)
    paths = []
    for i, (h, w) in enumerate([(16, 16), (24, 40), (32, 20)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    data = pd.DataFrame({"image": paths, "target": paths})
    config = {"genmetrics": {"metrics": ["ssim"], "image_column": "image", "target_column": "target"}}
    with mlflow.start_run():
        result = mlflow.models.evaluate(data=data, model_type="image-generation", evaluators=["genmetrics"],
                                        evaluator_config=config)
        assert result.metrics == {"gen/ssim": pytest.approx(1.0)}
        monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 24 * 40 - 1)
        with pytest.raises(ValueError, match=r"image .*1.png is too large to decode safely: 40 x 24"):
            mlflow.models.evaluate(data=data, model_type="image-generation", evaluators=["genmetrics"],
                                   evaluator_config=config)
