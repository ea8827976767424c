"""Held-out evaluation on synthetic runs whose law is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forgetscale.errors import UserError
from forgetscale.laws import Holdout, evaluate_holdout, fit_law
from forgetscale.laws.synthetic import synthetic_runs

P6 = [1e6 * 2**k for k in range(6)]
STEPS = np.unique(np.geomspace(10, 1000, 16).astype(int))
TRUE = {"E": 3.0, "A": 300.0, "alpha": 0.3, "beta": 0.4}
NOISE = 0.005


@pytest.fixture(scope="module")
def runs():
    return synthetic_runs(
        "multiplicative",
        TRUE,
        targets=["forgetting_loss"],
        params_trained=P6,
        steps=STEPS,
        noise=NOISE,
        seed=4,
        runs_per_p=2,
    )


def test_held_out_runs_are_the_largest_p_and_the_true_law_extrapolates(runs):
    ev = evaluate_holdout(runs, "multiplicative", "forgetting_loss", "largest-P")
    largest = runs.params_trained == runs.params_trained.max()
    assert ev.scheme == "largest-P" and ev.targets == ("forgetting_loss",)
    assert ev.n_held_out == int(largest.sum()) and ev.n_in_sample == int((~largest).sum())
    assert ev.fit.n_points == ev.n_in_sample  # the fit never saw the held-out runs
    assert "largest P" in ev.description and "p5-s0" in ev.description
    # multiplicative noise of 0.5% on L_f ~ 2.5..3: the RMSE is about 0.005 * L_f
    expected = NOISE * runs.forgetting_loss.mean()
    assert ev.rmse_in_sample["forgetting_loss"] == pytest.approx(expected, rel=0.3)
    assert ev.rmse_held_out["forgetting_loss"] < 2 * ev.rmse_in_sample["forgetting_loss"]
    assert ev.rmse_ratio["forgetting_loss"] < 2
    assert ev.r2_held_out["forgetting_loss"] > 0.9
    assert ev.fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=0.1)


def test_points_carry_split_observed_and_predicted(runs):
    ev = evaluate_holdout(runs, "multiplicative", "forgetting_loss", "largest-P")
    pts = ev.points
    assert {"run_id", "params_trained", "step", "split", "forgetting_loss"} <= set(pts.columns)
    assert (pts.split == "held_out").sum() == ev.n_held_out
    assert (pts.split == "in_sample").sum() == ev.n_in_sample
    held = pts[pts.split == "held_out"]
    assert set(held.run_id) == {"p5-s0", "p5-s1"}
    expected = ev.fit.predict("forgetting_loss", params_trained=held.params_trained, step=held.step)
    np.testing.assert_allclose(held.predicted_forgetting_loss, expected, rtol=1e-12)
    resid = held.forgetting_loss - held.predicted_forgetting_loss
    assert np.sqrt(np.mean(resid**2)) == pytest.approx(ev.rmse_held_out["forgetting_loss"])


def test_held_out_steps_are_the_last_steps_of_every_run():
    # two runs of different lengths: each run holds out its own last 20% of steps
    long = synthetic_runs(
        "multiplicative", TRUE, targets=["forgetting_loss"], params_trained=P6,
        steps=np.arange(10, 201, 10), noise=NOISE, seed=1,
    )  # fmt: skip
    short = long[long.step <= 100].copy()
    short["run_id"] = short.run_id + "-short"
    df = pd.concat([long, short], ignore_index=True)
    ev = evaluate_holdout(df, "multiplicative", "forgetting_loss", "largest-N")
    held = ev.points[ev.points.split == "held_out"]
    for run, g in held.groupby("run_id"):
        expected = [90, 100] if run.endswith("short") else [170, 180, 190, 200]
        assert sorted(g.step) == expected, run
    assert held.run_id.nunique() == df.run_id.nunique()  # every run has held-out steps
    fitted = ev.points[ev.points.split == "in_sample"]
    for run, g in fitted.groupby("run_id"):
        assert g.step.max() < held[held.run_id == run].step.min()  # fitted on earlier steps
    assert ev.rmse_ratio["forgetting_loss"] < 2


def test_a_wrong_law_extrapolates_worse_than_the_true_one(runs):
    true_law = evaluate_holdout(runs, "multiplicative", "forgetting_loss", "largest-P")
    wrong_law = evaluate_holdout(runs, "additive", "forgetting_loss", "largest-P")
    assert true_law.rmse_held_out["forgetting_loss"] < wrong_law.rmse_held_out["forgetting_loss"]


def test_joint_law_is_scored_on_both_targets():
    df = synthetic_runs("kalajdzievski:openorca", noise=0.002, seed=0)
    ev = evaluate_holdout(df, "kalajdzievski", scheme="largest-P")
    assert ev.targets == ("finetune_loss", "forgetting_loss")
    assert set(ev.rmse_held_out) == set(ev.r2_in_sample) == set(ev.targets)
    assert {"predicted_finetune_loss", "predicted_forgetting_loss"} <= set(ev.points.columns)


def test_to_json_is_strict_json_and_notes_nan(runs):
    # hold out one run that has a single point: its R^2 is undefined (NaN)
    lone = runs[runs.run_id == "p0-s0"].head(1)
    df = pd.concat([runs[runs.run_id != "p0-s0"], lone], ignore_index=True)
    ev = evaluate_holdout(df, "multiplicative", "forgetting_loss", ["p0-s0"])
    assert ev.n_held_out == 1 and np.isnan(ev.r2_held_out["forgetting_loss"])
    d = json.loads(json.dumps(ev.to_json(), allow_nan=False))
    assert d["r2_held_out"]["forgetting_loss"] is None
    assert any("r2_held_out.forgetting_loss" in n for n in d["notes"])
    assert d["rmse_held_out"]["forgetting_loss"] > 0 and d["scheme"] == "runs"


def test_fit_law_holdout_equals_the_evaluation(runs):
    ev = evaluate_holdout(runs, "multiplicative", "forgetting_loss", "largest-P")
    fit = fit_law(runs, "multiplicative", "forgetting_loss", holdout="largest-P")
    assert fit.holdout["rmse"] == ev.rmse_held_out and fit.params == ev.fit.params


@pytest.mark.parametrize(
    "scheme,needle",
    [
        ("nonsense-scheme", "unknown run id"),
        (["largest-P", "p0-s0"], "largest-P, largest-N, or one or more run ids"),
        (["p0-s0", "p0-s0"], "twice"),
        ([], "needs a scheme"),
    ],
)
def test_bad_schemes_are_user_errors(runs, scheme, needle):
    with pytest.raises(UserError, match=needle):
        evaluate_holdout(runs, "multiplicative", "forgetting_loss", scheme)


@pytest.mark.parametrize("fraction", [0.0, 1.0, float("nan"), -0.5])
def test_holdout_fraction_must_lie_in_the_open_unit_interval(fraction):
    with pytest.raises(UserError, match="fraction"):
        Holdout("largest-N", fraction=fraction)
