"""The .h5 format v1 (writer, validating reader), refs, the packaged manifest, and .npz import."""
import os
import time

import h5py
import numpy as np
import pytest
from tolerances import cov_tol, mean_tol

from genmetrics import registry
from genmetrics.registry import RefStatsFormatError, ReferenceStats, read_refstats, write_refstats
from genmetrics.registry.manifest import UnknownRefError, load_manifests, resolve
from genmetrics.registry.refstats import REQUIRED_ATTRIBUTES
from genmetrics.stats import GaussianMoments, sqrtm_psd

META = {"dataset": "toy", "split": "train", "resolution": 32, "mode": "clean", "feature_extractor": "inception-v3-compat",
        "feature_layer": "pool3", "source": "unit test"}


@pytest.fixture
def features():
    return np.random.default_rng(0).normal(size=(60, 12)).astype(np.float32)


@pytest.fixture
def written(tmp_path, features):
    stats = ReferenceStats.from_moments(GaussianMoments.from_features(features), features=features, meta=META)
    stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    return write_refstats(tmp_path / "toy.h5", stats)


def test_roundtrip_layout_and_provenance(written, features):
    stats = read_refstats(written)
    x = features.astype(np.float64)
    # rtol alone fails for a mean near 0: the sums' rounding is relative to sum |x|, not to the mean
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=0, atol=mean_tol(x))
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=0, atol=cov_tol(x))
    assert stats.n == 60 and stats.sum.shape == (12,) and stats.outer_sum is None  # derived: not written since 0.2
    np.testing.assert_array_equal(stats.features, features)
    with h5py.File(written) as f:
        assert f["mu"].dtype == np.float64 and f["sigma"].shape == (12, 12) and f["n"].dtype == np.int64
        assert f["features"].compression == "gzip" and f["features"].chunks is not None
        assert f.attrs["format"] == b"genmetrics-refstats" and f.attrs["format_version"] == 1
        assert set(REQUIRED_ATTRIBUTES) <= set(f.attrs)
    assert "torch" in stats.meta["created_by"] and stats.meta["num_samples"] == 60
    assert not [p for p in os.listdir(os.path.dirname(written)) if p.endswith(".tmp")]


def _rewrite(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


def test_newer_format_version_is_a_clear_error(written):
    _rewrite(written, lambda f: f.attrs.__setitem__("format_version", 2))
    with pytest.raises(RefStatsFormatError, match="newer genmetrics.*upgrade"):
        read_refstats(written)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.attrs.__setitem__("format", "something-else"), "not a genmetrics statistics file"),
    (lambda f: f.attrs.__delitem__("mode"), r"lacks the required provenance attributes \['mode'\]"),
    (lambda f: f.__delitem__("sigma"), "lacks the mu, sigma or n"),
    (lambda f: (f.__delitem__("sigma"), f.create_dataset("sigma", data=np.zeros((12, 11)))), r"sigma has shape"),
    (lambda f: (f.__delitem__("mu"), f.create_dataset("mu", data=np.zeros(12, np.float32))), "float64"),
    (lambda f: f["sigma"].__setitem__((0, 0), np.nan), "NaN or Inf"),
])
def test_invalid_files_are_refused(written, edit, message):
    _rewrite(written, edit)
    with pytest.raises(RefStatsFormatError, match=message) as error:
        read_refstats(written)
    assert written in str(error.value)


def test_truncated_and_corrupt_files_name_the_file(written, tmp_path):
    data = open(written, "rb").read()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(RefStatsFormatError, match="truncated.h5: it is corrupt or truncated"):
        registry.load(str(truncated))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x00" * 1000)
    with pytest.raises(RefStatsFormatError, match="garbage.h5"):
        registry.load(str(garbage))


def test_missing_provenance_is_refused_at_write(tmp_path, features):
    stats = ReferenceStats.from_moments(GaussianMoments.from_features(features), meta={"dataset": "toy"})
    with pytest.raises(ValueError, match="provenance attributes"):
        write_refstats(tmp_path / "x.h5", stats)
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------- refs and the packaged manifest


def test_refs_resolve_defaults_and_pins():
    assert resolve("cifar10-train-32").ref == "cifar10-train-32-clean@1"
    assert resolve("cifar10-train-32-clean@1").ref == "cifar10-train-32-clean@1"
    assert resolve("cifar10-train-32@1").ref == "cifar10-train-32-clean@1"
    assert resolve("cifar10-test-32-legacy_pytorch").mode == "legacy_pytorch"
    # TTUR's original file is version 1, clean-fid's recomputation version 2 (the newest, the default)
    assert resolve("cifar10-train-32-legacy_tensorflow").version == 2
    assert "bioinf.jku.at" in resolve("cifar10-train-32-legacy_tensorflow@1").sources[0].url
    assert resolve("celeba-all-64").mode == "legacy_tensorflow"  # the only mode of this entry


