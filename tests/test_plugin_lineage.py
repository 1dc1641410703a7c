"""MLflow 3 lineage, read back through MlflowClient from real stores (sqlite; one real server that goes down):
the reference is one dataset input of the run, and metrics given a model id are that LoggedModel's."""
import hashlib
import json
import logging
import os

import mlflow
import pandas as pd
import pytest
from fixtures_http import sha256_of
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images
from mlflow.entities import LoggedModelOutput
from mlflow.tracking import MlflowClient

from genmetrics.plugin import flush, log_gen_metrics, log_gen_samples, score_run, spool
from genmetrics.plugin.lineage import DIGEST_CHARS

pytestmark = pytest.mark.filterwarnings("ignore:covariance of D")
TINY = {"model": TinyExtractor(), "metrics": ("fid", "kid"), "kid_subsets": 5, "log_grid": False}


@pytest.fixture(autouse=True)
def isolated_spool(tmp_path, monkeypatch):
    """A fresh GENMETRICS_HOME (spool) and sender per test, fast retries, no downloads, no active model."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    monkeypatch.setenv("GENMETRICS_LOG_TRIES", "2")
    monkeypatch.setenv("GENMETRICS_LOG_BACKOFF", "0.05")
    monkeypatch.setenv("GENMETRICS_REPLAY_INTERVAL", "0.5")
    monkeypatch.delenv("MLFLOW_ACTIVE_MODEL_ID", raising=False)
    spool.senders.reset()
    yield
    flush()
    spool.senders.reset()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite tracking store for the module (its schema takes seconds to create); each test makes its runs."""
    root = tmp_path_factory.mktemp("lineage-store")
    return MlflowClient(f"sqlite:///{root / 'mlflow.db'}"), str(root / "artifacts")


def _run_and_model(client, artifacts, name):
    """(experiment id, run id, id of a LoggedModel whose source is that run)."""
    experiment_id = client.create_experiment(name, artifact_location=os.path.join(artifacts, name))
    run_id = client.create_run(experiment_id).info.run_id
    return experiment_id, run_id, client.create_logged_model(experiment_id, name="generator",
                                                             source_run_id=run_id).model_id


def _score(step, reference, client, run_id, **kwargs):
    samples = tiny_images(8, seed=100 + step, shift=0.1 * step)
    return log_gen_metrics(samples, reference=reference, step=step, run_id=run_id, client=client,
                           **dict(TINY, **kwargs))


def _reference_inputs(client, run_id):
    return [i for i in client.get_run(run_id).inputs.dataset_inputs
            if {t.key: t.value for t in i.tags}.get("mlflow.data.context") == "reference"]


def _model_history(client, model_id):
    """{(key, step): (value, dataset name, dataset digest)} of the LoggedModel's metrics."""
    return {(m.key, m.step): (m.value, m.dataset_name, m.dataset_digest)
            for m in client.get_logged_model(model_id).metrics}


def _file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_the_reference_file_is_one_dataset_input_after_several_steps(store, tiny_reference_path):
    client, artifacts = store
    _, run_id, _ = _run_and_model(client, artifacts, "one-input")
    for step in (0, 1, 2):
        _score(step, tiny_reference_path, client, run_id)
    spool.senders.reset()  # a new process (a resumed run): the run's inputs, not the sender's memory, say it is there
    _score(3, tiny_reference_path, client, run_id)
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    (reference,) = _reference_inputs(client, run_id)
    dataset = reference.dataset
    sha256 = _file_sha256(tiny_reference_path)
    assert (dataset.name, dataset.digest) == ("tiny-train-32.h5", sha256[:DIGEST_CHARS])
    assert dataset.source_type == "local"
    assert json.loads(dataset.source) == {"uri": os.path.abspath(tiny_reference_path)}
    assert json.loads(dataset.profile) == {"num_samples": 24, "sha256": sha256}
    assert [m.step for m in client.get_metric_history(run_id, "gen/fid")] == [0, 1, 2, 3]


