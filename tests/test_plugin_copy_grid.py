"""The copy-detection grid: log_gen_metrics(metrics=["copy"]) logs each flagged sample beside its nearest reference
image, read again from the folder the reference file was built from (real build, real sqlite MLflow store, the
logged PNG decoded cell by cell); without the reference images scoring still succeeds and a warning says why.

Data: 30 tiny 32 px colour fields written as PNGs (the reference folder), statistics built with features under
the tests' TinyExtractor; samples are fresh fields with exact copies of some references at known places.
"""
import os
import shutil

import mlflow
import numpy as np
import pytest
from fixtures_data import make_photo_folder, write_idx
from fixtures_plugin_scoring import TinyExtractor, tiny_images
from mlflow.tracking import MlflowClient
from PIL import Image

from genmetrics import registry
from genmetrics.plugin import log_gen_metrics, spool
from genmetrics.plugin.copy_grid import fit_cell, pairs_grid
from genmetrics.plugin.scoring import score_samples
from genmetrics.registry.datasets import SourceUnavailableError, reopen_source, source_indices
from genmetrics.registry.merge import merge
from genmetrics.stats.messages import GenMetricsWarning

pytestmark = pytest.mark.filterwarnings("ignore:covariance of D")
COPIES = {2: 3, 5: 17, 8: 25, 11: 9}  # sample index -> the reference image it copies
CELL, PAD = 64, 2  # 32 px images are shown enlarged to the smallest cell, with make_grid's padding


@pytest.fixture(scope="module")
def reference_images():
    return tiny_images(30, seed=1)


@pytest.fixture()
def built(tmp_path, reference_images):
    """(folder, .h5 path): a folder of 30 PNGs and its statistics with features."""
    folder = make_photo_folder(tmp_path / "train", list(reference_images))
    out = tmp_path / "train.h5"
    registry.build(folder, str(out), model=TinyExtractor(), features=True, progress=False)
    return folder, str(out)


def _samples(reference_images):
    """12 uint8 NHWC samples: fresh colour fields, with exact copies of references at COPIES' places."""
    samples = tiny_images(12, seed=50)
    for i, j in COPIES.items():
        samples[i] = reference_images[j]
    return samples


