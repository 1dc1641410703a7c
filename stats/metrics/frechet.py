"""Fréchet distance between two Gaussians (the FID once the Gaussians are fitted to Inception features).

    d^2 = |mu1 - mu2|^2 + Tr(S1) + Tr(S2) - 2 Tr( (S1 S2)^{1/2} )

Units: squared feature units (for FID, squared Inception pool3 activations). 0 for identical Gaussians.

pytorch-fid and clean-fid evaluate Tr((S1 S2)^{1/2}) with ``scipy.linalg.sqrtm`` of the non-symmetric
product S1 S2 (a Schur decomposition in complex arithmetic, then the real part). Here the same trace comes
from a symmetric eigenproblem: with A = S1^{1/2} (symmetric PSD), S1 S2 = A (A S2) has the same eigenvalues
as (A S2) A = A S2 A, which is symmetric PSD, so

    Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(A S2 A)),

computed with ``eigvalsh`` in float64, tiny negative eigenvalues (rounding) clipped to 0. The result is
always real. Any factor S1 = F F^T gives the same non-zero eigenvalues (those of F^T S2 F), so without a
cached root a Cholesky factor is used (about 20x cheaper than an eigendecomposition); only when S1 is
singular (fewer samples than dimensions) does it fall back to the symmetric root. S1^{1/2} depends on the
reference alone, so it can be cached (the registry stores it as ``sqrt_sigma``) and a FID against a fixed
reference costs two matrix products and one ``eigvalsh``.

Gram form, when the N2 features behind S2 are given and N2 < D: with F = Xc / sqrt(N2 - 1) (Xc the centred
features, S2 = F^T F), A S2 A = (A F^T)(F A) has the same non-zero eigenvalues as the N2 x N2 matrix
F A A F^T = F S1 F^T, so

    Tr((S1 S2)^{1/2}) = sum_i sqrt(lambda_i(F S1 F^T)),

which needs no root of S1 and no D x D eigenproblem: O(N2 D^2) instead of O(D^3). It is also more
accurate: the D x D form has D - N2 + 1 eigenvalues that are zero but come out as rounding noise, and
their square roots add up (a set's distance to itself: ~1e-7 of Tr(S) there, ~2e-10 here at N2 = 500,
D = 2048).

Checks (each a ``ValueError`` naming the argument). Both covariances must be symmetric (to 1e-6 of their
largest entry) and positive semi-definite up to rounding: no eigenvalue below -tol * max|eigenvalue|, with
tol = max(10 D eps, 1e-9) and eps the precision of the least precise float input. Rounding a covariance to
float32 moves each entry by at most eps/2 of itself, hence (Weyl) each eigenvalue by at most
sqrt(D) eps/2 times the largest; 10 D eps (2.4e-3 at D = 2048 in float32) also leaves room for a covariance
accumulated in float32. A matrix beyond that is not a covariance, and the message gives its most negative
eigenvalue. sigma1: its Cholesky factorisation (positive definite), else its eigenvalues; a cached root
must satisfy |A|_F^2 = Tr(S1) (cheap, catches a root of other statistics). sigma2: A S2 A, and S2 itself
by a Cholesky factorisation of S2 + tol max(diag S2) I (D^3 / 3, which succeeds for a singular PSD S2; the
eigenvalues are computed only to report a failure). A S2 A alone cannot see a negative eigenvalue of S2 in
the null space of a singular S1 (fewer samples than dimensions), which still lowers Tr(S2): that gave
negative distances. In the Gram form S1 is checked the same way (a Cholesky factorisation of
S1 + tol max(diag S1) I) and S2 enters only through Tr(S2), which the features must match: mean mu2 and
|F|_F^2 = Tr(S2) to 1e-6 relative (O(N2 D), catches features of other samples), so the result is the
distance to the features' own Gaussian, whose covariance F^T F is PSD by construction.

The result is a distance, never negative: rounding can take the computed value slightly below 0 (the
square roots of the zero eigenvalues' rounding noise, at most 2 n sqrt(tol lambda_max) for n eigenvalues,
plus tol times the traces); such a value is returned as 0.0, and one below minus that bound is a
``ValueError`` (inconsistent statistics). The distance is homogeneous (scaling the features by a scales it
by a^2), so inputs far outside float64's comfortable range (covariances beyond 2^+-300) are scaled by an
exact power of two first and the result scaled back: large-magnitude features give a finite FID.
"""
from typing import Optional

