"""Tolerances that follow from the arithmetic (docs/development.md, "Numerical tolerances").

Two floating-point results of the same quantity may legitimately differ by what rounding allows: another
summation order (another BLAS kernel, CPU, thread count, or another algorithm) and the precision of the
inputs. Each function below is an error model, a bound on that difference computed from the test's own
data, times a safety factor; a test asserts that bound, never a number one machine happened to print.

The models are worst-case rounding bounds (Higham, *Accuracy and Stability of Numerical Algorithms*,
2nd ed.): a sum of n terms computed in any order is within gamma_n * sum|terms| of the exact sum, with
gamma_n = n u / (1 - n u) and u = eps / 2 the unit roundoff (§3.1; an exact zero term adds no rounding,
so n counts the non-zero ones), so no BLAS, kernel or thread count can exceed them. Each function
returns the bound on the difference of two computations that each satisfy the model (``SAFETY`` = 2);
the exact value as the oracle is covered too.
"""
import numpy as np

EPS = float(np.finfo(np.float64).eps)  # 2.2e-16
EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7
SAFETY = 2.0  # two computations, each within its model


def gamma(n, eps=EPS):
    """Higham's gamma_n = n u / (1 - n u), u = eps / 2: relative worst-case error of a sum of n terms (a dot
    product of length n), any order, as a fraction of the sum of the terms' absolute values."""
    nu = max(int(n), 1) * eps / 2
    return nu / (1.0 - nu)


def sum_tol(n, magnitude, eps=EPS):
    """Difference bound for two computations of a sum (dot product, matrix-product entry, mean times n) of
    `n` terms whose absolute values add up to `magnitude`: SAFETY * gamma_n * magnitude."""
    return SAFETY * gamma(n, eps) * magnitude


def mean_tol(x):
    """Difference bound for two computations of the column means of the rows x (n, D), any order:
    SAFETY * gamma_{n+1} * max_j sum_i |x_ij| / n (the sum, then one division)."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    return SAFETY * gamma(len(x) + 1) * float(x.sum(axis=0).max()) / len(x)


def cov_tol(x, shift_range=None):
    """Max-entry difference bound for two float64 computations of the unbiased covariance of the rows x
    (n, D): numpy.cov, GaussianMoments' sums about a shift, shards merged after a rebase.

    Each entry is a sum of n products (x_ij - c_j)(x_ik - c_k) about a shift c, a correction s s^T / n and a
    division: within gamma_{n+3} * sum_i |x_ij - c_j| |x_ik - c_k| <= gamma_{n+3} * max_j sum_i (x_ij - c_j)^2
    (Cauchy-Schwarz) over (n - 1). The shift is exact in algebra (the formula does not depend on it) but the
    rounding does: with |c - mean| <= `shift_range` (per column; default the data's own range about the
    mean, which any shift taken from the data satisfies), (x_ij - c_j)^2 <= (|x_ij - m_j| + range_j)^2.
    numpy.cov centres on its computed mean, whose error e adds n e^2 / (n - 1): negligible unless the mean
    is large against the spread (then centre the oracle on an exactly rounded mean, see test_stats_moments).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    deviation = np.abs(x - x.mean(axis=0))
    shift_range = deviation.max(axis=0) if shift_range is None else shift_range
    magnitude = float(((deviation + shift_range) ** 2).sum(axis=0).max())
    return SAFETY * gamma(n + 3) * magnitude / (n - 1)


def eig_delta(norm, terms, eps=EPS):
    """Absolute error bound of every eigenvalue of a computed symmetric matrix of 2-norm `norm`.

    Weyl's theorem: each eigenvalue moves by at most the 2-norm of the perturbation. A product of matrices
    perturbs each entry by gamma_k times its magnitude for k summed terms, and a backward-stable eigensolver
    of an m x m matrix adds p(m) u norm with p(m) taken as m; `terms` is the total count (the inner
    dimensions of the products plus m), and the perturbation is taken relative to `norm`.
    """
    return gamma(terms, eps) * norm


def sqrt_sum_tol(eigenvalues, delta):
    """Bound on |sum_i sqrt(max(l_i + e_i, 0)) - sum_i sqrt(l_i)| when every |e_i| <= delta.

    Per eigenvalue min(sqrt(delta), delta / sqrt(l_i)) (|sqrt(a) - sqrt(b)| <= sqrt(|a - b|), and
    <= |a - b| / sqrt(b)). An eigenvalue that is exactly 0 (a rank-deficient covariance, a centred Gram
    matrix) costs sqrt(delta), far more than a well-separated one: this term dominates every Fréchet
    distance with fewer samples than dimensions.
    """
    eigenvalues = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    with np.errstate(divide="ignore"):
        per = np.minimum(np.sqrt(delta), delta / np.sqrt(eigenvalues))
    return float(per.sum())


