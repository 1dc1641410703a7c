"""Samples are decoded once per call, at the door (issue 20 item 10): scoring, the sample grid, the copy-pairs grid
and the spool consume one stream (genmetrics.plugin.sample_input.SampleBatches). Counted here on real inputs: how
often an iterable is iterated, how often a sampler is called, how often each file of a folder is opened (Python's
audit hook "open", which PIL's and our own file reads raise), with the copy-pairs grid and with blocking=False.

Also sFID through scoring (issue 21): the accumulator takes the Inception's ``spatial`` layer when a requested metric
needs it, and ``gen/sfid`` is the Fréchet distance of both sides' spatial moments (real offline FID weights).
"""
import math
import os
import sys

import numpy as np
import pytest
from fixtures_data import make_photo_folder
from fixtures_plugin_scoring import TinyExtractor, make_tiny_reference, tiny_images
from mlflow.tracking import MlflowClient

from genmetrics import registry
from genmetrics.plugin import flush, log_gen_metrics, spool
from genmetrics.plugin.scoring import score_samples

pytestmark = [pytest.mark.filterwarnings("ignore:covariance of D"), pytest.mark.usefixtures("no_downloads")]
COPIES = {2: 3, 5: 17, 66: 25, 67: 9}  # sample index -> the reference image it copies (two beyond the preview)
_OPENED = {"folder": None, "counts": {}}


def _count_opens(event, args):
    """Audit hook: count the opens of files inside the watched folder (none watched: nothing counted)."""
    folder = _OPENED["folder"]
    if event == "open" and folder is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if path.startswith(folder):
            _OPENED["counts"][path] = _OPENED["counts"].get(path, 0) + 1


sys.addaudithook(_count_opens)


class CountedBatches:
    """An iterable of image batches (not a list: it cannot be read by index) that counts its iterations."""

    def __init__(self, images, batch):
        self.images, self.batch, self.iterations = images, batch, 0

    def __iter__(self):
        self.iterations += 1
        return (self.images[i:i + self.batch] for i in range(0, len(self.images), self.batch))


class CountedSampler:
    """A sampler callable (``sampler(n)``) drawing the next `n` of fixed images, counting its calls."""

    def __init__(self, images):
        self.images, self.drawn, self.calls = images, 0, 0

    def __call__(self, n):
        self.calls += 1
        batch = self.images[self.drawn:self.drawn + n]
        self.drawn += n
        return batch


@pytest.fixture(scope="module")
def references():
    return tiny_images(30, seed=1)


@pytest.fixture()
def built(tmp_path, references):
    """(folder, .h5 path): 30 reference PNGs and their statistics with features (TinyExtractor)."""
    folder = make_photo_folder(tmp_path / "train", list(references))
    out = tmp_path / "train.h5"
    registry.build(folder, str(out), model=TinyExtractor(), features=True, progress=False)
    return folder, str(out)


