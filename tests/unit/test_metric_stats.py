"""FVD, KVD and IS statistics equal independent references written here from the papers' formulas.

Each reference is computed another way than :mod:`vqvdm_scale.metrics.stats` does it: the Fréchet distance
with ``scipy.linalg.sqrtm`` of ``S1 @ S2`` (StyleGAN-V's and cd-fvd's formula) instead of eigenvalues of a
symmetric product, the MMD with explicit Python loops over pairs, the Inception Score by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from vqvdm_scale.metrics.stats import frechet_distance, gaussian_stats, inception_score, polynomial_mmd


def fd_reference(x: np.ndarray, y: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(S1 + S2 - 2 real(sqrtm(S1 @ S2)))`` with numpy's biased covariances, float64."""
    s1, s2 = np.cov(x, rowvar=False, bias=True), np.cov(y, rowvar=False, bias=True)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = x.mean(axis=0) - y.mean(axis=0)
    return float(diff @ diff + np.trace(s1 + s2 - 2.0 * np.real(covmean)))


def fd(x: np.ndarray, y: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(x), *gaussian_stats(y))


@pytest.mark.parametrize(("n", "d"), [(300, 16), (20, 64)])
def test_frechet_distance_equals_the_scipy_sqrtm_reference(n: int, d: int) -> None:
    """Full-rank (N > D) and low-rank (N = 20 < D = 64, both covariances singular) feature sets."""
    rng = np.random.default_rng(n + d)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal((n, d)) @ rng.uniform(0.5, 1.5, (d, d)) / np.sqrt(d) + 0.3
    ref = fd_reference(x, y)
    assert ref > 1.0  # a distance far from 0, so the relative tolerance means something
    assert fd(x, y) == pytest.approx(ref, rel=1e-6)
    assert fd(y, x) == pytest.approx(ref, rel=1e-6)  # symmetric


def test_frechet_distance_of_identical_sets_is_zero() -> None:
    x = np.random.default_rng(1).standard_normal((300, 16)) * 3.0 + 1.0
    assert abs(fd(x, x)) < 1e-8
    assert abs(fd_reference(x, x)) < 1e-8


