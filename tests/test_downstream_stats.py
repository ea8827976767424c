"""Wilson intervals and the paired bootstrap change."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forgetscale.downstream.stats import Rate, paired_change, wilson_interval


def test_wilson_known_values():
    # reference values from the closed form (Wilson 1927), z = 1.96
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson_interval(32, 50) == pytest.approx((0.5014, 0.7586), abs=1e-4)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_rate_reports_n_and_interval():
    rate = Rate.of([1, 0, 1, 1])
    assert rate.value == 0.75 and rate.n == 4
    assert rate.ci_low < 0.75 < rate.ci_high
    assert "n=4" in rate.format()
    assert Rate.of([]).n == 0


def test_paired_change_is_seeded_and_flags_noise():
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 200).astype(float)
    same = paired_change(base, base)
    assert same.value == 0 and not same.significant
    flipped = base.copy()
    flipped[:5] = 1 - flipped[:5]  # 5 of 200 items change: inside the noise
    small = paired_change(base, flipped)
    assert small == paired_change(base, flipped)  # seeded: same inputs, same interval
    assert small.ci_low <= small.value <= small.ci_high
    big = paired_change(np.ones(100), np.r_[np.zeros(40), np.ones(60)])
    assert big.value == pytest.approx(-0.4) and big.significant
    with pytest.raises(ValueError):
        paired_change([1, 0], [1])
