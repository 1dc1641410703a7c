"""genmetrics.plugin: `log_gen_metrics` from training code, deferred scoring, the evaluator, the command line.

Names are loaded on first use (PEP 562), so the console script (``genmetrics.plugin.cli``) parses its
arguments, and answers ``--help``, without importing torch or MLflow.
"""
from genmetrics.stats.lazy import lazy_exports

_EXPORTS = {
    "background": ("flush",),
    "log_metrics": ("log_gen_metrics",),
    "scoring": ("score_samples",),
    "spool": ("replay",),
    "deferred": ("score_run", "watch"),
    "samples": ("log_gen_samples",),
}
__all__, __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
