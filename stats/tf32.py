"""Exact float32 blocks: no TF32 and deterministic cuDNN while a block runs, the settings restored after.

The FID Inception, the resize and LPIPS run under :func:`exact_float32` so that their float32 results do
not depend on a global flag the training code may have set for speed.
"""
import contextlib
import threading

import torch

__all__ = ["exact_float32"]


def _precision_knobs():
    """(object, attribute, exact value) of every switch that could make float32 math inexact or vary."""
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        knobs = [(backends.cuda.matmul, "fp32_precision", "ieee"), (backends.cudnn.conv, "fp32_precision", "ieee"),
                 (backends.mkldnn.matmul, "fp32_precision", "ieee"), (backends.mkldnn.conv, "fp32_precision", "ieee")]
    else:
        knobs = [(backends.cuda.matmul, "allow_tf32", False), (backends.cudnn, "allow_tf32", False)]
    return knobs + [(backends.cudnn, "benchmark", False), (backends.cudnn, "deterministic", True)]


_exact_lock = threading.Lock()
_exact_state = {"depth": 0, "saved": None}


@contextlib.contextmanager
def exact_float32():
    """Run the block in full IEEE float32: no TF32 in cuBLAS/cuDNN/oneDNN, deterministic cuDNN algorithms.

    The previous settings are restored when the last block open in the process exits (nothing global
    changes permanently; overlapping blocks in several threads are counted, so they cannot restore each
    other's values). Torch versions with the per-backend ``fp32_precision`` API are driven through it
    only (torch refuses to read the legacy ``allow_tf32`` flags, ``cudnn.flags`` included, once the two
    APIs disagree). The settings are process-wide while a block runs: another thread doing float32 math
    at that moment also runs without TF32.
    """
    with _exact_lock:
        if _exact_state["depth"] == 0:
            knobs = _precision_knobs()
            _exact_state["saved"] = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in knobs]
            for obj, attr, value in knobs:
                setattr(obj, attr, value)
        _exact_state["depth"] += 1
    try:
        yield
    finally:
        with _exact_lock:
            _exact_state["depth"] -= 1
            if _exact_state["depth"] == 0:
                for obj, attr, value in _exact_state["saved"]:
                    setattr(obj, attr, value)
                _exact_state["saved"] = None
