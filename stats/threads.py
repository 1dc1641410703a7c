"""A shared thread pool for the CPU-side image work: PIL releases the GIL while it decodes and resizes,
so decoding files and clean-mode resizing scale with the cores (results are unchanged: each item is
computed exactly as it would be alone, and results come back in input order)."""
import os
import threading
from concurrent.futures import ThreadPoolExecutor

__all__ = ["thread_map"]

MAX_WORKERS = 8
_pool = None
_lock = threading.Lock()


def _executor():
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=min(MAX_WORKERS, os.cpu_count() or 1),
                                       thread_name_prefix="genmetrics-images")
        return _pool


def thread_map(fn, items):
    """[fn(item) for item in items], run on the shared pool; the first exception is re-raised."""
    items = list(items)
    if len(items) < 2:
        return [fn(item) for item in items]
    return list(_executor().map(fn, items))
