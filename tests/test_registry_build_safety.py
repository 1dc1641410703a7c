"""Builds that share disks and get interrupted: one writer per output (two real processes), checkpoints that
are resumed only by the build they belong to, and merges that refuse overlapping image ranges.

A small real extractor (4x4 average pooling of the preprocessed image, 48 features) keeps these fast; the
Inception path of the same code is covered by test_registry_build.py."""
import os
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
import torch

from fixtures_data import make_photo_folder
from genmetrics import registry
from genmetrics.registry import ReferenceStats, read_refstats, write_refstats
from genmetrics.registry.checkpoint import BuildLockedError, output_lock
from genmetrics.stats import GaussianMoments, extract_features

pytestmark = pytest.mark.filterwarnings("ignore:covariance of D=:UserWarning")  # few images on purpose

N_IMAGES = 12


class _PoolFeatures(torch.nn.Module):
    feature_extractor = "test-avgpool4"

    def __init__(self, gain=1.0):
        super().__init__()
        self.register_buffer("gain", torch.tensor(float(gain)))

    def forward(self, x):
        return {"pool3": torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1) * self.gain}


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(N_IMAGES, 24, 24, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path, images):
    return make_photo_folder(tmp_path / "imgs", list(images))


def _direct(folder, model=None, mode="clean"):
    return extract_features(folder, model=model or _PoolFeatures(), mode=mode, progress=False)["pool3"].numpy()


def _build(source, out, **kwargs):
    kwargs.setdefault("model", _PoolFeatures())
    return registry.build(source, str(out), checkpoint_every=4, progress=False, features=True, **kwargs)


def _interrupted(source, out, **kwargs):
    """Build until the first checkpoint is written, then stop as a crash would (the checkpoint stays)."""
    def stop(done, total):
        raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        _build(source, out, on_checkpoint=stop, **kwargs)
    assert os.path.isfile(f"{out}.ckpt.npz")


def _assert_is_build_of(stats, features):
    """The file holds exactly these feature rows, in order, and its moments are theirs."""
    x = features.astype(np.float64)
    assert stats.n == len(features)
    np.testing.assert_array_equal(stats.features, features)
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=1e-5, atol=1e-7)


_BUILD_SCRIPT = textwrap.dedent("""
    import os, sys, time, torch
    from genmetrics import registry
    from genmetrics.registry.checkpoint import BuildLockedError

    folder, out, ready, wait_for, delay = sys.argv[1:]

    class Pool(torch.nn.Module):
        feature_extractor = "test-avgpool4"
        def forward(self, x):
            return {"pool3": torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)}

    def on_checkpoint(done, total):  # hold the build (and its lock) until `wait_for` exists, then go slowly
        deadline = time.monotonic() + 120
        while wait_for != "-" and not os.path.exists(wait_for) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(float(delay))

    if ready != "-":
        open(ready, "w").close()
    try:
        registry.build(folder, out, model=Pool(), checkpoint_every=2, features=True, progress=False,
                       on_checkpoint=on_checkpoint)
    except BuildLockedError as error:
        print(error, file=sys.stderr)
        sys.exit(3)
""")


