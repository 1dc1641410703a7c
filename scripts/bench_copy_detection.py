"""Peak memory and time of copy detection and CMMD on large feature sets (blocked; never n x m at once).

Generates random float32 features (n samples, m references, d dimensions), runs
:func:`genmetrics.stats.metrics.copy_detection` (reference self-search + sample search) and, with ``--cmmd``,
:func:`genmetrics.stats.metrics.cmmd`, and prints the process's peak resident memory (Linux ``VmHWM``) before and after,
next to the size an n x m float64 distance matrix would take.

    python scripts/bench_copy_detection.py [--n 20000] [--m 20000] [--d 2048] [--chunk 2048] [--threads 2]
"""
import argparse
import json
import time

import numpy as np
import torch


def peak_rss_mib():
    """Peak resident set size of this process so far (VmHWM), MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--m", type=int, default=20000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cmmd", action="store_true", help="also time CMMD on the same sets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from genmetrics.stats import cmmd, copy_detection

    rng = np.random.default_rng(0)
    references = rng.standard_normal((args.m, args.d), dtype=np.float32)
    samples = rng.standard_normal((args.n, args.d), dtype=np.float32)
    inputs_mib = (references.nbytes + samples.nbytes) / 2 ** 20
    before = peak_rss_mib()
    start = time.perf_counter()
    result = copy_detection(samples, references, chunk_size=args.chunk)
    report = {"n": args.n, "m": args.m, "d": args.d, "chunk": args.chunk, "threads": args.threads,
              "inputs_mib": round(inputs_mib, 1), "peak_before_mib": round(before, 1),
              "copy_detection_s": round(time.perf_counter() - start, 1),
              "peak_after_copy_detection_mib": round(peak_rss_mib(), 1),
              "full_matrix_would_be_mib": round(args.n * args.m * 8 / 2 ** 20, 1),
              "fraction": result["fraction"]}
    if args.cmmd:
        start = time.perf_counter()
        report["cmmd"] = cmmd(samples, references, chunk_size=args.chunk)
        report["cmmd_s"] = round(time.perf_counter() - start, 1)
        report["peak_after_cmmd_mib"] = round(peak_rss_mib(), 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