def _enlarged(image):
    return np.repeat(np.repeat(image, CELL // image.shape[0], axis=0), CELL // image.shape[1], axis=1)


def _cell(grid, row, col):
    top, left = PAD + row * (CELL + PAD), PAD + col * (CELL + PAD)
    return grid[top:top + CELL, left:left + CELL]


def _assert_pairs(grid, pairs):
    """`grid` shows exactly `pairs` [(sample image, reference image), ...], one per row."""
    assert grid.shape == (PAD + len(pairs) * (CELL + PAD), PAD + 2 * (CELL + PAD), 3)
    for row, (sample, reference) in enumerate(pairs):
        np.testing.assert_array_equal(_cell(grid, row, 0), _enlarged(sample))
        np.testing.assert_array_equal(_cell(grid, row, 1), _enlarged(reference))


def _copies(samples, reference_images, rows):
    return [(samples[i], reference_images[COPIES[i]]) for i in rows]


@pytest.fixture()
def sqlite_client(tmp_path, monkeypatch):
    """A local sqlite MLflow store (artifacts under ./mlruns of tmp_path) and a fresh spool."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_LOG_TRIES", "2")
    monkeypatch.chdir(tmp_path)
    spool._senders.clear()
    yield MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    spool._senders.clear()


def _logged_pairs(client, run_id):
    """The decoded copy_pairs PNGs logged to the run (uncompressed originals)."""
    names = [a.path for a in client.list_artifacts(run_id, "images")
             if "copy_pairs" in a.path and a.path.endswith(".png") and "+compressed" not in a.path]
    images = []
    for name in names:
        with Image.open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name,
                                                            tracking_uri=client.tracking_uri)) as png:
            images.append(np.asarray(png.convert("RGB")))
    return images


def test_logged_copy_pairs_show_each_flagged_sample_beside_its_reference(built, reference_images, sqlite_client):
    _, path = built
    client, samples = sqlite_client, _samples(reference_images)
    run_id = client.create_run(client.create_experiment("copies")).info.run_id
    logged = log_gen_metrics(samples, reference=path, metrics=["copy"], model=TinyExtractor(), run_id=run_id,
                             client=client, step=3)
    assert logged == {"gen/copy": pytest.approx(4 / 12)}
    data = client.get_run(run_id).data
    order = [int(i) for i in data.tags["gen/copy.indices"].split(",")]  # most suspicious first
    assert sorted(order) == sorted(COPIES)
    assert data.tags["gen/copy.pairs"] == "; ".join(f"sample {i} ~ reference {COPIES[i]:04d}.png (score 0.000)"
                                                    for i in order)
    assert "gen/skipped.copy_pairs" not in data.tags
    (grid,) = _logged_pairs(client, run_id)
    _assert_pairs(grid, _copies(samples, reference_images, order))

    no_grid = client.create_run(client.get_experiment_by_name("copies").experiment_id).info.run_id
    log_gen_metrics(samples, reference=path, metrics=["copy"], model=TinyExtractor(), run_id=no_grid, client=client,
                    log_grid=False)
    assert _logged_pairs(client, no_grid) == [] and "gen/copy.pairs" not in client.get_run(no_grid).data.tags


def test_moved_or_changed_reference_images_skip_the_grid_with_a_reason(built, reference_images, tmp_path,
                                                                       sqlite_client):
    folder, path = built
    client, samples = sqlite_client, _samples(reference_images)
    experiment = client.create_experiment("moved")
    shutil.move(folder, tmp_path / "elsewhere")
    run_id = client.create_run(experiment).info.run_id
    with pytest.warns(GenMetricsWarning, match="no copy-pairs grid.*cannot be opened.*does not exist"):
        logged = log_gen_metrics(samples, reference=path, metrics=["copy"], model=TinyExtractor(), run_id=run_id,
                                 client=client)
    assert logged == {"gen/copy": pytest.approx(4 / 12)}
    tags = client.get_run(run_id).data.tags
    assert folder in tags["gen/skipped.copy_pairs"] and sorted(tags["gen/copy.indices"].split(",")) == \
        sorted(str(i) for i in COPIES)
    assert _logged_pairs(client, run_id) == []

    shutil.move(tmp_path / "elsewhere", folder)  # back, but with one image more: the listing differs
    Image.fromarray(reference_images[0]).save(os.path.join(folder, "extra.png"))
    with pytest.warns(GenMetricsWarning, match="changed since the statistics were built"):
        result = score_samples(samples, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True)
    assert result.copy_pairs is None and "source_listing_sha256" in result.tags["gen/skipped.copy_pairs"]


def test_which_samples_are_shown(built, reference_images, tmp_path):
    """Folders and lists of batches are read again by index; from a generator only the kept preview samples."""
    _, path = built
    samples = _samples(reference_images)
    many = np.concatenate([tiny_images(66, seed=7), samples[[2, 5]]])  # copies at 66 and 67, beyond the preview
    folder = make_photo_folder(tmp_path / "samples", list(samples))
    for given in (folder, [samples[:6], samples[6:]]):
        result = score_samples(given, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True)
        order = [int(i) for i in result.tags["gen/copy.indices"].split(",")]
        assert sorted(order) == sorted(COPIES)
        _assert_pairs(result.copy_pairs, _copies(samples, reference_images, order))
    generator = (many[i:i + 10] for i in range(0, len(many), 10))
    with pytest.warns(GenMetricsWarning, match="no flagged sample is among those available"):
        result = score_samples(generator, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True)
    assert sorted(result.tags["gen/copy.indices"].split(",")) == ["66", "67"] and result.copy_pairs is None
    array = score_samples(many, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True)
    order = [int(i) for i in array.tags["gen/copy.indices"].split(",")]
    assert sorted(order) == [66, 67]  # the array is read again by index: copies beyond the preview are shown
    _assert_pairs(array.copy_pairs, [(many[i], reference_images[{66: 3, 67: 17}[i]]) for i in order])


def test_shard_rows_map_to_their_source_images(built, reference_images, tmp_path):
    """A shard's feature rows start at its shard_range; a merge of all shards is in source order again."""
    folder, _ = built
    shards = [str(tmp_path / f"s{i}.h5") for i in range(2)]
    for i, out in enumerate(shards):
        registry.build(folder, out, model=TinyExtractor(), features=True, shard=(i, 2), progress=False)
    second = registry.load(shards[1])
    assert second.meta["source_images"] == folder and "source_root" not in second.meta
    assert source_indices(second.meta, [0, 14]).tolist() == [15, 29]
    samples = _samples(reference_images)  # copies of references 17 and 25 are in the second shard
    result = score_samples(samples, reference=second, metrics=["copy"], model=TinyExtractor(), copy_pairs=True)
    order = [int(i) for i in result.tags["gen/copy.indices"].split(",")]
    assert sorted(order[:2]) == [5, 8]  # exact copies first; the copies of first-shard images are not copies here
    _assert_pairs(result.copy_pairs[:PAD + 2 * (CELL + PAD)], _copies(samples, reference_images, order[:2]))
    merged = merge(shards, str(tmp_path / "merged.h5"))
    assert merged.meta["shard_range"] == "0:30" and source_indices(merged.meta, [3]).tolist() == [3]
    assert len(reopen_source(merged.meta)) == 30
    with pytest.raises(SourceUnavailableError, match="no source_images"):
        reopen_source({"source": "in-memory array"})
    lsun = tmp_path / "lsun-root"  # LSUN is never opened for a file: torchvision would unpickle ./_cache_<root>
    with pytest.raises(SourceUnavailableError, match="unpickles a '_cache_\\*' file"):
        reopen_source({"source_images": "lsun_bedroom", "source_root": str(lsun), "split": "train"})
    assert not lsun.exists() and not any(name.startswith("_cache_") for name in os.listdir("."))


def test_a_standard_dataset_is_found_again_from_its_recorded_root(tmp_path, monkeypatch):
    """MNIST (native idx files, grayscale read as RGB) built with a relative root, scored from another folder."""
    digits = tiny_images(20, seed=3, size=28)[..., 0]
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, part in (("train", digits[:2]), ("t10k", digits)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", part)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(len(part)) % 10)
    monkeypatch.chdir(tmp_path)
    built = registry.build("mnist", "mnist-test.h5", root="data", split="test", model=TinyExtractor(), features=True,
                           progress=False)
    assert (built.meta["source_images"], built.meta["source_root"]) == ("mnist", str(tmp_path / "data"))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    gray = np.repeat(digits[..., None], 3, axis=-1)
    samples = np.concatenate([tiny_images(6, seed=60, size=28), gray[[4, 11]]])  # copies at 6 and 7
    result = score_samples(samples, reference=str(tmp_path / "mnist-test.h5"), metrics=["copy"],
                           model=TinyExtractor(), copy_pairs=True)
    copied = {6: 4, 7: 11}  # sample index -> digit index in the test split
    order = [int(i) for i in result.tags["gen/copy.indices"].split(",")]
    assert sorted(order) == [6, 7]
    assert result.tags["gen/copy.pairs"].startswith(f"sample {order[0]} ~ reference #{copied[order[0]]} (score")
    rows = [(samples[i], gray[copied[i]]) for i in order]
    grid = result.copy_pairs
    assert grid.shape == (PAD + 2 * (CELL + PAD), PAD + 2 * (CELL + PAD), 3)  # 28 px fitted into a 64 px cell
    for row, (sample, reference) in enumerate(rows):
        np.testing.assert_array_equal(_cell(grid, row, 0), fit_cell(sample, CELL))
        np.testing.assert_array_equal(_cell(grid, row, 1), fit_cell(reference, CELL))


def test_pairs_grid_fits_images_of_other_sizes_into_one_cell():
    small, large = np.full((32, 16, 3), 10, np.uint8), np.full((300, 300, 3), 200, np.uint8)
    grid = pairs_grid([(small, large)] * 2)
    assert grid.shape == (PAD + 2 * (256 + PAD), PAD + 2 * (256 + PAD), 3)
    first = grid[PAD:PAD + 256, PAD:PAD + 256]
    assert (first[:, 64:192] == 10).all() and (first[:, :64] == 255).all()  # aspect kept, centred on white
    assert (grid[PAD:PAD + 256, 2 * PAD + 256:2 * PAD + 512] == 200).all()
