"""Prompts stored in a statistics file: the captions a text-to-image reference was built for, in order.

A text-to-image reference (COCO-30k, :mod:`genmetrics.registry.coco`) fixes which captions every user samples.
The ``.h5`` keeps them so that ``genmetrics.registry.prompts(ref)`` gives the same list to everyone, whether they
built the file or fetched it:

==================  =================  =====================================================
dataset             dtype / shape      meaning
==================  =================  =====================================================
``prompts_utf8``    uint8 (B,)         the prompts' UTF-8 bytes, concatenated
``prompt_ends``     int64 (P,)         end offset of each prompt in ``prompts_utf8``
==================  =================  =====================================================

and the root attribute ``prompts_sha256``: :func:`prompts_sha256` of the list. Bytes, not HDF5 strings: the
reader validates sizes before reading and decodes strictly, and no variable-length string goes to the global
heap (see :mod:`genmetrics.registry.refstats_checks`). Readers before 0.3 ignore these datasets.
"""
import hashlib

import numpy as np

from .refstats_checks import RefStatsFormatError

__all__ = ["MAX_PROMPT_BYTES", "prompts", "prompts_bytes", "prompts_sha256", "write_prompts", "read_prompts"]

#: Largest stored prompt text (all prompts together): 30,000 COCO captions take about 1.6 MB.
MAX_PROMPT_BYTES = 256 << 20


def prompts(ref, progress=True):
    """The prompts reference `ref` (a registry ref, an ``.h5`` path or a ReferenceStats) was built for, in order:
    sample one image per prompt, in this order, to compare with it (COCO-30k: :mod:`genmetrics.registry.coco`).
    Raises ValueError when the reference stores no prompts."""
    from .fetch import load

    stats = load(ref, progress=progress)
    if stats.prompts is None:
        raise ValueError(f"{stats.describe()} stores no prompts: it is not a text-to-image reference (build one with "
                         f"`genmetrics stats build coco2014_30k --root COCO_FOLDER -o coco30k.h5`)")
    return list(stats.prompts)


def prompts_bytes(prompts):
    """The prompts in order as hashed: their UTF-8 bytes, each followed by a newline (ranks' bytes concatenate)."""
    return b"".join(prompt.encode("utf-8") + b"\n" for prompt in prompts)


def prompts_sha256(prompts):
    """sha256 (hex) of :func:`prompts_bytes` of the prompts."""
    return hashlib.sha256(prompts_bytes(prompts)).hexdigest()


def write_prompts(f, prompts):
    """Store `prompts` (a list of str) in the open file `f` (the datasets above; the writer records the hash
    attribute with the other attributes)."""
    encoded = [p.encode("utf-8") for p in prompts]
    f.create_dataset("prompts_utf8", data=np.frombuffer(b"".join(encoded), dtype=np.uint8))
    f.create_dataset("prompt_ends", data=np.cumsum([len(e) for e in encoded], dtype=np.int64))


def _fail(path, problem):
    raise RefStatsFormatError(f"{path}: {problem} (check: prompts); delete it and fetch or build it again")


def read_prompts(f, path, recorded):
    """The prompts of the open file `f` (a list of str), or None when it stores none; sizes, offsets, UTF-8 and
    the `recorded` hash (the ``prompts_sha256`` attribute) checked (a RefStatsFormatError naming the problem)."""
    if "prompts_utf8" not in f and "prompt_ends" not in f:
        return None
    if "prompts_utf8" not in f or "prompt_ends" not in f:
        _fail(path, "prompts_utf8 and prompt_ends must be stored together")
    data, ends = f["prompts_utf8"], f["prompt_ends"]
    if data.dtype != np.uint8 or data.ndim != 1 or ends.dtype.kind not in "iu" or ends.ndim != 1:
        _fail(path, f"prompts are {data.dtype} {data.shape} with ends {ends.dtype} {ends.shape}; expected uint8 (B,) "
                    f"and integer (P,)")
    if data.shape[0] > MAX_PROMPT_BYTES or ends.shape[0] > MAX_PROMPT_BYTES:
        _fail(path, f"prompts declare {data.shape[0]} bytes, over the {MAX_PROMPT_BYTES} limit")
    if data.id.get_storage_size() < data.shape[0] or ends.id.get_storage_size() < ends.shape[0] * ends.dtype.itemsize:
        _fail(path, "the prompts' bytes are not all stored (truncated or crafted)")
    raw, offsets = data[()].tobytes(), ends[()].astype(np.int64)
    if len(offsets) and (offsets[0] < 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(raw)):
        _fail(path, "prompt_ends are not increasing offsets ending at the prompts' length")
    starts = np.concatenate([[0], offsets[:-1]]) if len(offsets) else offsets
    try:
        prompts = [raw[a:b].decode("utf-8") for a, b in zip(starts, offsets)]
    except UnicodeDecodeError:
        _fail(path, "a prompt is not valid UTF-8")
    if recorded != prompts_sha256(prompts):
        _fail(path, "the prompts do not match their recorded prompts_sha256")
    return prompts
