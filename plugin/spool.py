"""Lossless logging to MLflow: retry with backoff, spool to disk when the tracking server is down, replay.

Every write of the plugin (metrics + tags batch, params, sample grid) is an *operation*: a JSON-able
dict (``op`` is ``log_batch``, ``log_params`` or ``log_image``). `Sender.submit` tries it a few times
with exponential backoff (default 3 tries, 0.5 s then 1 s apart, i.e. ~2 s in the worst case; see
`RetryPolicy`), and when all tries fail it writes the operation to the spool directory

    $GENMETRICS_HOME/spool/<sha256(tracking uri)[:16]>/<sequence>-<id>.json   (+ <id>.png for images)

one file per operation, written atomically (temporary file, fsync, rename, fsync of the directory),
with ``uri.txt`` naming the tracking URI. Spooled operations are replayed in order, automatically
(before every new submit, and every few seconds by a daemon thread while the spool is not empty) and
by ``genmetrics replay``. A failing tracking server never raises into the caller: `submit` returns
False and logs a warning.

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
  a *different* value (params are immutable) is logged as a tag of the same key instead.
A file lock on the spool directory makes one process at a time replay it. Operations the server
rejects for good (an unknown run, an invalid value) are not retried forever: they move to
``failed/`` beside the spool with the error, and a warning is logged.
"""
import atexit
import concurrent.futures.thread  # noqa: F401 - see the exit hook at the end
import hashlib
import itertools
import json
import logging
import math
import os
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger("genmetrics")

PERMANENT_ERROR_CODES = frozenset(
    {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST", "INVALID_STATE",
     "RESOURCE_ALREADY_EXISTS"}
)


@dataclass
class RetryPolicy:
    """`tries` attempts, sleeping `backoff * 2**i` seconds after failed attempt i; a probe of an http(s)
    server's /health answers within `probe_timeout` s; the daemon replays every `replay_interval` s.

    Defaults come from GENMETRICS_LOG_TRIES (3), GENMETRICS_LOG_BACKOFF (0.5) and
    GENMETRICS_REPLAY_INTERVAL (5) when set.
    """

    tries: int = 3
    backoff: float = 0.5
    probe_timeout: float = 2.0
    replay_interval: float = 5.0

    @classmethod
    def from_env(cls):
        return cls(
            tries=max(1, int(os.environ.get("GENMETRICS_LOG_TRIES", cls.tries))),
            backoff=float(os.environ.get("GENMETRICS_LOG_BACKOFF", cls.backoff)),
            replay_interval=float(os.environ.get("GENMETRICS_REPLAY_INTERVAL", cls.replay_interval)),
        )


class TrackingUnavailable(Exception):
    """The tracking server did not answer (connection refused, timeout, 5xx)."""


