"""`genmetrics demo --quick` (run once per session by the `demo_run` fixture) against a real mlflow server."""
import numpy as np

from genmetrics.plugin.demo import generator_samples, make_shapes


def test_procedural_data_is_deterministic():
    assert np.array_equal(make_shapes(4, 32, seed=3), make_shapes(4, 32, seed=3))
    assert not np.array_equal(make_shapes(4, 32, seed=3), make_shapes(4, 32, seed=4))
    first, last = generator_samples(0, 5, 4, 32), generator_samples(4, 5, 4, 32)
    assert first.dtype == np.uint8 and first.shape == (4, 32, 32, 3)
    assert np.array_equal(last, np.rint(make_shapes(4, 32, seed=1000) * 255).astype(np.uint8))
    assert np.array_equal(generator_samples(2, 5, 4, 32), generator_samples(2, 5, 4, 32))


def test_demo_logs_a_training_whose_fid_falls(demo_run):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(demo_run.tracking_uri)
    history = sorted(client.get_metric_history(demo_run.run_id, "gen/fid"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1, 2]
    fids = [m.value for m in history]
    assert fids[0] > fids[1] > fids[2] > 0, fids
    assert [m.step for m in client.get_metric_history(demo_run.run_id, "gen/kid")] == [0, 1, 2]
    run = client.get_run(demo_run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["gen/reference_claimed_ref"].startswith("demo-shapes")
    grids = [f.path for f in client.list_artifacts(demo_run.run_id, "images") if f.path.endswith(".png")]
    assert len(grids) == 3, grids
    # the printed table and the link to the run in the UI
    assert "gen/fid" in demo_run.output
    assert f"#/experiments/{demo_run.experiment_id}/runs/{demo_run.run_id}" in demo_run.output


def test_demo_default_store_prints_the_ui_command(tmp_path, monkeypatch):
    from genmetrics.plugin.demo import _tracking_setup, _ui_command

    uri, artifacts = _tracking_setup(None, str(tmp_path))
    assert uri == f"sqlite:///{tmp_path}/mlflow.db" and artifacts == f"{tmp_path}/artifacts"
    command, url = _ui_command(uri, "1", "abc")
    assert command == f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlflow.db --port 5000"
    assert url == "http://127.0.0.1:5000/#/experiments/1/runs/abc"
