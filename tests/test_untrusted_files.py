"""Statistics files and manifests from strangers (issue 11, items 2-4 and the unclear errors): crafted files
made here are refused before anything is read or allocated, with one line naming the file and the check."""
import io
import json
import os
import threading
import time
import zipfile

import h5py
import numpy as np
import pytest

from genmetrics import registry
from genmetrics.plugin.cli import main
from genmetrics.registry import RefStatsFormatError, ReferenceStats, read_refstats, refstats, write_refstats
from genmetrics.registry.npz_import import import_npz, read_npz
from genmetrics.stats import GaussianMoments, sqrtm_psd

DIM = 8
META = {"dataset": "toy", "split": "train", "resolution": 32, "mode": "clean",
        "feature_extractor": "inception-v3-compat", "feature_layer": "pool3", "source": "unit test"}


def _features(n=40, dim=DIM, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32) + 1.0


@pytest.fixture
def valid(tmp_path):
    """A valid file with every dataset (mu, sigma, n, sum, outer_sum, sqrt_sigma, features)."""
    x = _features()
    stats = ReferenceStats.from_moments(GaussianMoments.from_features(x), features=x, meta=META)
    stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    return write_refstats(tmp_path / "valid.h5", stats, outer_sum=True)


def _edit(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def _replace(name, data, **kwargs):
    def edit(f):
        del f[name]
        f.create_dataset(name, data=data, **kwargs)
    return edit


def _refused(path, check, full=False):
    start = time.perf_counter()
    with pytest.raises(RefStatsFormatError, match=rf"\(check: {check}\)") as info:
        read_refstats(path, full=full)
    message = str(info.value)
    assert os.fspath(path) in message and "\n" not in message
    assert time.perf_counter() - start < 30  # no huge allocation or hang (generous: the machine is shared)
    return message


def _verify_fails(path, check, capsys):
    assert main(["stats", "verify", os.fspath(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("FAILED") and os.fspath(path) in err and f"(check: {check})" in err and "\n" not in err


def test_a_valid_file_passes_every_check(valid, capsys):
    stats = read_refstats(valid, full=True)
    assert stats.n == 40 and stats.features.shape == (40, DIM)
    assert main(["stats", "verify", valid]) == 0 and capsys.readouterr().out.startswith("OK ")


# ---------------------------------------------------------------- item 2: no data from other files


def test_external_storage_is_refused_before_reading(valid, tmp_path, capsys):
    outside = tmp_path / "secret.bin"
    outside.write_bytes(np.arange(DIM, dtype=np.float64).tobytes())
    _edit(valid, lambda f: (f.__delitem__("mu"), f.create_dataset("mu", shape=(DIM,), dtype="f8",
                                                                   external=[(str(outside), 0, DIM * 8)])))
    assert "stored in external files" in _refused(valid, "layout")
    _verify_fails(valid, "layout", capsys)


def test_an_external_fifo_never_hangs_the_reader(valid, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _edit(valid, lambda f: (f.__delitem__("mu"), f.create_dataset("mu", shape=(DIM,), dtype="f8",
                                                                   external=[(str(fifo), 0, DIM * 8)])))
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(_refused(valid, "layout")), daemon=True)
    reader.start()
    reader.join(20)
    assert outcome, "the reader hung on the FIFO"


@pytest.mark.parametrize("kind", ["external link", "soft link", "virtual dataset"])
def test_links_and_virtual_datasets_are_refused(valid, tmp_path, kind, capsys):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["mu"] = np.zeros(DIM)

    def edit(f):
        mu = f["mu"][()]
        del f["mu"]
        if kind == "external link":
            f["mu"] = h5py.ExternalLink(str(other), "mu")
        elif kind == "soft link":
            f["hidden"] = mu
            f["mu"] = h5py.SoftLink("/hidden")
        else:
            layout = h5py.VirtualLayout(shape=(DIM,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(other), "mu", shape=(DIM,))
            f.create_virtual_dataset("mu", layout)

    _edit(valid, edit)
    _refused(valid, "layout")
    _verify_fails(valid, "layout", capsys)


# ---------------------------------------------------------------- item 4: validate before allocating


def test_a_small_file_declaring_huge_shapes_is_refused_before_allocating(tmp_path):
    """16 KB on disk, hundreds of GiB declared: refused from the metadata (no MemoryError)."""
    path = tmp_path / "bomb.h5"
    with h5py.File(path, "w") as f:
        f.attrs.update({**META, "format": "genmetrics-refstats", "format_version": 1, "version": 1,
                        "weights_sha256": "x", "num_samples": 1, "created_at": "now", "created_by": "test"})
        f.create_dataset("mu", shape=(2048,), dtype="f8")
        f.create_dataset("sigma", shape=(2048, 2048), dtype="f8")
        f.create_dataset("n", data=np.int64(10 ** 9))
        f.create_dataset("features", shape=(10 ** 9, 2048), dtype="f4", chunks=(1024, 2048), compression="gzip")
    assert os.path.getsize(path) < 16384
    assert "mu declares 16384 bytes but 0 are stored" in _refused(path, "storage")
    with h5py.File(path, "r+") as f:
        f["mu"][:] = 1.0
        f["sigma"][:] = np.eye(2048)
    assert "(7629.4 GiB), over the 64 GiB limit" in _refused(path, "shapes")
    with h5py.File(path, "r+") as f:
        del f["mu"]
        f.create_dataset("mu", shape=(10 ** 11,), dtype="f8", chunks=(1024,))
    assert "D <= 16384" in _refused(path, "shapes")


def test_bomb_features_are_refused_from_their_stored_size(valid):
    _edit(valid, _replace("features", np.zeros((400_000, DIM), np.float32), chunks=(4096, DIM), compression="gzip"))
    assert "more than 64x compression" in _refused(valid, "storage")


@pytest.mark.parametrize("edit, check, words", [
    (_replace("mu", np.float64(1.0)), "shapes", "mu has shape ()"),
    (_replace("n", "abc"), "n", "expected an integer scalar"),
    (_replace("n", 2.7), "n", "expected an integer scalar"),
    (_replace("n", np.arange(3)), "n", "expected an integer scalar"),
    (_replace("sigma", np.zeros((DIM, DIM), np.int64)), "dtypes", "float64"),
    (lambda f: f.attrs.__setitem__("num_samples", "abc"), "attributes", "'num_samples' is 'abc', expected an integer"),
    (lambda f: f.attrs.__setitem__("num_samples", 2.7), "attributes", "expected an integer"),
    (lambda f: f.attrs.__setitem__("num_samples", 41), "attributes", "'num_samples' is 41 but the moments are of n = 40"),
    (lambda f: f.attrs.__setitem__("mode", np.bytes_(b"\xffclean\xfe")), "attributes", "'mode' is not valid UTF-8"),
    (lambda f: f.attrs.__setitem__("mode", np.arange(3)), "attributes", "shape (3,), expected a scalar"),
    (lambda f: f.attrs.__setitem__("format_version", 1.0), "attributes", "'format_version' is 1.0"),
])
def test_wrong_types_are_named_with_the_file(valid, edit, check, words):
    _edit(valid, edit)
    assert words in _refused(valid, check)


def test_a_vlen_attribute_that_is_not_utf8_is_named(valid):
    with h5py.File(valid, "r+") as f:
        f.attrs.create("mode", data="x" * 7, dtype=h5py.string_dtype("utf-8"))
    data = bytearray(open(valid, "rb").read())
    at = data.find(b"x" * 7)
    data[at:at + 7] = b"\xff\xfe\xfd\xfc\xfb\xfa\xf9"
    open(valid, "wb").write(bytes(data))
    assert "'mode' is not valid UTF-8" in _refused(valid, "attributes")


def _without_moments(path, sigma):
    def edit(f):
        for name in ("sum", "outer_sum", "sqrt_sigma", "features"):
            del f[name]
        del f["sigma"]
        f.create_dataset("sigma", data=sigma)
    return _edit(path, edit)


def test_a_non_psd_sigma_is_refused(valid, capsys, tmp_path):
    """Correlations of -0.2 among 8 variables: every 2x2 minor is fine, the matrix is not PSD (FID < 0)."""
    sigma = 1.2 * np.eye(DIM) - 0.2 * np.ones((DIM, DIM))
    assert np.linalg.eigvalsh(sigma)[0] < -0.1
    _without_moments(valid, sigma)
    mu = read_refstats(valid).mu  # no Cholesky on every read (it would double the cost of loading); verify does it
    assert "lowest eigenvalue -0.4" in _refused(valid, "sigma PSD", full=True)
    _verify_fails(valid, "sigma PSD", capsys)
    npz = tmp_path / "non_psd.npz"
    np.savez(npz, mu=mu, sigma=sigma)
    with pytest.raises(RefStatsFormatError, match=r"non_psd.npz.*\(check: sigma PSD\)"):
        import_npz(npz, mode="clean")


@pytest.mark.parametrize("sigma, words", [
    (-np.eye(DIM), "negative variances"),
    (np.eye(DIM) + np.diag(np.full(DIM - 1, 3.0), 1) + np.diag(np.full(DIM - 1, 3.0), -1), "correlation of 3"),
    (np.eye(DIM) + np.diag(np.full(DIM - 1, 0.1), 1), "not symmetric"),
])
def test_cheap_sigma_checks_run_on_every_read(valid, sigma, words):
    _without_moments(valid, sigma)
    assert words in _refused(valid, "symmetry" if "symmetric" in words else "sigma PSD")


def test_a_sqrt_sigma_that_is_not_the_root_is_refused(valid, capsys):
    _edit(valid, _replace("sqrt_sigma", np.eye(DIM)))
    _refused(valid, "sqrt_sigma")
    _verify_fails(valid, "sqrt_sigma", capsys)


def test_moments_that_do_not_belong_to_mu_and_sigma_are_refused(valid, capsys):
    with h5py.File(valid, "r") as f:
        outer = f["outer_sum"][()]
    _edit(valid, _replace("outer_sum", outer + np.eye(DIM)))
    assert "outer_sum differs" in _refused(valid, "moments")
    _verify_fails(valid, "moments", capsys)


def test_features_that_are_not_the_moments_fail_verify(valid, capsys):
    """Rows 32-39 replaced by copies of rows 0-7 (a bad resume): mu is no longer their mean."""
    with h5py.File(valid, "r") as f:
        features = f["features"][()]
    features[32:] = features[:8]
    _edit(valid, _replace("features", features, chunks=(40, DIM), compression="gzip"))
    read_refstats(valid)  # the cheap checks do not read the features
    assert "mean of the 40 stored features" in _refused(valid, "features", full=True)
    _verify_fails(valid, "features", capsys)


# ---------------------------------------------------------------- per-image digests (issue 19, item 1)


def _digests(rows=40):
    return (np.arange(rows * 32) % 251).astype(np.uint8).reshape(rows, 32)


def test_image_digests_are_read_on_first_use_and_kept_by_the_writer(valid, tmp_path):
    assert read_refstats(valid).image_sha256 is None  # files written before they were recorded
    _edit(valid, lambda f: f.create_dataset("image_sha256", data=_digests()))
    stats = read_refstats(valid, full=True)
    np.testing.assert_array_equal(stats.image_sha256, _digests())
    copy = read_refstats(write_refstats(tmp_path / "copy.h5", stats))
    np.testing.assert_array_equal(copy.image_sha256, _digests())
    with pytest.raises(ValueError, match="image_sha256 needs features"):
        ReferenceStats(stats.mu, stats.sigma, stats.n, image_sha256=_digests())
    with pytest.raises(RefStatsFormatError, match="image_sha256 has 39 rows but features have 40"):
        ReferenceStats(stats.mu, stats.sigma, stats.n, features=stats.features, image_sha256=_digests(39))


@pytest.mark.parametrize("data, check, words", [
    (_digests().astype(np.float32), "dtypes", "image_sha256 has dtype float32"),
    (_digests(39), "shapes", "image_sha256 has 39 rows but features have 40"),
    (np.zeros((40, 16), np.uint8), "shapes", "image_sha256 has shape (40, 16), expected (40, 32)"),
    (np.zeros((40,), np.uint8), "shapes", "image_sha256 has shape (40,)"),
])
def test_crafted_image_digests_are_refused_before_they_are_read(valid, data, check, words, capsys):
    _edit(valid, lambda f: f.create_dataset("image_sha256", data=data))
    assert words in _refused(valid, check)
    _verify_fails(valid, check, capsys)


def test_image_digests_without_features_or_declaring_too_much_are_refused(valid, tmp_path):
    _edit(valid, lambda f: (f.__delitem__("features"), f.create_dataset("image_sha256", data=_digests())))
    assert "image_sha256 is stored without features" in _refused(valid, "shapes")
    bomb = write_refstats(tmp_path / "bomb.h5", ReferenceStats.from_moments(
        GaussianMoments.from_features(_features()), features=_features(), meta=META))
    _edit(bomb, lambda f: f.create_dataset("image_sha256", shape=(40, 32), dtype="u1", chunks=(40, 32)))
    assert "more than 64x compression" in _refused(bomb, "storage")  # declared, never written


def test_a_fifo_named_like_a_statistics_file_is_refused(tmp_path):
    fifo = tmp_path / "stats.h5"
    os.mkfifo(fifo)
    with pytest.raises(RefStatsFormatError, match="not a regular file"):
        read_refstats(fifo)


def test_reading_a_2048_d_file_stays_cheap(tmp_path):
    x = np.random.default_rng(0).normal(size=(2100, 2048)).astype(np.float32)
    stats = ReferenceStats.from_moments(GaussianMoments.from_features(x), meta=META)
    stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    path = write_refstats(tmp_path / "big.h5", stats, outer_sum=True)
    read_refstats(path)
    start = time.perf_counter()
    read_refstats(path)
    elapsed = time.perf_counter() - start
    print(f"\nread_refstats of a 2048-D file with sum, outer_sum and sqrt_sigma: {elapsed * 1000:.0f} ms")
    assert elapsed < 5


# ---------------------------------------------------------------- .npz imports


def _npz_with_member(path, name, header, body, compress=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "w", compression=compress) as archive:
        archive.writestr(name, buffer.getvalue() + body)
    return path


def test_an_npz_declaring_a_huge_array_is_refused_before_allocating(tmp_path, capsys):
    bomb = _npz_with_member(tmp_path / "bomb.npz", "sigma.npy",
                            {"descr": "<f8", "fortran_order": False, "shape": (200_000, 200_000)}, b"\0" * 64)
    with pytest.raises(RefStatsFormatError, match=r"bomb.npz: sigma.npy declares .* holds 64 bytes"):
        read_npz(bomb)
    assert main(["stats", "import", str(bomb), "--mode", "clean"]) == 2
    err = capsys.readouterr().err.strip()
    assert "bomb.npz" in err and "\n" not in err


def test_a_deflate_bomb_npz_is_refused(tmp_path):
    bomb = _npz_with_member(tmp_path / "zeros.npz", "sigma.npy",
                            {"descr": "<f8", "fortran_order": False, "shape": (1024, 1024)}, bytes(8 << 20),
                            compress=zipfile.ZIP_DEFLATED)
    with pytest.raises(RefStatsFormatError, match="decompression bomb"):
        read_npz(bomb)


def test_an_npz_with_mu_as_a_scalar_is_a_clear_error(tmp_path):
    path = tmp_path / "scalar.npz"
    np.savez(path, mu=np.float64(1.0), sigma=np.eye(DIM))
    with pytest.raises(RefStatsFormatError, match=r"scalar.npz: mu has shape \(\) and sigma"):
        read_npz(path)


# ---------------------------------------------------------------- item 3: manifests


def test_a_billion_laughs_manifest_is_a_quick_clear_error(tmp_path, monkeypatch):
    lines = ["format_version: 1", 'l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["entries: [*l9]"]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(path))
    start = time.perf_counter()
    with pytest.raises(ValueError, match="laughs.yaml uses YAML anchors or aliases"):
        registry.list_entries()
    assert time.perf_counter() - start < 2


def _entry(url):
    return {"name": "toy", "split": "train", "resolution": 32, "mode": "clean", "version": 1,
            "sources": [{"url": url, "format": "npz"}], "sha256": None}


@pytest.mark.parametrize("url", ["file:///etc/passwd", "/etc/passwd", "~/.ssh/id_rsa", "ftp://host/x.npz"])
def test_a_remote_manifest_may_name_only_http_sources(http_server, tmp_path, monkeypatch, url):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    http_server.files["/team/manifest.yaml"] = json.dumps({"format_version": 1, "entries": [_entry(url)]}).encode()
    monkeypatch.setenv("GENMETRICS_MANIFEST", http_server.url + "/team/manifest.yaml")
    with pytest.raises(ValueError, match=r"is not an http\(s\) URL; a remote manifest may only name http\(s\)"):
        registry.list_entries()


def test_relative_sources_of_a_remote_manifest_stay_on_its_server(http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    http_server.files["/team/manifest.yaml"] = json.dumps({"format_version": 1,
                                                           "entries": [_entry("../stats/toy.npz")]}).encode()
    monkeypatch.setenv("GENMETRICS_MANIFEST", http_server.url + "/team/manifest.yaml")
    entry = next(e for e in registry.list_entries() if e.name == "toy")
    assert entry.sources[0].url == http_server.url + "/stats/toy.npz"


def test_a_local_manifest_may_still_name_local_files(tmp_path, monkeypatch):
    path = tmp_path / "local.yaml"
    path.write_text(json.dumps({"format_version": 1, "entries": [_entry("stats/toy.npz")]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(path))
    entry = next(e for e in registry.list_entries() if e.name == "toy")
    assert entry.sources[0].url == str(tmp_path / "stats" / "toy.npz")


# ---------------------------------------------------------------- files that hang the HDF5 library itself


def test_a_file_that_hangs_libhdf5_fails_verify_instead_of_hanging(tmp_path, monkeypatch, capsys):
    """A variable-length string attribute (the pre-checksum layout) whose global-heap object claims more bytes
    than it holds: libhdf5 loops reading it. verify reads in a child process and reports it."""
    path = tmp_path / "loops.h5"
    with h5py.File(path, "w") as f:
        f.attrs["created_at"] = "2026-11-29T23:27:40+00:00"  # a variable-length string, in the global heap
        f["mu"] = np.zeros(DIM)
    data = bytearray(path.read_bytes())
    heap = data.find(b"GCOL")
    assert data[heap + 24] == 25  # the size of the heap object holding the string
    data[heap + 24] ^= 0x80
    path.write_bytes(bytes(data))
    monkeypatch.setattr(refstats, "ISOLATED_READ_TIMEOUT_S", 8)
    start = time.perf_counter()
    with pytest.raises(RefStatsFormatError, match=r"loops.h5: reading it did not finish within 8 s \(check: hdf5\)"):
        registry.verify(str(path))
    assert time.perf_counter() - start < 30
    _verify_fails(path, "hdf5", capsys)
