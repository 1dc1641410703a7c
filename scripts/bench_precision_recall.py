"""Time and peak memory of ADM precision/recall (:func:`genmetrics.stats.precision_recall`, blocked, bounded memory)
beside a brute-force float64 NumPy version of the same rule (full N x N, M x M and N x M distance matrices).

Each run is a fresh subprocess on synthetic float32 Gaussian features (real N(0, 1), fake N(0.02, 1.02²)), so its
peak resident memory (Linux ``VmHWM``) is its own; ``extra_mib`` is that peak minus the resident memory once the
features exist. The brute force runs only where its matrices fit in half of the available memory.

    python scripts/bench_precision_recall.py [--sizes 5000 20000] [--big 50000] [--d 2048] [--k 3] [--threads 2]
"""
import argparse
import json
import subprocess
import sys
import time

import numpy as np


def _status_mib(field):
    """A memory field of /proc/self/status (VmHWM: peak resident, VmRSS: resident now), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status (Linux only)")


def _available_mib():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no MemAvailable in /proc/meminfo (Linux only)")


def _features(n, m, d):
    rng = np.random.default_rng(0)
    real = rng.standard_normal((n, d), dtype=np.float32)
    fake = rng.standard_normal((m, d), dtype=np.float32) * np.float32(1.02) + np.float32(0.02)
    return real, fake


def brute_force(real, fake, k):
    """The ADM rule with full float64 matrices: squared distances |a|² + |b|² - 2 a.b, the k-th smallest of each
    row without the point itself as radius, closed balls."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)

    def sq_distances(a, b):
        return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T), 0.0)

    def radii(x):
        d2 = sq_distances(x, x)
        np.fill_diagonal(d2, np.inf)
        return np.partition(d2, k - 1, axis=1)[:, k - 1]

    real_radii, fake_radii = radii(real), radii(fake)
    d2 = sq_distances(real, fake)
    return {"precision": float((d2 <= real_radii[:, None]).any(axis=0).mean()),
            "recall": float((d2 <= fake_radii[None, :]).any(axis=1).mean())}


def worker(method, n, m, d, k, threads):
    """One measurement in this process: prints a JSON line."""
    import torch

    torch.set_num_threads(threads)
    from genmetrics.stats import precision_recall

    real, fake = _features(n, m, d)
    resident = _status_mib("VmRSS")
    start = time.perf_counter()
    values = precision_recall(real, fake, k=k) if method == "ours" else brute_force(real, fake, k)
    seconds = time.perf_counter() - start
    peak = _status_mib("VmHWM")
    print(json.dumps({"method": method, "n": n, "m": m, "d": d, "k": k, "threads": threads,
                      "seconds": round(seconds, 1),
                      "inputs_mib": round((real.nbytes + fake.nbytes) / 2 ** 20, 1), "peak_mib": round(peak, 1),
                      "extra_mib": round(peak - resident, 1), **values}))


def _run(method, n, d, k, threads):
    command = [sys.executable, __file__, "--worker", method, "--sizes", str(n), "--d", str(d), "--k", str(k),
               "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"method": method, "n": n, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000], help="N = M, ours and brute force")
    parser.add_argument("--big", type=int, default=50000, help="N = M for ours alone (0: skip)")
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("ours", "brute"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.sizes[0], args.sizes[0], args.d, args.k, args.threads)
        return
    for n in args.sizes:
        print(json.dumps(_run("ours", n, args.d, args.k, args.threads)), flush=True)
        matrices_mib = 3 * n * n * 8 / 2 ** 20 + 2 * n * args.d * 8 / 2 ** 20
        if matrices_mib < _available_mib() / 2:
            print(json.dumps(_run("brute", n, args.d, args.k, args.threads)), flush=True)
        else:
            print(json.dumps({"method": "brute", "n": n, "skipped": f"needs ~{matrices_mib:.0f} MiB"}), flush=True)
    if args.big:
        print(json.dumps(_run("ours", args.big, args.d, args.k, args.threads)), flush=True)


if __name__ == "__main__":
    main()
