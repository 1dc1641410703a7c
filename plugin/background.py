"""Non-blocking mode: one worker thread scores and logs queued work in FIFO order.

`log_gen_metrics(..., blocking=False)` draws the samples in the caller's thread (so a sampler never
races the training step that follows), then queues scoring + logging here and returns at once with a
`concurrent.futures.Future` whose ``result()`` is the metrics dict. One worker and a FIFO queue keep
the steps in order. An exception raised by queued work is never dropped: it is raised (wrapped in
`BackgroundScoringError`, the original as ``__cause__``) by the next `log_gen_metrics` call and by
`flush()`; at interpreter exit pending work is finished and errors are logged. A
KeyboardInterrupt (Ctrl-C) during `flush()` or the exit flush does not drop queued steps: each
step not yet logged is handed to its ``on_interrupt`` callback (log_gen_metrics spools its samples for
deferred scoring, see `genmetrics.plugin.spool.Sender.spool_samples`), then the interrupt goes on.

Process state: `_worker`, the one `_Worker` of the process (its thread runs while work is queued; `reset`
empties it for tests). At exit: the worker thread is not a daemon, so Python joins it before the `atexit`
handlers run, after `concurrent.futures` has stopped its pools (the shared image pool then computes inline,
`genmetrics.stats.images.threads`); then a plain `atexit` handler, registered after the spool's (imported first,
so it runs before the spool's last replay), logs the errors of that work and, after a Ctrl-C, spools the steps
not yet logged.
"""
import atexit
import concurrent.futures
import logging
import queue
import threading

from . import spool  # noqa: F401 - imported first: its exit hook (final replay) runs after our flush

__all__ = ["BackgroundScoringError", "submit", "raise_pending_error", "flush", "reset"]

logger = logging.getLogger("genmetrics")


class BackgroundScoringError(RuntimeError):
    """Work queued with blocking=False failed; ``__cause__`` is the original exception."""


class _Worker:
    """One thread running queued work in FIFO order while there is any; keeps the errors until they are raised.

    The thread is not a daemon and ends when the queue is empty: at interpreter exit Python joins it (before the
    ``atexit`` handlers run), so queued steps are scored and logged before the process ends, with no exit hook.
    """

    def __init__(self):
        self._queue = queue.Queue()
        self._errors = []
        self._lock = threading.Lock()
        self._thread = None
        self._running = None
        self._saved = set()

    def submit(self, function, description, on_interrupt=None):
        future = concurrent.futures.Future()
        with self._lock:
            self._queue.put((future, function, description, on_interrupt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="genmetrics-scoring")
                self._thread.start()
        return future

    def _next_job(self):
        """The next queued job, or None when the queue is empty: the thread then ends (under the lock, so that a
        job queued at that moment starts a new thread)."""
        with self._lock:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                self._thread = None
                return None
            self._running = job
            return job

    def _run(self):
        while True:
            job = self._next_job()
            if job is None:
                return
            future, function, description, _ = job
            try:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(function())
                    except BaseException as exc:  # noqa: BLE001 - kept and re-raised in the caller's thread
                        future.set_exception(exc)
                        with self._lock:
                            self._errors.append((description, exc))
            finally:
                with self._lock:
                    self._running = None
                self._queue.task_done()

    def save_unfinished(self):
        """After an interrupt: hand every step not yet logged (running or queued) to its ``on_interrupt``
        callback, cancel the queued ones, and return their descriptions."""
        with self._lock:
            jobs = [self._running] if self._running else []
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            job[0].cancel()
            jobs.append(job)
            self._queue.task_done()
        saved = []
        for future, _, description, on_interrupt in jobs:
            if on_interrupt is None or future in self._saved:
                continue
            try:
                on_interrupt()
                self._saved.add(future)
                saved.append(description)
            except Exception as exc:  # noqa: BLE001 - keep saving the others
                logger.error("genmetrics: could not save %s after the interrupt: %s", description, exc)
        return saved

    def raise_pending_error(self):
        """Raise (once) the first error of queued work that failed since the last check."""
        with self._lock:
            errors, self._errors = self._errors, []
        if errors:
            description, exc = errors[0]
            more = f" (and {len(errors) - 1} more failure(s))" if len(errors) > 1 else ""
            raise BackgroundScoringError(f"background {description} failed{more}: {exc!r}") from exc

    def wait(self):
        self._queue.join()

    def reset(self):
        """Wait for the queued work, then forget its errors not yet raised and the steps already saved."""
        self.wait()
        with self._lock:
            self._errors = []
            self._saved = set()


_worker = _Worker()


def submit(function, description="scoring", on_interrupt=None):
    """Queue `function()` on the worker thread; returns a Future of its result. `on_interrupt()` saves
    the work elsewhere when a KeyboardInterrupt stops `flush()` before it is done."""
    return _worker.submit(function, description, on_interrupt)


def raise_pending_error():
    _worker.raise_pending_error()


def flush():
    """Wait until all work queued with blocking=False is scored and logged (or spooled).

    Raises `BackgroundScoringError` if any of it failed. On KeyboardInterrupt the steps not yet logged
    are saved by their ``on_interrupt`` callbacks (spooled), then the interrupt is re-raised.
    """
    try:
        _worker.wait()
    except KeyboardInterrupt:
        saved = _worker.save_unfinished()
        if saved:
            logger.warning("genmetrics: interrupted; spooled the samples of %d unfinished step(s) (%s) for deferred "
                           "scoring: they reach the run on the next replay (`genmetrics replay`), then score them "
                           "with `genmetrics score RUN_ID`", len(saved), ", ".join(saved))
        raise
    _worker.raise_pending_error()


def _flush_at_exit():
    try:
        flush()
    except BackgroundScoringError as exc:
        logger.error("genmetrics: %s", exc, exc_info=exc.__cause__)
    except KeyboardInterrupt:  # the unfinished steps are spooled; let the exit hooks after us run
        pass


def reset():
    """Empty the worker: wait for its queued work, forget errors not yet raised (tests start clean)."""
    _worker.reset()


atexit.register(_flush_at_exit)