def test_model_id_makes_the_metrics_the_logged_models_on_the_reference_dataset(store, tiny_reference_path):
    client, artifacts = store
    experiment_id, run_id, model_id = _run_and_model(client, artifacts, "model-link")
    returned = {step: _score(step, tiny_reference_path, client, run_id, model_id=model_id) for step in (0, 1)}
    unlinked = _score(2, tiny_reference_path, client, run_id)
    digest = _file_sha256(tiny_reference_path)[:DIGEST_CHARS]
    assert _model_history(client, model_id) == {
        (key, step): (value, "tiny-train-32.h5", digest) for step, metrics in returned.items()
        for key, value in metrics.items()}
    run_history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "gen/fid"))
    assert run_history == [(0, returned[0]["gen/fid"]), (1, returned[1]["gen/fid"]), (2, unlinked["gen/fid"])]
    found = client.search_logged_models([experiment_id], filter_string="metrics.`gen/fid` > 0")
    assert [m.model_id for m in found] == [model_id]


def test_an_unknown_model_id_logs_the_metrics_to_the_run_with_one_warning(store, tiny_reference_path, caplog):
    client, artifacts = store
    _, run_id, _ = _run_and_model(client, artifacts, "unknown-model")
    with caplog.at_level(logging.WARNING, logger="genmetrics"):
        returned = [_score(step, tiny_reference_path, client, run_id, model_id="m-0123456789abcdef") for step in (0, 1)]
    assert [m.value for m in client.get_metric_history(run_id, "gen/fid")] == [r["gen/fid"] for r in returned]
    assert caplog.text.count("cannot link the metrics to model m-0123456789abcdef") == 1
    assert "not found" in caplog.text  # the server's reason
    sender = spool.get_sender(client.tracking_uri)
    assert sender.pending() == [] and sender.failed() == []


def test_a_bad_model_id_is_a_type_error_before_scoring(store, tiny_reference_path):
    client, artifacts = store
    _, run_id, _ = _run_and_model(client, artifacts, "bad-model-id")
    with pytest.raises(TypeError, match="model_id must be the id string of an MLflow LoggedModel"):
        _score(0, tiny_reference_path, client, run_id, model_id=123)
    assert client.get_metric_history(run_id, "gen/fid") == []


class _ClientWithoutLoggedModels:
    """An MlflowClient as MLflow 2 had it: everything but the LoggedModel calls (the installed MLflow is 3)."""

    def __init__(self, client):
        self._client = client
        self.tracking_uri = client.tracking_uri

    def __getattr__(self, name):
        if "logged_model" in name:
            raise AttributeError(name)
        return getattr(self._client, name)


def test_an_mlflow_without_logged_models_skips_the_link_with_one_warning(store, tiny_reference_path, caplog):
    client, artifacts = store
    _, run_id, model_id = _run_and_model(client, artifacts, "mlflow-2")
    spool.senders.get(client.tracking_uri, _ClientWithoutLoggedModels(client))  # the sender this process then uses
    with caplog.at_level(logging.WARNING, logger="genmetrics"):
        returned = [_score(step, tiny_reference_path, client, run_id, model_id=model_id) for step in (0, 1)]
    assert [m.value for m in client.get_metric_history(run_id, "gen/fid")] == [r["gen/fid"] for r in returned]
    assert not client.get_logged_model(model_id).metrics
    assert caplog.text.count("has no LoggedModels") == 1


def test_a_registry_reference_is_named_by_its_ref_with_its_url_redacted(store, http_server, tmp_path, monkeypatch):
    client, artifacts = store
    _, run_id, _ = _run_and_model(client, artifacts, "registry-ref")
    from genmetrics.registry.refstats import write_refstats

    write_refstats(str(tmp_path / "tiny.h5"), make_tiny_reference(tiny_images(24, seed=1)))
    data = (tmp_path / "tiny.h5").read_bytes()
    http_server.files["/team/tiny.h5"] = data
    url = http_server.url.replace("http://", "http://user:secret@") + "/team/tiny.h5?sig=TOKEN"
    entry = {"name": "tiny", "split": "train", "resolution": 32, "mode": "clean", "version": 2, "num_samples": 24,
             "sources": [{"url": url, "format": "h5"}], "sha256": sha256_of(data)}
    (tmp_path / "team.yaml").write_text(json.dumps({"format_version": 1, "entries": [entry]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(tmp_path / "team.yaml"))
    monkeypatch.delenv("GENMETRICS_OFFLINE")
    from genmetrics import registry

    reference = registry.load("tiny-train-32")
    _score(0, reference, client, run_id)
    (logged,) = _reference_inputs(client, run_id)
    tags = client.get_run(run_id).data.tags
    assert logged.dataset.name == tags["gen/reference"] and logged.dataset.name.startswith("tiny-train-32")
    assert logged.dataset.digest == sha256_of(data)[:DIGEST_CHARS]
    assert (logged.dataset.source_type, json.loads(logged.dataset.source)) == (
        "http", {"url": http_server.url + "/team/tiny.h5"})
    assert json.loads(logged.dataset.profile)["version"] == "2"


def test_deferred_scoring_links_a_step_to_the_model_the_run_logged_at_that_step(store, tiny_reference_path):
    client, artifacts = store
    _, run_id, model_id = _run_and_model(client, artifacts, "deferred")
    for step in (10, 20):
        log_gen_samples(tiny_images(8, seed=step), step=step, run_id=run_id, client=client)
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=20)])  # what mlflow.<flavor>.log_model(step=20) does
    assert score_run(run_id, tiny_reference_path, client=client, **{k: v for k, v in TINY.items() if k != "log_grid"}
                     ) == [10, 20]
    linked = _model_history(client, model_id)
    assert {step for _, step in linked} == {20}
    fid_20 = [m.value for m in client.get_metric_history(run_id, "gen/fid") if m.step == 20]
    assert [linked[("gen/fid", 20)][0]] == fid_20
    assert len(_reference_inputs(client, run_id)) == 1


