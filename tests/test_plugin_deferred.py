"""Deferred scoring against a real `mlflow server`: log_gen_samples, score_run, watch, the CLI.

Exactly-once is checked through the metric history: one entry per (key, step), also after a crash
between logging and marking, and after killing a scoring subprocess mid-way and re-running it.
Most tests score KID only: on a CPU a 2048-d FID costs seconds of eigendecomposition per step, and
the exactly-once logic does not depend on the metric.
"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from genmetrics.plugin.samples import (
    SCORED_TAG_PREFIX,
    log_gen_samples,
    logged_sample_steps,
    pending_sample_steps,
    read_samples_file,
    samples_artifact_path,
    to_uint8_nhwc,
)

SAMPLES_PER_STEP = 6
IMAGE_SIZE = 24


def _images(seed, count=SAMPLES_PER_STEP, size=IMAGE_SIZE):
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------- samples


def test_to_uint8_nhwc_maps_value_ranges_and_layouts():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8_nhwc(images), images)
    as_unit = images.astype(np.float32) / 255
    assert np.array_equal(to_uint8_nhwc(torch.from_numpy(as_unit).permute(0, 3, 1, 2)), images)
    assert np.array_equal(to_uint8_nhwc(as_unit * 2 - 1, value_range=(-1, 1)), images)
    assert np.array_equal(to_uint8_nhwc(list(images)), images)
    gray = to_uint8_nhwc(images[..., :1])
    assert gray.shape == (2, 5, 7, 3) and np.array_equal(gray[..., 2], images[..., 0])


@pytest.mark.parametrize(
    "bad, kwargs, message",
    [
        (np.full((2, 4, 4, 3), -0.5, np.float32), {}, "value_range=\\(-1, 1\\)"),
        (np.zeros((2, 5, 6, 5), np.float32), {}, "colour channel"),
        (np.zeros((2, 4, 4, 3), np.uint8), {"value_range": (-1, 1)}, "uint8"),
        (np.zeros((0, 4, 4, 3), np.uint8), {}, "empty"),
        (np.full((2, 4, 4, 3), np.nan, np.float32), {}, "NaN"),
    ],
)
def test_to_uint8_nhwc_rejects_bad_input_with_the_fix(bad, kwargs, message):
    with pytest.raises(ValueError, match=message):
        to_uint8_nhwc(bad, **kwargs)


def test_pending_steps_come_from_tags():
    tags = {
        "genmetrics.samples.3": samples_artifact_path(3),
        "genmetrics.samples.10": samples_artifact_path(10),
        SCORED_TAG_PREFIX + "3": "gen/fid",
        "mlflow.runName": "x",
    }
    assert logged_sample_steps(tags) == {3: "genmetrics/samples/step_000000003.npz",
                                         10: "genmetrics/samples/step_000000010.npz"}
    assert pending_sample_steps(tags) == {10: "genmetrics/samples/step_000000010.npz"}


def test_log_gen_samples_stores_npz_and_tag(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment("samples-storage")
    run_id = client.create_run(experiment_id).info.run_id
    samples, targets = _images(1), _images(2)
    path = log_gen_samples(samples.astype(np.float32) / 127.5 - 1, step=7, run_id=run_id,
                           value_range=(-1, 1), targets=targets.astype(np.float32) / 127.5 - 1, client=client)
    assert path == "genmetrics/samples/step_000000007.npz"
    assert client.get_run(run_id).data.tags["genmetrics.samples.7"] == path
    stored, stored_targets = read_samples_file(client.download_artifacts(run_id, path, str(tmp_path)))
    assert np.array_equal(stored, samples) and np.array_equal(stored_targets, targets)
    with pytest.raises(ValueError, match="non-negative integer"):
        log_gen_samples(samples, step=-1, run_id=run_id, client=client)


# ----------------------------------------------------------------------------------------------- scoring


@pytest.fixture
def scorer_env(monkeypatch, tmp_path, fid_weights_path):
    """Offline Inception weights and a private spool for this test (also seen by subprocesses)."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_INCEPTION_WEIGHTS", fid_weights_path)
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    return dict(os.environ)


def _new_run(client, experiment_name):
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
    return client.create_run(experiment_id).info.run_id


def _log_steps(client, run_id, steps):
    for step in steps:
        log_gen_samples(_images(100 + step), step=step, run_id=run_id, client=client)


def _history_steps(client, run_id, key):
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def _scored_steps(client, run_id):
    tags = client.get_run(run_id).data.tags
    return sorted(int(k[len(SCORED_TAG_PREFIX):]) for k in tags if k.startswith(SCORED_TAG_PREFIX))


def test_score_run_scores_each_pending_step_once(mlflow_server, scorer_env, tiny_reference, inception):
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin import score_run

    client = MlflowClient(mlflow_server.uri)
    run_id = _new_run(client, "deferred-score")
    _log_steps(client, run_id, [5])
    assert score_run(run_id, tiny_reference, metrics=["fid", "kid"], client=client, model=inception) == [5]
    assert score_run(run_id, tiny_reference, metrics=["fid", "kid"], client=client, model=inception) == []
    _log_steps(client, run_id, [0])
    assert score_run(run_id, tiny_reference, metrics=["fid", "kid"], client=client, model=inception) == [0]
    for key in ("gen/fid", "gen/kid", "gen/kid_std"):
        assert _history_steps(client, run_id, key) == [0, 5]
    run = client.get_run(run_id)
    assert run.data.tags[SCORED_TAG_PREFIX + "5"] == "gen/fid,gen/kid,gen/kid_std"
    assert run.data.metrics["gen/fid"] > 0
    assert run.data.tags["gen/num_samples"] == str(SAMPLES_PER_STEP)
    grids = [f.path for f in client.list_artifacts(run_id, "images")]
    assert len([p for p in grids if p.endswith(".png")]) == 2, grids


