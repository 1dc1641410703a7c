"""ADM evaluator reference batches: images read batch by batch from the .npz, stored moments kept, further layers."""
import os
import subprocess
import sys

import numpy as np
import pytest

from genmetrics.registry import import_npz, read_refstats
from genmetrics.registry.refstats import ReferenceStats, write_refstats
from genmetrics.stats.images.image_input import count_images, iter_image_batches


def _psd(rng, dim):
    a = rng.normal(size=(dim, dim + 4))
    return a @ a.T / (dim + 4)


@pytest.fixture(scope="module")
def images(photos):
    """Six real photographs cropped to 40x48 (uint8 NHWC), as a reference batch stores them."""
    return np.stack([p[:40, :48] for p in photos[:6]])


@pytest.fixture(scope="module")
def adm_batch(images, tmp_path_factory):
    """A small reference batch in the evaluator's layout: arr_0, arr_1 (labels), mu, sigma, mu_s, sigma_s."""
    rng = np.random.default_rng(0)
    path = str(tmp_path_factory.mktemp("adm") / "VIRTUAL_tiny_labeled.npz")
    np.savez(path, images, np.arange(len(images)), mu=rng.normal(size=2048), sigma=_psd(rng, 2048),
             mu_s=rng.normal(size=2023), sigma_s=_psd(rng, 2023))
    return path


def test_npz_images_are_read_in_batches_equal_to_the_array(images, tmp_path):
    for save in (np.savez, np.savez_compressed):
        path = str(tmp_path / f"{save.__name__}.npz")
        save(path, images)
        batches = list(iter_image_batches(path, batch_size=4))
        assert [b.shape[0] for b in batches] == [4, 2] and count_images(path) == 6
        got = np.concatenate([b.permute(0, 2, 3, 1).numpy() for b in batches])
        np.testing.assert_array_equal(got, images)


@pytest.mark.parametrize("damage, words", [
    ("truncated", "truncated"), ("float", "expected uint8 images"), ("no_arr_0", "not 'arr_0'"),
    ("three_dims", "expected uint8 images")])
def test_bad_npz_images_are_refused_with_the_reason(images, tmp_path, damage, words):
    path = str(tmp_path / "bad.npz")
    if damage == "truncated":
        np.savez(path, images)
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) // 2])
    elif damage == "float":
        np.savez(path, images.astype(np.float32))
    elif damage == "no_arr_0":
        np.savez(path, mu=np.zeros(3))
    else:
        np.savez(path, images[0])
    with pytest.raises(ValueError, match=words):
        list(iter_image_batches(path))


def test_an_adm_batch_imports_with_its_moments_layers_and_features(adm_batch, images, inception, fid_weights_path,
                                                                    tmp_path):
    from genmetrics.stats import extract_features

    out = str(tmp_path / "ref.h5")
    stats = import_npz(adm_batch, output=out, weights=fid_weights_path, device="cpu", progress=False)
    with np.load(adm_batch) as data:
        np.testing.assert_array_equal(stats.mu, data["mu"])
        np.testing.assert_array_equal(stats.sigma, data["sigma"])
        np.testing.assert_array_equal(stats.layer("spatial").mu, data["mu_s"])
        np.testing.assert_array_equal(stats.layer("spatial").sigma, data["sigma_s"])
    expected = extract_features(images, model=inception, mode="legacy_tensorflow", progress=False)["pool3"].numpy()
    np.testing.assert_allclose(stats.features, expected, rtol=0, atol=1e-5)
    assert stats.n == 0 and stats.meta["mode"] == "legacy_tensorflow" and stats.meta["resolution"] == "40x48"
    assert stats.meta["feature_images"] == 6 and stats.meta["dataset"] == "VIRTUAL_tiny_labeled"
    assert stats.layer("spatial").meta["feature_layer"] == "spatial"
    with pytest.raises(ValueError, match="legacy_tensorflow"):
        import_npz(adm_batch, output=str(tmp_path / "x.h5"), mode="clean")


def test_the_cli_imports_an_adm_batch_without_mode(adm_batch, fid_weights_path, tmp_path):
    out = str(tmp_path / "cli.h5")
    env = {**os.environ, "GENMETRICS_INCEPTION_WEIGHTS": fid_weights_path, "GENMETRICS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "genmetrics.plugin.cli", "stats", "import", adm_batch, "-o", out],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    assert sorted(read_refstats(out).layers) == ["spatial"]


def test_further_layers_round_trip_and_are_validated(tmp_path):
    import h5py

    rng = np.random.default_rng(1)
    meta = dict(dataset="d", split="train", resolution=8, mode="clean", feature_extractor="inception-v3-compat",
                feature_layer="pool3")
    stats = ReferenceStats(rng.normal(size=6), _psd(rng, 6), 10, meta=meta)
    stats.add_layer("spatial", ReferenceStats(rng.normal(size=4), _psd(rng, 4), 10))
    path = write_refstats(tmp_path / "a.h5", stats)
    back = read_refstats(path, full=True)
    np.testing.assert_array_equal(back.layer("spatial").sigma, stats.layer("spatial").sigma)
    assert back.layer("pool3") is back and back.layer(None) is back
    with pytest.raises(ValueError, match="no moments of layer 'logits'.*pool3, spatial"):
        back.layer("logits")
    with h5py.File(path, "a") as f:
        f["spatial.sigma"][0, 1] += 1.0
    with pytest.raises(ValueError, match=r"layer spatial.*symmetric"):
        read_refstats(path)
    with h5py.File(path, "a") as f:
        del f["spatial.n"]
    with pytest.raises(ValueError, match="layer 'spatial' lacks n"):
        read_refstats(path)
    with h5py.File(path, "a") as f:
        f["Bad.mu"] = np.zeros(2)
    with pytest.raises(ValueError, match="not a lower-case identifier"):
        read_refstats(path)


def test_a_manifest_entry_fetches_an_adm_batch_over_http(adm_batch, fid_weights_path, http_server, genmetrics_home,
                                                         tmp_path, monkeypatch):
    """A reference batch served on loopback, named by a user manifest: fetched, converted with its layers, cached."""
    import json

    from genmetrics import registry

    http_server.files["/VIRTUAL_tiny_labeled.npz"] = open(adm_batch, "rb").read()
    manifest = tmp_path / "team.yaml"
    manifest.write_text(json.dumps({"format_version": 1, "entries": [{
        "name": "adm_tiny", "split": "train", "resolution": 48, "mode": "legacy_tensorflow", "version": 1,
        "sources": [{"url": http_server.url + "/VIRTUAL_tiny_labeled.npz", "format": "npz"}], "sha256": None}]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(manifest))
    monkeypatch.setenv("GENMETRICS_INCEPTION_WEIGHTS", fid_weights_path)
    stats = registry.load("adm_tiny-train-48", progress=False)
    assert sorted(stats.layers) == ["spatial"] and stats.features.shape == (6, 2048)
    assert stats.meta["registry_ref"] == "adm_tiny-train-48-legacy_tensorflow@1" and stats.meta["resolution"] == 48


def test_the_shipped_manifest_names_the_published_reference_batches():
    from genmetrics.registry.manifest import load_manifests

    refs = {e.ref: e for e in load_manifests() if e.provider == "guided-diffusion"}
    assert {f"adm_imagenet-train-{r}-legacy_tensorflow@1" for r in (64, 128, 256, 512)} <= set(refs)
    assert all(e.sources[0].url.startswith("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/")
               for e in refs.values())
