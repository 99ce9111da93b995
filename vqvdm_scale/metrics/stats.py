"""The statistics behind FVD, KVD and IS, in float64 on feature matrices ``[N, D]`` (numpy).

- :func:`frechet_distance`: ``|mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2))`` (Heusel et al.
  2017; FVD, Unterthiner et al. 2018). The trace of the matrix square root is taken as the sum of the
  square roots of the eigenvalues of ``S_r^(1/2) S_f S_r^(1/2)``, a symmetric PSD matrix with the same
  spectrum as ``S_r S_f``, so no complex ``sqrtm`` round-off needs discarding.
- :func:`polynomial_mmd`: the unbiased MMD^2 with the cubic polynomial kernel ``(x.y / D + 1)^3`` of
  KID (Binkowski et al. 2018), which KVD applies to I3D features.
- :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` over ``splits`` parts (Salimans et al.
  2016), mean and standard deviation over the parts.

Where the papers' code differs, :mod:`vqvdm_scale.metrics.protocol` names the choice each preset makes.
"""

from __future__ import annotations

import numpy as np

__all__ = ["frechet_distance", "gaussian_stats", "inception_score", "polynomial_mmd"]


def _as64(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"{name}: expected a [N, D] feature matrix with N >= 2, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name}: features hold NaN or inf")
    return a


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``[N, D]`` features in float64, the covariance normalised by N (biased), as
    StyleGAN-V's ``FeatureStats.get_mean_cov`` (and cd-fvd) compute it; TATS divides by N - 1."""
    f = _as64(features, "gaussian_stats")
    mu = f.mean(axis=0)
    d = f - mu
    return mu, d.T @ d / f.shape[0]


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(
            f"frechet_distance: shapes disagree: {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}"
        )
    r = _psd_sqrt(s1)
    m = r @ s2 @ r
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def polynomial_mmd(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD^2 between feature sets with ``k(a, b) = (a.b / D + coef0)^degree`` (KID's kernel)."""
    a, b = _as64(x, "polynomial_mmd x"), _as64(y, "polynomial_mmd y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"polynomial_mmd: feature sizes differ, {a.shape[1]} and {b.shape[1]}")
    gamma = 1.0 / a.shape[1]
    kxx = (a @ a.T * gamma + coef0) ** degree
    kyy = (b @ b.T * gamma + coef0) ** degree
    kxy = (a @ b.T * gamma + coef0) ** degree
    m, n = a.shape[0], b.shape[0]
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def inception_score(
    probs: np.ndarray, splits: int = 1, eps: float = 0.0, shuffle_seed: int | None = None
) -> tuple[float, float]:
    """(mean, population std) of the Inception Score of ``[N, K]`` class probabilities over ``splits`` parts.

    Part i is rows ``[i*N//splits, (i+1)*N//splits)``, after a ``RandomState(shuffle_seed)`` shuffle of the
    rows when a seed is given (StyleGAN-V shuffles with 42). ``eps`` is added to the probabilities (TGANv2
    adds 1e-20); a zero probability contributes 0 to the KL sum.
    """
    p = _as64(probs, "inception_score")
    n = p.shape[0]
    if splits < 1 or splits > n:
        raise ValueError(f"inception_score: splits must be in [1, N={n}], got {splits}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("inception_score: rows must be probabilities (softmax outputs) that sum to 1")
    if shuffle_seed is not None:
        p = p.copy()
        np.random.RandomState(shuffle_seed).shuffle(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits] + eps
        py = part.mean(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(py)), 0.0)
        scores.append(float(np.exp(kl.sum(axis=1).mean())))
    return float(np.mean(scores)), float(np.std(scores))
