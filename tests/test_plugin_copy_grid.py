"""The copy-detection grid: log_gen_metrics(metrics=["copy"]) logs each flagged sample beside its nearest reference
image, read only from where the caller says the reference images are (reference_images=) and only when the image
read there is the one the statistics file recorded at build (image_sha256); otherwise beside a placeholder
labelled with the image's index (real builds, real sqlite MLflow store, the logged PNG decoded cell by cell).

Issue 19 item 1: paths written in a statistics file are data, never permission. A crafted file (or a fetched
registry entry) naming a folder of the user's private images, or "/", with a shard range and no listing hash,
makes nothing be read from there: the grid shows the samples and the reference indices.

Data: 30 tiny 32 px colour fields written as PNGs (the reference folder), statistics built with features under
the tests' TinyExtractor; samples are fresh fields with exact copies of some references at known places.
"""
import json
import os
import shutil
import zipfile

import h5py
import mlflow
import numpy as np
import pytest
from fixtures_data import make_photo_folder, write_idx
from fixtures_plugin_scoring import TinyExtractor, tiny_images
from mlflow.tracking import MlflowClient
from PIL import Image

from genmetrics import registry
from genmetrics.plugin import log_gen_metrics, spool
from genmetrics.plugin.cli import build_parser
from genmetrics.plugin.cli_deferred import _options
from genmetrics.plugin.copy_grid import fit_cell, pairs_grid, placeholder_cell
from genmetrics.plugin.deferred import score_run
from genmetrics.plugin.samples import log_gen_samples
from genmetrics.plugin.scoring import score_samples
from genmetrics.registry.datasets import SourceUnavailableError, open_reference_images, source_indices
from genmetrics.registry.merge import merge
from genmetrics.stats.messages import GenMetricsWarning

pytestmark = pytest.mark.filterwarnings("ignore:covariance of D")
COPIES = {2: 3, 5: 17, 8: 25, 11: 9}  # sample index -> the reference image it copies
CELL, PAD = 64, 2  # 32 px images are shown enlarged to the smallest cell, with make_grid's padding
NOT_NAMED = "reference images not shown: no reference_images given"


@pytest.fixture(scope="module")
def references():
    return tiny_images(30, seed=1)


@pytest.fixture()
def built(tmp_path, references):
    """(folder, .h5 path): a folder of 30 PNGs and its statistics with features (and image digests)."""
    folder = make_photo_folder(tmp_path / "train", list(references))
    out = tmp_path / "train.h5"
    registry.build(folder, str(out), model=TinyExtractor(), features=True, progress=False)
    return folder, str(out)


def _samples(references):
    """12 uint8 NHWC samples: fresh colour fields, with exact copies of references at COPIES' places."""
    samples = tiny_images(12, seed=50)
    for i, j in COPIES.items():
        samples[i] = references[j]
    return samples


