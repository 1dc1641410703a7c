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


# ------------------------------------------------ samples files that declare too much (issue 19, item 4)


def _npy_header(dtype, shape):
    """The ``.npy`` header numpy writes before an array of `dtype` and `shape`."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                  "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _huge_header_npz(path, shape=(10 ** 6, 512, 512, 3)):
    """A valid zip whose ``samples.npy`` declares `shape` (786 TB) but holds 16 bytes."""
    import zipfile

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("samples.npy", _npy_header(np.uint8, shape) + bytes(16))
    return path


def _gf2_times(matrix, vector):
    total, row = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[row]
        vector >>= 1
        row += 1
    return total


def _crc32_combine(crc1, crc2, length2):
    """zlib's crc32_combine: the CRC-32 of A + B from those of A and B (B of `length2` bytes)."""
    odd = [0xEDB88320] + [1 << n for n in range(31)]
    even = [_gf2_times(odd, odd[n]) for n in range(32)]
    odd = [_gf2_times(even, even[n]) for n in range(32)]
    while length2:
        even = [_gf2_times(odd, odd[n]) for n in range(32)]
        if length2 & 1:
            crc1 = _gf2_times(even, crc1)
        length2 >>= 1
        odd, even = even, odd
    return crc1 ^ crc2


def _crc32_of_zeros(count):
    """zlib.crc32(bytes(count)) without allocating `count` bytes."""
    import zlib

    crc, block, block_crc = 0, 1, zlib.crc32(b"\0")
    while count:
        if count & 1:
            crc = _crc32_combine(crc, block_crc, block)
        block_crc = _crc32_combine(block_crc, block_crc, block)
        block, count = 2 * block, count >> 1
    return crc


