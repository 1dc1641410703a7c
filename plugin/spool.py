"""Lossless logging to MLflow: retry with backoff, spool to disk when the tracking server is down, replay.

Every write of the plugin (metrics + tags batch, params, sample grid, the reference as a dataset input; the
samples of a step that a Ctrl-C left unscored) is an *operation*: a JSON-able dict (``op`` is ``log_batch``,
``log_params``, ``log_image``, ``log_inputs`` or ``log_samples``; a ``log_batch`` with ``model_id`` links its
metrics to that LoggedModel). `Sender.submit` tries it a few times with exponential backoff (default
3 tries, 0.5 s then 1 s apart), all within ``GENMETRICS_LOG_TIMEOUT`` seconds (30) even on a server that
accepts connections and never answers (see "Bounded waits" below). When the server is down (`server_down`: a
connection error, a timeout, an HTTP 5xx or 401) it writes the operation to the spool directory

    <spool root>/<sha256(redact_uri(tracking uri))[:16]>/<sequence>-<id>.json   (+ <id>.png for images)

(the spool root, :func:`genmetrics.stats.environment.spool_root`: ``$GENMETRICS_HOME/spool``, else the
platform's data folder, ``~/.local/share/genmetrics/spool`` on Linux),
one file per operation, written atomically (temporary file, fsync, rename, fsync of the directory),
with ``uri.txt`` naming the tracking URI. Spooled operations are replayed in order, automatically
(before every new submit, and every few seconds by a daemon thread while the spool is not empty) and
by ``genmetrics replay``. A failing tracking server never raises into the caller: `submit` returns
False and logs a warning.

Credentials and TLS. Every request of ours to the tracking server (the /health probe) goes through
MLflow's own `http_request` with the host credentials MLflow would use (`get_default_host_creds`), so
MLFLOW_TRACKING_SERVER_CERT_PATH, MLFLOW_TRACKING_INSECURE_TLS, MLFLOW_TRACKING_CLIENT_CERT_PATH and
MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN apply to it as to MLflow's client; an untrusted certificate
spools the write with a warning that names the setting. A ``user:password@`` part of the tracking URI
is never printed nor stored: messages, ``uri.txt``, ``failed/`` reasons and the spool folder's hash use
the URI without it (`redact_uri`), so a later ``genmetrics replay`` takes the credentials from MLflow's
settings (or from a ``--tracking-uri`` that holds them); until it has them, the server's 401 keeps the
writes spooled. Everything under the spool is private to the user: folders 0700, files (lock files
included) 0600, whatever the umask.

Exactly once. An operation file is deleted only after the server accepted the operation. The gap
between "accepted" and "deleted" (a crash, or a lost HTTP response: the server may have stored a
request whose answer never arrived) is closed by *verify before resend*: every retry and every replay
first reads what the run already holds and sends only what is missing:
- metrics: a metric with the same key, step, timestamp and value (the timestamp is fixed when the
  operation is created) already in `get_metric_history` is not sent again, so a metric never appears
  twice even though MLflow's log_batch itself is not idempotent;
- images: an artifact ``images/<key>+step+<step>+timestamp+<timestamp>+*.png`` already in the run means
  the grid arrived;
- params and tags are idempotent in MLflow (same value twice is accepted); a param that already has
  a *different* value (params are immutable) is logged as a tag of the same key instead;
- dataset inputs: a dataset (name, digest) the run already lists is not added again (nor one this sender
  added to the run before: the reference goes in once per run, not at every step).
A file lock on the spool directory makes one process at a time replay it.

Bounded waits, without touching MLflow's settings. Nothing here sets environment variables or changes
MLflow's state: MLflow's own retries and timeouts (MLFLOW_HTTP_REQUEST_MAX_RETRIES, ..._TIMEOUT) apply to
our requests as the user set them. MLflow offers no per-client timeout (only those process-wide variables;
bounding its REST store and artifact repositories per client would mean re-implementing their private
request code), so the wait is bounded on our side: for an http(s) tracking server every MLflow call of a
sender runs on a request thread of its own (`Sender._call`) and the caller waits for it until the
operation's deadline. A call still running then is *late*: the write is spooled, the late call is left to
finish (its outcome is ignored), and until it has finished every MLflow call of that sender is refused
as "server down" at once, so writes queue in the spool and a replay starts only when the late request has
ended: its verify-before-resend then sees whatever that request stored. A fast-failing server (refused
connection, TLS error, 5xx on /health) is caught first by a /health probe with no retries (`_probe`).
File and database stores (``file:``, ``sqlite:``, ...) are called directly.

Process state. `senders` (a `SenderRegistry`) holds the process's one sender per tracking URI; besides
constants, the only other process-wide value is `Sender._sequence`, a counter that orders the files one
process writes within the same nanosecond (never reset: only its order matters). At interpreter exit
(`atexit`) `senders` closes them: one last replay each, then a warning naming what stays spooled. `atexit`
handlers run after `concurrent.futures` has stopped its thread pools, so a write that needs a pool then
(an artifact upload through one) waits in the spool (`server_down`) for ``genmetrics replay``; Python >= 3.12
starts no thread there either, so at exit the request is made in the calling thread, bounded by MLflow's
own limits only.

Permanent errors never block the queue. An operation refused for any other reason (MLflow's client
rejects an invalid key such as ``gen<x>/fid`` or a step of 2**70; the server answers 4xx such as
INVALID_PARAMETER_VALUE for a deleted run or RESOURCE_DOES_NOT_EXIST) is not retried: it is written to
``failed/`` beside the spool with a one-line ``.error.txt`` and a warning, and the writes after it go on,
in this process and in every other process sharing the spool. ``genmetrics replay`` lists those files
(exit status 2) until they are deleted.
"""
import atexit
import concurrent.futures
import hashlib
import itertools
import json
import logging
import math
import os
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass

