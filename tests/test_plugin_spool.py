"""The retrying sender and its disk spool against a real mlflow server that goes down and comes back."""
import os
import time

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from genmetrics.plugin import spool
from genmetrics.plugin.cli import main as cli_main


@pytest.fixture
def genmetrics_home(tmp_path, monkeypatch):
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    spool.senders.reset()  # the process's senders hold the spool folder they began with
    yield tmp_path / "home"
    spool.senders.reset()


@pytest.fixture
def run_id(mlflow_server):
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("spool") or client.get_experiment(client.create_experiment("spool"))
    return client.create_run(experiment.experiment_id).info.run_id


def _fast_sender(uri):
    return spool.Sender(uri, policy=spool.RetryPolicy(tries=2, backoff=0.05, probe_timeout=1, replay_interval=0.2))


def _batch(run_id, step, value, timestamp):
    return {"op": "log_batch", "run_id": run_id, "metrics": [["gen/fid", value, timestamp, step],
                                                            ["gen/kid", value / 10, timestamp, step]],
            "tags": {"gen/last": str(step)}}


def test_down_server_spools_then_replays_each_operation_once(mlflow_server, run_id, genmetrics_home, capsys):
    sender = _fast_sender(mlflow_server.uri)
    assert sender.submit(_batch(run_id, 0, 10.0, 1000))
    mlflow_server.stop()
    try:
        started = time.monotonic()
        for step in (1, 2, 3):
            assert not sender.submit(_batch(run_id, step, 10.0 - step, 1000 + step))
        grid = np.zeros((20, 30, 3), np.uint8)
        grid[:, :10] = 255
        assert not sender.submit({"op": "log_image", "run_id": run_id, "key": "gen/samples", "step": 3,
                                  "timestamp": 1003}, image=grid)
        assert not sender.submit({"op": "log_params", "run_id": run_id, "params": {"gen/mode": "clean"}})
        assert time.monotonic() - started < 30  # the training loop is not stalled for minutes
        assert len(sender.pending()) == 5
        assert len([n for n in os.listdir(sender.directory) if n.endswith(".png")]) == 1
        with open(os.path.join(sender.directory, "uri.txt")) as f:
            assert f.read() == mlflow_server.uri
        assert cli_main(["replay", "--tracking-uri", mlflow_server.uri]) == 1  # still down: nothing lost
        assert len(sender.pending()) == 5
    finally:
        mlflow_server.start()
    assert cli_main(["replay"]) == 0  # every spool under $GENMETRICS_HOME
    assert "all sent" in capsys.readouterr().out
    assert sender.pending() == []
    assert not [n for n in os.listdir(sender.directory) if n.endswith(".png")]
    client = MlflowClient(mlflow_server.uri)
    fid = client.get_metric_history(run_id, "gen/fid")
    assert sorted((m.step, m.value, m.timestamp) for m in fid) == [(s, 10.0 - s, 1000 + s) for s in range(4)]
    assert len(client.get_metric_history(run_id, "gen/kid")) == 4
    run = client.get_run(run_id)
    assert run.data.params["gen/mode"] == "clean" and run.data.tags["gen/last"] == "3"
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert len([p for p in images if p.endswith(".png")]) == 1, images


def test_replay_after_a_crash_between_send_and_delete_does_not_duplicate(mlflow_server, run_id, genmetrics_home):
    """The op reached the server but its spool file survived (crash / lost response): verify, don't resend."""
    sender = _fast_sender(mlflow_server.uri)
    op = _batch(run_id, 7, 1.5, 2000)
    image_op = {"op": "log_image", "run_id": run_id, "key": "gen/samples", "step": 7, "timestamp": 2000}
    grid = np.full((8, 8, 3), 128, np.uint8)
    assert sender.submit(op) and sender.submit(image_op, image=grid)
    sender._spool(dict(op, id="a" * 32), None)
    sender._spool(dict(image_op, id="b" * 32), grid)
    assert len(sender.pending()) == 2
    assert sender.replay() and sender.pending() == []
    client = MlflowClient(mlflow_server.uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "gen/fid")] == [(7, 1.5)]
    assert len([a for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]) == 1


