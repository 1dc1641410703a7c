"""The retrying sender and its disk spool against a real mlflow server that goes down and comes back."""
import os
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from genmetrics.plugin import spool
from genmetrics.plugin.cli import main as cli_main


@pytest.fixture
def genmetrics_home(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def run_id(mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("spool") or client.get_experiment(client.create_experiment("spool"))
    return client.create_run(experiment.experiment_id).info.run_id


def _fast_sender(uri):
    return spool.Sender(uri, policy=spool.RetryPolicy(tries=2, backoff=0.05, probe_timeout=1, replay_interval=0.2))


def _batch(run_id, step, value, timestamp):
    return {"op": "log_batch", "run_id": run_id, "metrics": [["gen/fid", value, timestamp, step],
                                                            ["gen/kid", value / 10, timestamp, step]],
            "tags": {"gen/last": str(step)}}


def test_down_server_spools_then_replays_each_operation_once(mlflow_server, run_id, genmetrics_home, capsys):
    sender = _fast_sender(mlflow_server.uri)
    assert sender.submit(_batch(run_id, 0, 10.0, 1000))
    mlflow_server.stop()
    try:
        started = time.monotonic()
        for step in (1, 2, 3):
            assert not sender.submit(_batch(run_id, step, 10.0 - step, 1000 + step))
        grid = np.zeros((20, 30, 3), np.uint8)
        grid[:, :10] = 255
        assert not sender.submit({"op": "log_image", "run_id": run_id, "key": "gen/samples", "step": 3,
                                  "timestamp": 1003}, image=grid)
        assert not sender.submit({"op": "log_params", "run_id": run_id, "params": {"gen/mode": "clean"}})
        assert time.monotonic() - started < 30  # the training loop is not stalled for minutes
        assert len(sender.pending()) == 5
        assert len([n for n in os.listdir(sender.directory) if n.endswith(".png")]) == 1
        with open(os.path.join(sender.directory, "uri.txt")) as f:
            assert f.read() == mlflow_server.uri
        assert cli_main(["replay", "--tracking-uri", mlflow_server.uri]) == 1  # still down: nothing lost
        assert len(sender.pending()) == 5
    finally:
        mlflow_server.start()
    assert cli_main(["replay"]) == 0  # every spool under $GENMETRICS_HOME
    assert "all sent" in capsys.readouterr().out
    assert sender.pending() == []
    assert not [n for n in os.listdir(sender.directory) if n.endswith(".png")]
    client = MlflowClient(mlflow_server.uri)
    fid = client.get_metric_history(run_id, "gen/fid")
    assert sorted((m.step, m.value, m.timestamp) for m in fid) == [(s, 10.0 - s, 1000 + s) for s in range(4)]
    assert len(client.get_metric_history(run_id, "gen/kid")) == 4
    run = client.get_run(run_id)
    assert run.data.params["gen/mode"] == "clean" and run.data.tags["gen/last"] == "3"
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert len([p for p in images if p.endswith(".png")]) == 1, images


def test_replay_after_a_crash_between_send_and_delete_does_not_duplicate(mlflow_server, run_id, genmetrics_home):
    """The op reached the server but its spool file survived (crash / lost response): verify, don't resend."""
    sender = _fast_sender(mlflow_server.uri)
    op = _batch(run_id, 7, 1.5, 2000)
    image_op = {"op": "log_image", "run_id": run_id, "key": "gen/samples", "step": 7, "timestamp": 2000}
    grid = np.full((8, 8, 3), 128, np.uint8)
    assert sender.submit(op) and sender.submit(image_op, image=grid)
    sender._spool(dict(op, id="a" * 32), None)
    sender._spool(dict(image_op, id="b" * 32), grid)
    assert len(sender.pending()) == 2
    assert sender.replay() and sender.pending() == []
    client = MlflowClient(mlflow_server.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "gen/fid")] == [(7, 1.5)]
    assert len([a for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]) == 1


def test_changed_param_becomes_a_tag(mlflow_server, run_id, genmetrics_home):
    sender = _fast_sender(mlflow_server.uri)
    assert sender.submit({"op": "log_params", "run_id": run_id, "params": {"gen/num_samples": "8"}})
    assert sender.submit({"op": "log_params", "run_id": run_id, "params": {"gen/num_samples": "16"}})
    data = MlflowClient(mlflow_server.uri).get_run(run_id).data
    assert data.params["gen/num_samples"] == "8" and data.tags["gen/num_samples"] == "16"


def test_rejected_operation_is_not_retried_forever(mlflow_server, genmetrics_home, caplog):
    sender = _fast_sender(mlflow_server.uri)
    bad = _batch("0" * 32, 0, 1.0, 1)
    assert not sender.submit(bad)  # unknown run: rejected, warned, not spooled
    assert sender.pending() == []
    assert "rejected" in caplog.text
    sender._spool(dict(bad, id="c" * 32), None)
    assert sender.replay() and sender.pending() == []
    failed = os.listdir(os.path.join(sender.directory, "failed"))
    assert any(n.endswith(".error.txt") for n in failed)


def test_sqlite_store_uses_the_same_sender(tmp_path, genmetrics_home, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    sender = _fast_sender(uri)
    assert sender.submit(_batch(run_id, 1, 3.0, 10))
    assert [m.value for m in client.get_metric_history(run_id, "gen/fid")] == [3.0]