@pytest.fixture()
def sqlite_client(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    spool.senders.reset()
    yield MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    spool.senders.reset()


def _samples(references):
    """68 uint8 NHWC samples with exact copies of references at COPIES' places (66 and 67 beyond the 64 kept)."""
    samples = tiny_images(68, seed=50)
    for i, j in COPIES.items():
        samples[i] = references[j]
    return samples


def _log(samples, path, client, metrics=("copy",), **options):
    run_id = client.create_run(client.create_experiment(f"e{len(client.search_experiments())}")).info.run_id
    logged = log_gen_metrics(samples, reference=path, metrics=list(metrics), model=TinyExtractor(),
                             run_id=run_id, client=client, batch_size=10, **options)
    logged = logged.result() if not isinstance(logged, dict) else logged
    flush()
    return logged, client.get_run(run_id).data.tags


def _shown(tags):
    """The sample indices the logged copy-pairs grid shows."""
    return sorted(int(row.split()[1]) for row in tags["gen/copy.pairs"].split("; ") if row.startswith("sample "))


@pytest.mark.parametrize("blocking", [True, False])
def test_an_iterable_and_its_targets_are_iterated_once_per_call(built, references, sqlite_client, blocking):
    folder, path = built
    samples = _samples(references)
    given, targets = CountedBatches(samples, 10), CountedBatches(samples[::-1].copy(), 7)
    logged, tags = _log(given, path, sqlite_client, ("copy", "ssim"), targets=targets, blocking=blocking,
                        reference_images=folder)
    assert (given.iterations, targets.iterations) == (1, 1)
    assert logged["gen/copy"] == pytest.approx(4 / 68) and "gen/ssim" in logged
    # an iterator cannot be read again: only the kept preview samples are shown, unless the batches were drawn
    # and held for background scoring, which the grid then reads without decoding again
    assert _shown(tags) == ([2, 5] if blocking else sorted(COPIES))


class CountedList(list):
    """A list of batches that counts its iterations (it can still be read by index)."""

    iterations = 0

    def __iter__(self):
        self.iterations += 1
        return super().__iter__()


def test_a_list_is_iterated_once_and_read_again_by_index_for_the_grid(built, references, sqlite_client):
    """A list of batches is iterated once; the flagged samples beyond the preview are read from their items."""
    folder, path = built
    samples = _samples(references)
    given = CountedList(samples[i:i + 10] for i in range(0, 68, 10))
    logged, tags = _log(given, path, sqlite_client, reference_images=folder)
    assert given.iterations == 1 and logged["gen/copy"] == pytest.approx(4 / 68)
    assert _shown(tags) == sorted(COPIES)


@pytest.mark.parametrize("blocking", [True, False])
def test_a_sampler_is_called_once_per_batch(built, references, sqlite_client, blocking):
    folder, path = built
    sampler = CountedSampler(_samples(references))
    logged, tags = _log(sampler, path, sqlite_client, num_samples=68, blocking=blocking, reference_images=folder)
    assert sampler.calls == math.ceil(68 / 10) and sampler.drawn == 68
    assert logged["gen/copy"] == pytest.approx(4 / 68)
    assert _shown(tags) == ([2, 5] if blocking else sorted(COPIES))


@pytest.mark.parametrize("blocking", [True, False])
def test_each_file_of_a_folder_is_opened_once(built, references, sqlite_client, tmp_path, blocking):
    """A folder can be read again by index: blocking, only the two flagged files beyond the preview are opened a
    second time (for the grid); with blocking=False every file is opened once (the drawn batches are held)."""
    folder, path = built
    samples = make_photo_folder(tmp_path / "samples", list(_samples(references)))
    _OPENED.update(folder=samples + os.sep, counts={})
    try:
        logged, tags = _log(samples, path, sqlite_client, blocking=blocking, reference_images=folder)
    finally:
        _OPENED["folder"] = None
    again = {os.path.join(samples, f"{i:04d}.png") for i in (66, 67)} if blocking else set()
    assert len(_OPENED["counts"]) == 68
    assert {name: count for name, count in _OPENED["counts"].items() if count != 1} == {name: 2 for name in again}
    assert _shown(tags) == sorted(COPIES)


def test_sfid_is_the_frechet_distance_of_the_spatial_moments(inception):
    """score_samples(metrics=["fid", "sfid"]) against a reference holding spatial moments: sfid equals the
    Fréchet distance of the two sides' spatial moments computed directly with extract_features."""
    from genmetrics.registry.refstats import ReferenceStats
    from genmetrics.stats import GaussianMoments, extract_features, frechet_distance

    real, fake = tiny_images(10, seed=1), tiny_images(8, seed=2, shift=0.3)
    made = extract_features(real, model=inception, layers=["pool3", "spatial"], progress=False)
    reference = ReferenceStats.from_moments(GaussianMoments.from_features(made["pool3"]), meta=dict(
        dataset="tiny", split="train", resolution=32, mode="clean", version=1, feature_extractor="inception-v3-compat",
        feature_layer="pool3", num_samples=10))
    reference.add_layer("spatial", GaussianMoments.from_features(made["spatial"]))
    result = score_samples(fake, reference=reference, metrics=["fid", "sfid"], model=inception, device="cpu")

    spatial = GaussianMoments.from_features(extract_features(fake, model=inception, layers=["spatial"],
                                                             progress=False)["spatial"])
    assert spatial.mean.shape == (2023,)
    expected = frechet_distance(reference.layer("spatial").mu, reference.layer("spatial").sigma, spatial.mean,
                                spatial.cov)
    assert result.metrics["gen/sfid"] == pytest.approx(expected, rel=1e-6)
    assert result.metrics["gen/sfid"] > 0 and set(result.metrics) == {"gen/fid", "gen/sfid"}


def test_sfid_needs_a_reference_with_spatial_moments():
    """Named, sfid against a reference without the spatial layer raises ReferenceStats.layer's error."""
    reference = make_tiny_reference(tiny_images(12, seed=1))
    with pytest.raises(ValueError, match="no moments of layer 'spatial'"):
        score_samples(tiny_images(8, seed=2), reference=reference, metrics=["sfid"], model=TinyExtractor())
    assert np.isfinite(score_samples(tiny_images(8, seed=2), reference=reference, metrics=["fid"],
                                     model=TinyExtractor()).metrics["gen/fid"])
