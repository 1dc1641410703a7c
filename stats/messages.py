"""How genmetrics warns: one category, and once per process for what a training loop would repeat.

Every warning of the library is a :class:`GenMetricsWarning` (a ``UserWarning``) raised with
:func:`warnings.warn`, so one filter silences or escalates them all::

    warnings.filterwarnings("ignore", category=GenMetricsWarning)   # or "error" in a test suite

Events of the MLflow plugin that happen away from the caller (a skipped metric, a spooled write, a
background replay) go to the ``genmetrics`` logger instead. The ``genmetrics`` command line shows both
as one line, ``genmetrics <command>: warning: <message>``, without Python's source line.
"""
import warnings

__all__ = ["GenMetricsWarning", "warn", "warn_once", "first_time", "forget_warnings"]


class GenMetricsWarning(UserWarning):
    """The category of every warning genmetrics raises."""


_warned = set()


def warn(message, stacklevel=1):
    """``warnings.warn(message, GenMetricsWarning)``; `stacklevel` counts from the caller of this function."""
    warnings.warn(message, GenMetricsWarning, stacklevel=stacklevel + 2)


def warn_once(key, message, stacklevel=1):
    """Warn once per process for `key` (e.g. ``("rank-deficient covariance", n, D)``), whatever Python's
    warning filters would repeat: a training loop scores the same way at every step."""
    if first_time(key):
        warnings.warn(message, GenMetricsWarning, stacklevel=stacklevel + 2)


def first_time(key):
    """True the first time `key` is seen in this process, then False (until :func:`forget_warnings`): the one
    record of what was already said, for warnings and for the plugin's once-per-process log lines."""
    if key in _warned:
        return False
    _warned.add(key)
    return True


def forget_warnings():
    """Forget which warnings were shown (tests use it to see a once-per-process warning again)."""
    _warned.clear()
