"""torch.distributed reductions of accumulated statistics: the one place where ranks meet.

Every function takes an optional process ``group`` and is a no-op (returns its input) when
``torch.distributed`` is not initialised or the group has a single rank, so the same code runs in one
process and under ``torchrun``. Collectives run on the group's device: CUDA for NCCL, the CPU for gloo.

- :func:`all_reduce_moments`: the ranks agree on a common shift (the sample-weighted mean of their
  shifts, near the data), rebase onto it, then one all-reduce SUM of (n, s, S) in float64 gives every
  rank the moments of all samples, equal to a single pass up to float64 rounding (see
  :class:`~genmetrics.stats.streaming.moments.GaussianMoments`). Ranks without samples take part with zeros.
- :func:`all_gather_rows`: concatenates every rank's (n_r, D) rows in rank order on every rank (ragged
  shards and empty shards allowed; kept features for KID / PRDC, logits for IS, preview images).
- :func:`check_all_ranks`: a status handshake before the reductions: when one rank failed, every rank
  raises a :class:`DistributedError` naming it, instead of waiting in a collective until the process
  group's timeout.
- :func:`shard_size`: how many of ``total`` items rank r of k handles (``total * (r+1) // k - total * r // k``).
- :func:`check_same_call`: the first collective of a distributed call: the ranks compare digests of the
  settings that must agree (one all-gather of a small int64 tensor) and their preparation's status; a
  difference or a failure raises a :class:`DistributedError` on every rank, naming the setting and the
  ranks' values, before any rank enters a collective the others would not. ``GENMETRICS_DIST_TIMEOUT``
  (seconds) bounds how long it waits for ranks that do not call at all.
"""
import datetime
import hashlib

import numpy as np
import torch

from ..environment import DIST_TIMEOUT
from .moments import GaussianMoments

__all__ = ["DistributedError", "is_distributed", "rank_and_world", "shard_size", "check_all_ranks",
           "check_same_call", "call_timeout", "all_reduce_moments", "all_gather_rows", "all_reduce_sum"]

TIMEOUT_ENV = DIST_TIMEOUT.name
_SLOTS = 32  # int64 entries of the agreement tensor: status, names, up to 30 settings


class DistributedError(RuntimeError):
    """Another rank failed (or a collective did not complete): the job cannot combine its statistics."""


def is_distributed(group=None) -> bool:
    """True inside an initialised process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank_and_world(group=None):
    """(rank, world size) in `group`; (0, 1) outside a process group."""
    import torch.distributed as dist

    if not is_distributed(group):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def shard_size(total: int, rank: int, world: int) -> int:
    """Items rank `rank` of `world` handles out of `total` (sizes differ by at most one; sum = total)."""
    return total * (rank + 1) // world - total * rank // world


def _device(group):
    import torch.distributed as dist

    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _collective(what, call):
    """Run a collective; a timeout or a lost peer becomes a DistributedError saying so."""
    try:
        return call()
    except RuntimeError as error:
        raise DistributedError(f"{what} across the ranks did not complete ({error}); another rank probably "
                               f"failed or was killed: see its log") from error


def all_reduce_sum(values, group=None) -> np.ndarray:
    """Element-wise float64 sum of `values` (same shape on every rank) over the ranks; a numpy copy."""
    import torch.distributed as dist

    tensor = torch.as_tensor(np.asarray(values, dtype=np.float64)).to(_device(group))
    if is_distributed(group):
        _collective("a sum", lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group))
    return tensor.cpu().numpy()


def check_all_ranks(error=None, group=None):
    """Every rank calls this after its local work, with the exception it hit (or None).

    Raises on every rank when any rank failed: the local error itself on the failing rank, a
    DistributedError naming the failed ranks on the others. A no-op outside a process group
    (``error`` is re-raised).
    """
    rank, world = rank_and_world(group)
    if world > 1:
        failed = all_reduce_sum(np.eye(world)[rank] * (error is not None), group)
        bad = [r for r in range(world) if failed[r]]
        if bad and error is None:
            raise DistributedError(f"rank(s) {bad} of {world} failed (see their error); rank {rank} stops too, "
                                   f"nothing was combined or written")
    if error is not None:
        raise error


def call_timeout():
    """Seconds a rank waits for the others at :func:`check_same_call`: ``GENMETRICS_DIST_TIMEOUT``, else None
    (the process group's own timeout, 30 min for gloo unless ``init_process_group`` set another)."""
    text = DIST_TIMEOUT.value()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {text!r}")
    return seconds


def _digest(value):
    """A signed 64-bit digest of ``repr(value)``."""
    return int.from_bytes(hashlib.sha256(repr(value).encode("utf-8")).digest()[:8], "little", signed=True)


def _agreement_tensor(settings, failed):
    """[failed, digest of the names, digest of each value, 0...]: int64 (_SLOTS,)."""
    names = sorted(settings)
    if len(names) > _SLOTS - 2:
        raise ValueError(f"at most {_SLOTS - 2} settings can be compared, got {len(names)}")
    values = [int(failed), _digest(names)] + [_digest(settings[name]) for name in names]
    return torch.tensor(values + [0] * (_SLOTS - len(values)), dtype=torch.int64)


def _all_gather_within(what, tensor, group, timeout):
    """(world, ...) tensor of every rank's `tensor`; waits at most `timeout` seconds (None: the group's)."""
    import torch.distributed as dist

    tensor = tensor.to(_device(group))
    parts = [torch.empty_like(tensor) for _ in range(rank_and_world(group)[1])]
    if timeout is None:
        _collective(what, lambda: dist.all_gather(parts, tensor, group=group))
        return torch.stack(parts).cpu()
    try:
        dist.all_gather(parts, tensor, group=group, async_op=True).wait(datetime.timedelta(seconds=timeout))
    except RuntimeError as error:
        raise DistributedError(
            f"{what}: not every rank arrived within {timeout:g} s ({TIMEOUT_ENV}; {error}); every rank must make "
            f"this call, also those that log nothing (not only inside `if rank == 0:`). The process group cannot be "
            f"used after this") from error
    return torch.stack(parts).cpu()


def _describe_differences(names, settings, rows, group):
    """'name differs (rank 0: a; rank 1: b)' for each setting whose digests differ between the ranks."""
    differing = [name for slot, name in enumerate(names, start=2) if len(set(rows[:, slot].tolist())) > 1]
    if not differing:  # the same on every rank (they all saw the same digests)
        return []
    shown = _gather_small({name: _short(settings[name]) for name in differing}, group)  # every rank takes part
    parts = []
    for name in differing:
        by_value = {}
        for rank, values in enumerate(shown):
            by_value.setdefault(values[name], []).append(rank)
        listed = "; ".join(f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))}: {value}"
                           for value, ranks in by_value.items())
        parts.append(f"{name} differs ({listed})")
    return parts


