"""log_gen_metrics against a real mlflow server (and sqlite / file stores): what is returned is what is logged."""
import concurrent.futures
import hashlib
import os
import subprocess
import sys

import mlflow
import pytest
import torch
from fixtures_plugin_scoring import TinyExtractor, tiny_images
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as tracking_utils

from genmetrics.plugin import flush, log_gen_metrics, replay, spool
from genmetrics.plugin.background import BackgroundScoringError

METRICS = ("fid", "kid", "ssim")
pytestmark = pytest.mark.filterwarnings("ignore:covariance of D")


@pytest.fixture(autouse=True)
def isolated_spool(tmp_path, monkeypatch):
    """A fresh GENMETRICS_HOME (spool) per test, fast retries, and the fluent tracking URI restored."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    monkeypatch.setenv("GENMETRICS_LOG_TRIES", "2")
    monkeypatch.setenv("GENMETRICS_LOG_BACKOFF", "0.05")
    monkeypatch.setenv("GENMETRICS_REPLAY_INTERVAL", "0.5")
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"):  # set_tracking_uri exports them; restored after
        monkeypatch.setenv(name, os.environ.get(name, ""))
        monkeypatch.delenv(name)
    spool.senders.reset()
    previous = tracking_utils._tracking_uri
    yield
    flush()
    mlflow.set_tracking_uri(previous)
    spool.senders.reset()


def _server_run(server):
    """A fluent run on the server (without mlflow.set_experiment, which exports MLFLOW_EXPERIMENT_ID)."""
    mlflow.set_tracking_uri(server.uri)
    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("log-gen-metrics")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("log-gen-metrics")
    return mlflow.start_run(experiment_id=experiment_id)


def _log(step, reference, **kwargs):
    kwargs.setdefault("metrics", METRICS)
    samples = tiny_images(8, seed=100 + step, shift=max(0.0, 0.5 - 0.1 * step))
    return log_gen_metrics(samples, reference=reference, step=step, model=TinyExtractor(), kid_subsets=5,
                           diversity_pairs=8, **kwargs)


def _history(client, run_id, key):
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _grids(client, run_id):
    return sorted(a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")
                  and "+compressed" not in a.path)


def test_logged_metrics_params_tags_and_grid_match_the_returned_dict(mlflow_server, tiny_reference_path):
    with _server_run(mlflow_server) as run:
        returned = {step: _log(step, tiny_reference_path) for step in (0, 1, 2)}
    client = MlflowClient(mlflow_server.uri)
    keys = set(returned[0])
    assert keys == {"gen/fid", "gen/kid", "gen/kid_std", "gen/ssim_diversity"}
    for key in keys:
        assert _history(client, run.info.run_id, key) == [(step, returned[step][key]) for step in (0, 1, 2)]
    for key in keys:  # one log_batch per call: every metric of a step shares the timestamp
        stamps = {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, key)}
        assert stamps == {m.step: m.timestamp for m in client.get_metric_history(run.info.run_id, "gen/fid")}
    data = client.get_run(run.info.run_id).data
    with open(tiny_reference_path, "rb") as f:
        assert data.tags["gen/reference_sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert data.tags["gen/reference"] == os.path.abspath(tiny_reference_path)  # a local file: named by its path
    assert data.tags["gen/reference_claimed_ref"] == "tiny-train-32-clean@1"  # what the file says, marked as a claim
    assert data.tags["gen/extractor"] == TinyExtractor.feature_extractor and data.tags["gen/num_samples"] == "8"
    assert data.tags["genmetrics.version.torch"] == torch.__version__.split("+")[0]
    grids = _grids(client, run.info.run_id)
    assert [g.split("+step+")[1].split("+")[0] for g in grids] == ["0", "1", "2"], grids
    assert all(os.path.basename(g).startswith("gen~samples+") for g in grids)


def test_non_blocking_mode_logs_every_step_in_order_and_surfaces_errors(mlflow_server, tiny_reference_path):
    with _server_run(mlflow_server) as run:
        handles = [_log(step, tiny_reference_path, blocking=False, log_grid=False) for step in range(4)]
        flush()
        client = MlflowClient(mlflow_server.uri)
        history = client.get_metric_history(run.info.run_id, "gen/fid")
        assert [m.step for m in sorted(history, key=lambda m: m.timestamp)] == [0, 1, 2, 3]
        assert _history(client, run.info.run_id, "gen/fid") == [(s, h.result()["gen/fid"]) for s, h in
                                                                enumerate(handles)]

        failing = _log(4, tiny_reference_path, blocking=False, mode="legacy_pytorch")  # reference is clean
        with pytest.raises(BackgroundScoringError, match="step 4.*allow_mismatch"):
            flush()
        assert isinstance(failing.exception(), ValueError)
        concurrent.futures.wait([_log(5, tiny_reference_path, blocking=False, mode="legacy_pytorch")])
        with pytest.raises(BackgroundScoringError, match="step 5"):  # raised by the next call
            _log(6, tiny_reference_path, blocking=False)
        flush()  # each error is raised once
    assert 4 not in [s for s, _ in _history(client, run.info.run_id, "gen/fid")]


def test_server_down_mid_training_loses_nothing_and_duplicates_nothing(mlflow_server, tiny_reference_path):
    with _server_run(mlflow_server) as run:
        returned = {0: _log(0, tiny_reference_path), 1: _log(1, tiny_reference_path)}
        mlflow_server.stop()
        try:
            for step in (2, 3, 4):  # the training loop goes on while the server is down
                returned[step] = _log(step, tiny_reference_path, blocking=step != 3)
            flush()
            returned[3] = returned[3].result()  # the non-blocking step's Future
        finally:
            mlflow_server.start()
        returned[5] = _log(5, tiny_reference_path)
        assert replay(mlflow_server.uri) == {mlflow_server.uri: 0}
    client = MlflowClient(mlflow_server.uri)
    for key in returned[0]:
        assert _history(client, run.info.run_id, key) == [(s, returned[s][key]) for s in range(6)], key
    assert len(_grids(client, run.info.run_id)) == 6


@pytest.mark.parametrize("store", ["sqlite", "file"])
def test_local_stores_with_run_id(store, tmp_path, tiny_reference_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}" if store == "sqlite" else (tmp_path / "mlruns").as_uri()
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("local")).info.run_id
    returned = _log(3, tiny_reference_path, run_id=run_id, client=client, metrics=("fid",))
    assert _history(client, run_id, "gen/fid") == [(3, returned["gen/fid"])]
    assert len(_grids(client, run_id)) == 1
    assert client.get_run(run_id).data.tags["gen/mode"] == "clean"


def test_without_a_run_the_error_says_how_to_get_one(tiny_reference_path):
    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="start_run"):
        _log(0, tiny_reference_path)
    with pytest.raises(TypeError, match="unknown option"):
        log_gen_metrics(tiny_images(2, 0), run_id="x", modee="clean")


EXIT_SCRIPT = """
import sys, mlflow
from fixtures_plugin_scoring import TinyExtractor, tiny_images
from genmetrics.plugin import log_gen_metrics
mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as run:
    print(run.info.run_id)
    for step in range(3):
        log_gen_metrics(tiny_images(4, step), reference=sys.argv[2], step=step, metrics=("fid",),
                        model=TinyExtractor(), blocking=False, log_grid=False)
    log_gen_metrics(tiny_images(4, 9), reference=sys.argv[2], step=3, metrics=("fid",), mode="legacy_pytorch",
                    model=TinyExtractor(), blocking=False)
"""


def test_pending_background_work_is_flushed_at_exit_and_errors_reported(tmp_path, tiny_reference_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, uri, tiny_reference_path], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.strip().splitlines()[-1]
    assert [s for s, _ in _history(MlflowClient(uri), run_id, "gen/fid")] == [0, 1, 2]
    assert "scoring of step 3 failed" in done.stderr and "allow_mismatch" in done.stderr
