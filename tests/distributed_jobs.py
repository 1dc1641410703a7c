"""Jobs run under `torchrun --standalone --nproc_per_node=2` (gloo, CPU) by tests/test_distributed.py.

Usage: distributed_jobs.py JOB OUT_DIR [ARGS...]; each rank writes what it saw to OUT_DIR/<job>.rank<r>.json
or .npz, and the test compares those files with a single-process computation.
"""
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the fixtures modules

import numpy as np
import torch
import torch.distributed as dist

COUNTS = {"ragged": (7, 3), "empty": (7, 0)}
OFFSET = 1e6  # a large mean: the reduction must stay stable


def rank_features(rank, counts, dim=16):
    """The features rank `rank` holds (seeded, so any process can rebuild every rank's)."""
    return np.random.default_rng(rank).normal(size=(counts[rank], dim)) + OFFSET


def job_moments(out, layout):
    from genmetrics.stats import GaussianMoments, all_gather_rows, all_reduce_moments

    rank, counts = dist.get_rank(), COUNTS[layout]
    local = rank_features(rank, counts)
    moments = GaussianMoments.from_features(local) if len(local) else GaussianMoments()
    reduced = all_reduce_moments(moments)
    rows = all_gather_rows(torch.from_numpy(local) if len(local) else None)
    np.savez(os.path.join(out, f"moments-{layout}.rank{rank}.npz"), n=reduced.n, mean=reduced.mean, cov=reduced.cov,
             rows=rows.numpy(), local_n=moments.n)


def job_fail(out, timeout):
    """Rank 1 fails before the reduction; rank 0 must stop with a clear error, not hang."""
    from genmetrics.stats.streaming.distributed import check_all_ranks

    rank = dist.get_rank()
    started = time.monotonic()
    try:
        check_all_ranks(ValueError("rank 1 could not read its images") if rank == 1 else None)
        message = "no error"
    except Exception as error:  # noqa: BLE001 - the test reads what each rank saw
        message = f"{type(error).__name__}: {error}"
    with open(os.path.join(out, f"fail.rank{rank}.json"), "w") as f:
        json.dump({"message": message, "seconds": time.monotonic() - started}, f)


def job_score(out, tracking_uri, reference):
    """Every rank calls log_gen_metrics with a sampler; rank 0 alone has an MLflow run."""
    import mlflow
    from fixtures_plugin_scoring import TinyExtractor

    from genmetrics.plugin import log_gen_metrics

    rank = dist.get_rank()
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.start_run(experiment_id=mlflow.create_experiment("ddp")) if rank == 0 else None
    results = []
    for step in range(2):
        images = score_samples_of(step)
        shares = [3, 4]  # 7 samples over 2 ranks: rank r draws its share from its own sampler
        start = sum(shares[:rank])
        mine = iter(images[start:start + shares[rank]])
        results.append(log_gen_metrics(lambda n: np.stack([next(mine) for _ in range(n)]), reference=reference,
                                       num_samples=7, step=step, metrics=["fid", "kid", "ssim", "precision", "recall"],
                                       model=TinyExtractor(),
                                       kid_subsets=5, diversity_pairs=6, batch_size=2))
    if run is not None:
        mlflow.end_run()
    with open(os.path.join(out, f"score.rank{rank}.json"), "w") as f:
        json.dump({"results": results, "run_id": run.info.run_id if run else None}, f)


def score_samples_of(step):
    """The 7 samples of a step (uint8 NHWC), the same in every process."""
    from fixtures_plugin_scoring import tiny_images

    return tiny_images(7, seed=100 + step)


def job_build_fail(out, folder):
    """Rank 1 cannot read its images: every rank must fail with a clear error and nothing is written."""
    from fixtures_plugin_scoring import TinyExtractor

    from genmetrics.registry import build
    from genmetrics.registry.datasets import FileSource

    class Unreadable(FileSource):
        def batch(self, start, stop):
            if dist.get_rank() == 1:
                raise OSError(f"rank 1: cannot read images {start}..{stop}")
            return super().batch(start, stop)

    rank = dist.get_rank()
    try:
        build(Unreadable(folder), os.path.join(out, "failed.h5"), model=TinyExtractor(), progress=False, name="x")
        message = "no error"
    except Exception as error:  # noqa: BLE001 - the test reads what each rank saw
        message = f"{type(error).__name__}: {error}"
    with open(os.path.join(out, f"build_fail.rank{rank}.json"), "w") as f:
        json.dump({"message": message}, f)


def _outcome(call):
    """{"result": what `call()` returned} or {"error": "<type>: <message>"}, with the seconds it took."""
    started = time.monotonic()
    try:
        outcome = {"result": call()}
    except Exception as error:  # noqa: BLE001 - the test reads what each rank saw
        outcome = {"error": f"{type(error).__name__}: {error}"}
    return dict(outcome, seconds=time.monotonic() - started)


def job_mismatch(out, reference, other_reference):
    """Calls that differ between the ranks (issue 19 item 9), each through the public API, then an identical one.

    Each rank holds its share of the 7 samples of step 0 (3 and 4)."""
    from fixtures_plugin_scoring import TinyExtractor

    from genmetrics.plugin import log_gen_metrics, score_samples

    rank = dist.get_rank()
    images = score_samples_of(0)
    mine = images[:3] if rank == 0 else images[3:]

    def score(**change):
        kwargs = dict(reference=reference, metrics=["fid", "kid"], model=TinyExtractor(), kid_subsets=5,
                      diversity_pairs=6, batch_size=2, num_samples=7)
        kwargs.update(change)
        return score_samples(mine, **kwargs).metrics

    calls = {
        "num_samples": lambda: score(num_samples=7 if rank == 0 else 6),
        "reference": lambda: score(reference=reference if rank == 0 else other_reference),
        "metrics": lambda: score(metrics=["fid", "kid"] if rank == 0 else ["fid"]),
        "targets": lambda: score(metrics=["ssim"], targets=mine if rank == 1 else None),
        "seed": lambda: score(seed=rank),
        "a failing rank": lambda: score(reference=reference if rank == 0 else reference + ".missing.h5"),
        "no run on rank 0": lambda: log_gen_metrics(mine, reference=reference, metrics=["fid"], model=TinyExtractor(),
                                                    num_samples=7, batch_size=2),
        "identical": lambda: score(),
    }
    seen = {name: _outcome(call) for name, call in calls.items()}
    with open(os.path.join(out, f"mismatch.rank{rank}.json"), "w") as f:
        json.dump(seen, f)


def job_absent(out, reference):
    """Rank 1 never calls score_samples (as under `if rank == 0:`); rank 0 must not wait for ever."""
    from fixtures_plugin_scoring import TinyExtractor

    from genmetrics.plugin import score_samples

    rank = dist.get_rank()
    if rank == 0:
        seen = _outcome(lambda: score_samples(score_samples_of(0), reference=reference, metrics=["fid"],
                                              model=TinyExtractor(), batch_size=2).metrics)
        with open(os.path.join(out, "absent.rank0.json"), "w") as f:
            json.dump(seen, f)
    else:
        time.sleep(float(os.environ["ABSENT_SECONDS"]))


def main():
    job, out, *args = sys.argv[1:]
    timeout = os.environ.get("JOB_GROUP_TIMEOUT")  # the process group's own timeout (turns a hang into an error)
    dist.init_process_group("gloo", **({"timeout": datetime.timedelta(seconds=float(timeout))} if timeout else {}))
    try:
        globals()[f"job_{job}"](out, *args)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