import numpy as np

from genmetrics.stats.environment import LOG_BACKOFF, LOG_TIMEOUT, LOG_TRIES, REPLAY_INTERVAL, spool_root

__all__ = ["RetryPolicy", "TrackingUnavailable", "spool_root", "spool_dir", "redact_uri", "redact_text",
           "server_down", "Sender", "SenderRegistry", "senders", "get_sender", "replay"]

logger = logging.getLogger("genmetrics")

@dataclass
class RetryPolicy:
    """`tries` attempts, sleeping `backoff * 2**i` seconds after failed attempt i; a probe of an http(s)
    server's /health answers within `probe_timeout` s; the daemon replays every `replay_interval` s.

    `timeout` bounds one write on a server that does not answer: its tries stop, and the write is
    spooled, once `timeout` seconds have passed (worst case about `timeout` + 1 s, whatever MLflow's
    MLFLOW_HTTP_REQUEST_* settings say; see "Bounded waits" in the module docstring).

    Defaults come from GENMETRICS_LOG_TRIES (3), GENMETRICS_LOG_BACKOFF (0.5), GENMETRICS_LOG_TIMEOUT (30)
    and GENMETRICS_REPLAY_INTERVAL (5) when set.
    """

    tries: int = 3
    backoff: float = 0.5
    probe_timeout: float = 2.0
    replay_interval: float = 5.0
    timeout: float = 30.0

    @classmethod
    def from_env(cls):
        return cls(
            tries=max(1, int(LOG_TRIES.value() or cls.tries)),
            backoff=float(LOG_BACKOFF.value() or cls.backoff),
            replay_interval=float(REPLAY_INTERVAL.value() or cls.replay_interval),
            timeout=max(1.0, float(LOG_TIMEOUT.value() or cls.timeout)),
        )


class TrackingUnavailable(Exception):
    """The tracking server did not answer (connection refused, timeout, 5xx)."""


def spool_dir(tracking_uri):
    """The spool folder of a tracking URI; the same with or without credentials in the URI."""
    return os.path.join(spool_root(), hashlib.sha256(redact_uri(tracking_uri).encode()).hexdigest()[:16])


def redact_uri(uri):
    """`uri` without the ``user:password@`` part of its authority: the form we print and store."""
    parts = urllib.parse.urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#\s'\"]+@")


def redact_text(text):
    """`text` with the ``user:password@`` part removed from every URL in it (MLflow's errors quote the URL)."""
    return _URL_CREDENTIALS.sub(r"\1", str(text))