def test_the_evaluator_links_its_metrics_to_the_model_evaluate_names(store, tiny_reference_path, monkeypatch):
    client, artifacts = store
    experiment_id, _, model_id = _run_and_model(client, artifacts, "evaluator")
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")  # set_tracking_uri exports it: recorded here, restored after
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(client.tracking_uri)
    try:
        with mlflow.start_run(experiment_id=experiment_id) as run:
            result = mlflow.models.evaluate(
                data=pd.DataFrame({"image": list(tiny_images(8, seed=5))}), model_type="image-generation",
                evaluators=["genmetrics"], model_id=model_id,
                evaluator_config={"genmetrics": {"reference": tiny_reference_path, "model": TinyExtractor(),
                                                 "metrics": ["fid"], "image_column": "image"}})
    finally:
        mlflow.set_tracking_uri(previous)
    ours = [m for m in client.get_logged_model(model_id).metrics if m.dataset_name == "tiny-train-32.h5"]
    assert [(m.key, m.value, m.run_id) for m in ours] == [("gen/fid", result.metrics["gen/fid"], run.info.run_id)]
    assert len(_reference_inputs(client, run.info.run_id)) == 1


def test_lineage_written_while_the_server_is_down_is_spooled_and_replayed_once(mlflow_server, mlflow_auth_proxy,
                                                                              tiny_reference_path, monkeypatch):
    """Through a proxy in front of the real server: stopped (connections refused), its writes are spooled; started,
    they are replayed: one dataset input, every metric on the model, one log-inputs request in the server's log."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
    client = MlflowClient(mlflow_auth_proxy.url)
    experiment = client.get_experiment_by_name("lineage")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("lineage")
    run_id = client.create_run(experiment_id).info.run_id
    model_id = client.create_logged_model(experiment_id, name="generator", source_run_id=run_id).model_id
    mlflow_auth_proxy.stop()
    try:
        returned = {step: _score(step, tiny_reference_path, client, run_id, model_id=model_id) for step in (1, 2)}
        sender = spool.get_sender(mlflow_auth_proxy.url)
        spooled = []
        for path in sender.pending():
            with open(path) as f:
                spooled.append(json.load(f)["op"])
        assert spooled == ["log_inputs", "log_batch"] * 2
    finally:
        mlflow_auth_proxy.start()
    with open(mlflow_server.log_path, encoding="utf-8") as f:
        served_before = len(f.read())
    assert spool.replay(mlflow_auth_proxy.url) == {mlflow_auth_proxy.url: 0}
    returned[3] = _score(3, tiny_reference_path, client, run_id, model_id=model_id)  # live, after the replay
    with open(mlflow_server.log_path, encoding="utf-8") as f:  # the server's access log: requests it answered
        assert f.read()[served_before:].count("POST /api/2.0/mlflow/runs/log-inputs") == 1
    assert len(_reference_inputs(client, run_id)) == 1
    digest = _file_sha256(tiny_reference_path)[:DIGEST_CHARS]
    assert _model_history(client, model_id) == {
        (key, step): (value, "tiny-train-32.h5", digest) for step, metrics in returned.items()
        for key, value in metrics.items()}
    assert sorted(m.step for m in client.get_metric_history(run_id, "gen/fid")) == [1, 2, 3]