class _Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the scorer catches it."""


def test_crash_between_logging_and_marking_logs_nothing_twice(mlflow_server, scorer_env, tiny_reference,
                                                                inception, monkeypatch):
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin import deferred, score_run

    client = MlflowClient(mlflow_server.uri)
    run_id = _new_run(client, "deferred-crash")
    _log_steps(client, run_id, [1, 2, 3])
    real_mark = deferred._mark_scored

    def mark_then_die_at_step_2(client, run_id, step, keys):
        if step == 2:
            raise _Crash()
        real_mark(client, run_id, step, keys)

    monkeypatch.setattr(deferred, "_mark_scored", mark_then_die_at_step_2)
    with pytest.raises(_Crash):
        score_run(run_id, tiny_reference, metrics=["kid"], client=client, model=inception)
    assert _scored_steps(client, run_id) == [1]
    assert _history_steps(client, run_id, "gen/kid") == [1, 2]  # step 2 logged, not marked
    monkeypatch.setattr(deferred, "_mark_scored", real_mark)
    assert score_run(run_id, tiny_reference, metrics=["kid"], client=client, model=inception) == [2, 3]
    for key in ("gen/kid", "gen/kid_std"):
        assert _history_steps(client, run_id, key) == [1, 2, 3]
    assert _scored_steps(client, run_id) == [1, 2, 3]
    assert client.get_run(run_id).data.tags[SCORED_TAG_PREFIX + "2"] == "gen/kid,gen/kid_std"


def test_a_bad_step_is_reported_and_the_others_are_scored(mlflow_server, scorer_env, tiny_reference, inception,
                                                          tmp_path):
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin import score_run
    from genmetrics.plugin.deferred import DeferredScoringError

    client = MlflowClient(mlflow_server.uri)
    run_id = _new_run(client, "deferred-bad-step")
    _log_steps(client, run_id, [1])
    broken = tmp_path / "step_000000002.npz"
    np.savez_compressed(broken, samples=np.zeros((2, 8, 8), np.float32))
    client.log_artifact(run_id, str(broken), "genmetrics/samples")
    client.set_tag(run_id, "genmetrics.samples.2", samples_artifact_path(2))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        score_run(run_id, str(tmp_path / "missing.h5"), metrics=["kid"], client=client, model=inception)
    with pytest.raises(DeferredScoringError, match="step 2: .*uint8") as failed:
        score_run(run_id, tiny_reference, metrics=["kid"], client=client, model=inception)
    assert failed.value.scored == [1]
    assert _scored_steps(client, run_id) == [1]
    assert _history_steps(client, run_id, "gen/kid") == [1]


def _wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _start_cli(args, env, log_path):
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "genmetrics.plugin.cli", *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def test_cli_score_killed_midway_then_rerun(mlflow_server, scorer_env, tiny_reference, inception, tmp_path):
    from mlflow.tracking import MlflowClient

    import mlflow

    from genmetrics.plugin.cli import main

    client = MlflowClient(mlflow_server.uri)
    run_id = _new_run(client, "deferred-cli-kill")
    steps = [0, 1, 2]
    _log_steps(client, run_id, steps)
    args = ["score", run_id, "--reference", tiny_reference, "--metrics", "kid", "--tracking-uri", mlflow_server.uri,
            "--precision", "bf16"]
    scorer = _start_cli(args, scorer_env, tmp_path / "score1.log")
    try:
        _wait_for(lambda: client.get_metric_history(run_id, "gen/kid") or scorer.poll() is not None, 240,
                  "the first logged metric")
    finally:
        os.killpg(scorer.pid, signal.SIGKILL)
        scorer.wait()
    assert _history_steps(client, run_id, "gen/kid") != steps, "killed too late to test a restart"
    previous_uri = mlflow.get_tracking_uri()
    try:
        assert main(args) == 0  # the restart, in this process (saves a second interpreter start)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert _history_steps(client, run_id, "gen/kid") == steps
    assert _scored_steps(client, run_id) == steps
    assert client.get_run(run_id).data.tags["gen/precision"] == "bf16"  # the opt-in reached the scorer


def test_watch_scores_new_samples_once_across_a_restart(mlflow_server, scorer_env, tiny_reference, inception,
                                                        tmp_path):
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin import watch

    client = MlflowClient(mlflow_server.uri)
    experiment = "deferred-watch"
    args = ["watch", "--experiment", experiment, "--reference", tiny_reference, "--metrics", "kid",
            "--interval", "0.5", "--tracking-uri", mlflow_server.uri]
    worker = _start_cli(args, scorer_env, tmp_path / "watch.log")  # started before the experiment exists
    try:
        run_id = _new_run(client, experiment)
        _log_steps(client, run_id, [0, 1])
        _wait_for(lambda: _scored_steps(client, run_id) == [0, 1] or worker.poll() is not None, 240,
                  "the watcher to score steps 0 and 1")
        assert worker.poll() is None, (tmp_path / "watch.log").read_text()
        _log_steps(client, run_id, [2])
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    other_run = _new_run(client, experiment)
    _log_steps(client, other_run, [4])
    scored = watch(experiment, tiny_reference, metrics=["kid"], max_iterations=1, client=client, model=inception)
    assert (other_run, 4) in scored and (run_id, 0) not in scored
    assert _history_steps(client, run_id, "gen/kid") == [0, 1, 2]
    assert _scored_steps(client, run_id) == [0, 1, 2]
    assert _history_steps(client, other_run, "gen/kid") == [4]
    assert watch(experiment, tiny_reference, metrics=["kid"], max_iterations=1, client=client, model=inception) == []
