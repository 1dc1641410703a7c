"""genmetrics.plugin: `log_gen_metrics` from training code, deferred scoring, the evaluator, the command line.

Names are loaded on first use (PEP 562), so the console script (``genmetrics.plugin.cli``) parses its
arguments, and answers ``--help``, without importing torch or MLflow.
"""
import importlib

_EXPORTS = {
    "background": ("flush",),
    "log_metrics": ("log_gen_metrics",),
    "scoring": ("score_samples",),
    "spool": ("replay",),
    "deferred": ("score_run", "watch"),
    "samples": ("log_gen_samples",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["flush", "log_gen_metrics", "score_samples", "replay", "score_run", "watch", "log_gen_samples"]


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'genmetrics.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