def _enlarged(image):
    return np.repeat(np.repeat(image, CELL // image.shape[0], axis=0), CELL // image.shape[1], axis=1)


def _cell(grid, row, col):
    top, left = PAD + row * (CELL + PAD), PAD + col * (CELL + PAD)
    return grid[top:top + CELL, left:left + CELL]


def _assert_pairs(grid, pairs):
    """`grid` shows exactly `pairs` [(sample image, reference image or placeholder label), ...], one per row."""
    assert grid.shape == (PAD + len(pairs) * (CELL + PAD), PAD + 2 * (CELL + PAD), 3)
    for row, (sample, reference) in enumerate(pairs):
        np.testing.assert_array_equal(_cell(grid, row, 0), _enlarged(sample))
        shown = placeholder_cell(reference, CELL) if isinstance(reference, str) else _enlarged(reference)
        np.testing.assert_array_equal(_cell(grid, row, 1), shown)


def _copies(samples, references, rows):
    return [(samples[i], references[COPIES[i]]) for i in rows]


def _indexed(samples, rows):
    """The pairs shown when no reference image may be read: each sample beside the index of its reference."""
    return [(samples[i], f"#{COPIES[i]}") for i in rows]


def _order(tags):
    return [int(i) for i in tags["gen/copy.indices"].split(",")]


def _crafted(path, out, source_images):
    """A copy of statistics file `path` whose attributes claim its images are at `source_images` (a shard range,
    no listing hash): what a stranger's file or a fetched entry can say."""
    shutil.copy(path, out)
    with h5py.File(out, "r+") as f:
        f.attrs["source_images"] = source_images
        del f.attrs["source_listing_sha256"]
        f.attrs["shard_range"] = "0:30"
    return str(out)


def _private(tmp_path, references):
    """A folder of the user's private images, visibly unlike the references (inverted), same names."""
    private = 255 - references
    return make_photo_folder(tmp_path / "private", list(private)), private


def _assert_none_shown(grid, rows, images):
    assert not any(np.array_equal(_cell(grid, row, 1), _enlarged(image)) for row in range(rows) for image in images)


@pytest.fixture()
def sqlite_client(tmp_path, monkeypatch):
    """A local sqlite MLflow store (artifacts under ./mlruns of tmp_path) and a fresh spool."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GENMETRICS_LOG_TRIES", "2")
    monkeypatch.chdir(tmp_path)
    spool.senders.reset()
    yield MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    spool.senders.reset()


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


def test_logged_copy_pairs_show_each_flagged_sample_beside_its_reference(built, references, sqlite_client):
    folder, path = built
    client, samples = sqlite_client, _samples(references)
    run_id = client.create_run(client.create_experiment("copies")).info.run_id
    logged = log_gen_metrics(samples, reference=path, metrics=["copy"], model=TinyExtractor(), run_id=run_id,
                             client=client, step=3, reference_images=folder)
    assert logged == {"gen/copy": pytest.approx(4 / 12)}
    data = client.get_run(run_id).data
    order = _order(data.tags)  # most suspicious first
    assert sorted(order) == sorted(COPIES)
    assert data.tags["gen/copy.pairs"] == "; ".join(f"sample {i} ~ reference {COPIES[i]:04d}.png (score 0.000)"
                                                    for i in order)
    assert "gen/skipped.copy_pairs" not in data.tags
    (grid,) = _logged_pairs(client, run_id)
    _assert_pairs(grid, _copies(samples, references, order))

    no_grid = client.create_run(client.get_experiment_by_name("copies").experiment_id).info.run_id
    log_gen_metrics(samples, reference=path, metrics=["copy"], model=TinyExtractor(), run_id=no_grid, client=client,
                    log_grid=False, reference_images=folder)
    assert _logged_pairs(client, no_grid) == [] and "gen/copy.pairs" not in client.get_run(no_grid).data.tags


def test_without_reference_images_the_grid_shows_each_sample_with_the_reference_index(built, references,
                                                                                       sqlite_client):
    """Nothing names where the reference images are: none is read, and the grid still says which is which."""
    _, path = built
    client, samples = sqlite_client, _samples(references)
    run_id = client.create_run(client.create_experiment("indexed")).info.run_id
    log_gen_metrics(samples, reference=path, metrics=["copy"], model=TinyExtractor(), run_id=run_id, client=client)
    tags = client.get_run(run_id).data.tags
    order = _order(tags)
    (grid,) = _logged_pairs(client, run_id)
    _assert_pairs(grid, _indexed(samples, order))
    lines = tags["gen/copy.pairs"].split("; ")
    assert lines[:-1] == [f"sample {i} ~ reference #{COPIES[i]} (score 0.000)" for i in order]
    assert lines[-1].startswith(NOT_NAMED) and "gen/skipped.copy_pairs" not in tags


# ---------------------------------------------------------------- issue 19 item 1: paths in a file are data


def test_a_crafted_file_naming_private_images_never_shows_them(built, references, tmp_path, sqlite_client):
    """Before: the grid read the images of the folder the file's attributes named and logged them to MLflow."""
    folder, path = built
    private_folder, private = _private(tmp_path, references)
    crafted = _crafted(path, tmp_path / "crafted.h5", private_folder)
    client, samples = sqlite_client, _samples(references)
    run_id = client.create_run(client.create_experiment("crafted")).info.run_id
    log_gen_metrics(samples, reference=crafted, metrics=["copy"], model=TinyExtractor(), run_id=run_id, client=client)
    data = client.get_run(run_id).data
    order = _order(data.tags)
    (grid,) = _logged_pairs(client, run_id)
    _assert_none_shown(grid, len(order), private)
    _assert_pairs(grid, _indexed(samples, order))
    assert private_folder not in json.dumps([data.tags, data.params])

    root = _crafted(path, tmp_path / "root.h5", "/")  # before: a walk of the whole filesystem
    result = score_samples(samples, reference=root, metrics=["copy"], model=TinyExtractor(), copy_pairs=True)
    _assert_pairs(result.copy_pairs, _indexed(samples, _order(result.tags)))

    # the caller naming the right folder: the file's claims play no part, each image is checked by its digest
    named = score_samples(samples, reference=crafted, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                          reference_images=folder)
    _assert_pairs(named.copy_pairs, _copies(samples, references, _order(named.tags)))
    with pytest.warns(GenMetricsWarning, match="not the image recorded at build"):  # the private folder named
        wrong = score_samples(samples, reference=crafted, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                              reference_images=private_folder)
    _assert_pairs(wrong.copy_pairs, _indexed(samples, _order(wrong.tags)))


def test_a_fetched_registry_entry_naming_private_images_never_shows_them(built, references, tmp_path, sqlite_client,
                                                                         http_server, monkeypatch):
    _, path = built
    private_folder, private = _private(tmp_path, references)
    with open(_crafted(path, tmp_path / "served.h5", private_folder), "rb") as f:
        http_server.files["/stats/toy.h5"] = f.read()
    manifest = tmp_path / "team.yaml"
    manifest.write_text(json.dumps({"format_version": 1, "entries": [
        {"name": "toy", "split": "train", "resolution": 32, "mode": "clean", "version": 1, "sha256": None,
         "sources": [{"url": http_server.url + "/stats/toy.h5", "format": "h5"}]}]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(manifest))
    client, samples = sqlite_client, _samples(references)
    run_id = client.create_run(client.create_experiment("fetched")).info.run_id
    log_gen_metrics(samples, reference="toy-train-32", metrics=["copy"], model=TinyExtractor(), run_id=run_id,
                    client=client)
    data = client.get_run(run_id).data
    (grid,) = _logged_pairs(client, run_id)
    _assert_none_shown(grid, len(COPIES), private)
    _assert_pairs(grid, _indexed(samples, _order(data.tags)))
    assert data.tags["gen/copy.pairs"].split("; ")[-1].startswith(NOT_NAMED)


def test_a_swapped_or_escaping_reference_image_is_refused_for_its_pair(built, references, tmp_path):
    """The named folder: an image replaced by another under the same name, and one replaced by a symlink leading
    out of the folder (to a file with the very bytes recorded): neither is shown, the other pairs are."""
    folder, path = built
    samples = _samples(references)
    archive = tmp_path / "train.zip"  # the same files in a zip: the same file digests
    with zipfile.ZipFile(archive, "w") as z:
        for name in sorted(os.listdir(folder)):
            z.write(os.path.join(folder, name), name)
    zipped = score_samples(samples, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                           reference_images=str(archive))
    _assert_pairs(zipped.copy_pairs, _copies(samples, references, _order(zipped.tags)))

    Image.fromarray(references[4]).save(os.path.join(folder, "0017.png"))  # swapped
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(os.path.join(folder, "0025.png"), outside / "0025.png")
    os.symlink(outside / "0025.png", os.path.join(folder, "0025.png"))
    with pytest.warns(GenMetricsWarning, match="copy-pairs grid: reference images not shown"):
        result = score_samples(samples, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                               reference_images=folder)
    order = _order(result.tags)
    expected = {2: references[3], 5: "#17", 8: "#25", 11: references[9]}
    _assert_pairs(result.copy_pairs, [(samples[i], expected[i]) for i in order])
    lines = result.tags["gen/copy.pairs"].split("; ")
    assert lines[order.index(5)] == "sample 5 ~ reference #17 (score 0.000): not shown, 0017.png is not the image " \
                                    "recorded at build (its sha256 differs)"
    assert lines[order.index(8)] == (f"sample 8 ~ reference #25 (score 0.000): not shown, 0025.png cannot be read: "
                                     f"{folder}/0025.png leads outside {folder} (to {outside}/0025.png), so it is not "
                                     f"read")
    assert lines[order.index(2)] == "sample 2 ~ reference 0003.png (score 0.000)" and len(lines) == 4


def test_files_without_image_digests_show_the_index_even_with_reference_images(built, references, tmp_path):
    """Files written before the digests were recorded (here: the dataset removed) cannot vouch for any image."""
    folder, path = built
    with h5py.File(path, "r+") as f:
        del f["image_sha256"]
    samples = _samples(references)
    with pytest.warns(GenMetricsWarning, match="records no image digests"):
        result = score_samples(samples, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                               reference_images=folder)
    _assert_pairs(result.copy_pairs, _indexed(samples, _order(result.tags)))
    assert "records no image digests" in result.tags["gen/copy.pairs"].split("; ")[-1]


def test_a_missing_location_is_named_and_an_added_image_changes_nothing(built, references, tmp_path):
    folder, path = built
    samples = _samples(references)
    gone = str(tmp_path / "gone")
    with pytest.warns(GenMetricsWarning, match=r"reference_images .*gone cannot be opened.*does not exist"):
        result = score_samples(samples, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                               reference_images=gone)
    _assert_pairs(result.copy_pairs, _indexed(samples, _order(result.tags)))
    assert "gen/skipped.copy_pairs" not in result.tags
    Image.fromarray(references[0]).save(os.path.join(folder, "extra.png"))  # sorts last: indices unchanged
    result = score_samples(samples, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                           reference_images=folder)
    _assert_pairs(result.copy_pairs, _copies(samples, references, _order(result.tags)))


def test_deferred_scoring_takes_reference_images(built, references, sqlite_client):
    """score_run / genmetrics score --reference-images hand the location to the grid."""
    folder, path = built
    client, samples = sqlite_client, _samples(references)
    run_id = client.create_run(client.create_experiment("deferred")).info.run_id
    log_gen_samples(samples, step=2, run_id=run_id, client=client)
    assert score_run(run_id, path, metrics=["copy"], client=client, model=TinyExtractor(),
                     reference_images=folder) == [2]
    (grid,) = _logged_pairs(client, run_id)
    _assert_pairs(grid, _copies(samples, references, _order(client.get_run(run_id).data.tags)))
    args = build_parser().parse_args(["score", run_id, "--reference", path, "--reference-images", folder])
    assert _options(args)["reference_images"] == folder


def test_which_samples_are_shown(built, references, tmp_path):
    """Folders and lists of batches are read again by index; from a generator only the kept preview samples."""
    folder, path = built
    samples = _samples(references)
    many = np.concatenate([tiny_images(66, seed=7), samples[[2, 5]]])  # copies at 66 and 67, beyond the preview
    sample_folder = make_photo_folder(tmp_path / "samples", list(samples))
    for given in (sample_folder, [samples[:6], samples[6:]]):
        result = score_samples(given, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                               reference_images=folder)
        order = _order(result.tags)
        assert sorted(order) == sorted(COPIES)
        _assert_pairs(result.copy_pairs, _copies(samples, references, order))
    generator = (many[i:i + 10] for i in range(0, len(many), 10))
    with pytest.warns(GenMetricsWarning, match="no flagged sample is among those available"):
        result = score_samples(generator, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                               reference_images=folder)
    assert sorted(result.tags["gen/copy.indices"].split(",")) == ["66", "67"] and result.copy_pairs is None
    array = score_samples(many, reference=path, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                          reference_images=folder)
    order = _order(array.tags)
    assert sorted(order) == [66, 67]  # the array is read again by index: copies beyond the preview are shown
    _assert_pairs(array.copy_pairs, [(many[i], references[{66: 3, 67: 17}[i]]) for i in order])


def test_shard_rows_map_to_their_source_images(built, references, tmp_path):
    """A shard's feature rows start at its shard_range; a merge of all shards is in source order again and keeps
    the image digests."""
    folder, _ = built
    shards = [str(tmp_path / f"s{i}.h5") for i in range(2)]
    for i, out in enumerate(shards):
        registry.build(folder, out, model=TinyExtractor(), features=True, shard=(i, 2), progress=False)
    second = registry.load(shards[1])
    assert second.meta["source_images"] == folder and "source_root" not in second.meta
    assert source_indices(second.meta, [0, 14]).tolist() == [15, 29]
    samples = _samples(references)  # copies of references 17 and 25 are in the second shard
    result = score_samples(samples, reference=second, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                           reference_images=folder)
    order = _order(result.tags)
    assert sorted(order[:2]) == [5, 8]  # exact copies first; the copies of first-shard images are not copies here
    _assert_pairs(result.copy_pairs[:PAD + 2 * (CELL + PAD)], _copies(samples, references, order[:2]))
    merged = merge(shards, str(tmp_path / "merged.h5"))
    assert merged.meta["shard_range"] == "0:30" and source_indices(merged.meta, [3]).tolist() == [3]
    np.testing.assert_array_equal(merged.image_sha256, registry.load(built[1]).image_sha256)
    result = score_samples(samples, reference=merged, metrics=["copy"], model=TinyExtractor(), copy_pairs=True,
                           reference_images=folder)
    _assert_pairs(result.copy_pairs, _copies(samples, references, _order(result.tags)))


def test_what_a_file_says_about_its_dataset_opens_nothing_by_itself(tmp_path):
    """The dataset kind and split of a file only say how to read the caller's root: LSUN (torchvision would
    unpickle ./_cache_<root>), unknown names and splits that are not plain names are refused."""
    lsun = tmp_path / "lsun-root"
    with pytest.raises(SourceUnavailableError, match="unpickles a '_cache_\\*' file"):
        open_reference_images(str(lsun), {"source_images": "lsun_bedroom", "source_root": "/x", "split": "train"})
    assert not lsun.exists() and not any(name.startswith("_cache_") for name in os.listdir("."))
    with pytest.raises(SourceUnavailableError, match="not a plain name"):
        open_reference_images(str(tmp_path), {"source_images": "imagenet", "source_root": "/x", "split": "../.."})
    with pytest.raises(SourceUnavailableError, match="unknown standard dataset"):
        open_reference_images(str(tmp_path), {"source_images": "/home", "source_root": "/"})


def test_a_standard_dataset_is_read_from_the_root_the_caller_names(tmp_path, monkeypatch):
    """MNIST (native idx files, grayscale read as RGB) built with a relative root, scored from another folder with
    the root named; the file's recorded root is not used."""
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
    shutil.move(tmp_path / "data", tmp_path / "moved")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    gray = np.repeat(digits[..., None], 3, axis=-1)
    samples = np.concatenate([tiny_images(6, seed=60, size=28), gray[[4, 11]]])  # copies at 6 and 7
    result = score_samples(samples, reference=str(tmp_path / "mnist-test.h5"), metrics=["copy"],
                           model=TinyExtractor(), copy_pairs=True, reference_images=str(tmp_path / "moved"))
    copied = {6: 4, 7: 11}  # sample index -> digit index in the test split
    order = _order(result.tags)
    assert sorted(order) == [6, 7]
    assert result.tags["gen/copy.pairs"].startswith(f"sample {order[0]} ~ reference #{copied[order[0]]} (score")
    assert "not shown" not in result.tags["gen/copy.pairs"]
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
    labelled = pairs_grid([(small, "#1281166")])  # a placeholder takes the cell of the shown images
    cell = labelled[PAD:PAD + 64, 2 * PAD + 64:2 * PAD + 128]
    np.testing.assert_array_equal(cell, placeholder_cell("#1281166", 64))
    assert (cell == 200).mean() > 0.8 and (cell < 100).any()  # grey, with the label written on it
