"""Scaling of a statistics build over torch.distributed ranks on this machine, at equal total thread count.

Builds the statistics of one folder of generated PNG images two ways and prints images/s:
one process with T threads, and `torchrun` with 2 ranks of T/2 threads each (gloo). Wall time includes
starting the processes and loading the Inception in each.

    python scripts/bench_distributed.py [--images 96] [--threads 2] [--json out.json]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image


def make_folder(folder, count, size=64, seed=0):
    """`count` smooth random RGB images (uint8 PNG) of `size` pixels."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        coarse = rng.random((8, 8, 3))
        image = np.kron(coarse, np.ones((size // 8, size // 8, 1)))
        Image.fromarray((image * 255).astype(np.uint8)).save(os.path.join(folder, f"{i:05d}.png"))


def timed(command, threads):
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"})
    if done.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2, help="total threads of each configuration")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    from genmetrics.stats.networks.weights import installed_fid_helper_weights

    genmetrics = os.path.join(os.path.dirname(sys.executable), "genmetrics")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    options = ["--weights", installed_fid_helper_weights(), "--device", "cpu", "--no-progress"]
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = os.path.join(tmp, "images")
        make_folder(folder, args.images)
        for label, launcher, threads in ((f"1 process x {args.threads} threads", [], args.threads),
                                         (f"2 ranks x {max(1, args.threads // 2)} thread(s) (torchrun, gloo)",
                                          torchrun, max(1, args.threads // 2))):
            output = os.path.join(tmp, f"{len(runs)}.h5")
            seconds = timed([*launcher, genmetrics, "stats", "build", folder, "-o", output, *options], threads)
            runs[label] = {"seconds": round(seconds, 2), "images_per_s": round(args.images / seconds, 2)}
    print(f"| configuration ({args.images} images of 64 px, end to end) | seconds | images/s |")
    print("|---|---|---|")
    for label, figures in runs.items():
        print(f"| {label} | {figures['seconds']} | {figures['images_per_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": args.images, "threads": args.threads, "runs": runs}, f, indent=2)


if __name__ == "__main__":
    main()