def test_changed_param_becomes_a_tag(mlflow_server, run_id, genmetrics_home):
    sender = _fast_sender(mlflow_server.uri)
    assert sender.submit({"op": "log_params", "run_id": run_id, "params": {"gen/num_samples": "8"}})
    assert sender.submit({"op": "log_params", "run_id": run_id, "params": {"gen/num_samples": "16"}})
    data = MlflowClient(mlflow_server.uri).get_run(run_id).data
    assert data.params["gen/num_samples"] == "8" and data.tags["gen/num_samples"] == "16"


def test_rejected_operation_is_not_retried_forever(mlflow_server, genmetrics_home, caplog):
    sender = _fast_sender(mlflow_server.uri)
    bad = _batch("0" * 32, 0, 1.0, 1)
    assert not sender.submit(bad)  # unknown run: rejected, warned, not spooled
    assert sender.pending() == []
    assert "rejected" in caplog.text
    sender._spool(dict(bad, id="c" * 32), None)
    assert sender.replay() and sender.pending() == []
    failed = os.listdir(os.path.join(sender.directory, "failed"))
    assert any(n.endswith(".error.txt") for n in failed)


def test_sqlite_store_uses_the_same_sender(tmp_path, genmetrics_home, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store puts artifacts under ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("x")).info.run_id
    sender = _fast_sender(uri)
    assert sender.submit(_batch(run_id, 1, 3.0, 10))
    assert [m.value for m in client.get_metric_history(run_id, "gen/fid")] == [3.0]


# ---------------------------------------------------------------- permanent errors never block (issue 11, item 8)


def _failed_reasons(sender):
    return [reason for _, reason in sender.failed()]


def test_client_side_rejections_go_to_failed_and_later_writes_go_through(mlflow_server, run_id, genmetrics_home):
    sender = _fast_sender(mlflow_server.uri)
    bad_key = {"op": "log_batch", "run_id": run_id, "metrics": [["gen<x>/fid", 1.0, 5, 1]], "tags": {}}
    huge_step = _batch(run_id, 2 ** 70, 1.0, 6)
    bad_image = {"op": "log_image", "run_id": run_id, "key": "gen<x>/samples", "step": 1, "timestamp": 7}
    assert not sender.submit(bad_key)
    assert not sender.submit(huge_step)
    assert not sender.submit(bad_image, image=np.zeros((4, 4, 3), np.uint8))
    assert sender.pending() == []  # nothing queued: the server is up, these writes are wrong
    reasons = _failed_reasons(sender)
    assert len(reasons) == 3 and "gen<x>/fid" in reasons[0] and "out of range" in reasons[1], reasons
    assert all("\n" not in r for r in reasons)
    assert sender.submit(_batch(run_id, 3, 2.0, 8))  # the next write is not held up
    assert [m.step for m in MlflowClient(mlflow_server.uri).get_metric_history(run_id, "gen/fid")] == [3]


