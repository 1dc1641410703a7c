"""The downloader and registry fetch against a real HTTP server on loopback serving files built here."""
import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from fixtures_http import npz_bytes, sha256_of

from genmetrics import registry
from genmetrics.registry.fetch import cache_path
from genmetrics.registry.manifest import resolve
from genmetrics.stats.download import ChecksumMismatchError, DownloadError, OfflineError, download

DIM = 128  # sigma is 128 KiB: big enough for a body cut after the first 64 KiB block


def _npz_bytes(seed=0, dim=DIM, n=300):
    return npz_bytes(seed, dim, n)


@pytest.fixture
def home(genmetrics_home):
    return genmetrics_home


def _manifest(tmp_path, monkeypatch, entries, name="team.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps({"format_version": 1, "entries": entries}))  # JSON is YAML
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(path))
    return path


def _entry(url, sha256=None, name="toy", fmt="npz", version=1, mode="clean"):
    return {"name": name, "split": "train", "resolution": 32, "mode": mode, "version": version, "num_samples": 300,
            "sources": [{"url": url, "format": fmt}], "sha256": sha256, "citation": "test data"}


def _full_gets(srv, path):
    return [h for h in srv.get_requests(path) if "Range" not in h]


# ---------------------------------------------------------------- downloader


def test_download_success_returns_sha256_and_keeps_no_temp_files(http_server, tmp_path):
    data = os.urandom(200_000)
    http_server.files["/blob"] = data
    dest = tmp_path / "d" / "blob"
    assert download(http_server.url + "/blob", str(dest), sha256=sha256_of(data), progress=False) == sha256_of(data)
    assert dest.read_bytes() == data
    assert not (tmp_path / "d" / "blob.part").exists()
    # a second call finds the file done and does not download again
    assert download(http_server.url + "/blob", str(dest), sha256=sha256_of(data), progress=False) == sha256_of(data)
    assert len(http_server.get_requests("/blob")) == 1


def test_download_404_names_url_and_status(http_server, tmp_path):
    with pytest.raises(DownloadError, match=r"missing.*HTTP 404"):
        download(http_server.url + "/missing", str(tmp_path / "x"), progress=False)
    assert len(http_server.get_requests("/missing")) == 1  # a 4xx is not retried
    assert not (tmp_path / "x").exists()


def test_download_retries_5xx_then_succeeds(http_server, tmp_path):
    data = os.urandom(10_000)
    http_server.files["/f"] = data
    http_server.faults["/f"] = [("status", 500), ("status", 503)]
    got = download(http_server.url + "/f", str(tmp_path / "f"), sha256=sha256_of(data), progress=False, backoff=0.01)
    assert got == sha256_of(data) and (tmp_path / "f").read_bytes() == data
    assert len(http_server.get_requests("/f")) == 3


def test_download_gives_up_after_retries(http_server, tmp_path):
    http_server.files["/f"] = b"abc"
    http_server.faults["/f"] = [("status", 500)] * 3
    with pytest.raises(DownloadError, match="after 3 attempts.*HTTP 500"):
        download(http_server.url + "/f", str(tmp_path / "f"), progress=False, retries=2, backoff=0.01)
    assert not (tmp_path / "f").exists()


def test_download_resumes_a_dropped_connection_with_range(http_server, tmp_path):
    data = os.urandom(300_000)
    http_server.files["/big"] = data
    http_server.faults["/big"] = [("truncate", 150_000)]
    got = download(http_server.url + "/big", str(tmp_path / "big"), sha256=sha256_of(data), progress=False, backoff=0.01)
    assert got == sha256_of(data) and (tmp_path / "big").read_bytes() == data
    ranges = [h.get("Range") for h in http_server.get_requests("/big")]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0


def test_download_restarts_when_server_ignores_range(http_server, tmp_path):
    data = os.urandom(100_000)
    http_server.files["/f"] = data
    (tmp_path / "f.part").write_bytes(b"stale bytes of another file")
    # the server answers the ranged request with 200 + a full body (the 'bytes' fault ignores Range)
    http_server.faults["/f"] = [("bytes", data)]
    got = download(http_server.url + "/f", str(tmp_path / "f"), sha256=sha256_of(data), progress=False)
    assert got == sha256_of(data) and (tmp_path / "f").read_bytes() == data