def frechet_tol(mu1, sigma1, mu2, sigma2, features2=None, samples=0, mean_error=0.0):
    """Difference bound for two float64 computations of the Fréchet distance of these statistics.

    d^2 = |mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 sum_i sqrt(l_i), with l_i the eigenvalues of a symmetric PSD
    matrix M: A S2 A (D x D, A a root or factor of S1) in the dense form, F S1 F^T (N2 x N2, F the centred
    features2 / sqrt(N2 - 1)) in the Gram form (when `features2` has N2 < D rows, as the library does).
    Each l_i is within eig_delta(|S1|_2 |S2|_2, terms) with terms = 4D (root: D, two products: 2D, the
    eigensolver: D) or 2D + N2 (Gram form), plus `samples`: the number of rows the covariances were summed
    from, when one side computes from the features themselves and the other from the covariances (their
    own rounding; the Gram form always does, so N2 is added there too). The rest is a sum of 3D terms;
    when the two computations start from means that may differ by `mean_error` per entry (e.g. one ulp of
    a mean computed twice), |mu1 - mu2|^2 moves by at most sum_j (2 |mu1_j - mu2_j| e + e^2), e = 2 mean_error.
    A Schur-based ``sqrtm`` of S1 S2 (pytorch-fid, clean-fid) and singular values of a factor (test oracles)
    are taken to satisfy the same model (singular values are better conditioned: they carry no square root
    of a rounding error).
    """
    mu1, sigma1, mu2, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, sigma1, mu2, sigma2))
    dim = mu1.shape[0]
    w1, v1 = np.linalg.eigh(sigma1)
    norm = float(np.abs(w1).max() * np.abs(np.linalg.eigvalsh(sigma2)).max())
    if features2 is not None and len(features2) < dim:
        x = np.asarray(features2, dtype=np.float64)
        f = (x - x.mean(axis=0)) / np.sqrt(len(x) - 1)
        eigenvalues, terms = np.linalg.eigvalsh(f @ sigma1 @ f.T), 2 * dim + 2 * len(x) + samples
    else:
        root = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
        eigenvalues, terms = np.linalg.eigvalsh(root @ sigma2 @ root), 4 * dim + samples
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    diff = mu1 - mu2
    rest = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)) + 2 * trace_sqrt
    e = 2 * np.broadcast_to(np.asarray(mean_error, dtype=np.float64), diff.shape)
    means = float(np.sum(2 * np.abs(diff) * e + e * e))
    trace_sqrt_error = 2 * sqrt_sum_tol(eigenvalues, eig_delta(norm, terms))
    return SAFETY * (trace_sqrt_error + means) + sum_tol(3 * dim, rest)


def mmd_tol(x, y, degree=3, gamma_=None, coef0=1.0, center=None):
    """Difference bound for two float64 computations of the unbiased MMD^2 with the polynomial kernel
    k(a, b) = (g a.b + coef0)^degree of the rows x (m, D) and y (n, D), g = 1/D by default.

    MMD^2 is a difference of three means of kernel values, so its rounding is relative to the kernels, not
    to the (much smaller) result: each kernel value within gamma_{D + 2 degree + 1} of its magnitude (the dot
    product, the power), each mean within gamma_{M} for M <= max(m, n)^2 terms. Magnitudes, per pair: the
    plain formula (`center` None: peers, the definition) (g |a| |b| + |coef0|)^degree; the library's
    expansion about `center` c (u = a - c, v = b - c, b0 = g c.c + coef0; the constant b0^degree cancels
    exactly) (|b0| + T)^degree - |b0|^degree with T = g (|u| |v| + |c| (|u| + |v|)).
    """
    x, y = (np.asarray(a, dtype=np.float64) for a in (x, y))
    g = 1.0 / x.shape[1] if gamma_ is None else gamma_

    def mean_magnitude(p, q):
        if center is None:
            return float(np.mean((g * np.outer(np.linalg.norm(p, axis=1), np.linalg.norm(q, axis=1))
                                  + abs(coef0)) ** degree))
        c = np.asarray(center, dtype=np.float64)
        base = abs(g * float(c @ c) + coef0)
        up, uq = np.linalg.norm(p - c, axis=1), np.linalg.norm(q - c, axis=1)
        t = g * (np.outer(up, uq) + np.linalg.norm(c) * (up[:, None] + uq[None, :]))
        return float(np.mean((base + t) ** degree - base ** degree))

    magnitude = mean_magnitude(x, x) + mean_magnitude(y, y) + 2 * mean_magnitude(x, y)
    terms = x.shape[1] + 2 * degree + 1 + max(len(x), len(y)) ** 2
    return SAFETY * gamma(terms) * magnitude


def ssim_tol(pixels, eps=EPS, taps=11, scales=1, k2=0.03, extra_terms=0):
    """Difference bound for two computations of a mean SSIM map (or one MS-SSIM factor) of images scaled to
    [0, 1] (any data range: SSIM is scale invariant, C2 = k2^2 then).

    Per pixel, each local moment (E[x], E[x^2], E[xy]) is a separable window of `taps` x `taps` (2 taps
    terms) of values up to 1, after `scales` - 1 2x2 average poolings (2 terms each) and `extra_terms`
    more (a box filter before): within gamma_k, k = 2 taps + 2 (scales - 1) + extra_terms + 1. A variance
    E[x^2] - mu^2 is then within 2 gamma_k, against C2 in the denominators: each of the four factors of
    SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2)) moves by at most
    2 gamma_k / k2^2 relative, so a per-pixel SSIM (|SSIM| <= 1) by 4 times that; the mean over `pixels`
    adds gamma_pixels.
    """
    k = 2 * taps + 2 * (scales - 1) + extra_terms + 1
    return SAFETY * (4 * 2 * gamma(k, eps) / k2 ** 2 + gamma(pixels, eps))