def test_a_spooled_rejection_does_not_block_the_queue_of_other_processes(mlflow_server, run_id, genmetrics_home,
                                                                         capsys):
    import subprocess
    import sys

    sender = _fast_sender(mlflow_server.uri)
    sender._spool(dict(_batch(run_id, 2 ** 70, 1.0, 10), id="d" * 32), None)  # spooled while the server was down
    sender._spool(dict(_batch(run_id, 1, 1.0, 11), id="e" * 32), None)
    script = ("import sys; from genmetrics.plugin import spool; s = spool.Sender(sys.argv[1]); "
              "print(s.submit({'op': 'log_batch', 'run_id': sys.argv[2], "
              "'metrics': [['gen/fid', 2.0, 12, 2]], 'tags': {}}))")
    env = dict(os.environ, GENMETRICS_LOG_TRIES="2", GENMETRICS_LOG_BACKOFF="0.05")
    done = subprocess.run([sys.executable, "-c", script, mlflow_server.uri, run_id], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.stdout.strip() == "True", done.stderr[-2000:]
    assert sender.pending() == []
    history = MlflowClient(mlflow_server.uri).get_metric_history(run_id, "gen/fid")
    assert sorted(m.step for m in history) == [1, 2]
    assert cli_main(["replay", "--tracking-uri", mlflow_server.uri]) == 2
    out = capsys.readouterr().out
    assert "1 operation(s) rejected by the server for good" in out and "out of range" in out
    assert sender.failed_dir in out


def test_writes_to_a_deleted_run_or_experiment_go_to_failed(mlflow_server, genmetrics_home):
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment(f"deleted-{time.time_ns()}")
    deleted_run = client.create_run(experiment_id).info.run_id
    other_run = client.create_run(experiment_id).info.run_id
    client.delete_run(deleted_run)
    sender = _fast_sender(mlflow_server.uri)
    assert not sender.submit(_batch(deleted_run, 0, 1.0, 1))
    client.delete_experiment(experiment_id)
    assert not sender.submit({"op": "log_params", "run_id": other_run, "params": {"gen/mode": "clean"}})
    reasons = _failed_reasons(sender)
    assert len(reasons) == 2 and all("deleted" in r or "active" in r for r in reasons), reasons
    assert sender.pending() == []


def test_server_down_is_only_network_errors_timeouts_and_5xx():
    import requests
    from mlflow.exceptions import MlflowException, RestException

    assert spool.server_down(spool.TrackingUnavailable("x"))
    try:
        try:
            raise requests.ConnectionError("refused")
        except requests.ConnectionError as error:
            raise MlflowException(f"API request failed with exception {error}")  # how MLflow wraps it
    except MlflowException as wrapped:
        assert spool.server_down(wrapped)
    assert spool.server_down(RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}))
    assert not spool.server_down(RestException({"error_code": "INVALID_PARAMETER_VALUE", "message": "bad key"}))
    assert not spool.server_down(RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}))
    assert spool.server_down(RestException({"error_code": "UNAUTHENTICATED", "message": "who?"}))  # kept spooled
    assert not spool.server_down(RestException({"error_code": "PERMISSION_DENIED", "message": "not yours"}))
    assert not spool.server_down(ValueError("Value out of range: 1180591620717411303424"))


def test_a_thread_pool_stopped_for_interpreter_exit_means_the_write_waits_in_the_spool():
    """`atexit` handlers run after `concurrent.futures` stopped its pools: an upload through one is spooled."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    pool.shutdown()
    with pytest.raises(RuntimeError) as refused:
        pool.submit(print)
    assert spool.server_down(refused.value)
    assert not spool.server_down(RuntimeError("a bug"))


# ---------------------------------------------------------------- bounded on a dead server (issue 11, item 9)


def test_a_server_that_stops_answering_after_the_probe_costs_one_bounded_wait(http_server, genmetrics_home,
                                                                              monkeypatch):
    """/health answers, every API request hangs: the write is spooled while the server still holds it; nothing
    is sent again while that request is open; MLflow's settings (process-wide variables) are never changed."""
    import threading

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    environment = dict(os.environ)
    http_server.files["/health"] = b"OK"
    release = threading.Event()
    http_server.stalls["/api/"] = release
    sender = spool.Sender(http_server.url, policy=spool.RetryPolicy(tries=3, backoff=0.05, probe_timeout=1,
                                                                    replay_interval=60, timeout=2))
    sent = []
    writer = threading.Thread(target=lambda: sent.append(sender.submit(_batch("0" * 32, 1, 1.0, 1))))
    try:
        writer.start()
        assert _wait_for(lambda: _api_requests(http_server))  # the server holds our request now
        assert dict(os.environ) == environment  # also while our request is in flight
        writer.join()
        assert sent == [False]
        assert http_server.stalls_answered == 0  # we gave up before the server answered anything
        assert len(sender.pending()) == 1
        assert "did not answer" in sender.last_error or "timed out" in sender.last_error, sender.last_error
        assert not sender.replay()  # the held request is still open: nothing is sent again until it ends
        assert _api_requests(http_server) == 1 and len(sender.pending()) == 1
    finally:
        release.set()
    assert dict(os.environ) == environment


def _api_requests(http_server):
    with http_server.lock:
        return sum(path.startswith("/api/") for path, _ in http_server.requests)


