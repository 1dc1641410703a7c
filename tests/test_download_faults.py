"""Downloads against a misbehaving loopback server: trickling, endless and looping answers, HTML pages
instead of statistics, conversion failures, read-only caches (issue 11, items 10-12)."""
import io
import json
import os
import socket
import traceback

import numpy as np
import pytest
from fixtures_http import npz_bytes, sha256_of
from fixtures_readonly import run_without_write_override

from genmetrics import registry
from genmetrics.registry.fetch import cache_path
from genmetrics.registry.manifest import load_manifests, resolve
from genmetrics.stats.download import DownloadError, Limits, clear_unreachable, download, fetch_bytes, redact_url

CAPTIVE_PORTAL = b"<!DOCTYPE html><html><body>Please log in to the hotel Wi-Fi</body></html>"
FAST = Limits(deadline=20, min_rate=2000, rate_window=0.5, max_bytes=1 << 20)


@pytest.fixture
def home(genmetrics_home, monkeypatch):
    for name, value in (("DEADLINE", "20"), ("MIN_RATE", "2000"), ("RATE_WINDOW", "0.5")):
        monkeypatch.setenv(f"GENMETRICS_DOWNLOAD_{name}", value)
    return genmetrics_home


def _manifest(tmp_path, monkeypatch, urls, sha256=None, fmt="npz", size=None):
    sources = [dict({"url": url, "format": fmt}, **({"size": size} if size else {})) for url in urls]
    entry = {"name": "toy", "split": "train", "resolution": 32, "mode": "clean", "version": 1, "num_samples": 50,
             "sources": sources, "sha256": sha256}
    path = tmp_path / "team.yaml"
    path.write_text(json.dumps({"format_version": 1, "entries": [entry]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(path))


# ---------------------------------------------------------------- item 11: bounded transfers


def test_a_trickling_server_is_dropped_and_the_transfer_resumes(http_server, tmp_path):
    data = os.urandom(50_000)
    http_server.files["/f"] = data
    http_server.faults["/f"] = [("trickle", 0.05)]
    got = download(http_server.url + "/f", str(tmp_path / "f"), sha256=sha256_of(data), progress=False, backoff=0.01,
                   limits=FAST)
    assert got == sha256_of(data) and (tmp_path / "f").read_bytes() == data
    assert len(http_server.get_requests("/f")) == 2


def test_a_server_that_always_trickles_fails_within_the_deadline(http_server, tmp_path):
    http_server.files["/f"] = os.urandom(50_000)
    http_server.faults["/f"] = [("trickle", 0.05)] * 100
    limits = Limits(deadline=2, min_rate=2000, rate_window=0.5, max_bytes=1 << 20)
    with pytest.raises(DownloadError, match=r"/f did not finish within 2 s"):
        download(http_server.url + "/f", str(tmp_path / "f"), progress=False, retries=1000, backoff=0.01,
                 limits=limits)
    assert not (tmp_path / "f").exists()


def test_an_endless_body_is_cut_at_the_size_cap(http_server, tmp_path):
    http_server.files["/endless"] = b""
    http_server.faults["/endless"] = [("endless",)] * 10
    with pytest.raises(DownloadError, match=r"/endless sent more than the cap of 1048576 bytes"):
        download(http_server.url + "/endless", str(tmp_path / "e"), progress=False, limits=FAST)
    assert not (tmp_path / "e").exists() and not (tmp_path / "e.part").exists()
    assert len(http_server.get_requests("/endless")) == 1  # not retried


def test_a_content_length_above_the_cap_is_refused_before_the_body(http_server, tmp_path):
    http_server.files["/big"] = os.urandom(300_000)
    with pytest.raises(DownloadError, match=r"/big announces 300000 bytes, more than the cap of 100000"):
        download(http_server.url + "/big", str(tmp_path / "big"), progress=False, max_bytes=100_000, limits=FAST)
    assert not (tmp_path / "big.part").exists()


def test_a_redirect_loop_is_one_line_and_not_retried(http_server, tmp_path):
    http_server.faults["/loop"] = [("redirect", "/loop")] * 100
    with pytest.raises(DownloadError, match=r"/loop failed: a redirect loop") as error:
        download(http_server.url + "/loop", str(tmp_path / "x"), progress=False, limits=FAST)
    assert "\n" not in str(error.value)
    assert len(http_server.get_requests("/loop")) <= 31


def test_remote_manifest_reads_are_bounded(http_server, home, monkeypatch):
    http_server.files["/endless.yaml"] = b""
    http_server.faults["/endless.yaml"] = [("endless",)] * 10
    with pytest.raises(DownloadError, match="endless.yaml sent more than the cap of 65536 bytes"):
        fetch_bytes(http_server.url + "/endless.yaml", max_bytes=65536)
    for path, fault in (("/loop.yaml", ("redirect", "/loop.yaml")), ("/slow.yaml", ("trickle", 0.05)),
                        ("/endless.yaml", ("endless",))):
        http_server.files.setdefault(path, b"format_version: 1\nentries: []\n" * 50)
        http_server.faults[path] = [fault] * 100
        monkeypatch.setenv("GENMETRICS_MANIFEST", http_server.url + path)
        with pytest.raises(RuntimeError, match=f"cannot read manifest {http_server.url}{path} .*(redirect loop|"
                                               f"slower than|cap of)") as error:
            load_manifests()
        assert "\n" not in str(error.value)


# ---------------------------------------------------------------- item 10: validate, then record


def test_a_captive_portal_page_does_not_poison_an_unpinned_entry(http_server, home, tmp_path, monkeypatch):
    data, x = npz_bytes()
    http_server.files["/a/toy.npz"] = CAPTIVE_PORTAL  # the first mirror answers 200 with a login page
    http_server.files["/b/toy.npz"] = data
    _manifest(tmp_path, monkeypatch, [http_server.url + "/a/toy.npz", http_server.url + "/b/toy.npz"])
    stats = registry.load("toy-train-32")
    np.testing.assert_allclose(stats.mu, x.mean(axis=0), atol=1e-12)
    assert registry.info("toy-train-32")["recorded_sha256"] == sha256_of(data)
    assert registry.verify("toy-train-32")["ok"]


def test_an_html_page_from_the_only_source_records_nothing(http_server, home, tmp_path, monkeypatch):
    data, _ = npz_bytes()
    http_server.files["/toy.npz"] = CAPTIVE_PORTAL
    _manifest(tmp_path, monkeypatch, [http_server.url + "/toy.npz"])
    with pytest.raises(DownloadError, match=r"toy\.npz is not valid npz statistics.*discarded"):
        registry.fetch("toy-train-32", progress=False)
    assert registry.info("toy-train-32")["recorded_sha256"] is None
    assert not os.path.exists(cache_path(resolve("toy-train-32")))
    http_server.files["/toy.npz"] = data  # the network is back: the real file is accepted
    registry.fetch("toy-train-32", progress=False)
    assert registry.info("toy-train-32")["recorded_sha256"] == sha256_of(data)


def test_wrong_shapes_and_conversion_errors_try_the_next_source(http_server, home, tmp_path, monkeypatch):
    data, x = npz_bytes()
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.zeros(16), sigma=np.zeros((16, 15)))
    http_server.files["/shapes.npz"] = buffer.getvalue()
    http_server.files["/good.npz"] = data
    _manifest(tmp_path, monkeypatch, [http_server.url + u for u in ("/missing.npz", "/loop.npz", "/shapes.npz",
                                                                     "/good.npz")])
    http_server.faults["/loop.npz"] = [("redirect", "/loop.npz")] * 100
    np.testing.assert_allclose(registry.load("toy-train-32").mu, x.mean(axis=0), atol=1e-12)
    assert registry.info("toy-train-32")["recorded_sha256"] == sha256_of(data)
    assert not os.path.exists(home / "stats" / "sources" / "toy-train-32-clean@1" / "source-3.npz")  # shapes.npz


def test_h5_source_with_another_mode_tries_the_next_source(http_server, home, tmp_path, monkeypatch):
    from genmetrics.registry.refstats import ReferenceStats, write_refstats

    x = np.random.default_rng(2).normal(size=(40, 8))
    meta = dict(dataset="toy", split="train", resolution=32, version=1, feature_extractor="x", feature_layer="pool3")
    for mode in ("legacy_pytorch", "clean"):
        path = tmp_path / f"{mode}.h5"
        write_refstats(str(path), ReferenceStats(mu=x.mean(0), sigma=np.cov(x, rowvar=False), n=40,
                                                 meta=dict(meta, mode=mode)))
        http_server.files[f"/{mode}.h5"] = path.read_bytes()
    _manifest(tmp_path, monkeypatch, [http_server.url + "/legacy_pytorch.h5", http_server.url + "/clean.h5"], fmt="h5")
    assert registry.load("toy-train-32").meta["mode"] == "clean"
    assert registry.info("toy-train-32")["recorded_sha256"] == sha256_of(http_server.files["/clean.h5"])


def test_a_manifest_size_caps_the_download(http_server, home, tmp_path, monkeypatch):
    data, _ = npz_bytes()
    http_server.files["/toy.npz"] = b""
    http_server.faults["/toy.npz"] = [("endless",)] * 10
    _manifest(tmp_path, monkeypatch, [http_server.url + "/toy.npz"], size=len(data))
    assert resolve("toy-train-32").sources[0].size == len(data)
    with pytest.raises(DownloadError, match=f"cap of {len(data)} bytes"):
        registry.fetch("toy-train-32", progress=False)
    http_server.faults["/toy.npz"] = []
    http_server.files["/toy.npz"] = data + b"x" * 100  # announces more than the manifest says
    with pytest.raises(DownloadError, match=f"announces {len(data) + 100} bytes, more than the cap of {len(data)}"):
        registry.fetch("toy-train-32", progress=False)


# ---------------------------------------------------------------- item 12: read-only caches

READ_ONLY_SCRIPT = """
import os, sys
from genmetrics import registry
from genmetrics.stats.download import CacheNotWritableError, download
home, url = sys.argv[1:3]
try:
    registry.fetch("toy-train-32-clean@1", progress=False)
except CacheNotWritableError as error:
    print("fetch:", error)
try:
    download(url, os.path.join(home, "w", "toy.npz"), progress=False)
except CacheNotWritableError as error:
    print("download:", error)
print("cached mu[0]:", registry.load("toy-train-32-clean@2").mu[0])
from genmetrics.plugin.cli import main
print("cli exit status:", main(["stats", "fetch", "toy-train-32-clean@1"]))
"""


def _make_read_only(folder):
    for root, dirs, _ in os.walk(folder):
        os.chmod(root, 0o555)


def test_a_read_only_cache_is_a_one_line_error_and_its_files_are_still_used(http_server, home, tmp_path,
                                                                            monkeypatch):
    import sys

    data, x = npz_bytes()
    http_server.files["/toy.npz"] = data
    path = tmp_path / "team.yaml"
    entries = [{"name": "toy", "split": "train", "resolution": 32, "mode": "clean", "version": version,
                "sources": [{"url": http_server.url + "/toy.npz", "format": "npz"}], "sha256": None}
               for version in (1, 2)]
    path.write_text(json.dumps({"format_version": 1, "entries": entries}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(path))
    registry.fetch("toy-train-32-clean@2", progress=False)  # in the cache before it turns read-only
    _make_read_only(home)
    try:
        done = run_without_write_override([sys.executable, "-c", READ_ONLY_SCRIPT, str(home),
                                           http_server.url + "/toy.npz"], cwd=tmp_path)
    finally:
        for root, _, _ in os.walk(home):
            os.chmod(root, 0o755)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (f"fetch: cannot write to the genmetrics cache folder {home}/stats (Permission denied); make "
                        f"it writable or set GENMETRICS_HOME to a writable folder (files already there are still "
                        f"used)")
    assert lines[1].startswith(f"download: cannot write to the genmetrics cache folder {home}/w ")
    assert lines[2] == f"cached mu[0]: {x.mean(axis=0)[0]}"
    assert lines[3] == "cli exit status: 2"
    assert done.stderr.strip().splitlines()[-1] == (
        f"genmetrics stats fetch: error: cannot write to the genmetrics cache folder {home}/stats (Permission "
        f"denied); make it writable or set GENMETRICS_HOME to a writable folder (files already there are still used)")


# ---------------------------------------------------------------- issue 19 item 11: no secrets in messages


def test_redact_url_strips_userinfo_query_and_fragment():
    assert redact_url("https://u:p@host:8443/a/b.npz?sig=T&x=1#f") == "https://host:8443/a/b.npz"
    assert redact_url("file:///tmp/a.npz?x=1") == "file:///tmp/a.npz"
    for text in ("/tmp/a?b.npz", "C:\\stats\\a.npz", "relative/a.npz", "http://host/a.npz"):
        assert redact_url(text) == text


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("fault", ["404", "500", "redirect", "refused", "cap", "sha256"])
def test_download_errors_name_the_url_without_its_secrets(http_server, tmp_path, fault):
    """Every kind of failure names the URL without userinfo, token and fragment, in the message and in the
    whole printed traceback (requests' own messages repeat the query string: they are not chained)."""
    http_server.files["/f"] = os.urandom(5000)
    http_server.faults["/f"] = {"500": [("status", 500)] * 3,
                                "redirect": [("redirect", "/f?sig=next-s3cr3t-token")] * 100}.get(fault, [])
    base = f"http://127.0.0.1:{_closed_port()}" if fault == "refused" else http_server.url
    path = "/missing" if fault == "404" else "/f"
    url = base.replace("http://", "http://alice:pa55word@") + path + "?sig=s3cr3t-token#part"
    limits = Limits(deadline=20, min_rate=2000, rate_window=0.5, max_bytes=100 if fault == "cap" else 1 << 20)
    try:
        with pytest.raises(DownloadError) as error:
            download(url, str(tmp_path / "f"), sha256="0" * 64 if fault == "sha256" else None, progress=False,
                     retries=2, backoff=0.01, limits=limits)
    finally:
        clear_unreachable()
    printed = "".join(traceback.format_exception(error.type, error.value, error.tb))
    assert f"{base}{path}" in str(error.value)
    assert "s3cr3t" not in printed and "pa55word" not in printed and "#part" not in printed, printed
    assert not (tmp_path / "f").exists()