def _start_build(folder, out, ready="-", wait_for="-", delay=0.0):
    return subprocess.Popen([sys.executable, "-c", _BUILD_SCRIPT, folder, str(out), str(ready), str(wait_for),
                             str(delay)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_process_building_the_same_output_fails_clearly(folder, tmp_path):
    """Before: both processes shared the checkpoint and its features file (rows duplicated and missing)."""
    out, ready = tmp_path / "shared.h5", tmp_path / "second-started"
    first = _start_build(folder, out, wait_for=ready, delay=0.5)  # stops at its first checkpoint until then
    deadline = time.monotonic() + 120
    while not os.path.exists(f"{out}.ckpt.npz"):  # the first build is under way (it holds the lock)
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.05)
    second = _start_build(folder, out, ready=ready)
    _, second_err = second.communicate(timeout=120)
    _, first_err = first.communicate(timeout=120)
    assert first.returncode == 0, first_err
    assert second.returncode == 3, second_err
    assert f"{out} is being built by another process" in second_err and ".lock" in second_err
    _assert_is_build_of(registry.load(str(out)), _direct(folder))


def test_two_processes_started_together_leave_a_correct_file(folder, tmp_path):
    out = tmp_path / "together.h5"
    processes = [_start_build(folder, out, delay=0.2) for _ in range(2)]
    results = [(p.wait(timeout=120), p.communicate()[1]) for p in processes]
    assert sorted(code for code, _ in results) in ([0, 0], [0, 3]), results  # one after the other, or refused
    _assert_is_build_of(registry.load(str(out)), _direct(folder))
    assert not [name for name in os.listdir(tmp_path) if ".ckpt" in name or name.endswith(".tmp")]


def test_the_lock_is_released_with_its_holder(tmp_path):
    target = str(tmp_path / "x.h5")
    with output_lock(target):
        with pytest.raises(BuildLockedError, match="x.h5 is being built by another process"):
            with output_lock(target):
                pass
    with output_lock(target):  # free again
        pass


@pytest.mark.parametrize("change", ["mode", "model weights", "chunk size"])
def test_a_checkpoint_of_other_arguments_is_not_resumed(folder, tmp_path, change):
    out = tmp_path / "args.h5"
    _interrupted(folder, out)
    kwargs = {"mode": {"mode": "legacy_pytorch"}, "model weights": {"model": _PoolFeatures(gain=2.0)},
              "chunk size": {}}[change]
    checkpoint_every = 3 if change == "chunk size" else 4
    with pytest.warns(UserWarning, match="was made from other images or arguments.*discarding it"):
        stats = registry.build(folder, str(out), checkpoint_every=checkpoint_every, progress=False, features=True,
                               **{"model": _PoolFeatures(), **kwargs})
    _assert_is_build_of(stats, _direct(folder, model=kwargs.get("model"), mode=kwargs.get("mode", "clean")))


def test_a_checkpoint_of_other_images_is_not_resumed(folder, tmp_path, images):
    """Before: the fingerprint held the folder's name only, so changed files were resumed into wrong numbers."""
    out = tmp_path / "images.h5"
    _interrupted(folder, out)
    make_photo_folder(folder, list(255 - images))  # same names, other pixels
    with pytest.warns(UserWarning, match=r"other images or arguments.*source_listing_sha256"):
        stats = _build(folder, out)
    _assert_is_build_of(stats, _direct(folder))


def test_a_resumed_iterable_must_yield_the_checkpointed_images(images, tmp_path):
    out = tmp_path / "stream.h5"
    batches = lambda x: (torch.from_numpy(x[i:i + 5]) for i in range(0, len(x), 5))  # noqa: E731
    _interrupted(batches(images), out)
    with pytest.raises(ValueError, match="differ from the first 4 images of the interrupted build.*discarded"):
        _build(batches(images[::-1].copy()), out)
    assert not os.path.exists(f"{out}.ckpt.npz")
    _interrupted(batches(images), out)
    # The same images in other batch sizes resume (the digest is per image).
    resumed = _build((torch.from_numpy(images[i:i + 3]) for i in range(0, N_IMAGES, 3)), out)
    _assert_is_build_of(resumed, _direct(torch.from_numpy(images)))


def _shard_file(path, features, index, count, shard_range, total=N_IMAGES, keep_features=True):
    meta = {"dataset": "toy", "split": "train", "resolution": 24, "mode": "clean", "feature_extractor": "test",
            "feature_layer": "pool3", "source": "unit test", "shard": f"{index}/{count}", "shard_range": shard_range,
            "total_images": total, "source_listing_sha256": "0" * 64}
    stats = ReferenceStats.from_moments(GaussianMoments.from_features(features),
                                        features=features if keep_features else None, meta=meta)
    return write_refstats(path, stats)


def test_merge_refuses_overlapping_image_ranges(tmp_path):
    """Before: only repeated shard ids were refused; files claiming overlapping ranges merged silently."""
    x = np.random.default_rng(1).normal(size=(N_IMAGES, 6)).astype(np.float32)
    first = _shard_file(tmp_path / "a.h5", x[:7], 0, 2, "0:7")
    second = _shard_file(tmp_path / "b.h5", x[5:], 1, 2, "5:12")
    with pytest.raises(ValueError, match=r"b.h5 \(images 5:12\) and .*a.h5 \(images up to 7\) overlap"):
        registry.merge([first, second], str(tmp_path / "m.h5"))
    gap = _shard_file(tmp_path / "c.h5", x[8:], 1, 2, "8:12")
    with pytest.raises(ValueError, match="cover 11 of 12 images"):
        registry.merge([first, gap], str(tmp_path / "m.h5"))
    other_total = _shard_file(tmp_path / "d.h5", x[7:], 1, 2, "7:13", total=13)
    with pytest.raises(ValueError, match="total_images differs"):
        registry.merge([first, other_total], str(tmp_path / "m.h5"))
    fine = _shard_file(tmp_path / "e.h5", x[7:], 1, 2, "7:12")
    merged = registry.merge([fine, first], str(tmp_path / "m.h5"))
    assert merged.meta["shard"] == "0/1" and merged.meta["shard_range"] == "0:12"
    np.testing.assert_array_equal(merged.features, x)


def test_partial_merges_keep_their_ranges_and_refuse_overlap_later(tmp_path):
    x = np.random.default_rng(2).normal(size=(N_IMAGES, 6)).astype(np.float32)
    parts = [_shard_file(tmp_path / f"p{i}.h5", x[3 * i:3 * i + 3], i, 4, f"{3 * i}:{3 * i + 3}") for i in range(4)]
    half = registry.merge([parts[0], parts[2]], str(tmp_path / "half.h5"))
    assert half.meta["shard"] == "0/4,2/4" and half.meta["shard_range"] == "0:3,6:9"
    with pytest.raises(ValueError, match="overlap"):
        registry.merge([half.path, parts[2]], str(tmp_path / "again.h5"))
    whole = registry.merge([half.path, parts[1], parts[3]], str(tmp_path / "whole.h5"))
    assert whole.meta["shard"] == "0/1" and whole.meta["shard_range"] == "0:12"
    np.testing.assert_allclose(whole.sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12, atol=1e-14)


def test_merge_is_exact_for_features_with_a_large_mean(tmp_path):
    """Shards rebuilt from (n, mu, sigma) about their own means: no cancellation at mean 1e8.

    (Merging the files' unshifted sum / outer_sum loses every digit of sigma here.) What remains is the
    rounding of the stored mu (~7e-9 at 1e8), which moves the merged sigma by ~1e-9.
    """
    x = np.random.default_rng(3).normal(size=(N_IMAGES * 50, 6)) + 1e8
    half = len(x) // 2
    first = _shard_file(tmp_path / "a.h5", x[:half], 0, 2, f"0:{half}", total=len(x), keep_features=False)
    second = _shard_file(tmp_path / "b.h5", x[half:], 1, 2, f"{half}:{len(x)}", total=len(x), keep_features=False)
    merged = read_refstats(registry.merge([first, second], str(tmp_path / "m.h5")).path)
    expected = np.cov(x, rowvar=False)
    assert np.abs(merged.sigma - expected).max() < 1e-8 * np.abs(expected).max()


def test_an_iterable_in_another_value_range_is_normalised_once(tmp_path):
    """Before: the chunking loop mapped [-1, 1] to [0, 1] and the accumulator mapped it again (mu off by 0.5)."""
    x = torch.from_numpy(np.random.default_rng(4).uniform(-1, 1, size=(8, 3, 24, 24)).astype(np.float32))
    from_array = registry.build(x, str(tmp_path / "a.h5"), model=_PoolFeatures(), value_range=(-1, 1),
                                progress=False, checkpoint_every=4)
    from_batches = registry.build((x[i:i + 3] for i in range(0, 8, 3)), str(tmp_path / "b.h5"), model=_PoolFeatures(),
                                  value_range=(-1, 1), progress=False, checkpoint_every=4)
    np.testing.assert_array_equal(from_batches.mu, from_array.mu)


# ---------------------------------------------------------------- per-image digests (issue 19, item 1)


def _file_digests(folder):
    """sha256 of each image file's bytes, in the build's (sorted) order, as (n, 32) uint8."""
    import hashlib

    rows = []
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as f:
            rows.append(hashlib.sha256(f.read()).digest())
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), 32)


