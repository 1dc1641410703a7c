"""Deferred scoring against a real `mlflow server`: log_gen_samples, score_run, watch, the CLI.

Exactly-once is checked through the metric history: one entry per (key, step), also after a crash
between logging and marking, and after killing a scoring subprocess mid-way and re-running it.
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
    gray = to_uint8_nhwc(images[..., 0])
    assert gray.shape == (2, 5, 7, 3) and np.array_equal(gray[..., 2], images[..., 0])


@pytest.mark.parametrize(
    "bad, kwargs, message",
    [
        (np.full((2, 4, 4, 3), -0.5, np.float32), {}, "value_range=\\(-1, 1\\)"),
        (np.zeros((2, 4, 4, 5), np.float32), {}, "colour channel"),
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
