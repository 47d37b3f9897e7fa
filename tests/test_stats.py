"""Intervals and paired tests (hw3lib.metrics.stats) against direct computations, and their known properties."""

import numpy as np
import pytest

from hw3lib.metrics.stats import (
    bootstrap_ci,
    estimate,
    mcnemar_exact,
    paired_bootstrap,
    paired_test,
    spearman,
)


def direct_ratio_ci(num, den, n_boot, seed, alpha=0.05):
    """The bootstrap written out loop by loop: resample images, pool, take percentiles."""
    idx = np.random.default_rng(seed).integers(0, len(num), size=(n_boot, len(num)))
    boots = [sum(num[i] for i in row) / sum(den[i] for i in row) for row in idx]
    return np.quantile(boots, alpha / 2), np.quantile(boots, 1 - alpha / 2)


def test_mean_interval_equals_direct_computation():
    rng = np.random.default_rng(3)
    scores = rng.gamma(2.0, 0.5, size=120)  # per-image CIDEr-like values
    lo, hi = bootstrap_ci(scores, n_boot=500, seed=7)
    dlo, dhi = direct_ratio_ci(scores, np.ones_like(scores), 500, 7)
    assert lo == pytest.approx(dlo, rel=1e-12) and hi == pytest.approx(dhi, rel=1e-12)
    assert lo < scores.mean() < hi


def test_ratio_interval_pools_within_images():
    rng = np.random.default_rng(4)
    total = rng.integers(0, 4, size=90)  # words per caption, some captions have none
    right = np.minimum(total, rng.binomial(total, 0.7))
    assert estimate(right, total) == pytest.approx(right.sum() / total.sum())
    lo, hi = bootstrap_ci(right, total, n_boot=400, seed=1)
    dlo, dhi = direct_ratio_ci(right.astype(float), total.astype(float), 400, 1)
    assert (lo, hi) == pytest.approx((dlo, dhi), rel=1e-12)
    # one image with all the words: the interval of a pooled share is not the mean of per-image shares
    assert estimate([1, 0], [1, 9]) == pytest.approx(0.1)


def test_binary_interval_width_matches_the_normal_approximation():
    correct = np.random.default_rng(1).random(2000) < 0.6
    lo, hi = bootstrap_ci(correct)
    assert lo < correct.mean() < hi and 0.03 < hi - lo < 0.06  # ~ +-1.96 * sqrt(.24 / 2000)


def test_paired_bootstrap_equals_direct_computation_and_is_antisymmetric():
    rng = np.random.default_rng(5)
    a = rng.normal(1.0, 0.3, size=150)
    b = a + rng.normal(0.05, 0.1, size=150)  # B slightly better on the same images
    d = paired_bootstrap(a, b, n_boot=600, seed=2)
    idx = np.random.default_rng(2).integers(0, 150, size=(600, 150))
    direct = [b[row].mean() - a[row].mean() for row in idx]
    assert tuple(d.ci) == pytest.approx((np.quantile(direct, 0.025), np.quantile(direct, 0.975)), rel=1e-12)
    assert d.difference == pytest.approx(b.mean() - a.mean()) and d.ci.low > 0 and d.p_value < 0.01
    r = paired_bootstrap(b, a, n_boot=600, seed=2)
    assert r.difference == pytest.approx(-d.difference) and tuple(r.ci) == pytest.approx((-d.ci.high, -d.ci.low))
    same = paired_bootstrap(a, a, n_boot=100)
    assert same.difference == 0 and tuple(same.ci) == (0.0, 0.0) and same.p_value == 1.0


def test_mcnemar_and_paired_test():
    assert mcnemar_exact(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert mcnemar_exact(5, 5) == 1.0
    rng = np.random.default_rng(1)
    a = rng.random(500) < 0.6
    b = a.copy()
    b[:40] = True  # B right on 40 more images (some already right)
    t = paired_test(a, b)
    assert t.only_a == 0 and t.only_b == int((~a[:40]).sum())
    assert t.difference == pytest.approx(b.mean() - a.mean()) and t.ci.low > 0 and t.p_value < 1e-3
    assert paired_test(b, a).p_value == pytest.approx(t.p_value)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least one image"):
        bootstrap_ci([])


def test_ranks_average_ties():
    from hw3lib.metrics.stats import ranks

    assert ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
    assert ranks([3, 1, 2]).tolist() == [3, 1, 2]


def test_spearman_textbook_example():
    """Wikipedia's worked example (IQ vs hours of TV): rho = -29/165."""
    from hw3lib.metrics.stats import spearman

    iq = [106, 100, 86, 101, 99, 103, 97, 113, 112, 110]
    tv = [7, 27, 2, 50, 28, 29, 20, 12, 6, 17]
    c = spearman(iq, tv, n_perm=2000)
    assert c.rho == pytest.approx(-29 / 165) and c.n == 10
    assert c.p_value > 0.3  # far from significant


def test_spearman_permutation_p_value():
    from hw3lib.metrics.stats import spearman

    up = spearman([1, 2, 3, 4, 5, 6], [2, 4, 5, 9, 10, 30], n_perm=20000)
    assert up.rho == 1.0
    # exact two-sided p for n = 6: 2 of 720 orderings are as extreme
    assert up.p_value == pytest.approx(2 / 720, abs=0.0015) and up.p_value >= 1 / 20001
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1], n_perm=100).rho == -1.0
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4], n_perm=100).rho == 0.0  # no variation: no correlation
    with pytest.raises(ValueError):
        spearman([1, 2], [1, 2])


def direct_spearman_p(x, y, n_perm, seed):
    """The permutation p written out: the share of random pairings whose |rho| reaches the observed one,
    the observed pairing counted (Pearson r of average ranks)."""
    def rank(v):
        v = np.asarray(v, float)
        return np.array([(v < a).sum() + ((v == a).sum() + 1) / 2 for a in v])

    rx, ry = rank(x), rank(y)
    rho = np.corrcoef(rx, ry)[0, 1]
    rng = np.random.default_rng(seed)
    hits = sum(abs(np.corrcoef(rx, rng.permutation(ry))[0, 1]) >= abs(rho) - 1e-12 for _ in range(n_perm))
    return rho, (hits + 1) / (n_perm + 1)


@pytest.mark.parametrize("n", [21, 83])  # the report's frequency study: 21 framings, 83 templates
def test_spearman_p_value_within_monte_carlo_error_of_a_direct_computation(n):
    rng = np.random.default_rng(n)
    x = rng.random(n)
    y = 0.3 * x + rng.normal(0, 0.3, n)
    rho, p = direct_spearman_p(x, y, 4000, 0)
    c = spearman(x, y, n_perm=4000, seed=1)
    se = np.sqrt(p * (1 - p) / 4000) + np.sqrt(c.p_value * (1 - c.p_value) / 4000)
    assert c.rho == pytest.approx(rho) and abs(c.p_value - p) < 4 * se