def test_packaged_manifest_covers_clean_fid_and_ttur():
    refs = {e.ref for e in load_manifests()}
    for mode in ("clean", "legacy_tensorflow", "legacy_pytorch"):
        for base in ("cifar10-train-32", "cifar10-test-32", "ffhq-trainval70k-256", "ffhq-trainval-1024",
                     "lsun_church-train-256", "lsun_horse-train-256", "lsun_cat-train-256", "afhq_cat-train-512",
                     "afhq_dog-train-512", "afhq_wild-train-512", "metfaces-train-1024"):
            assert any(r.startswith(f"{base}-{mode}@") for r in refs), (base, mode)
    for ref in ("svhn-train-32-legacy_tensorflow@1", "lsun_bedroom-train-64-legacy_tensorflow@1",
                "imagenet-train-64-legacy_tensorflow@1", "imagenet-valid-64-legacy_tensorflow@1"):
        assert ref in refs
    assert resolve("cifar10-train-32").sources[0].url == \
        "https://www.cs.cmu.edu/~clean-fid/stats/cifar10_clean_train_32.npz"


@pytest.mark.parametrize("ref", ["../cifar10-train-32", "cifar10/train", "a\\b", "..", "cifar10-train-32@x", ""])
def test_paths_and_malformed_refs_are_rejected(ref):
    with pytest.raises(ValueError):
        resolve(ref)


def test_path_like_strings_never_reach_the_cache():
    with pytest.raises(FileNotFoundError):
        registry.load("../../etc/cifar10.h5")


def test_unknown_ref_suggests_close_matches():
    with pytest.raises(UnknownRefError, match="Did you mean: .*cifar10-train-32"):
        resolve("cifar01-train-32")
    with pytest.raises(UnknownRefError, match=r"no version 9; known versions: \[1\]"):
        resolve("cifar10-train-32-clean@9")


# ---------------------------------------------------------------- import and load


def test_import_ttur_style_npz_equals_direct_computation(tmp_path):
    x = np.random.default_rng(1).normal(size=(80, 10))
    np.savez(tmp_path / "fid_stats_toy.npz", mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False))
    stats = registry.import_npz(tmp_path / "fid_stats_toy.npz", mode="legacy_tensorflow", name="toy", split="train",
                                resolution=32, source="http://example.org/fid_stats_toy.npz", num_samples=80)
    np.testing.assert_array_equal(stats.mu, x.mean(axis=0))
    np.testing.assert_array_equal(stats.sigma, np.cov(x, rowvar=False))
    assert stats.path == str(tmp_path / "fid_stats_toy.h5") and stats.n == 80
    assert stats.meta["source"] == "http://example.org/fid_stats_toy.npz" and len(stats.meta["source_sha256"]) == 64
    assert stats.meta["mode"] == "legacy_tensorflow" and stats.sum is None
    with pytest.raises(ValueError, match="mode must be one of"):
        registry.import_npz(tmp_path / "fid_stats_toy.npz")


def test_import_clean_fid_kid_features_npz(tmp_path):
    feats = np.random.default_rng(2).normal(size=(30, 6)).astype(np.float32)
    np.savez(tmp_path / "toy_clean_train_32_kid.npz", feats=feats)
    stats = registry.import_npz(tmp_path / "toy_clean_train_32_kid.npz", output=str(tmp_path / "kid.h5"), mode="clean")
    x = feats.astype(np.float64)
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=0, atol=mean_tol(x))
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=0, atol=cov_tol(x))
    np.testing.assert_array_equal(stats.features, feats)
    assert stats.n == 30 and stats.sum is not None


def test_load_of_a_cached_entry_is_fast(tmp_path, monkeypatch):
    """A 2048-D cached entry (mu, sigma, sqrt_sigma, 2,100 features) loads in well under a second."""
    home = tmp_path / "home"
    monkeypatch.setenv("GENMETRICS_HOME", str(home))
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2100, 2048)).astype(np.float32)
    moments = GaussianMoments.from_features(x)
    entry = resolve("cifar10-train-32")
    stats = ReferenceStats.from_moments(moments, features=x, meta={**META, "dataset": "cifar10", "version": 1})
    stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    write_refstats(home / "stats" / f"{entry.ref}.h5", stats)
    start = time.perf_counter()
    loaded = registry.load("cifar10-train-32")
    elapsed = time.perf_counter() - start
    print(f"\nload('cifar10-train-32') from the cache: {elapsed * 1000:.0f} ms (D=2048, features read lazily)")
    assert loaded.n == 2100 and loaded.sigma.shape == (2048, 2048)
    assert loaded.features.shape == (2100, 2048)