def _wait_for(condition, seconds=30):
    """Poll `condition` until it holds (True) or `seconds` have passed (False)."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_the_write_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("GENMETRICS_LOG_TIMEOUT", "7.5")
    assert spool.RetryPolicy.from_env().timeout == 7.5


def test_log_gen_metrics_with_an_invalid_prefix_keeps_the_write_in_failed(mlflow_server, run_id, genmetrics_home,
                                                                         tiny_reference_path):
    from fixtures_plugin_scoring import TinyExtractor, tiny_images

    from genmetrics.plugin import log_gen_metrics

    client = MlflowClient(mlflow_server.uri)
    options = dict(reference=tiny_reference_path, metrics=("fid",), model=TinyExtractor(), client=client,
                   run_id=run_id, log_grid=False)
    result = log_gen_metrics(tiny_images(8, seed=3), step=1, prefix="gen<x>/", **options)
    assert list(result) == ["gen<x>/fid"]
    sender = spool.get_sender(mlflow_server.uri)
    assert sender.pending() == [] and any("gen<x>/fid" in r for r in _failed_reasons(sender))
    log_gen_metrics(tiny_images(8, seed=4), step=2, **options)
    assert [m.step for m in client.get_metric_history(run_id, "gen/fid")] == [2]


# ---------------------------------------------------------------- Ctrl-C during flush (issue 11, item 9)

INTERRUPTED_SCRIPT = """
import sys, time
import mlflow
from fixtures_plugin_scoring import TinyExtractor, tiny_images
from genmetrics.plugin import flush, log_gen_metrics


class Slow(TinyExtractor):
    def forward(self, x):
        time.sleep(4)
        return super().forward(x)


mlflow.set_tracking_uri(sys.argv[1])
with mlflow.start_run() as run:
    print(run.info.run_id, flush=True)
    for step in range(3):
        log_gen_metrics(tiny_images(8, seed=step), reference=sys.argv[2], step=step, metrics=("fid",), model=Slow(),
                        blocking=False, log_grid=False)
    print("flushing", flush=True)
    flush()
"""


def test_two_ctrl_c_during_flush_spool_the_unfinished_steps(tmp_path, genmetrics_home, tiny_reference_path):
    import signal
    import subprocess
    import sys

    from genmetrics.plugin.samples import SAMPLES_TAG_PREFIX, read_samples_file

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")]),
               GENMETRICS_OFFLINE="1")
    child = subprocess.Popen([sys.executable, "-c", INTERRUPTED_SCRIPT, uri, tiny_reference_path], env=env,
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    assert child.stdout.readline().strip() == "flushing"
    time.sleep(1)  # inside flush(), step 0 is being scored, steps 1 and 2 wait in the queue
    child.send_signal(signal.SIGINT)
    time.sleep(1)  # the exit flush waits for step 0
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=300)
    assert "spooled the samples of 3 unfinished step(s)" in stderr, stderr[-3000:]
    client = MlflowClient(uri)
    if spool.Sender(uri).pending():  # the exit replay did not get through: deliver by hand
        assert cli_main(["replay", "--tracking-uri", uri]) == 0
    tags = client.get_run(run_id).data.tags
    for step in range(3):
        path = tags[SAMPLES_TAG_PREFIX + str(step)]
        local = client.download_artifacts(run_id, path, str(tmp_path))
        samples, _ = read_samples_file(local)
        assert samples.shape == (8, 32, 32, 3)


# ---------------------------------------------------------------- TLS and credentials (issue 19, items 2 and 5)

_TLS_AND_AUTH_ENV = ("MLFLOW_TRACKING_SERVER_CERT_PATH", "MLFLOW_TRACKING_INSECURE_TLS",
                     "MLFLOW_TRACKING_CLIENT_CERT_PATH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                     "MLFLOW_TRACKING_TOKEN")


@pytest.fixture
def quick_sender_env(monkeypatch):
    """One try per write, no background replay during the test, and none of MLflow's TLS/auth settings."""
    monkeypatch.setenv("GENMETRICS_LOG_TRIES", "1")
    monkeypatch.setenv("GENMETRICS_REPLAY_INTERVAL", "600")
    for name in _TLS_AND_AUTH_ENV:
        monkeypatch.delenv(name, raising=False)


def _log_tiny(client, run_id, reference, step, log_grid=False):
    """log_gen_metrics of 8 tiny images (FID only) to `run_id` through `client`."""
    from fixtures_plugin_scoring import TinyExtractor, tiny_images

    from genmetrics.plugin import log_gen_metrics

    return log_gen_metrics(tiny_images(8, seed=step), reference=reference, step=step, metrics=("fid",),
                           model=TinyExtractor(), client=client, run_id=run_id, log_grid=log_grid)