def test_a_mean_shift_adds_exactly_its_squared_norm() -> None:
    """Adding ``d`` to every row keeps the covariance, so FD = |d|^2; doubling ``d`` quadruples it."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 16)) @ rng.standard_normal((16, 16))
    d = rng.standard_normal(16)
    base = float(d @ d)
    assert fd(x + d, x) == pytest.approx(base, rel=1e-9, abs=1e-8)
    assert fd(x + 2.0 * d, x) == pytest.approx(4.0 * base, rel=1e-9, abs=1e-8)
    assert fd(x - 3.0 * d, x) == pytest.approx(9.0 * base, rel=1e-9, abs=1e-8)


def test_frechet_distance_refuses_mismatched_shapes() -> None:
    mu, s = gaussian_stats(np.random.default_rng(3).standard_normal((10, 4)))
    with pytest.raises(ValueError, match="shapes disagree"):
        frechet_distance(mu, s, mu[:3], s[:3, :3])


def test_gaussian_stats_are_the_mean_and_the_biased_covariance() -> None:
    """The covariance is normalised by N (StyleGAN-V's FeatureStats), not N - 1 (np.cov's default)."""
    x = np.random.default_rng(4).standard_normal((50, 7)).astype(np.float32) * 5.0 + 2.0
    mu, sigma = gaussian_stats(x)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False, bias=True), rtol=1e-10)
    assert not np.allclose(sigma, np.cov(x.astype(np.float64), rowvar=False))  # the unbiased one differs


def test_gaussian_stats_refuse_non_finite_or_too_few_rows() -> None:
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 4)))
    bad = np.zeros((3, 4))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(bad)


def mmd_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3, one pair at a time (TATS / KID)."""
    d = x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (sum(float(a[i]) * float(b[i]) for i in range(d)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2.0 * xy


def test_polynomial_mmd_equals_the_pairwise_loop() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((12, 5))
    y = rng.standard_normal((15, 5)) * 1.5 + 0.5
    ref = mmd_loops(x, y)
    assert polynomial_mmd(x, y) == pytest.approx(ref, rel=1e-10)
    assert polynomial_mmd(y, x) == pytest.approx(ref, rel=1e-10)


def test_polynomial_mmd_is_unbiased_near_zero_and_positive_for_shifted_samples() -> None:
    """Averaged over 200 pairs of samples of one distribution, MMD^2 is 0 within 3 standard errors (a
    biased estimate that kept the diagonal would sit far above); a shifted distribution is clearly above."""
    rng = np.random.default_rng(6)
    same = np.array(
        [polynomial_mmd(rng.standard_normal((40, 5)), rng.standard_normal((40, 5))) for _ in range(200)]
    )
    assert (same < 0).any()  # an unbiased estimate of 0 is sometimes negative
    assert abs(same.mean()) < 3.0 * same.std() / np.sqrt(len(same))
    shifted = polynomial_mmd(rng.standard_normal((40, 5)), rng.standard_normal((40, 5)) + 1.0)
    assert shifted > 20.0 * same.std()


def test_polynomial_mmd_refuses_different_feature_sizes() -> None:
    with pytest.raises(ValueError, match="feature sizes differ"):
        polynomial_mmd(np.zeros((3, 4)), np.zeros((3, 5)))


def one_hot_balanced(k: int, per_split: int, splits: int) -> np.ndarray:
    """``splits * per_split * k`` confident rows, class ``row % k``: every contiguous split is balanced."""
    n = splits * per_split * k
    return np.eye(k)[np.arange(n) % k]


def test_inception_score_of_uniform_predictions_is_one() -> None:
    mean, std = inception_score(np.full((40, 7), 1.0 / 7.0), splits=4)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [5, 10])
@pytest.mark.parametrize("splits", [1, 10])
def test_inception_score_of_confident_balanced_predictions_is_the_class_count(k: int, splits: int) -> None:
    probs = one_hot_balanced(k, per_split=3, splits=splits)
    mean, std = inception_score(probs, splits=splits)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    mean_eps, _ = inception_score(probs, splits=splits, eps=1e-20)  # TGANv2's eps changes nothing here
    assert mean_eps == pytest.approx(k, rel=1e-12)


def test_inception_score_of_unbalanced_splits_is_their_mean_and_population_std() -> None:
    """Split 0 sees classes {0, 1} (score 2), split 1 sees all four (score 4): mean 3, np.std 1."""
    probs = np.eye(4)[[0, 1, 0, 1, 0, 1, 2, 3]]
    mean, std = inception_score(probs, splits=2)
    assert mean == pytest.approx(3.0, rel=1e-12) and std == pytest.approx(1.0, rel=1e-12)


def is_stylegan_v(probs: np.ndarray, splits: int) -> tuple[float, float]:
    """StyleGAN-V's compute_isv, written out: RandomState(42) row shuffle, parts ``[i*N//S, (i+1)*N//S)``."""
    p = probs.copy()
    np.random.RandomState(42).shuffle(p)
    n = len(p)
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        kl = part * (np.log(part) - np.log(np.mean(part, axis=0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, axis=1))))
    return float(np.mean(scores)), float(np.std(scores))


def test_inception_score_shuffle_seed_matches_stylegan_v() -> None:
    """N = 103 rows in 10 splits (uneven parts); the seed-42 shuffle changes the value, and matches."""
    rng = np.random.default_rng(7)
    logits = rng.standard_normal((103, 11)) * 3.0
    logits[:50, 0] += 6.0  # the first rows favour class 0, so which rows share a split matters
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ref_mean, ref_std = is_stylegan_v(probs, splits=10)
    mean, std = inception_score(probs, splits=10, shuffle_seed=42)
    assert mean == pytest.approx(ref_mean, rel=1e-12) and std == pytest.approx(ref_std, rel=1e-10)
    unshuffled, _ = inception_score(probs, splits=10)
    assert abs(unshuffled - ref_mean) > 1e-3
    assert np.array_equal(probs, np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True))  # input kept


@pytest.mark.parametrize(
    "bad",
    [np.full((6, 4), 0.5), np.full((6, 4), 0.1), np.array([[1.2, -0.2, 0.0]] * 6)],
    ids=["sum-2", "sum-0.4", "negative"],
)
def test_inception_score_refuses_rows_that_are_not_probabilities(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(bad)


def test_inception_score_refuses_more_splits_than_rows() -> None:
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.full((4, 2), 0.5), splits=5)
