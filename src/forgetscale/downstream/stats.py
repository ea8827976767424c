"""Intervals for the rates the suites report: Wilson for a rate, paired bootstrap for a change.

Every rate is a mean of 0/1 outcomes over n items. Its 95% interval is the
Wilson score interval (good coverage at small n and near 0 or 1, unlike the
normal approximation). A change between the base and the fine-tuned model is
measured on the *same* items, so its interval comes from a paired bootstrap that
resamples items (seeded, so the same inputs give the same interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial rate ``successes / n`` (``(nan, nan)`` when n = 0)."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Rate:
    """A rate over n items with its 95% Wilson interval."""

    value: float
    n: int
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, outcomes: np.ndarray | list[float]) -> Rate:
        x = np.asarray(outcomes, dtype=np.float64)
        n = int(x.size)
        if n == 0:
            return cls(math.nan, 0, math.nan, math.nan)
        k = float(x.sum())
        low, high = wilson_interval(k, n)
        return cls(k / n, n, low, high)

    def format(self, digits: int = 3) -> str:
        if self.n == 0:
            return "n/a (n=0)"
        return f"{self.value:.{digits}f} [{self.ci_low:.{digits}f}, {self.ci_high:.{digits}f}] n={self.n}"


@dataclass(frozen=True)
class Change:
    """Fine-tuned minus base on the same items, with a paired-bootstrap 95% interval."""

    value: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def significant(self) -> bool:
        """True when the interval excludes 0 (the change is outside the noise)."""
        return self.n > 0 and (self.ci_low > 0 or self.ci_high < 0)


def paired_change(
    base: np.ndarray | list[float],
    tuned: np.ndarray | list[float],
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> Change:
    """Mean of ``tuned - base`` over paired items, with a percentile bootstrap interval."""
    b = np.asarray(base, dtype=np.float64)
    t = np.asarray(tuned, dtype=np.float64)
    if b.shape != t.shape:
        raise ValueError("paired outcomes must have the same length")
    n = int(b.size)
    if n == 0:
        return Change(math.nan, math.nan, math.nan, 0)
    diff = t - b
    value = float(diff.mean())
    if np.all(diff == diff[0]):
        return Change(value, value, value, n)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, 500):  # chunks bound the memory at n x 500
        stop = min(start + 500, resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return Change(value, float(low), float(high), n)