def test_download_wrong_bytes_refused_and_nothing_left(http_server, tmp_path):
    data = os.urandom(10_000)
    http_server.files["/f"] = data
    http_server.faults["/f"] = [("bytes", b"not the file")]
    with pytest.raises(ChecksumMismatchError) as error:
        download(http_server.url + "/f", str(tmp_path / "f"), sha256=sha256_of(data), progress=False)
    assert sha256_of(data) in str(error.value) and sha256_of(b"not the file") in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.lock"]


def test_download_offline_names_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"GENMETRICS_OFFLINE=1.*put it at .*weights\.pth"):
        download("http://127.0.0.1:9/weights.pth", str(tmp_path / "weights.pth"), progress=False)


def test_download_file_url_and_plain_path(tmp_path):
    source = tmp_path / "src.bin"
    source.write_bytes(b"local bytes")
    assert download(source.as_uri(), str(tmp_path / "a"), sha256=sha256_of(b"local bytes")) == sha256_of(b"local bytes")
    assert download(str(source), str(tmp_path / "b")) == sha256_of(b"local bytes")
    assert (tmp_path / "b").read_bytes() == b"local bytes"


# ---------------------------------------------------------------- registry fetch


def test_fetch_converts_npz_with_provenance(http_server, home, tmp_path, monkeypatch):
    data, x = _npz_bytes()
    http_server.files["/stats/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/stats/toy.npz", sha256=sha256_of(data))])
    path = registry.fetch("toy-train-32", progress=False)
    assert path == str(home / "stats" / "toy-train-32-clean@1.h5")
    stats = registry.load("toy-train-32-clean@1")
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, np.cov(x, rowvar=False), rtol=0, atol=1e-12)
    np.testing.assert_allclose(stats.sqrt_sigma @ stats.sqrt_sigma, stats.sigma, atol=1e-10)
    assert stats.meta["source"] == http_server.url + "/stats/toy.npz"
    assert stats.meta["source_sha256"] == sha256_of(data)
    assert stats.meta["registry_ref"] == "toy-train-32-clean@1" and stats.n == 300
    assert registry.verify("toy-train-32")["ok"]


def test_fetch_404_is_a_clear_error(http_server, home, tmp_path, monkeypatch):
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/nothing.npz")])
    with pytest.raises(DownloadError, match=r"toy-train-32-clean@1.*nothing\.npz.*HTTP 404"):
        registry.fetch("toy-train-32", progress=False)
    assert not os.path.exists(cache_path(resolve("toy-train-32")))


def test_fetch_500_then_200(http_server, home, tmp_path, monkeypatch):
    data, _ = _npz_bytes()
    http_server.files["/toy.npz"] = data
    http_server.faults["/toy.npz"] = [("status", 500)]
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=sha256_of(data))])
    assert os.path.isfile(registry.fetch("toy-train-32", progress=False))
    assert len(http_server.get_requests("/toy.npz")) == 2


def test_fetch_resumes_dropped_connection_with_range(http_server, home, tmp_path, monkeypatch):
    data, x = _npz_bytes()
    assert len(data) > 100_000
    http_server.files["/toy.npz"] = data
    http_server.faults["/toy.npz"] = [("truncate", 100_000)]
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=sha256_of(data))])
    stats = registry.load("toy-train-32")
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), atol=1e-12)
    ranges = [h.get("Range") for h in http_server.get_requests("/toy.npz")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")


def test_fetch_wrong_bytes_refused_and_cache_left_clean(http_server, home, tmp_path, monkeypatch):
    data, _ = _npz_bytes()
    bad, _ = _npz_bytes(seed=1)
    http_server.files["/toy.npz"] = data
    http_server.faults["/toy.npz"] = [("bytes", bad)]
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=sha256_of(data))])
    with pytest.raises(ChecksumMismatchError, match=f"expected {sha256_of(data)}, got {sha256_of(bad)}"):
        registry.fetch("toy-train-32", progress=False)
    leftovers = [f for _, _, files in os.walk(home) for f in files if not f.endswith(".lock")]
    assert leftovers == []


