"""Benchmark: genmetrics' eigenvalue Fréchet distance against the peers' implementations at D=2048.

    python scripts/bench_frechet.py [--dim 2048] [--repeats 3] [--seed 0]

Peers: pytorch-fid ``calculate_frechet_distance`` and clean-fid ``frechet_distance`` (scipy.linalg.sqrtm of
S1 S2), torch-fidelity ``fid_statistics_to_metric`` (numpy eigvals of S1 S2) and torchmetrics
``_compute_fid`` (torch.linalg.eigvals of S1 S2). Each is run on the same float64 statistics; the script
prints the best-of-`repeats` wall time, the speed ratio peer/ours, and the relative difference of the values.
The covariances are Inception-like: Wishart matrices from N=`--samples` correlated samples with a decaying
spectrum (N < D makes them rank-deficient, the hard case for sqrtm). With ``--samples`` below ``--dim`` a
row for the Gram form (``features2=``, the second set's features) is added.
"""
import argparse
import time

import numpy as np


def _samples(rng, dim, samples):
    """Inception-like features (samples, dim): non-negative, correlated, with a decaying spectrum."""
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    scales = 1.0 / np.sqrt(1.0 + np.arange(dim))
    x = (rng.normal(size=(samples, dim)) * scales) @ basis.T
    return np.abs(x) + 0.1


def _covariance(rng, dim, samples):
    x = _samples(rng, dim, samples)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _best_time(fn, repeats):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, float(value)


def _scipy_sqrtm_frechet(mu1, sigma1, mu2, sigma2):
    """The core of pytorch-fid's and clean-fid's code: trace of scipy.linalg.sqrtm(S1 S2), real part."""
    from scipy import linalg

    covmean = linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real)


def _peers():
    peers = {"scipy.linalg.sqrtm (pytorch-fid/clean-fid core)": _scipy_sqrtm_frechet}
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance

        peers["pytorch-fid calculate_frechet_distance (scipy sqrtm)"] = calculate_frechet_distance
    except ImportError:
        pass
    try:
        from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

        peers["clean-fid frechet_distance (scipy sqrtm)"] = cleanfid_frechet_distance
    except ImportError:
        pass
    try:
        from torch_fidelity.metric_fid import fid_statistics_to_metric

        peers["torch-fidelity fid_statistics_to_metric (np eigvals)"] = lambda m1, s1, m2, s2: fid_statistics_to_metric(
            {"mu": m1, "sigma": s1}, {"mu": m2, "sigma": s2}, False
        )["frechet_inception_distance"]
    except ImportError:
        pass
    try:
        import torch
        from torchmetrics.image.fid import _compute_fid

        peers["torchmetrics _compute_fid (torch eigvals)"] = lambda m1, s1, m2, s2: _compute_fid(
            *(torch.from_numpy(a) for a in (m1, s1, m2, s2))
        )
    except ImportError:
        pass
    return peers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=5000, help="samples behind each covariance")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from genmetrics.stats import frechet_distance, sqrtm_psd

    rng = np.random.default_rng(args.seed)
    mu1, sigma1 = _covariance(rng, args.dim, args.samples)
    features2 = _samples(rng, args.dim, args.samples)
    mu2, sigma2 = features2.mean(axis=0), np.cov(features2, rowvar=False)
    frechet_distance(mu1, sigma1, mu2, sigma2)  # warm-up: BLAS/LAPACK thread pools, page faults
    start = time.perf_counter()
    root = sqrtm_psd(sigma1)
    root_time = time.perf_counter() - start

    ours_time, ours = _best_time(lambda: frechet_distance(mu1, sigma1, mu2, sigma2), args.repeats)
    cached_time, cached = _best_time(
        lambda: frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=root), args.repeats
    )
    print(f"D={args.dim}, covariances from N={args.samples} samples, best of {args.repeats}")
    print(f"{'implementation':58s} {'seconds':>9s} {'ratio':>7s} {'FID':>16s} {'rel. diff':>10s}")
    print(f"{'genmetrics frechet_distance (Cholesky + eigvalsh)':58s} {ours_time:9.3f} {1.0:7.2f} "
          f"{ours:16.10f} {0.0:10.1e}")
    print(f"{'genmetrics frechet_distance, cached sqrt_sigma1':58s} {cached_time:9.3f} "
          f"{ours_time / cached_time:7.2f} {cached:16.10f} {abs(cached - ours) / abs(ours):10.1e}")
    print(f"{'(genmetrics sqrtm_psd, computed once per reference)':58s} {root_time:9.3f}")
    if args.samples < args.dim:
        gram_time, gram = _best_time(
            lambda: frechet_distance(mu1, sigma1, mu2, sigma2, features2=features2), args.repeats)
        print(f"{'genmetrics frechet_distance, features2 (Gram form)':58s} {gram_time:9.3f} "
              f"{ours_time / gram_time:7.2f} {gram:16.10f} {abs(gram - ours) / abs(ours):10.1e}")
    for name, fn in _peers().items():
        try:
            seconds, value = _best_time(lambda fn=fn: fn(mu1, sigma1, mu2, sigma2), args.repeats)
        except Exception as exc:  # a peer broken by this environment's library versions: report, go on
            print(f"{name:58s} failed: {type(exc).__name__}: {exc}")
            continue
        print(f"{name:58s} {seconds:9.3f} {seconds / ours_time:7.2f} {value:16.10f} "
              f"{abs(value - ours) / abs(ours):10.1e}")
    print("ratio = peer time / genmetrics time (uncached); > 1 means genmetrics is faster. "
          "The cached and Gram rows' ratios are uncached / that row.")


if __name__ == "__main__":
    main()
