"""Intervals and paired tests over images, shared by P1 (accuracy), P2 (CIDEr, CLIPScore, grounding)
and P3 (pointing game).

Every score here is a ratio of per-image sums, `sum(num) / sum(den)`: a mean when `den` is all ones
(accuracy, CIDEr-D, CLIPScore), a pooled share when it counts items per image (grounding: mentions
right / mentions). The bootstrap resamples images, never items within an image, because the items of
one image are not independent. Paired versions resample the same images for both systems.

CIDEr-D's document frequencies come from the whole reference corpus and stay fixed while images are
resampled: the interval is over the images scored, not over the corpus statistics (the usual practice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.results import Correlation, Difference, Interval, PairedTest


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """sum(num) / sum(den) along the last axis; nan where the denominator is 0."""
    d = den.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, num.sum(axis=-1) / np.where(d > 0, d, 1), np.nan)


def _as_pair(num, den) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"per-image values and counts must be two 1-D arrays of one length, got {num.shape}, {den.shape}")
    if len(num) == 0:
        raise ValueError("an interval needs at least one image")
    return num, den


def resample(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image indices drawn with replacement; the same seed gives the same draws."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def estimate(num, den=None) -> float:
    num, den = _as_pair(num, den)
    return float(_ratio(num, den))


def bootstrap_ci(num, den=None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of sum(num) / sum(den) over images (of the mean when den is None).
    Resamples whose denominator is 0 are dropped."""
    num, den = _as_pair(num, den)
    idx = resample(len(num), n_boot, seed)
    boots = _ratio(num[idx], den[idx])
    boots = boots[~np.isnan(boots)]
    return Interval(float(np.quantile(boots, alpha / 2)), float(np.quantile(boots, 1 - alpha / 2)), 1 - alpha)


@dataclass
class PairedDifference:
    a: float  # system A's score
    b: float  # system B's score
    difference: float  # b - a
    ci: Interval  # paired percentile bootstrap interval of the difference
    p_value: float  # two-sided bootstrap p: twice the share of resampled differences on the far side of 0

    def reported(self) -> Difference:
        """What the reports show: difference, interval, p-value."""
        return Difference(self.difference, self.ci, self.p_value)


def paired_bootstrap(num_a, num_b, den_a=None, den_b=None, n_boot: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> PairedDifference:
    """Is B's score different from A's on the same images? Both are resampled with the same indices."""
    num_a, den_a = _as_pair(num_a, den_a)
    num_b, den_b = _as_pair(num_b, den_b)
    if num_a.shape != num_b.shape:
        raise ValueError("a paired comparison needs scores on the same images")
    idx = resample(len(num_a), n_boot, seed)
    diffs = _ratio(num_b[idx], den_b[idx]) - _ratio(num_a[idx], den_a[idx])
    diffs = diffs[~np.isnan(diffs)]
    a, b = float(_ratio(num_a, den_a)), float(_ratio(num_b, den_b))
    lo, hi = float(np.quantile(diffs, alpha / 2)), float(np.quantile(diffs, 1 - alpha / 2))
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return PairedDifference(a, b, b - a, Interval(lo, hi, 1 - alpha), p)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of only_a vs only_b at p = 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_test(correct_a, correct_b, n_boot: int = 2000, seed: int = 0) -> PairedTest:
    """Two classifiers right/wrong on the same images: exact McNemar + paired bootstrap interval."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError("paired test needs results on the same images")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    d = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    return PairedTest(d.a, d.b, d.difference, d.ci, only_a, only_b, mcnemar_exact(only_a, only_b))


def ranks(x) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span (scipy.stats.rankdata's 'average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        r[tie] = r[tie].mean()
    return r


def spearman(x, y, n_perm: int = 10000, seed: int = 0) -> Correlation:
    """Spearman's rho (Pearson's r of the ranks) and a two-sided permutation p-value: the share of
    random pairings of y with x whose |rho| is at least the observed one (with the observed pairing
    counted, so p > 0)."""
    rx, ry = ranks(x), ranks(y)
    if len(rx) != len(ry) or len(rx) < 3:
        raise ValueError("a rank correlation needs two sequences of one length, at least 3")

    def rho(a, b):
        a, b = a - a.mean(axis=-1, keepdims=True), b - b.mean(axis=-1, keepdims=True)
        den = np.sqrt((a * a).sum(-1) * (b * b).sum(-1))
        return np.where(den > 0, (a * b).sum(-1) / np.where(den > 0, den, 1), 0.0)

    observed = float(rho(rx, ry))
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(ry) for _ in range(n_perm)])  # (n_perm, n)
    extreme = int((np.abs(rho(rx[None], perms)) >= abs(observed) - 1e-12).sum())
    return Correlation(observed, (extreme + 1) / (n_perm + 1), len(rx))
