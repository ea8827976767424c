"""Intervals for a new run: run-to-run noise from the data, and calibration measured on
synthetic studies drawn from a known law with seed noise."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgetscale.errors import UserError
from forgetscale.laws import fit_law, load_fit, predict
from forgetscale.laws.intervals import MEAN_LAW, RESIDUAL_SPREAD, SEED_REPLICATES
from forgetscale.laws.synthetic import synthetic_runs

TRUE = {"E": 2.3, "A": 6.0, "alpha": 0.15, "beta": 0.3}
P = [1e6 * r for r in (1, 2, 4, 8, 16, 32)]
STEPS = (10, 20, 40, 60, 80, 100, 130, 160, 200, 250)
NOISE = 0.01


def study(seed: int, runs_per_p: int = 2):
    return synthetic_runs(
        "multiplicative", TRUE, targets=["forgetting_loss"], params_trained=P, steps=STEPS,
        noise=NOISE, seed=seed, runs_per_p=runs_per_p,
    )  # fmt: skip


def test_noise_comes_from_seed_replicates_where_present_else_from_residuals():
    two = fit_law(study(0, 2), "multiplicative")
    one = fit_law(study(0, 1), "multiplicative")
    assert two.noise["forgetting_loss"]["source"] == SEED_REPLICATES
    assert two.noise["forgetting_loss"]["dof"] == len(P) * len(STEPS)  # one per (P, step) pair
    assert one.noise["forgetting_loss"]["source"] == RESIDUAL_SPREAD
    for fit in (one, two):  # both recover the log-normal noise drawn (sigma 0.01)
        assert 0.7 * NOISE < fit.noise["forgetting_loss"]["sigma"] < 1.3 * NOISE


def test_a_new_run_interval_is_wider_than_the_mean_law_band_and_says_so():
    fit = fit_law(study(1), "multiplicative", n_boot=20, workers=1)
    run = predict(fit, 4e6, 150)["forgetting_loss"]
    mean = predict(fit, 4e6, 150, kind=MEAN_LAW)["forgetting_loss"]
    assert run["lo"][0] < mean["lo"][0] <= mean["hi"][0] < run["hi"][0]
    assert run["interval"].startswith("95% interval for a new run: fit uncertainty (20 run")
    assert "seed replicates" in run["interval"]
    assert mean["interval"] == "95% interval of the mean law: fit uncertainty (20 run resamples)"
    # the new-run interval holds about 95% of fresh runs drawn at that point
    truth = 2.3 - 6.0 * 4e6**-0.15 * 150**-0.3
    fresh = truth * np.exp(NOISE * np.random.default_rng(5).standard_normal(2000))
    inside = np.mean((fresh >= run["lo"][0]) & (fresh <= run["hi"][0]))
    assert 0.85 < inside <= 1.0


@pytest.mark.parametrize("scheme", ["largest-N", "largest-P"])
def test_held_out_coverage_is_within_ten_points_of_nominal(scheme):
    shares = {"0.8": [], "0.95": []}
    for seed in range(4):
        fit = fit_law(study(seed), "multiplicative", holdout=scheme, n_boot=30, workers=1)
        for level, share in fit.holdout["coverage"]["forgetting_loss"].items():
            shares[level].append(share)
    for level, values in shares.items():
        assert abs(np.mean(values) - float(level)) <= 0.10, (scheme, level, values)
    factors = fit.holdout["extrapolation"]
    assert factors == ({"params_trained": 1.0, "step": 250 / 160} if scheme == "largest-N"
                       else {"params_trained": 2.0, "step": 1.0})  # fmt: skip


def test_noise_and_ranges_survive_a_save_and_a_bad_noise_is_refused(tmp_path):
    fit = fit_law(study(2), "multiplicative", holdout="largest-N")
    path = tmp_path / "fit.json"
    fit.save(path)
    back = load_fit(path)
    assert back.noise == fit.noise and back.ranges == {"params_trained": [1e6, 3.2e7],
                                                        "step": [10.0, 160.0]}  # fmt: skip
    assert back.holdout["coverage"] == fit.holdout["coverage"]
    d = json.loads(path.read_text())
    d["noise"]["forgetting_loss"]["sigma"] = -1
    path.write_text(json.dumps(d))
    with pytest.raises(UserError, match="noise.forgetting_loss.sigma must be >= 0"):
        load_fit(path)