def test_a_build_records_the_digest_of_each_feature_rows_image(folder, images, tmp_path):
    """Folders and zips: the file's bytes, one row per feature row, through interruptions, shards and merges; a
    checkpoint whose digests are missing is not resumed; arrays and builds without features record none."""
    expected = _file_digests(folder)
    np.testing.assert_array_equal(read_refstats(_build(folder, tmp_path / "full.h5").path).image_sha256, expected)
    archive = tmp_path / "imgs.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), name)
    np.testing.assert_array_equal(_build(str(archive), tmp_path / "zip.h5").image_sha256, expected)

    out = tmp_path / "resumed.h5"
    _interrupted(folder, out)
    np.testing.assert_array_equal(_build(folder, out).image_sha256, expected)
    _interrupted(folder, out)
    os.remove(f"{out}.ckpt.sha256")  # e.g. a checkpoint left by a version that recorded no digests
    with pytest.warns(UserWarning, match=r"resumed.h5.ckpt.sha256 is missing or short; starting the build over"):
        np.testing.assert_array_equal(_build(folder, out).image_sha256, expected)
    assert not [name for name in os.listdir(tmp_path) if ".ckpt" in name]

    shards = [str(_build(folder, tmp_path / f"s{i}.h5", shard=(i, 2)).path) for i in range(2)]
    np.testing.assert_array_equal(read_refstats(shards[1]).image_sha256, expected[N_IMAGES // 2:])
    np.testing.assert_array_equal(registry.merge(shards, str(tmp_path / "m.h5")).image_sha256, expected)

    assert _build(images, tmp_path / "array.h5").image_sha256 is None
    assert registry.build(folder, str(tmp_path / "plain.h5"), model=_PoolFeatures(), progress=False).image_sha256 \
        is None