def _private_dir(path):
    """Create `path` (and missing parents) if needed; `path` itself ends up 0700 whatever the umask."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o700)


def _private_file(path):
    """A new file at `path`, opened for binary writing, created 0600 (the umask can only remove bits)."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _causes(exc):
    """`exc` and the exceptions it was raised from or while handling (MLflow wraps network errors)."""
    seen = []
    while exc is not None and len(seen) < 20 and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _http_status(exc):
    """The HTTP status of a tracking server's answer that `exc` reports (MLflow's RestException or its
    "failed with error code N" error), else None."""
    status = getattr(exc, "get_http_status_code", None)
    answered = type(exc).__name__ == "RestException" or "failed with error code" in str(exc)
    return status() if status is not None and answered else None


def server_down(exc):
    """True when `exc` means the write cannot get through now: a connection error (a TLS certificate that
    is not trusted included), a timeout, an HTTP 5xx/429 answer, or 401 (credentials missing or wrong:
    the write waits in the spool until they are right), or a thread pool that takes no more work because
    the interpreter is exiting (`_refused_at_exit`). Everything else (an invalid key or value rejected
    by MLflow's client, a 4xx such as INVALID_PARAMETER_VALUE or RESOURCE_DOES_NOT_EXIST, a deleted run)
    is permanent."""
    import requests

    network = (TrackingUnavailable, requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError,
               ConnectionError, TimeoutError)
    for cause in _causes(exc):
        if isinstance(cause, network) or _refused_at_exit(cause):
            return True
        status = _http_status(cause)
        if status is not None and (status >= 500 or status == 401):
            return True
    return False


def _refused_at_exit(exc):
    """True for the RuntimeError of `concurrent.futures` ("cannot schedule new futures after [interpreter]
    shutdown") or `threading` ("can't create new thread at interpreter shutdown"): at interpreter exit,
    `atexit` handlers run after the thread pools have stopped (an artifact upload through one fails)."""
    return isinstance(exc, RuntimeError) and ("after shutdown" in str(exc) or "interpreter shutdown" in str(exc))


def _advice(exc):
    """What the user can do about `exc` when it is a TLS verification failure or a 401, else ''."""
    import requests

    for cause in _causes(exc):
        if isinstance(cause, requests.exceptions.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
            return ("; the server's TLS certificate is not trusted: set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA "
                    "bundle that signed it (or MLFLOW_TRACKING_INSECURE_TLS=true to skip the check)")
        if _http_status(cause) == 401:
            return ("; the server refused the credentials (HTTP 401): set MLFLOW_TRACKING_USERNAME and "
                    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)")
    return ""


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path, data):
    """Write `data` to `path` (0600) through a temporary file, fsync and rename."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with _private_file(tmp) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _same_value(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def _image_artifact_prefixes(key, step, timestamp):
    sanitized = key.replace("/", "~")
    return [f"{sanitized}{sep}step{sep}{step}{sep}timestamp{sep}{timestamp}{sep}" for sep in ("+", "%")]


def _first_line(exc):
    """The first line of `exc`'s message (MLflow's messages can span many lines), without URL credentials."""
    text = redact_text(exc).strip().splitlines()
    return text[0] if text else ""


def _one_line(exc):
    """`Type: first line of the message`, and what to do about a TLS or 401 failure."""
    return f"{type(exc).__name__}: {_first_line(exc)}"[:500] + _advice(exc)


def _run_into(future, call, args, kwargs):
    """Run ``call(*args, **kwargs)`` and settle `future` with its result or exception (a request thread's body)."""
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call(*args, **kwargs))
    except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, or ignored when it is late
        future.set_exception(exc)


def _mlflow_version():
    import mlflow

    return mlflow.__version__


def _attachments(op):
    """Files spooled beside an operation (its image, its samples)."""
    return [op[key] for key in ("png", "npz") if isinstance(op.get(key), str)]