def _zeros_bomb_npz(path, images=1 << 12, size=512):
    """A valid .npz (correct sizes and CRC) whose ``samples`` are `images` black uint8 images: 3 GiB declared,
    about 3 MB stored (deflate of zeros, one 16 MiB block compressed once and repeated)."""
    import struct
    import zlib

    header = _npy_header(np.uint8, (images, size, size, 3))
    zeros, block = images * size * size * 3, 1 << 24
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = deflate.compress(header) + deflate.flush(zlib.Z_FULL_FLUSH)
    repeated = deflate.compress(bytes(block)) + deflate.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every block
    data = head + repeated * (zeros // block) + deflate.flush()
    crc = _crc32_combine(zlib.crc32(header), _crc32_of_zeros(zeros), zeros)
    name, usize = b"samples.npy", len(header) + zeros
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(data), usize, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(data), usize, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    with open(path, "wb") as f:
        f.write(local + data + central + end)
    return path


def _log_samples_file(client, run_id, step, path):
    """Log a crafted file as the samples of `step`, as log_gen_samples would (artifact, then tag)."""
    import shutil

    named = os.path.join(os.path.dirname(path), os.path.basename(samples_artifact_path(step)))
    shutil.move(path, named)
    client.log_artifact(run_id, named, "genmetrics/samples")
    client.set_tag(run_id, f"genmetrics.samples.{step}", samples_artifact_path(step))


def test_a_samples_file_declaring_too_much_fails_its_step_once(mlflow_server, scorer_env, tiny_reference, inception,
                                                                tmp_path, capsys, caplog):
    """Before: the huge header ended `genmetrics score` in a MemoryError traceback (nothing after it scored), the
    zeros bomb made it allocate 3 GiB, and both steps stayed pending for ever. Now both are refused from their
    headers, recorded as failed (tag genmetrics.failed.<step>) with one line each, and the other steps scored."""
    import zipfile

    import mlflow
    from mlflow.tracking import MlflowClient

    from genmetrics.plugin import watch
    from genmetrics.plugin.cli import main
    from genmetrics.plugin.samples import FAILED_TAG_PREFIX, read_samples_file

    bomb = _zeros_bomb_npz(str(tmp_path / "bomb.npz"))
    with zipfile.ZipFile(bomb) as archive:  # a genuine archive (sizes, CRC): numpy would read 3 GiB of zeros
        assert archive.infolist()[0].file_size > 3 << 30 and os.path.getsize(bomb) < 4 << 20
    client = MlflowClient(mlflow_server.uri)
    run_id = _new_run(client, "deferred-too-large")
    _log_steps(client, run_id, [1])
    _log_samples_file(client, run_id, 2, _huge_header_npz(str(tmp_path / "huge.npz")))
    _log_samples_file(client, run_id, 3, bomb)
    _log_steps(client, run_id, [4])
    args = ["score", run_id, "--reference", tiny_reference, "--metrics", "kid", "--tracking-uri", mlflow_server.uri]
    previous_uri = mlflow.get_tracking_uri()
    try:
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "MemoryError" not in err
        for step in (2, 3):
            named = [line for line in err.splitlines() if f"step {step}:" in line and "recorded as failed" in line]
            assert len(named) == 1, err  # one line naming the step (and the summary error line)
        assert main(args) == 0  # not retried: nothing is pending any more
        assert "scored 0 step(s)" in capsys.readouterr().out
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert _scored_steps(client, run_id) == [1, 4]
    assert _history_steps(client, run_id, "gen/kid") == [1, 4]
    tags = client.get_run(run_id).data.tags
    assert tags[FAILED_TAG_PREFIX + "2"].startswith("genmetrics/samples/step_000000002.npz: samples.npy declares")
    assert "786432000000 bytes" in tags[FAILED_TAG_PREFIX + "2"]
    assert "it expands more than 64x: a decompression bomb?" in tags[FAILED_TAG_PREFIX + "3"]

    # watch: the same, and a refused step is warned about once, not at every poll
    other = _new_run(client, "deferred-too-large-watch")
    _log_samples_file(client, other, 0, _huge_header_npz(str(tmp_path / "huge2.npz")))
    _log_steps(client, other, [5])
    caplog.clear()
    with caplog.at_level("WARNING", logger="genmetrics"):
        assert watch("deferred-too-large-watch", tiny_reference, metrics=["kid"], interval=0, max_iterations=3,
                     client=client, model=inception) == [(other, 5)]
    assert FAILED_TAG_PREFIX + "0" in client.get_run(other).data.tags
    assert len([r for r in caplog.records if "step 0:" in r.getMessage()]) == 1, caplog.text


def test_the_samples_reader_checks_sizes_before_allocating(tmp_path, monkeypatch):
    """What a file declares is checked against GENMETRICS_MAX_SAMPLES_BYTES (default 4 GiB) and the zip's sizes
    before numpy allocates; the writer refuses what the reader would; black images below 256 MiB are fine."""
    from genmetrics.plugin.samples import SamplesFileError, write_samples_file

    with pytest.raises(SamplesFileError, match=r"huge.npz: samples.npy declares uint8 .* \(786432000000 bytes\) but "
                                               r"holds 16 bytes"):
        read_samples_file(_huge_header_npz(str(tmp_path / "huge.npz")))
    with pytest.raises(SamplesFileError, match=r"3221225472 bytes from 3132\d+ stored\): over the size limits \(it "
                                               r"expands more than 64x: a decompression bomb\?\)"):
        read_samples_file(_zeros_bomb_npz(str(tmp_path / "bomb.npz")))
    black = np.zeros((64, 32, 32, 3), np.uint8)  # compresses ~1000x, but small
    write_samples_file(tmp_path / "black.npz", black, black)
    assert all(np.array_equal(a, black) for a in read_samples_file(tmp_path / "black.npz"))
    monkeypatch.setenv("GENMETRICS_MAX_SAMPLES_BYTES", str(black.nbytes))  # samples fit, samples + targets do not
    with pytest.raises(SamplesFileError, match=r"black.npz: the samples take 393216 bytes uncompressed, over the "
                                               r"limit of 196608 bytes \(GENMETRICS_MAX_SAMPLES_BYTES"):
        read_samples_file(tmp_path / "black.npz")
    with pytest.raises(ValueError, match="over the limit of 196608 bytes.*log fewer or smaller samples"):
        write_samples_file(tmp_path / "again.npz", black, black)
    assert not (tmp_path / "again.npz").exists()
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(SamplesFileError, match="text.npz: not a samples archive"):
        read_samples_file(tmp_path / "text.npz")