import numpy as np
import torch

from ..checks import ArrayLike, _as_float64_numpy, _check_array, _check_features, _check_mean_cov, _check_same_dim

__all__ = ["frechet_distance", "sqrtm_psd"]

_MIN_RTOL = 1e-9
_SAFE_EXPONENT = 300


def sqrtm_psd(sigma: ArrayLike) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (float64).

    A = V diag(sqrt(max(w, 0))) V^T for the eigendecomposition sigma = V diag(w) V^T; A is symmetric,
    PSD and A @ A == sigma up to rounding (negative eigenvalues from rounding are clipped to 0).

    Raises:
        ValueError: sigma is not square, not finite, not symmetric, or not PSD up to rounding (an eigenvalue
            below -tol * max|eigenvalue|, tol as in :func:`frechet_distance`).
    """
    rtol = _rounding_rtol((sigma,), np.shape(sigma)[-1] if np.ndim(sigma) else 1)
    sigma = _as_float64_numpy(sigma)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"sqrtm_psd needs a square matrix, got shape {sigma.shape}")
    _check_mean_cov(np.zeros(sigma.shape[0]), sigma, "sigma")
    root, eigenvalues = _root_and_eigenvalues(sigma)
    _check_psd(eigenvalues, rtol, "sigma")
    return root


def _root_and_eigenvalues(sigma):
    """(A, w): the clipped symmetric root of sigma and sigma's eigenvalues w."""
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
    return (root + root.T) / 2, eigenvalues


def _rounding_rtol(arrays, dim):
    """max(10 D eps, 1e-9): relative size of eigenvalue rounding, eps of the least precise float input."""
    eps = max(np.finfo(np.float64).eps, *(_float_eps(a) for a in arrays))
    return max(10 * dim * eps, _MIN_RTOL)


def _float_eps(array):
    if isinstance(array, torch.Tensor):
        return torch.finfo(array.dtype).eps if array.dtype.is_floating_point else 0.0
    dtype = np.asarray(array).dtype
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else 0.0


def _check_psd(eigenvalues, rtol, what):
    """No eigenvalue below -rtol * max|eigenvalue| (rounding); otherwise the matrix is not a covariance."""
    largest = float(np.abs(eigenvalues).max()) if eigenvalues.size else 0.0
    if eigenvalues.size and float(eigenvalues.min()) < -rtol * largest:
        raise ValueError(f"{what} is not positive semi-definite (eigenvalue {float(eigenvalues.min()):.4g}, largest "
                         f"magnitude {largest:.4g}): it is not a covariance matrix; recompute it from features "
                         f"(e.g. GaussianMoments(...).cov) or re-create the statistics file")