class Sender:
    """Sends operations to one tracking URI with retries; spools and replays them (thread-safe)."""

    _sequence = itertools.count()

    def __init__(self, tracking_uri, client=None, policy=None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.display_uri = redact_uri(tracking_uri)
        self.client = client or MlflowClient(tracking_uri=tracking_uri)
        self.policy = policy or RetryPolicy.from_env()
        self.directory = spool_dir(tracking_uri)
        self._lock = threading.RLock()
        self._down = False
        self._failed_at = 0.0
        self._wakeup = threading.Event()
        self._daemon = None
        self._deadline = 0.0
        self._remote = tracking_uri.startswith(("http://", "https://"))
        self._late = None  # the Future of an MLflow call that outlived its deadline
        self.last_error = None
        self._lineage = set()  # (run_id, dataset name, digest) inputs and ("model", id) LoggedModels seen to exist

    # ---- public -------------------------------------------------------------------------------
    def submit(self, op, image=None):
        """Send `op` now (retrying), or spool it. Returns True when sent, False when spooled or failed.

        `image` (uint8 HWC array) goes with ``log_image`` operations. Never raises for server errors:
        when the server is down the operation is spooled; when it is rejected for good (see
        `server_down`) it goes to ``failed/`` with the reason, and later writes are not held up by it.
        """
        op = dict(op, id=op.get("id") or uuid.uuid4().hex)
        with self._lock:
            if self.pending() and (self._recently_failed() or not self.replay()):
                self._spool(op, image)
                return False
            deadline = time.monotonic() + self.policy.timeout
            for attempt in range(self.policy.tries):
                try:
                    self._execute(op, image, verify=attempt > 0, deadline=deadline)
                    self._mark_up()
                    return True
                except Exception as exc:  # noqa: BLE001 - classify every failure, never raise into training
                    if not server_down(exc):
                        self._fail(op, image, exc)
                        return False
                    last_error = exc
                pause = self.policy.backoff * 2 ** attempt
                if attempt + 1 == self.policy.tries or time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            self._mark_down(last_error)
            self._spool(op, image)
            return False

    def pending(self):
        """Paths of spooled operation files, oldest first."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [os.path.join(self.directory, n) for n in sorted(names) if n.endswith(".json")]

    def replay(self, wait=0.0):
        """Send spooled operations in order until one fails; True when the spool is empty afterwards.

        Each operation is verified against the run before sending (see module docstring), and its
        file is removed only once the server holds it. When another replayer holds the spool's lock,
        wait up to `wait` seconds for it, then give up (False).
        """
        from filelock import FileLock, Timeout

        with self._lock:
            paths = self.pending()
            if not paths:
                return True
            try:
                lock = FileLock(os.path.join(self.directory, "replay.lock"), mode=0o600)
                lock.acquire(timeout=wait)
            except Timeout:  # another process is replaying this spool
                return False
            try:
                return self._replay_locked()
            finally:
                lock.release()

    # ---- execution -----------------------------------------------------------------------------
    def _probe(self, deadline):
        """Fail fast when an http(s) tracking server does not answer (MLflow's own retries take minutes).

        The request goes through MLflow's `http_request` with MLflow's host credentials, so its TLS
        settings (CA bundle, insecure mode, client certificate) and auth apply; no retries of its own.
        """
        if not self._remote:
            return
        from mlflow.utils.credentials import get_default_host_creds
        from mlflow.utils.rest_utils import http_request

        timeout = max(0.1, min(self.policy.probe_timeout, deadline - time.monotonic()))
        try:
            response = http_request(get_default_host_creds(self.tracking_uri), "/health", "GET", max_retries=0,
                                    timeout=timeout, raise_on_status=False)
        except Exception as exc:  # noqa: BLE001 - MLflow wraps network errors in MlflowException
            raise TrackingUnavailable(f"{self.display_uri} is unreachable: {_first_line(exc)}") from exc
        if response.status_code >= 500:
            raise TrackingUnavailable(f"{self.display_uri}/health answered {response.status_code}")

    def _call(self, name, *args, **kwargs):
        """``self.client.<name>(...)``, waited for until the deadline of the current operation at most.

        For an http(s) server the call runs on a request thread and the caller waits `deadline - now`
        seconds for it; a call still running then is kept as late (TrackingUnavailable), and until it has
        ended every call is refused at once (see "Bounded waits" in the module docstring). Other stores
        are called directly.
        """
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise self._no_answer()
        call = getattr(self.client, name)
        if not self._remote:
            return call(*args, **kwargs)
        if self._late is not None and not self._late.done():
            raise TrackingUnavailable(f"{self.display_uri} has not answered an earlier request yet")
        future = concurrent.futures.Future()
        try:
            threading.Thread(target=_run_into, args=(future, call, args, kwargs), name="genmetrics-mlflow-request",
                             daemon=True).start()
        except RuntimeError:  # Python >= 3.12 starts no thread at interpreter exit: MLflow's own limits apply
            return call(*args, **kwargs)
        try:
            return future.result(timeout=left)
        except concurrent.futures.TimeoutError:
            raise self._no_answer() from None
        finally:
            if not future.done():  # timed out, or the caller was interrupted (Ctrl-C)
                self._late = future

    def _no_answer(self):
        return TrackingUnavailable(f"{self.display_uri} did not answer within {self.policy.timeout:g} s "
                                   f"(GENMETRICS_LOG_TIMEOUT)")

    def _execute(self, op, image, verify, deadline=None):
        """Perform one operation; every MLflow request ends by `deadline` (default: `policy.timeout` from now)."""
        self._deadline = time.monotonic() + self.policy.timeout if deadline is None else deadline
        self._probe(self._deadline)
        kind = op["op"]
        handlers = {"log_batch": lambda: self._log_batch(op, verify), "log_params": lambda: self._log_params(op),
                    "log_image": lambda: self._log_image(op, image, verify),
                    "log_samples": lambda: self._log_samples(op), "log_inputs": lambda: self._log_inputs(op)}
        if kind not in handlers:
            raise ValueError(f"unknown spooled operation {kind!r}")
        handlers[kind]()

    def _log_batch(self, op, verify):
        """Log metrics and tags in one request; with ``model_id`` (and ``dataset`` = [name, digest]) the metrics are
        also the LoggedModel's (`_model_link`)."""
        from mlflow.entities import Metric, RunTag

        metrics = [tuple(m) for m in op.get("metrics", [])]
        if verify:
            metrics = [m for m in metrics if not self._metric_logged(op["run_id"], *m)]
        if not metrics and not op.get("tags"):
            return
        link = self._model_link(op) if metrics else {}
        self._call(
            "log_batch", op["run_id"],
            metrics=[Metric(key, float(value), int(timestamp), int(step), **link)
                     for key, value, timestamp, step in metrics],
            tags=[RunTag(k, str(v)) for k, v in op.get("tags", {}).items()],
            synchronous=True,
        )

    def _model_link(self, op):
        """The `Metric` keywords that link a batch's metrics to the LoggedModel ``op["model_id"]`` (and to the
        reference dataset ``op["dataset"]``), or {} without a model id.

        The model must exist first: a store given an unknown id stores the run's metrics and then fails on the
        model's (a 5xx that would keep the batch spooled forever), so an id that ``get_logged_model`` does not find,
        or an MLflow without LoggedModels (< 3), logs the metrics to the run only, with one warning. A server that is
        down raises (the batch is spooled and replayed, link included).
        """
        from genmetrics.stats.messages import first_time

        model_id = op.get("model_id")
        if not model_id:
            return {}
        if not hasattr(self.client, "get_logged_model"):
            if first_time(("model_link", "mlflow")):
                logger.warning("genmetrics: MLflow %s has no LoggedModels (MLflow >= 3 has them): metrics are logged "
                               "to the run without the link to model %s", _mlflow_version(), model_id)
            return {}
        if ("model", model_id) not in self._lineage:
            try:
                self._call("get_logged_model", model_id)
            except Exception as exc:  # noqa: BLE001 - classified: a server down is retried, anything else unlinks
                if server_down(exc):
                    raise
                if first_time(("model_link", model_id)):
                    logger.warning("genmetrics: cannot link the metrics to model %s (%s); they are logged to run %s "
                                   "only", model_id, _one_line(exc), op["run_id"])
                return {}
            self._lineage.add(("model", model_id))
        name, digest = op.get("dataset") or (None, None)
        return {"model_id": model_id, "dataset_name": name, "dataset_digest": digest}

    def _log_inputs(self, op):
        """Add the datasets of `op` to the run's inputs, each once per run: skipped when this sender has sent it or
        the run already lists it (same name and digest); the input tag ``mlflow.data.context`` = ``op["context"]``."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        run_id = op["run_id"]
        wanted = [d for d in op["datasets"] if (run_id, d["name"], d["digest"]) not in self._lineage]
        if wanted:
            inputs = self._call("get_run", run_id).inputs
            listed = {(i.dataset.name, i.dataset.digest) for i in (inputs.dataset_inputs if inputs else [])}
            missing = [d for d in wanted if (d["name"], d["digest"]) not in listed]
            if missing:
                tags = [InputTag("mlflow.data.context", op["context"])]
                self._call("log_inputs", run_id, [DatasetInput(Dataset(
                    d["name"], d["digest"], d["source_type"], d["source"], profile=d.get("profile")), tags)
                    for d in missing])
        self._lineage.update((run_id, d["name"], d["digest"]) for d in op["datasets"])

    def _metric_logged(self, run_id, key, value, timestamp, step):
        return any(
            m.step == step and m.timestamp == timestamp and _same_value(float(m.value), float(value))
            for m in self._call("get_metric_history", run_id, key)
        )

    def _log_params(self, op):
        """Log new params; a param that exists with another value becomes a tag of the same key. (Provenance is
        logged as tags since 0.3; this replays ``log_params`` operations that an older version spooled.)"""
        from mlflow.entities import Param, RunTag

        run_id, params = op["run_id"], op["params"]
        existing = self._call("get_run", run_id).data.params
        new = {k: v for k, v in params.items() if k not in existing}
        changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
        if new or changed:
            self._call(
                "log_batch", run_id,
                params=[Param(k, v) for k, v in new.items()],
                tags=[RunTag(k, v) for k, v in changed.items()],
                synchronous=True,
            )

    def _log_image(self, op, image, verify):
        if verify and self._image_logged(op):
            return
        if image is None:
            from PIL import Image

            with Image.open(os.path.join(self.directory, op["png"])) as png:
                image = np.asarray(png.convert("RGB"))
        self._call("log_image", op["run_id"], image, key=op["key"], step=int(op["step"]),
                              timestamp=int(op["timestamp"]), synchronous=True)

    def _image_logged(self, op):
        prefixes = _image_artifact_prefixes(op["key"], op["step"], op["timestamp"])
        for info in self._call("list_artifacts", op["run_id"], "images"):
            name = info.path.rsplit("/", 1)[-1]
            if name.endswith(".png") and any(name.startswith(p) for p in prefixes):
                return True
        return False

    def _log_samples(self, op):
        """Upload spooled samples for deferred scoring (`genmetrics.plugin.samples` convention), unless the
        run already announces them."""
        import shutil
        import tempfile

        from .samples import SAMPLES_TAG_PREFIX, samples_artifact_path

        path = samples_artifact_path(int(op["step"]))
        tag = SAMPLES_TAG_PREFIX + str(int(op["step"]))
        if self._call("get_run", op["run_id"]).data.tags.get(tag) == path:
            return
        with tempfile.TemporaryDirectory(prefix="genmetrics-spooled-samples-") as tmp:
            local = os.path.join(tmp, os.path.basename(path))
            shutil.copyfile(os.path.join(self.directory, op["npz"]), local)
            self._call("log_artifact", op["run_id"], local, os.path.dirname(path))
        self._call("set_tag", op["run_id"], tag, path)

    # ---- spool ---------------------------------------------------------------------------------
    def _spool(self, op, image):
        """Write `op` (and its image as PNG) to the spool; on a disk failure, log and drop it."""
        try:
            self._write_op(self.directory, op, image)
        except OSError as exc:
            logger.error("genmetrics: could not spool %s for run %s to %s: %s; it is lost",
                         op["op"], op.get("run_id"), self.directory, exc)
            return
        try:
            self._start_daemon()
        except RuntimeError:  # at interpreter shutdown no thread starts; the exit hook's replay tries once more
            pass

    def spool_samples(self, run_id, step, samples, targets=None, prompts=None):
        """Spool uint8 NHWC `samples` (and `targets`, and `prompts`) of `step` for deferred scoring, without
        contacting the server: replay uploads them as `log_gen_samples` would (``genmetrics score RUN_ID`` scores
        them)."""
        from .samples import write_samples_file

        op = {"op": "log_samples", "run_id": run_id, "step": int(step), "id": uuid.uuid4().hex}
        op["npz"] = f"{op['id']}.npz"
        self._prepare(self.directory)
        tmp = os.path.join(self.directory, op["npz"] + ".tmp")
        _private_file(tmp).close()  # write_samples_file truncates it and keeps its mode
        write_samples_file(tmp, samples, targets, prompts)
        os.replace(tmp, os.path.join(self.directory, op["npz"]))
        self._spool(op, None)
        return op

    def _prepare(self, folder):
        """Create the spool root, the spool and `folder` private (0700), and ``uri.txt`` without credentials
        (rewritten when an older version stored them)."""
        for path in dict.fromkeys([spool_root(), self.directory, folder]):
            _private_dir(path)
        uri_file = os.path.join(self.directory, "uri.txt")
        try:
            with open(uri_file, encoding="utf-8") as f:
                stored = f.read()
        except FileNotFoundError:
            stored = None
        if stored != self.display_uri:
            _write_atomic(uri_file, self.display_uri.encode())

    def _write_op(self, folder, op, image):
        """Write `op` as ``<time>-<seq>-<id>.json`` (and `image` as ``<id>.png``) into `folder`; returns its path."""
        self._prepare(folder)
        if image is not None:
            from PIL import Image

            op = dict(op, png=f"{op['id']}.png")
            png_path = os.path.join(folder, op["png"])
            tmp = f"{png_path}.tmp.png"
            with _private_file(tmp) as f:
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(f, format="PNG")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, png_path)
        path = os.path.join(folder, f"{time.time_ns():020d}-{next(self._sequence):06d}-{op['id']}.json")
        _write_atomic(path, json.dumps(op).encode())
        return path

    def _fail(self, op, image, exc):
        """Keep a rejected operation in ``failed/`` with the reason, warn, and go on with later writes."""
        reason = _one_line(exc)
        logger.warning("genmetrics: the tracking server rejected %s for run %s (%s); kept in %s, not retried",
                       op["op"], op.get("run_id"), reason, self.failed_dir)
        try:
            path = self._write_op(self.failed_dir, op, image)
            _write_atomic(path + ".error.txt", reason.encode())
        except (OSError, TypeError, ValueError) as error:
            logger.error("genmetrics: could not keep the rejected %s in %s: %s", op["op"], self.failed_dir, error)

    @property
    def failed_dir(self):
        """``failed/`` beside the spool: operations the server rejected for good, each with ``.error.txt``."""
        return os.path.join(self.directory, "failed")

    def failed(self):
        """(operation file, reason) of every operation in ``failed/``, oldest first."""
        try:
            names = sorted(os.listdir(self.failed_dir))
        except FileNotFoundError:
            return []
        entries = []
        for name in (n for n in names if n.endswith(".json")):
            try:
                with open(os.path.join(self.failed_dir, name + ".error.txt"), encoding="utf-8") as f:
                    reason = f.read().strip()
            except OSError:
                reason = "(no reason recorded)"
            entries.append((os.path.join(self.failed_dir, name), reason))
        return entries

    def _replay_locked(self):
        sent = 0
        for path in self.pending():
            try:
                with open(path) as f:
                    op = json.load(f)
            except FileNotFoundError:  # replayed meanwhile by the same process
                continue
            except ValueError as exc:
                self._move_failed(path, None, f"unreadable spool file: {exc}")
                continue
            try:
                self._execute(op, None, verify=True)
            except Exception as exc:  # noqa: BLE001
                if not server_down(exc):
                    logger.warning("genmetrics: the tracking server rejected spooled %s for run %s (%s); moved to %s",
                                   op.get("op"), op.get("run_id"), _one_line(exc), self.failed_dir)
                    self._move_failed(path, op, _one_line(exc))
                    continue
                self._mark_down(exc)
                return False
            os.remove(path)
            for name in _attachments(op):
                try:
                    os.remove(os.path.join(self.directory, name))
                except FileNotFoundError:
                    pass
            sent += 1
        if sent:
            logger.warning("genmetrics: replayed %d spooled operation(s) to %s", sent, self.display_uri)
        self._mark_up()
        return True

    def _move_failed(self, path, op, error):
        self._prepare(self.failed_dir)
        target = os.path.join(self.failed_dir, os.path.basename(path))
        _write_atomic(target + ".error.txt", error.encode())
        os.replace(path, target)
        for name in _attachments(op or {}):
            if os.path.exists(os.path.join(self.directory, name)):
                os.replace(os.path.join(self.directory, name), os.path.join(self.failed_dir, name))

    def _recently_failed(self):
        """Within `replay_interval` s of a failure, queue behind the spool without probing again (a
        black-holed server would otherwise cost a probe timeout per write); the daemon retries."""
        return self._down and time.monotonic() - self._failed_at < self.policy.replay_interval

    def _mark_down(self, error):
        self.last_error = _one_line(error)
        self._failed_at = time.monotonic()
        if not self._down:
            logger.warning(
                "genmetrics: cannot log to %s (%s); spooling to %s and replaying when it is back "
                "(or run `genmetrics replay`)", self.display_uri, self.last_error, self.directory)
        self._down = True

    def _mark_up(self):
        self._down = False

    # ---- background replay ---------------------------------------------------------------------
    def _start_daemon(self):
        with self._lock:
            if self._daemon is None:
                self._daemon = threading.Thread(target=self._replay_loop, name="genmetrics-replay", daemon=True)
                self._daemon.start()

    def _replay_loop(self):
        while True:
            with self._lock:
                if not self.pending():
                    self._daemon = None
                    return
            if self._wakeup.wait(self.policy.replay_interval):
                return
            try:
                self.replay()
            except Exception as exc:  # noqa: BLE001 - the daemon must survive anything
                logger.warning("genmetrics: background replay failed: %s", redact_text(exc))

    def stop(self):
        """Stop the replay daemon (now, or at the end of a replay in progress); the spool stays as it is."""
        self._wakeup.set()

    def close(self):
        """Stop the replay daemon after one last replay attempt; warn about what stays spooled."""
        self.stop()
        try:
            self.replay()
        except Exception as exc:  # noqa: BLE001
            logger.warning("genmetrics: final replay failed: %s", redact_text(exc))
        left = len(self.pending())
        if left:
            logger.warning("genmetrics: %d operation(s) remain spooled in %s; run `genmetrics replay "
                           "--tracking-uri %s` when the server is back%s", left, self.directory, self.display_uri,
                           self.credentials_hint())

    def credentials_hint(self):
        """How a later replay gets the credentials that were in the tracking URI ('' when there were none)."""
        if self.display_uri == self.tracking_uri:
            return ""
        return (" (the credentials in the tracking URI are not stored: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD, or give them in --tracking-uri)")


class SenderRegistry:
    """The process's senders, one per tracking URI: the spool's only module-level state (`senders`).

    A sender keeps the spool folder of the GENMETRICS_HOME it was created under, so a test that changes
    GENMETRICS_HOME calls `reset` first. At interpreter exit `close` gives each sender one last replay.
    """

    def __init__(self):
        self._senders = {}
        self._lock = threading.Lock()

    def get(self, tracking_uri, client=None):
        """The Sender of `tracking_uri`, created on first use (`client` is used when it is created)."""
        with self._lock:
            sender = self._senders.get(tracking_uri)
            if sender is None:
                sender = self._senders[tracking_uri] = Sender(tracking_uri, client=client)
            return sender

    def close(self):
        """Close every sender: one last replay each, and a warning naming what stays spooled."""
        with self._lock:
            current = list(self._senders.values())
        for sender in current:
            sender.close()

    def reset(self):
        """Stop every sender's replay daemon and forget the senders; what they spooled stays on disk."""
        with self._lock:
            current, self._senders = list(self._senders.values()), {}
        for sender in current:
            sender.stop()


senders = SenderRegistry()
atexit.register(senders.close)  # genmetrics.plugin.background registers its flush later: it runs first


def get_sender(tracking_uri, client=None):
    """The process's Sender of a tracking URI (``senders.get``)."""
    return senders.get(tracking_uri, client)


def _stored_uris():
    """The tracking URI of every spool under `spool_root`, from its ``uri.txt``.

    A spool that an older version kept under the hash of a URI with credentials (and whose ``uri.txt``
    holds them) moves to its current folder, where ``uri.txt`` is rewritten without them.
    """
    uris = []
    root = spool_root()
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
        folder, uri_file = os.path.join(root, name), os.path.join(root, name, "uri.txt")
        if not os.path.isfile(uri_file):
            continue
        with open(uri_file, encoding="utf-8") as f:
            uri = f.read().strip()
        target = spool_dir(uri)
        if folder != target and not os.path.exists(target):
            os.replace(folder, target)
            _private_dir(target)
            _write_atomic(os.path.join(target, "uri.txt"), redact_uri(uri).encode())
        uris.append(uri)
    return list(dict.fromkeys(uris))


def replay(tracking_uri=None):
    """Replay spooled operations (of one tracking URI, or of every spool) -> {uri: operations left}.

    The keys are the URIs as given (or as stored, without credentials); print them with `redact_uri`.
    """
    uris = [tracking_uri] if tracking_uri is not None else _stored_uris()
    left = {}
    for uri in uris:
        sender = get_sender(uri)
        sender.replay(wait=60)
        left[uri] = len(sender.pending())
    return left