def _fid_steps(uri, run_id):
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, "gen/fid"))


@pytest.mark.parametrize("trust", ["server_cert_path", "insecure_tls"])
def test_https_server_with_a_private_ca_gets_every_write_and_every_replay(
        trust, mlflow_tls_proxy, mlflow_server, run_id, genmetrics_home, quick_sender_env, tiny_reference_path,
        monkeypatch):
    if trust == "server_cert_path":
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", mlflow_tls_proxy.ca.ca_path)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    uri = mlflow_tls_proxy.url
    _log_tiny(MlflowClient(uri), run_id, tiny_reference_path, step=1, log_grid=trust == "server_cert_path")
    sender = spool.get_sender(uri)
    assert sender.pending() == [] and sender.failed() == [], sender.last_error
    assert _fid_steps(mlflow_server.uri, run_id) == [1]
    if trust == "server_cert_path":
        images = MlflowClient(mlflow_server.uri).list_artifacts(run_id, "images")
        assert len([a for a in images if a.path.endswith(".png")]) == 1
    sender._spool(dict(_batch(run_id, 2, 1.0, 2000), id="f" * 32), None)  # as if spooled while the server was down
    assert cli_main(["replay", "--tracking-uri", uri]) == 0
    assert _fid_steps(mlflow_server.uri, run_id) == [1, 2]


def test_https_server_with_an_untrusted_certificate_spools_says_why_and_replays_once_trusted(
        mlflow_tls_proxy, mlflow_server, run_id, genmetrics_home, quick_sender_env, tiny_reference_path,
        monkeypatch, caplog, capsys):
    uri = mlflow_tls_proxy.url
    _log_tiny(MlflowClient(uri), run_id, tiny_reference_path, step=1)
    sender = spool.get_sender(uri)
    spooled = len(sender.pending())
    assert spooled >= 1  # the metrics batch (and any other write of the call), kept
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text and "MLFLOW_TRACKING_SERVER_CERT_PATH" in caplog.text
    assert cli_main(["replay", "--tracking-uri", uri]) == 1
    out = capsys.readouterr().out
    assert f"{spooled} operation(s) still spooled" in out and "MLFLOW_TRACKING_SERVER_CERT_PATH" in out, out
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", mlflow_tls_proxy.ca.ca_path)
    assert cli_main(["replay", "--tracking-uri", uri]) == 0
    assert sender.pending() == [] and _fid_steps(mlflow_server.uri, run_id) == [1]


def test_watch_scores_through_an_https_server_with_a_private_ca(mlflow_tls_proxy, mlflow_server, genmetrics_home,
                                                                quick_sender_env, tiny_reference_path, monkeypatch):
    """watch replays the spool before scoring: with the CA configured it goes through instead of stalling."""
    from fixtures_plugin_scoring import TinyExtractor, tiny_images

    from genmetrics.plugin import log_gen_samples, watch

    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", mlflow_tls_proxy.ca.ca_path)
    client = MlflowClient(mlflow_tls_proxy.url)
    experiment = f"tls-watch-{time.time_ns()}"
    run = client.create_run(client.create_experiment(experiment)).info.run_id
    log_gen_samples(tiny_images(8, seed=5), step=0, run_id=run, client=client)
    spool.get_sender(mlflow_tls_proxy.url)._spool(dict(_batch(run, 9, 1.0, 3000), id="9" * 32), None)
    scored = watch(experiment, tiny_reference_path, metrics=["fid"], max_iterations=1, client=client,
                   model=TinyExtractor())
    assert scored == [(run, 0)]
    assert _fid_steps(mlflow_server.uri, run) == [0, 9]


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _private_spool_tree(root):
    """Every folder and file under `root` (`root` included), after checking that each is private to the
    user and holds no ``secret``."""
    paths = [str(root)]
    for folder, dirs, files in os.walk(root):
        paths += [os.path.join(folder, name) for name in dirs + files]
    for path in paths:
        assert os.stat(path).st_mode & 0o077 == 0, (path, oct(os.stat(path).st_mode))
        if os.path.isfile(path):
            with open(path, "rb") as f:
                assert b"secret" not in f.read(), path
    return paths