def test_unpinned_entry_records_hash_and_refuses_a_changed_file(http_server, home, tmp_path, monkeypatch):
    data, _ = _npz_bytes()
    http_server.files["/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=None)])
    path = registry.fetch("toy-train-32", progress=False)
    assert registry.info("toy-train-32")["recorded_sha256"] == sha256_of(data)
    # the upstream file changes; a fresh fetch (cache emptied) must refuse it
    os.remove(path)
    for root, _, files in os.walk(home / "stats" / "sources"):
        for f in files:
            os.remove(os.path.join(root, f))
    http_server.files["/toy.npz"] = _npz_bytes(seed=5)[0]
    with pytest.raises(ChecksumMismatchError, match="recorded at the first fetch"):
        registry.fetch("toy-train-32", progress=False)


def test_offline_uses_cache_only(http_server, home, tmp_path, monkeypatch):
    data, _ = _npz_bytes()
    http_server.files["/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz")])
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with pytest.raises(OfflineError, match=r"not in the cache.*genmetrics stats fetch toy-train-32-clean@1"):
        registry.load("toy-train-32")
    assert http_server.requests == []
    monkeypatch.delenv("GENMETRICS_OFFLINE")
    registry.fetch("toy-train-32", progress=False)
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    assert registry.load("toy-train-32").n == 300
    assert len(http_server.requests) == 1


def test_h5_source_and_relative_file_source_in_user_manifest(home, tmp_path, monkeypatch):
    x = np.random.default_rng(3).normal(size=(40, 8))
    shared = tmp_path / "shared"
    shared.mkdir()
    np.savez(shared / "toy.npz", mu=x.mean(0), sigma=np.cov(x, rowvar=False))
    built = registry.import_npz(shared / "toy.npz", output=str(shared / "team.h5"), mode="legacy_pytorch",
                                name="team", split="val", resolution=64)
    manifest = shared / "manifest.yaml"
    manifest.write_text(textwrap.dedent("""\
        format_version: 1
        entries:
          - {name: team, split: val, resolution: 64, mode: legacy_pytorch, version: 2,
             sources: [{url: team.h5, format: h5}], sha256: null}
        """))
    monkeypatch.setenv("GENMETRICS_MANIFEST", manifest.as_uri())
    stats = registry.load("team-val-64")  # the only mode of this entry is used
    np.testing.assert_array_equal(stats.sigma, built.sigma)
    assert stats.path == str(home / "stats" / "team-val-64-legacy_pytorch@2.h5")
    assert registry.verify("team-val-64-legacy_pytorch@2")["ok"]


def test_user_manifest_overrides_packaged_entry(http_server, home, tmp_path, monkeypatch):
    data, x = _npz_bytes(dim=16)
    http_server.files["/mirror/cifar10.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/mirror/cifar10.npz", name="cifar10")])
    assert resolve("cifar10-train-32").sources[0].url == http_server.url + "/mirror/cifar10.npz"
    np.testing.assert_allclose(registry.load("cifar10-train-32").mu, x.mean(0), atol=1e-12)


_FETCHER = textwrap.dedent("""\
    import hashlib, sys
    from genmetrics import registry
    path = registry.fetch("toy-train-32", progress=False)
    print(hashlib.sha256(open(path, "rb").read()).hexdigest())
    """)


