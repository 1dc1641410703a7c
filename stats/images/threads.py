"""A shared thread pool for the CPU-side image work: PIL releases the GIL while it decodes and resizes,
so decoding files and clean-mode resizing scale with the cores (results are unchanged: each item is
computed exactly as it would be alone, and results come back in input order).

Work submitted from inside one of the pool's own threads (a file decoded and resized in a worker, whose
resize would fan out again) runs inline in that thread: a worker never waits for tasks queued behind it.
So does work submitted once `concurrent.futures` has stopped its pools at interpreter exit (scoring queued
with blocking=False runs from an `atexit` handler then, see `genmetrics.plugin.background`).
"""
import collections
import concurrent.futures
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["thread_map", "thread_imap", "pool_size"]

MAX_WORKERS = 8
_THREAD_PREFIX = "genmetrics-images"
_pool = None
_lock = threading.Lock()


def pool_size():
    """Number of threads of the shared pool."""
    return min(MAX_WORKERS, os.cpu_count() or 1)


def _executor():
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=pool_size(), thread_name_prefix=_THREAD_PREFIX)
        return _pool


def _in_worker():
    """True in one of the pool's threads (there, nested work runs inline)."""
    return threading.current_thread().name.startswith(_THREAD_PREFIX)


def thread_map(fn, items):
    """[fn(item) for item in items], run on the shared pool; the first exception is re-raised."""
    items = list(items)
    if len(items) < 2 or _in_worker():
        return [fn(item) for item in items]
    try:
        results = _executor().map(fn, items)  # submits every item now: refused at once after the pools stopped
    except RuntimeError:  # "cannot schedule new futures after [interpreter] shutdown"
        return [fn(item) for item in items]
    return list(results)


def _submit(fn, item):
    """A Future of fn(item) from the shared pool, or one already settled inline when the pool takes no more work
    (at interpreter exit)."""
    try:
        return _executor().submit(fn, item)
    except RuntimeError:
        future = concurrent.futures.Future()
        try:
            future.set_result(fn(item))
        except Exception as exc:  # noqa: BLE001 - raised where its result is read, as from the pool
            future.set_exception(exc)
        return future


def thread_imap(fn, items, ahead):
    """Yield fn(item) for each item, in order, computed on the shared pool at most `ahead` items in advance.

    Unlike :func:`thread_map` the items are submitted lazily, so at most `ahead` results (done or running) exist
    besides the one the caller holds. The first exception is raised where its item's result would be yielded.
    When the caller stops early, items not started are cancelled and running ones are waited for.
    """
    if _in_worker() or ahead < 1:
        yield from (fn(item) for item in items)
        return
    items, pending = iter(items), collections.deque()
    try:
        for item in items:
            pending.append(_submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        concurrent.futures.wait(pending)