def test_credentials_in_the_tracking_uri_are_never_printed_or_stored(
        mlflow_auth_proxy, mlflow_server, run_id, genmetrics_home, quick_sender_env, tiny_reference_path,
        monkeypatch, umask_022, caplog, capsys):
    import warnings

    from fixtures_plugin_scoring import tiny_images

    plain_uri = mlflow_auth_proxy.url
    secret_uri = plain_uri.replace("http://", "http://user:secret@")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not spool.get_sender(secret_uri).submit(_batch("0" * 32, 0, 1.0, 1))  # rejected: kept in failed/
        mlflow_auth_proxy.stop()
        try:
            _log_tiny(MlflowClient(secret_uri), run_id, tiny_reference_path, step=1, log_grid=True)
            sender = spool.get_sender(secret_uri)
            sender.spool_samples(run_id, 3, tiny_images(4, seed=9))  # what Ctrl-C during flush() spools
            spooled = len(sender.pending())
            assert spooled >= 3  # metrics, grid, samples (and any other write of the call)
            kinds = {os.path.splitext(p)[1] for p in _private_spool_tree(genmetrics_home / "spool")}
            assert {".json", ".png", ".npz", ".txt"} <= kinds, kinds
            sender.close()  # the hint for later
            assert cli_main(["replay", "--tracking-uri", secret_uri]) == 1
            assert cli_main(["replay"]) == 1
        finally:
            mlflow_auth_proxy.start()
        assert cli_main(["replay"]) == 1  # the spool does not hold the credentials: 401, and nothing is lost
        assert len(sender.pending()) == spooled and len(sender.failed()) == 1
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "user")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "secret")
        assert cli_main(["replay"]) == 2  # delivered; the rejected write stays listed
    assert _fid_steps(mlflow_server.uri, run_id) == [1]
    assert "genmetrics.samples.3" in MlflowClient(mlflow_server.uri).get_run(run_id).data.tags
    out = capsys.readouterr()
    shown = "\n".join([caplog.text, out.out, out.err] + [str(w.message) for w in caught])
    assert f"genmetrics replay --tracking-uri {plain_uri}" in shown and "MLFLOW_TRACKING_PASSWORD" in shown, shown
    assert "secret" not in shown and "user:" not in shown, shown
    tree = _private_spool_tree(genmetrics_home / "spool")
    assert any(p.endswith("replay.lock") for p in tree) and any(p.endswith(".error.txt") for p in tree), tree


def test_a_spool_an_older_version_kept_with_credentials_is_replayed_and_cleaned(mlflow_server, run_id,
                                                                                genmetrics_home, quick_sender_env):
    """Before issue 19 the folder was named after the URI with its credentials, which uri.txt held in clear."""
    import hashlib
    import json

    secret_uri = mlflow_server.uri.replace("http://", "http://user:secret@")  # the fixture server ignores auth
    legacy = genmetrics_home / "spool" / hashlib.sha256(secret_uri.encode()).hexdigest()[:16]
    legacy.mkdir(parents=True)
    (legacy / "uri.txt").write_text(secret_uri)
    (legacy / f"{'0' * 20}-000000-{'a' * 32}.json").write_text(json.dumps(dict(_batch(run_id, 4, 2.0, 4000),
                                                                              id="a" * 32)))
    assert cli_main(["replay"]) == 0
    assert _fid_steps(mlflow_server.uri, run_id) == [4]
    assert not legacy.exists()
    current = spool.spool_dir(secret_uri)
    with open(os.path.join(current, "uri.txt")) as f:
        assert f.read() == mlflow_server.uri
    assert os.stat(current).st_mode & 0o077 == 0


def test_watch_warnings_do_not_show_the_credentials_of_the_tracking_uri(genmetrics_home, quick_sender_env,
                                                                        tiny_reference_path, monkeypatch, caplog):
    import socket

    from genmetrics.plugin import watch

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = MlflowClient(f"http://user:secret@127.0.0.1:{port}")
    assert watch("nowhere", tiny_reference_path, metrics=["fid"], max_iterations=1, client=client) == []
    assert f"cannot list runs: API request to http://127.0.0.1:{port}/" in caplog.text, caplog.text
    assert "secret" not in caplog.text
