"""Size of a reference statistics file, 0.1 layout against the current writer, for N images with features.

    python scripts/refstats_size.py [--n 50000] [--dim 2048] [--sqrt-sigma]

Features are random, Inception-like in range (|N(0, 1)| * 0.4, float32; real pool3 features compress about
as little: ~1.1x with gzip), moments from them with GaussianMoments. The 0.1 layout is what version 0.1's
writer stored: mu, sigma, sum, outer_sum as contiguous float64 and features gzip-4 in chunks of 1024 rows;
the current one is `genmetrics.registry.write_refstats`. Prints both sizes, their ratio and the write times.
"""
import argparse
import os
import tempfile
import time
import warnings

import h5py
import numpy as np


def write_0_1(path, stats):
    """The datasets of a file written by genmetrics 0.1 (attributes left out: they are ~1 KB)."""
    with h5py.File(path, "w") as f:
        f.create_dataset("mu", data=stats.mu)
        f.create_dataset("sigma", data=stats.sigma)
        f.create_dataset("n", data=np.int64(stats.n))
        for name in ("sum", "outer_sum", "sqrt_sigma"):
            if getattr(stats, name) is not None:
                f.create_dataset(name, data=getattr(stats, name))
        f.create_dataset("features", data=stats.features, compression="gzip", compression_opts=4,
                         chunks=(min(len(stats.features), 1024), stats.features.shape[1]))
    return path


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--sqrt-sigma", action="store_true")
    args = parser.parse_args()
    from genmetrics.registry import ReferenceStats, write_refstats
    from genmetrics.stats import GaussianMoments, sqrtm_psd

    features = (np.abs(np.random.default_rng(0).normal(size=(args.n, args.dim))) * 0.4).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n <= D is rank-deficient: irrelevant to the size
        stats = ReferenceStats.from_moments(GaussianMoments.from_features(features), features=features,
                                            meta=dict(dataset="size", split="train", resolution=32, mode="clean",
                                                      feature_extractor="inception-v3-compat", feature_layer="pool3"))
    if args.sqrt_sigma:
        stats.sqrt_sigma = sqrtm_psd(stats.sigma)
    with tempfile.TemporaryDirectory() as folder:
        sizes = {}
        for label, write in (("0.1 layout", write_0_1), ("current", write_refstats)):
            path = os.path.join(folder, f"{label.split()[0]}.h5")
            start = time.perf_counter()
            write(path, stats)
            sizes[label] = os.path.getsize(path)
            print(f"{label:<11} {sizes[label] / 1e6:9.1f} MB  written in {time.perf_counter() - start:5.1f} s")
    print(f"N={args.n} D={args.dim}{' with sqrt_sigma' if args.sqrt_sigma else ''}: current / 0.1 = "
          f"{sizes['current'] / sizes['0.1 layout']:.3f}")


if __name__ == "__main__":
    main()