def spool_root():
    """$GENMETRICS_HOME/spool (GENMETRICS_HOME defaults to ~/.cache/genmetrics)."""
    home = os.environ.get("GENMETRICS_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "genmetrics")
    return os.path.join(home, "spool")


def spool_dir(tracking_uri):
    return os.path.join(spool_root(), hashlib.sha256(tracking_uri.encode()).hexdigest()[:16])


def _is_permanent(exc):
    return getattr(exc, "error_code", None) in PERMANENT_ERROR_CODES


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
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
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


class Sender:
    """Sends operations to one tracking URI with retries; spools and replays them (thread-safe)."""

    _sequence = itertools.count()

    def __init__(self, tracking_uri, client=None, policy=None):
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = client or MlflowClient(tracking_uri=tracking_uri)
        self.policy = policy or RetryPolicy.from_env()
        self.directory = spool_dir(tracking_uri)
        self._lock = threading.RLock()
        self._known_params = {}
        self._down = False
        self._failed_at = 0.0
        self._wakeup = threading.Event()
        self._daemon = None

    # ---- public -------------------------------------------------------------------------------
    def submit(self, op, image=None):
        """Send `op` now (retrying), or spool it. Returns True when sent, False when spooled/dropped.

        `image` (uint8 HWC array) goes with ``log_image`` operations. Never raises for server errors.
        """
        op = dict(op, id=op.get("id") or uuid.uuid4().hex)
        with self._lock:
            if self.pending() and (self._recently_failed() or not self.replay()):
                self._spool(op, image)
                return False
            for attempt in range(self.policy.tries):
                try:
                    self._execute(op, image, verify=attempt > 0)
                    self._mark_up()
                    return True
                except Exception as exc:  # noqa: BLE001 - classify every failure, never raise into training
                    if _is_permanent(exc):
                        logger.warning("genmetrics: the tracking server rejected %s for run %s: %s",
                                       op["op"], op.get("run_id"), exc)
                        return False
                    last_error = exc
                if attempt + 1 < self.policy.tries:
                    time.sleep(self.policy.backoff * 2 ** attempt)
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
                lock = FileLock(os.path.join(self.directory, "replay.lock"))
                lock.acquire(timeout=wait)
            except Timeout:  # another process is replaying this spool
                return False
            try:
                return self._replay_locked()
            finally:
                lock.release()

    # ---- execution -----------------------------------------------------------------------------
    def _probe(self):
        """Fail fast when an http(s) tracking server does not answer (MLflow's own retries take minutes)."""
        if not self.tracking_uri.startswith(("http://", "https://")):
            return
        import requests

        try:
            response = requests.get(self.tracking_uri.rstrip("/") + "/health", timeout=self.policy.probe_timeout)
        except requests.RequestException as exc:
            raise TrackingUnavailable(f"{self.tracking_uri} is unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise TrackingUnavailable(f"{self.tracking_uri}/health answered {response.status_code}")

    def _execute(self, op, image, verify):
        self._probe()
        kind = op["op"]
        if kind == "log_batch":
            self._log_batch(op, verify)
        elif kind == "log_params":
            self._log_params(op)
        elif kind == "log_image":
            self._log_image(op, image, verify)
        else:
            raise ValueError(f"unknown spooled operation {kind!r}")

    def _log_batch(self, op, verify):
        from mlflow.entities import Metric, RunTag

        metrics = [tuple(m) for m in op.get("metrics", [])]
        if verify:
            metrics = [m for m in metrics if not self._metric_logged(op["run_id"], *m)]
        if not metrics and not op.get("tags"):
            return
        self.client.log_batch(
            op["run_id"],
            metrics=[Metric(key, float(value), int(timestamp), int(step)) for key, value, timestamp, step in metrics],
            tags=[RunTag(k, str(v)) for k, v in op.get("tags", {}).items()],
            synchronous=True,
        )

    def _metric_logged(self, run_id, key, value, timestamp, step):
        return any(
            m.step == step and m.timestamp == timestamp and _same_value(float(m.value), float(value))
            for m in self.client.get_metric_history(run_id, key)
        )

    def _log_params(self, op):
        """Log new params; a param that exists with another value becomes a tag of the same key."""
        from mlflow.entities import Param, RunTag

        run_id, params = op["run_id"], op["params"]
        existing = self.client.get_run(run_id).data.params
        new = {k: v for k, v in params.items() if k not in existing}
        changed = {k: v for k, v in params.items() if k in existing and existing[k] != v}
        if new or changed:
            self.client.log_batch(
                run_id,
                params=[Param(k, v) for k, v in new.items()],
                tags=[RunTag(k, v) for k, v in changed.items()],
                synchronous=True,
            )
        self._known_params.setdefault(run_id, {}).update(params)

    def params_known(self, run_id, params):
        """True when these exact params were already logged to the run by this process."""
        known = self._known_params.get(run_id, {})
        return all(known.get(k) == v for k, v in params.items())

    def _log_image(self, op, image, verify):
        if verify and self._image_logged(op):
            return
        if image is None:
            from PIL import Image

            with Image.open(os.path.join(self.directory, op["png"])) as png:
                image = np.asarray(png.convert("RGB"))
        self.client.log_image(op["run_id"], image, key=op["key"], step=int(op["step"]),
                              timestamp=int(op["timestamp"]), synchronous=True)

    def _image_logged(self, op):
        prefixes = _image_artifact_prefixes(op["key"], op["step"], op["timestamp"])
        for info in self.client.list_artifacts(op["run_id"], "images"):
            name = info.path.rsplit("/", 1)[-1]
            if name.endswith(".png") and any(name.startswith(p) for p in prefixes):
                return True
        return False

    # ---- spool ---------------------------------------------------------------------------------
    def _spool(self, op, image):
        """Write `op` (and its image as PNG) to the spool; on a disk failure, log and drop it."""
        try:
            os.makedirs(self.directory, exist_ok=True)
            uri_file = os.path.join(self.directory, "uri.txt")
            if not os.path.exists(uri_file):
                _write_atomic(uri_file, self.tracking_uri.encode())
            if image is not None:
                from PIL import Image

                op = dict(op, png=f"{op['id']}.png")
                png_path = os.path.join(self.directory, op["png"])
                tmp = f"{png_path}.tmp.png"
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, png_path)
            name = f"{time.time_ns():020d}-{next(self._sequence):06d}-{op['id']}.json"
            _write_atomic(os.path.join(self.directory, name), json.dumps(op).encode())
        except OSError as exc:
            logger.error("genmetrics: could not spool %s for run %s to %s: %s; it is lost",
                         op["op"], op.get("run_id"), self.directory, exc)
            return
        self._start_daemon()

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
                if _is_permanent(exc):
                    logger.warning("genmetrics: the tracking server rejected spooled %s: %s", op["op"], exc)
                    self._move_failed(path, op, str(exc))
                    continue
                self._mark_down(exc)
                return False
            os.remove(path)
            if op.get("png"):
                try:
                    os.remove(os.path.join(self.directory, op["png"]))
                except FileNotFoundError:
                    pass
            sent += 1
        if sent:
            logger.warning("genmetrics: replayed %d spooled operation(s) to %s", sent, self.tracking_uri)
        self._mark_up()
        return True

    def _move_failed(self, path, op, error):
        failed = os.path.join(self.directory, "failed")
        os.makedirs(failed, exist_ok=True)
        os.replace(path, os.path.join(failed, os.path.basename(path)))
        if op and op.get("png") and os.path.exists(os.path.join(self.directory, op["png"])):
            os.replace(os.path.join(self.directory, op["png"]), os.path.join(failed, op["png"]))
        with open(os.path.join(failed, os.path.basename(path) + ".error.txt"), "w") as f:
            f.write(error)

    def _recently_failed(self):
        """Within `replay_interval` s of a failure, queue behind the spool without probing again (a
        black-holed server would otherwise cost a probe timeout per write); the daemon retries."""
        return self._down and time.monotonic() - self._failed_at < self.policy.replay_interval

    def _mark_down(self, error):
        self._failed_at = time.monotonic()
        if not self._down:
            logger.warning(
                "genmetrics: cannot log to %s (%s); spooling to %s and replaying when it is back "
                "(or run `genmetrics replay`)", self.tracking_uri, error, self.directory)
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
                logger.warning("genmetrics: background replay failed: %s", exc)

    def close(self):
        """Stop the replay daemon after one last replay attempt; warn about what stays spooled."""
        self._wakeup.set()
        try:
            self.replay()
        except Exception as exc:  # noqa: BLE001
            logger.warning("genmetrics: final replay failed: %s", exc)
        left = len(self.pending())
        if left:
            logger.warning("genmetrics: %d operation(s) remain spooled in %s; run `genmetrics replay "
                           "--tracking-uri %s` when the server is back", left, self.directory, self.tracking_uri)


_senders = {}
_senders_lock = threading.Lock()


def get_sender(tracking_uri, client=None):
    """The process-wide Sender of a tracking URI (one per URI; `client` is used when it is created)."""
    with _senders_lock:
        sender = _senders.get(tracking_uri)
        if sender is None:
            sender = _senders[tracking_uri] = Sender(tracking_uri, client=client)
        return sender


def _close_senders():
    for sender in list(_senders.values()):
        sender.close()


# threading's exit hooks run last-registered first, before plain atexit handlers; registered after
# concurrent.futures.thread's own hook, ours runs while thread pools still accept work
getattr(threading, "_register_atexit", atexit.register)(_close_senders)


def replay(tracking_uri=None):
    """Replay spooled operations (of one tracking URI, or of every spool) -> {uri: operations left}."""
    if tracking_uri is not None:
        uris = [tracking_uri]
    else:
        uris = []
        root = spool_root()
        for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
            uri_file = os.path.join(root, name, "uri.txt")
            if os.path.isfile(uri_file):
                with open(uri_file) as f:
                    uris.append(f.read().strip())
    left = {}
    for uri in uris:
        sender = get_sender(uri)
        sender.replay(wait=60)
        left[uri] = len(sender.pending())
    return left
