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

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats as sp

from ..core.results import Correlation, Difference, Interval, PairedTest


def _ratio(num: np.ndarray, den: np.ndarray, axis: int = -1) -> np.ndarray:
    """sum(num) / sum(den) along `axis`; nan where the denominator is 0."""
    d = den.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, num.sum(axis=axis) / np.where(d > 0, d, 1), np.nan)


def _as_pair(num, den) -> tuple[np.ndarray, np.ndarray]:
    num = np.asarray(num, dtype=np.float64)
    den = np.ones_like(num) if den is None else np.asarray(den, dtype=np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise ValueError(f"per-image values and counts must be two 1-D arrays of one length, got {num.shape}, {den.shape}")
    if len(num) == 0:
        raise ValueError("an interval needs at least one image")
    return num, den


RESAMPLED_VALUES = 2_000_000  # per batch of bootstrap resamples (x 8 bytes, for each array scipy builds)


def _bootstrap(samples: tuple[np.ndarray, ...], statistic, n_boot: int, seed: int) -> np.ndarray:
    """scipy's paired bootstrap distribution of `statistic` over images (the samples' common axis),
    resamples whose statistic is nan (a denominator of 0) dropped."""
    if len(samples[0]) == 1:  # one image: every resample is that image
        return np.full(n_boot, float(statistic(*(s[None] for s in samples), axis=-1)[0]))
    # resamples in batches of about RESAMPLED_VALUES values, so memory stays bounded for any number of
    # images (an even batch draws the same random stream as one call: the intervals do not change)
    batch = max(2, RESAMPLED_VALUES // len(samples[0]) // 2 * 2)
    with warnings.catch_warnings():  # identical resamples (a constant score) are a valid, degenerate case
        warnings.simplefilter("ignore", sp.DegenerateDataWarning)
        res = sp.bootstrap(samples, statistic, n_resamples=n_boot, paired=True, vectorized=True, batch=batch,
                           method="percentile", rng=np.random.default_rng(seed))
    boots = np.asarray(res.bootstrap_distribution)
    return boots[~np.isnan(boots)]


def estimate(num, den=None) -> float:
    num, den = _as_pair(num, den)
    return float(_ratio(num, den))


def bootstrap_ci(num, den=None, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of sum(num) / sum(den) over images (of the mean when den is None).
    Resamples whose denominator is 0 are dropped."""
    num, den = _as_pair(num, den)
    boots = _bootstrap((num, den), _ratio, n_boot, seed)
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

    def difference(na, da, nb, db, axis=-1):
        return _ratio(nb, db, axis) - _ratio(na, da, axis)

    diffs = _bootstrap((num_a, den_a, num_b, den_b), difference, n_boot, seed)
    a, b = float(_ratio(num_a, den_a)), float(_ratio(num_b, den_b))
    lo, hi = float(np.quantile(diffs, alpha / 2)), float(np.quantile(diffs, 1 - alpha / 2))
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return PairedDifference(a, b, b - a, Interval(lo, hi, 1 - alpha), p)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial test of only_a vs only_b at p = 1/2."""
    n = only_a + only_b
    return 1.0 if n == 0 else float(sp.binomtest(only_a, n, 0.5).pvalue)


def paired_test(correct_a, correct_b, n_boot: int = 2000, seed: int = 0) -> PairedTest:
    """Two classifiers right/wrong on the same images: exact McNemar + paired bootstrap interval."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if a.shape != b.shape:
        raise ValueError("paired test needs results on the same images")
    only_a, only_b = int((a & ~b).sum()), int((b & ~a).sum())
    d = paired_bootstrap(a, b, n_boot=n_boot, seed=seed)
    return PairedTest(d.a, d.b, d.difference, d.ci, only_a, only_b, mcnemar_exact(only_a, only_b))


def ranks(x) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    return sp.rankdata(np.asarray(x, dtype=np.float64), method="average")


def spearman(x, y, n_perm: int = 10000, seed: int = 0) -> Correlation:
    """Spearman's rho and a two-sided permutation p-value (scipy's `permutation_test` over pairings):
    the share of random pairings of y with x whose |rho| is at least the observed one, the observed
    pairing counted, so p > 0."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 3:
        raise ValueError("a rank correlation needs two sequences of one length, at least 3")

    ry = ranks(y) - ranks(y).mean()

    def abs_rho(a, axis=-1):  # |Pearson r of the ranks| for a batch of pairings (..., n); two-sided
        ra = sp.rankdata(a, axis=axis)
        ra = ra - ra.mean(axis=axis, keepdims=True)
        return np.abs((ra * ry).sum(axis) / np.sqrt((ra * ra).sum(axis) * (ry * ry).sum()))

    if np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant sequence: no order to correlate
        return Correlation(0.0, 1.0, len(x))
    observed = float(np.clip(sp.spearmanr(x, y).statistic, -1.0, 1.0))  # rounding can step past 1
    res = sp.permutation_test((x,), abs_rho, permutation_type="pairings", n_resamples=n_perm, alternative="greater",
                              vectorized=True, rng=np.random.default_rng(seed))
    return Correlation(observed, float(res.pvalue), len(x))