def test_four_processes_fetch_once(http_server, home, tmp_path, monkeypatch):
    data, _ = _npz_bytes()
    http_server.files["/toy.npz"] = data
    http_server.faults["/toy.npz"] = [("delay", 1.0)]  # keep the first download in flight while others start
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=sha256_of(data))])
    final = cache_path(resolve("toy-train-32"))
    procs = [subprocess.Popen([sys.executable, "-c", _FETCHER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(os.environ), text=True) for _ in range(4)]
    seen = set()
    while any(p.poll() is None for p in procs):
        if os.path.exists(final):  # never a partial file: whenever the path exists it is complete and valid
            seen.add(registry.load(final).mu.tobytes())
        time.sleep(0.01)
    outputs = [p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    hashes = {out.strip() for out, _ in outputs}
    assert len(hashes) == 1
    assert len(_full_gets(http_server, "/toy.npz")) == 1 and len(http_server.get_requests("/toy.npz")) == 1
    assert len(seen) <= 1


def test_cli_fetch_list_info_verify(http_server, home, tmp_path, monkeypatch, capsys):
    from genmetrics.plugin.cli import main

    data, _ = _npz_bytes(dim=8)
    http_server.files["/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=sha256_of(data))])
    assert main(["stats", "fetch", "toy-train-32", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "stats" / "toy-train-32-clean@1.h5")
    assert main(["stats", "list"]) == 0
    listing = capsys.readouterr().out
    assert "* toy-train-32-clean@1" in listing and "  cifar10-train-32-clean@1" in listing
    assert main(["stats", "info", "toy-train-32", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["cached"] and described["attributes"]["source_sha256"] == sha256_of(data)
    assert main(["stats", "verify", "toy-train-32"]) == 0
    assert f"source sha256 {sha256_of(data)}" in capsys.readouterr().out
    assert main(["stats", "info", "toy-trian-32"]) == 2
    assert "Did you mean: toy-train-32" in capsys.readouterr().err


def test_verify_detects_a_damaged_cached_file(http_server, home, tmp_path, monkeypatch):
    data, _ = _npz_bytes(dim=8)
    http_server.files["/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(http_server.url + "/toy.npz", sha256=sha256_of(data))])
    path = registry.fetch("toy-train-32", progress=False)
    assert registry.verify("toy-train-32")["ok"]
    with open(path, "r+b") as f:  # flip one byte inside the file
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumMismatchError, match="changed or is damaged"):
        registry.verify("toy-train-32")


def test_a_remote_manifest_is_fetched_once_per_ttl(http_server, home, monkeypatch):
    """Resolving refs repeatedly (a training loop loading its reference at every evaluation) requests a remote
    manifest once per REMOTE_MANIFEST_TTL, not once per call."""
    from genmetrics.registry import manifest

    http_server.files["/team/manifest.yaml"] = json.dumps(
        {"format_version": 1, "entries": [_entry("toy.npz", sha256="0" * 64)]}).encode()
    monkeypatch.setenv("GENMETRICS_MANIFEST", http_server.url + "/team/manifest.yaml")
    for _ in range(3):
        assert resolve("toy-train-32").name == "toy"
    assert len(http_server.get_requests("/team/manifest.yaml")) == 1
    monkeypatch.setattr(manifest, "REMOTE_MANIFEST_TTL", 0.0)
    resolve("toy-train-32")
    assert len(http_server.get_requests("/team/manifest.yaml")) == 2


def test_remote_user_manifest_is_cached_for_offline_use(http_server, home, monkeypatch):
    data, x = _npz_bytes(dim=8)
    http_server.files["/team/toy.npz"] = data
    http_server.files["/team/manifest.yaml"] = json.dumps(
        {"format_version": 1, "entries": [_entry("toy.npz", sha256=sha256_of(data))]}).encode()
    monkeypatch.setenv("GENMETRICS_MANIFEST", http_server.url + "/team/manifest.yaml")
    assert resolve("toy-train-32").sources[0].url == http_server.url + "/team/toy.npz"  # relative to the manifest
    registry.fetch("toy-train-32", progress=False)
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    count = len(http_server.requests)
    np.testing.assert_allclose(registry.load("toy-train-32").mu, x.mean(0), atol=1e-12)
    assert len(http_server.requests) == count  # neither the manifest nor the file was requested again


# ---------------------------------------------------------------- issue 19: cache names, secrets in URLs


def _cache_files(home):
    """Every file under `home` but the lock files, as paths relative to it."""
    return sorted(os.path.relpath(os.path.join(root, f), home) for root, _, files in os.walk(home)
                  for f in files if not f.endswith(".lock"))


@pytest.mark.parametrize("tail", ["/..", "/.", "/"])
def test_a_source_url_ending_in_a_dot_segment_stays_in_its_entry_folder(http_server, home, tmp_path, monkeypatch,
                                                                         tail):
    """Item 7: the kept source is named by us (the entry's ref, the source's place in the list), never by the
    URL's last segment: a URL ending in `/..` used to write the file over the cache's `sources` folder."""
    data, _ = _npz_bytes(dim=8)
    for path in ("/", "/stats", "/stats/", "/stats/..", "/stats/."):  # whatever the client makes of the dots
        http_server.files[path] = data
    url = http_server.url + "/stats" + tail
    _manifest(tmp_path, monkeypatch, [_entry(url, sha256=sha256_of(data)),
                                      _entry(url, sha256=sha256_of(data), name="other")])
    registry.fetch("toy-train-32", progress=False)
    registry.fetch("other-train-32", progress=False)  # the sources folder still takes the next entry
    assert _cache_files(home) == ["stats/other-train-32-clean@1.h5", "stats/other-train-32-clean@1.h5.sha256",
                                  "stats/sources/other-train-32-clean@1/source-1.npz",
                                  "stats/sources/toy-train-32-clean@1/source-1.npz",
                                  "stats/toy-train-32-clean@1.h5", "stats/toy-train-32-clean@1.h5.sha256"]
    assert registry.verify("toy-train-32")["source_sha256"] == sha256_of(data)


SECRETS = ("s3cr3t-token", "pa55word")


def _signed(srv, path):
    """`path` on `srv` as a signed URL: userinfo, a token in the query string and a fragment."""
    return srv.url.replace("http://", "http://alice:pa55word@") + path + "?sig=s3cr3t-token&expires=9#part"


def _assert_no_secret(text, where):
    assert not any(secret in text for secret in SECRETS), f"a secret is in {where}: {text}"


def test_a_signed_source_url_is_used_but_never_stored(http_server, home, tmp_path, monkeypatch):
    """Item 11: the token and the userinfo reach the server, but neither the .h5's `source` attribute, the
    record of an unpinned entry's hash, nor any other file in the cache holds them."""
    data, _ = _npz_bytes(dim=8)
    http_server.files["/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [_entry(_signed(http_server, "/toy.npz"), sha256=None)])
    path = registry.fetch("toy-train-32", progress=False)
    assert http_server.queries == [("/toy.npz", "sig=s3cr3t-token&expires=9")]
    assert http_server.get_requests("/toy.npz")[0]["Authorization"].startswith("Basic ")
    assert registry.load(path).meta["source"] == http_server.url + "/toy.npz"
    for name in _cache_files(home):
        _assert_no_secret(name, "a file name")
        with open(home / name, "rb") as f:
            _assert_no_secret(f.read().decode("latin-1"), name)
    _assert_no_secret(json.dumps(registry.info("toy-train-32"), default=str), "stats info")


def test_errors_about_a_signed_source_url_print_no_secret(http_server, home, tmp_path, monkeypatch):
    """Item 11: a 404, a failed conversion (an HTML page) and a hash mismatch name the URL without its token."""
    data, _ = _npz_bytes(dim=8)
    http_server.files["/page.npz"] = b"<!DOCTYPE html><html>log in</html>"
    http_server.files["/other.npz"] = _npz_bytes(dim=8, seed=4)[0]
    urls = [_signed(http_server, p) for p in ("/missing.npz", "/page.npz", "/other.npz")]
    _manifest(tmp_path, monkeypatch, [dict(_entry(urls[0], sha256=sha256_of(data)),
                                           sources=[{"url": u, "format": "npz"} for u in urls])])
    with pytest.raises(DownloadError) as error:
        registry.fetch("toy-train-32", progress=False)
    message = str(error.value)
    assert f"{http_server.url}/missing.npz failed: HTTP 404" in message and "/page.npz" in message
    assert f"sha256 mismatch for {http_server.url}/other.npz" in message
    _assert_no_secret(message, "the error")


def test_a_signed_manifest_url_is_not_stored_or_printed(http_server, home, monkeypatch):
    """Item 11: a manifest named by a signed URL: the entries' `manifest` (stored in fetched files, shown by
    `stats info`) and the error for an unreadable manifest name it without the token."""
    data, _ = _npz_bytes(dim=8)
    http_server.files["/team/toy.npz"] = data
    http_server.files["/team/manifest.yaml"] = json.dumps(
        {"format_version": 1, "entries": [_entry("toy.npz", sha256=sha256_of(data))]}).encode()
    monkeypatch.setenv("GENMETRICS_MANIFEST", _signed(http_server, "/team/manifest.yaml"))
    stats = registry.load("toy-train-32")
    assert stats.meta["manifest"] == http_server.url + "/team/manifest.yaml"
    _assert_no_secret(json.dumps(registry.info("toy-train-32"), default=str), "stats info")
    monkeypatch.setenv("GENMETRICS_MANIFEST", _signed(http_server, "/team/gone.yaml"))
    with pytest.raises(RuntimeError, match="cannot read manifest") as error:
        resolve("toy-train-32")
    _assert_no_secret(str(error.value), "the error")