def _short(value, limit=80):
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_same_call(what, settings, error=None, group=None, timeout=None):
    """The first collective of a distributed call `what` (e.g. ``"score_samples"``): every rank passes the
    settings of its call that must agree (``{name: value}``; values compared by ``repr``, shown shortened) and
    the exception its preparation hit (or None).

    Raises on every rank, so that no rank goes on into collectives the others do not make: when a rank failed,
    its own error there and a :class:`DistributedError` naming it on the others; when the settings differ, a
    :class:`DistributedError` naming each differing setting with every rank's value; when not every rank arrives
    within `timeout` seconds (default :func:`call_timeout`), a :class:`DistributedError` saying so. Costs one
    all-gather of 32 int64 per rank (a second, small one only to describe a difference). Outside a process
    group: re-raises `error`.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        if error is not None:
            raise error
        return
    names = sorted(settings)
    timeout = call_timeout() if timeout is None else timeout
    rows = _all_gather_within(what, _agreement_tensor(settings, error is not None), group, timeout)
    failed = [r for r in range(world) if rows[r, 0]]
    if error is not None:
        raise error
    if failed:
        raise DistributedError(f"{what}: rank(s) {failed} of {world} failed (see their error); rank {rank} stops "
                               f"too, nothing was combined")
    if len(set(rows[:, 1].tolist())) > 1:
        raise DistributedError(f"{what}: the ranks compare different settings (different genmetrics versions?); "
                               f"install the same version on every node")
    differences = _describe_differences(names, settings, rows, group)
    if differences:
        raise DistributedError(f"{what} was called with different settings on the ranks: {'; '.join(differences)}. "
                               f"Every rank must make the same call, each with its own samples")


def _gather_small(value, group):
    """A small picklable value (counts, shapes, dtype names) from every rank, in rank order."""
    import torch.distributed as dist

    values = [None] * rank_and_world(group)[1]
    _collective("gathering metadata", lambda: dist.all_gather_object(values, value, group=group))
    return values


def all_reduce_moments(moments: GaussianMoments, group=None) -> GaussianMoments:
    """The moments of every rank's samples, on every rank (a new object; the input is left as it is)."""
    if not is_distributed(group):
        return moments
    dims = {dim for n, dim in _gather_small((moments.n, moments.dim), group) if n}
    if not dims:
        return GaussianMoments()
    if len(dims) > 1:
        raise DistributedError(f"the ranks hold features of different dimensions {sorted(dims)}; every rank must "
                               f"use the same extractor layer")
    dim = dims.pop()
    local = GaussianMoments().merge(moments) if moments.n else GaussianMoments(dim)
    weighted = all_reduce_sum(np.concatenate([[local.n], local.n * local.shift if local.n else np.zeros(dim)]), group)
    shift = weighted[1:] / weighted[0]
    local.rebase(shift)
    total = all_reduce_sum(np.concatenate([[local.n], local.shifted_sum, local.shifted_outer_sum.ravel()]), group)
    return GaussianMoments.from_state({"n": int(round(total[0])), "shift": shift, "shifted_sum": total[1:dim + 1],
                                       "shifted_outer_sum": total[dim + 1:].reshape(dim, dim)})


def all_gather_rows(rows, group=None):
    """Concatenate every rank's rows (a tensor (n_r, ...), or None for none) in rank order, on every rank.

    Returns a CPU tensor, or None when no rank has rows; the ranks' row shapes and dtypes must agree.
    """
    import torch.distributed as dist

    if not is_distributed(group):
        return rows
    local = None if rows is None or rows.shape[0] == 0 else (rows.shape[0], tuple(rows.shape[1:]), str(rows.dtype))
    infos = _gather_small(local, group)
    kinds = {info[1:] for info in infos if info}
    if not kinds:
        return None
    if len(kinds) > 1:
        raise DistributedError(f"the ranks hold rows of different shapes or dtypes {sorted(kinds)}; cannot gather")
    shape, dtype_name = kinds.pop()
    dtype = getattr(torch, dtype_name.split(".")[-1])
    counts = [info[0] if info else 0 for info in infos]
    padded = torch.zeros((max(counts), *shape), dtype=dtype, device=_device(group))
    if local:
        padded[:counts[dist.get_rank(group)]] = rows.to(padded.device)
    parts = [torch.empty_like(padded) for _ in counts]
    _collective("gathering rows", lambda: dist.all_gather(parts, padded, group=group))
    return torch.cat([part[:count] for part, count in zip(parts, counts)]).cpu()