def _psd_factor(sigma, rtol):
    """F with F F^T = sigma: the Cholesky factor when sigma is positive definite, else sqrtm_psd(sigma)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        pass  # singular or not PSD: decided below, outside the handler
    root, eigenvalues = _root_and_eigenvalues(sigma)
    _check_psd(eigenvalues, rtol, "sigma1")
    return root


def _check_root(root, sigma, rtol):
    """A cached symmetric root A of sigma has |A|_F^2 = Tr(A A) = Tr(sigma) (O(D^2), catches wrong roots)."""
    if root.shape != sigma.shape:
        raise ValueError(f"sqrt_sigma1 has shape {root.shape} but sigma1 has {sigma.shape}; "
                         f"pass sqrtm_psd(sigma1) of the same statistics")
    squared, trace = float(np.sum(root * root)), float(np.trace(sigma))
    if abs(squared - trace) > 1e3 * rtol * max(abs(trace), squared):
        raise ValueError(f"sqrt_sigma1 is not the square root of sigma1 (|sqrt_sigma1|^2 = {squared:.6g} but "
                         f"Tr(sigma1) = {trace:.6g}); pass sqrtm_psd(sigma1), or drop the cached root")


def _sigma1_factor(sigma1, sqrt_sigma1, k, rtol):
    """F with F F^T = sigma1: the cached root (checked, scaled by 2^-k like sigma1) or a factor computed here."""
    if sqrt_sigma1 is None:
        return _psd_factor(sigma1, rtol)
    root = _as_float64_numpy(sqrt_sigma1)
    root = np.ldexp(root, -k) if k else root
    _check_root(root, sigma1, rtol)
    return root


def _check_sigma1_psd(sigma1, sqrt_sigma1, k, rtol):
    """The Gram form sees sigma1 only along the samples' directions, so its PSD is checked here: a cached
    root as in the D x D form, else :func:`_check_covariance_psd`."""
    if sqrt_sigma1 is not None:
        _sigma1_factor(sigma1, sqrt_sigma1, k, rtol)
        return
    _check_covariance_psd(sigma1, rtol, "sigma1")


def _check_covariance_psd(sigma, rtol, what):
    """Every eigenvalue of sigma >= -rtol max|eigenvalue|, else ValueError naming `what`.

    A Cholesky factorisation of sigma + rtol max(diag) I (D^3 / 3, ~0.1 s at D = 2048; it succeeds for a
    singular PSD sigma too, and proves every eigenvalue >= -rtol max(diag) >= -rtol max|eigenvalue|); only
    when that fails are the eigenvalues computed, to decide and report."""
    shift = rtol * max(float(np.diag(sigma).max()), 0.0)
    try:
        np.linalg.cholesky(sigma + shift * np.eye(len(sigma)))
        return
    except np.linalg.LinAlgError:
        pass  # decided below, outside the handler (a refusal then shows no LinAlgError traceback)
    _check_psd(np.linalg.eigvalsh(sigma), rtol, what)


_FEATURES_RTOL = 1e-6  # features stored in float32 reproduce float64 moments to ~1e-7


def _gram_factor(features2, mu2, sigma2, k):
    """F = 2^-k Xc / sqrt(N2 - 1) with F^T F = sigma2 (already scaled by 4^-k), checked against mu2 and
    Tr(sigma2); None when N2 >= D (the D x D form is then as cheap; the features are not read)."""
    _check_array(features2, "features2")
    if features2.ndim != 2 or features2.shape[1] != mu2.shape[0]:
        raise ValueError(f"features2 must be the (N2, {mu2.shape[0]}) features behind mu2/sigma2, got shape "
                         f"{tuple(features2.shape)}")
    if features2.shape[0] >= features2.shape[1]:
        return None
    _check_features(features2, "features2")
    x = _as_float64_numpy(features2)
    x = np.ldexp(x, -k) if k else x
    mean = x.mean(axis=0)
    gram = (x - mean) / np.sqrt(x.shape[0] - 1)
    trace, expected = float(np.sum(gram * gram)), float(np.trace(sigma2))
    spread = np.sqrt(max(trace, expected))
    if (float(np.abs(mean - mu2).max()) > _FEATURES_RTOL * (float(np.abs(mu2).max()) + spread)
            or abs(trace - expected) > _FEATURES_RTOL * max(trace, expected)):
        raise ValueError(f"features2 are not the features mu2/sigma2 were computed from ({x.shape[0]} rows with "
                         f"Tr(cov) {trace:.6g} vs Tr(sigma2) {expected:.6g}, largest mean difference "
                         f"{float(np.abs(mean - mu2).max()):.3g}); pass the same samples' features, or none")
    return gram


def _power_of_two_scale(mu1, mu2, sigma1, sigma2):
    """k with |mu1 - mu2| 2^-k and sigma 4^-k near 1 when outside 2^+-300 (exact rescaling), else 0."""
    exponent = max(2 * np.frexp(np.abs(mu1 - mu2).max())[1],
                   np.frexp(max(np.abs(sigma1).max(), np.abs(sigma2).max()))[1])
    return 0 if abs(exponent) <= _SAFE_EXPONENT else int(exponent) // 2


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     sqrt_sigma1: Optional[ArrayLike] = None, features2: Optional[ArrayLike] = None) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), as a float.

    Inputs are numpy arrays or torch tensors (any float dtype), computed in float64. ``sqrt_sigma1``, if
    given, must be ``sqrtm_psd(sigma1)`` (e.g. cached with the reference statistics); it saves factoring
    sigma1 (the Gram form needs no factor). ``features2``, if given, are the (N2, D) features mu2 and
    sigma2 were computed from (e.g. ``FeatureStats.features``); when N2 < D the trace term is computed in
    the N2 x N2 Gram form (see the module docstring: faster and more accurate), else they are not read.
    Never negative: a value that rounding takes below 0 (within the bound in the module docstring) is
    returned as 0.0.

    Raises:
        ValueError: shapes or values that are not Gaussian statistics (non-finite, not symmetric, not
            positive semi-definite, a cached root of another matrix, features of other samples), or a
            result that overflows float64.
    """
    rtol = _rounding_rtol((mu1, sigma1, mu2, sigma2), np.shape(mu1)[-1] if np.ndim(mu1) else 1)
    mu1, sigma1, mu2, sigma2 = (_as_float64_numpy(a) for a in (mu1, sigma1, mu2, sigma2))
    _check_mean_cov(mu1, sigma1, "mu1/sigma1")
    _check_mean_cov(mu2, sigma2, "mu2/sigma2")
    _check_same_dim(mu1, mu2, "mu1", "mu2")
    k = _power_of_two_scale(mu1, mu2, sigma1, sigma2)
    if k:
        mu1, mu2 = np.ldexp(mu1, -k), np.ldexp(mu2, -k)
        sigma1, sigma2 = np.ldexp(sigma1, -2 * k), np.ldexp(sigma2, -2 * k)
    gram = None if features2 is None else _gram_factor(features2, mu2, sigma2, k)
    if gram is not None:
        _check_sigma1_psd(sigma1, sqrt_sigma1, k, rtol)
        inner, what = gram @ sigma1 @ gram.T, "sigma1 (seen through the features of sigma2)"
    else:
        factor = _sigma1_factor(sigma1, sqrt_sigma1, k, rtol)
        inner, what = factor.T @ sigma2 @ factor, "sigma2 (seen through sigma1's square root)"
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    _check_psd(eigenvalues, rtol, what)
    if gram is None:
        _check_covariance_psd(sigma2, rtol, "sigma2")  # also where sigma1 is singular (A S2 A is blind there)
    diff = mu1 - mu2
    parts = (diff @ diff, np.trace(sigma1), np.trace(sigma2), np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    return _checked_result(parts, eigenvalues, rtol, k)


def _checked_result(parts, eigenvalues, rtol, k):
    """max(|d|^2 + Tr S1 + Tr S2 - 2 Tr sqrt, 0), scaled back by 4^k; finite, and a value below -(its
    rounding bound) is refused (the statistics contradict each other)."""
    mean_term, trace1, trace2, trace_sqrt = parts
    fid = float(mean_term + trace1 + trace2 - 2.0 * trace_sqrt)
    with np.errstate(over="ignore"):
        scaled_back = float(np.ldexp(fid, 2 * k))
    largest = float(np.abs(eigenvalues).max()) if eigenvalues.size else 0.0
    bound = 2 * eigenvalues.size * np.sqrt(rtol * largest) + rtol * (mean_term + trace1 + trace2)
    if not np.isfinite(scaled_back):
        raise ValueError("the Fréchet distance overflows float64 (the features are too large); rescale both "
                         "feature sets by the same factor a (FID scales by a^2)")
    if fid < -bound:
        raise ValueError(f"the Fréchet distance came out negative ({fid:.6g}, rounding bound {bound:.3g}): the "
                         f"statistics are inconsistent (sigma1, sigma2 or sqrt_sigma1); recompute them from features")
    return scaled_back if scaled_back > 0 else 0.0  # also turns -0.0 into 0.0
