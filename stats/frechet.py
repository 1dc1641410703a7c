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
"""
import numpy as np

from .checks import _as_float64_numpy, _check_mean_cov, _check_same_dim

__all__ = ["frechet_distance", "sqrtm_psd"]


def sqrtm_psd(sigma):
    """Symmetric square root of a symmetric positive semi-definite matrix (float64).

    A = V diag(sqrt(max(w, 0))) V^T for the eigendecomposition sigma = V diag(w) V^T; A is symmetric,
    PSD and A @ A == sigma up to rounding (negative eigenvalues from rounding are clipped to 0).
    """
    sigma = _as_float64_numpy(sigma)
    if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
        raise ValueError(f"sqrtm_psd needs a square matrix, got shape {sigma.shape}")
    _check_mean_cov(np.zeros(sigma.shape[0]), sigma, "sigma")
    eigenvalues, eigenvectors = np.linalg.eigh(sigma)
    root = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T
    return (root + root.T) / 2


def _psd_factor(sigma):
    """F with F F^T = sigma: the Cholesky factor when sigma is positive definite, else sqrtm_psd(sigma)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        return sqrtm_psd(sigma)


def frechet_distance(mu1, sigma1, mu2, sigma2, sqrt_sigma1=None):
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), as a float.

    Inputs are numpy arrays or torch tensors (any float dtype), computed in float64. ``sqrt_sigma1``, if
    given, must be ``sqrtm_psd(sigma1)`` (e.g. cached with the reference statistics); it saves factoring
    sigma1. Mathematically >= 0; values within rounding of 0 may be slightly negative.
    """
    mu1, sigma1, mu2, sigma2 = (_as_float64_numpy(a) for a in (mu1, sigma1, mu2, sigma2))
    _check_mean_cov(mu1, sigma1, "mu1/sigma1")
    _check_mean_cov(mu2, sigma2, "mu2/sigma2")
    _check_same_dim(mu1, mu2, "mu1", "mu2")
    if sqrt_sigma1 is None:
        factor = _psd_factor(sigma1)
    else:
        factor = _as_float64_numpy(sqrt_sigma1)
        if factor.shape != sigma1.shape:
            raise ValueError(
                f"sqrt_sigma1 has shape {factor.shape} but sigma1 has {sigma1.shape}; "
                f"pass sqrtm_psd(sigma1) of the same statistics"
            )
    inner = factor.T @ sigma2 @ factor
    eigenvalues = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt_product = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product)
