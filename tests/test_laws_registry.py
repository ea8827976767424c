"""Law registry, presets and the analytic Jacobians."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import forgetscale
from forgetscale.errors import UserError
from forgetscale.laws import Law, Param, fit_law, get_law, get_preset, list_laws, predict
from forgetscale.laws.objective import Objective
from forgetscale.laws.presets import TABLE1
from forgetscale.laws.synthetic import lora_params, synthetic_runs


def test_builtin_laws_and_presets():
    assert list_laws()[:5] == [
        "linear",
        "additive",
        "multiplicative",
        "kalajdzievski",
        "linear_multiplicative",
    ]
    law, consts, source = get_preset("kalajdzievski:openorca")
    assert law.name == "kalajdzievski" and "2401.05605" in source
    assert consts["rho"] == 7.6885 and consts["a_f"] == 388000.0
    assert get_preset("kalajdzievski:news")[1]["s_f_ft"] == 3.1285
    assert "reconstructed" in get_law("kalajdzievski").description.lower()
    with pytest.raises(UserError, match="unknown law"):
        get_law("chinchilla")


def _table1_formula(c, P, N):
    """Kalajdzievski's laws written out independently of the library."""
    lft = (
        c["c_ft"] * ((c["a_ft"] / P) ** c["alpha_ft"] + (c["b_ft"] / N) ** c["beta_ft"]) ** c["rho"]
        + c["s_ft"]
    )
    inner_f = (c["a_f"] / P) ** c["alpha_f"] + (c["b_f"] / N) ** c["beta_f"]
    lf = c["s_f_ft"] - c["c_f_ft"] * (c["c_ft"] * inner_f ** c["rho"] + c["s_ft"])
    return lft, lf


@pytest.mark.parametrize("preset", ["openorca", "news"])
def test_predict_with_preset_equals_formula(preset):
    P, N = 4.0e7, 200.0
    out = predict(f"kalajdzievski:{preset}", params_trained=P, step=N)
    lft, lf = _table1_formula(TABLE1[preset], P, N)
    assert out["finetune_loss"]["value"][0] == pytest.approx(lft, rel=1e-12)
    assert out["forgetting_loss"]["value"][0] == pytest.approx(lf, rel=1e-12)
    assert out["finetune_loss"]["lo"] is None  # published constants carry no interval


def test_openorca_preset_is_plausible_in_the_papers_range():
    # The paper fitted ranks 8..256 of Llama 2 7B (P ~ 2e7..6.4e8), steps 50..260.
    P = np.array(lora_params(np.array([8, 16, 32, 64, 128, 256])), dtype=float)[:, None]
    N = np.arange(50, 261, 10, dtype=float)[None, :]
    law, c, _ = get_preset("kalajdzievski:openorca")
    lft = law(c, "finetune_loss", params_trained=P, step=N)
    lf = law(c, "forgetting_loss", params_trained=P, step=N)
    assert 0.5 < lft.min() and lft.max() < 1.0
    assert 0.5 < lf.min() and lf.max() < 1.0
    assert np.all(np.diff(lft, axis=1) < 0)  # L_ft falls with N
    assert np.all(np.diff(lf, axis=1) > 0)  # L_f rises with N
    assert np.all(np.diff(lf, axis=0) > 0)  # and with P


@pytest.mark.parametrize(
    "name", ["linear", "additive", "multiplicative", "kalajdzievski", "linear_multiplicative"]
)
def test_analytic_jacobian_matches_numeric(name):
    law = get_law(name)
    df = synthetic_runs("kalajdzievski:openorca", noise=0.0)
    targets = law.targets if law.joint else law.targets[:1]
    X = {v: df[v].to_numpy(float) for v in law.variables}
    Y = {t: df[t].to_numpy(float) for t in targets}
    analytic = Objective(law, targets, X, Y)
    numeric = Objective(dataclasses.replace(law, jacobian=None), targets, X, Y)
    rng = np.random.default_rng(0)
    start = {p.name: p.grid[0] for p in law.params}
    z = analytic.to_z(start) + 0.05 * rng.standard_normal(len(law.params))
    Ja, Jn = analytic.jacobian_z(z), numeric.jacobian_z(z)
    scale = np.abs(Jn).max(axis=1, keepdims=True) + 1e-12
    np.testing.assert_allclose(Ja / scale, Jn / scale, atol=1e-5)


def test_adding_a_law_is_one_registration(restore_registry):
    from forgetscale.laws.registry import register_law

    def power(theta, X, target):
        return theta["E"] + theta["B"] * X["step"] ** -theta["beta"]

    law = Law(
        name="steps_only",
        description="power law in N only (test)",
        params=(
            Param("E", 1e-3, 10.0, grid=(0.5, 1.0)),
            Param("B", 1e-3, 100.0, grid=(1.0, 10.0)),
            Param("beta", 1e-3, 3.0, grid=(0.2, 0.6)),
        ),
        variables=("step",),
        targets=("finetune_loss",),
        formula={"finetune_loss": "L_ft = E + B N^-beta"},
        predict=power,  # no jacobian: the fitter differentiates numerically
        min_distinct={"step": 3},
    )
    register_law(law)
    assert "steps_only" in list_laws()
    df = synthetic_runs(
        "steps_only", {"E": 0.8, "B": 3.0, "beta": 0.4}, params_trained=[1e6, 2e6], noise=0.002
    )
    fit = fit_law(df, "steps_only", "finetune_loss")
    assert fit.params["beta"] == pytest.approx(0.4, rel=0.05)
    assert fit.r2["finetune_loss"] > 0.99


USER_LAW_FIRST = textwrap.dedent(
    """
    # a fresh interpreter whose first act is to register its own law
    from forgetscale.laws.registry import Law, Param, register_law

    def power(theta, X, target):
        return theta["E"] + theta["B"] * X["step"] ** -theta["beta"]

    mine = Law(
        name="steps_only",
        description="power law in N only",
        params=(
            Param("E", 1e-3, 10.0, grid=(0.5, 1.0)),
            Param("B", 1e-3, 100.0, grid=(1.0, 10.0)),
            Param("beta", 1e-3, 3.0, grid=(0.2, 0.6)),
        ),
        variables=("step",),
        targets=("finetune_loss",),
        formula={"finetune_loss": "L_ft = E + B N^-beta"},
        predict=power,
    )
    register_law(mine)
    try:
        register_law(Law(**{**mine.__dict__, "name": "additive"}))
    except ValueError as exc:
        assert "already registered" in str(exc) and "override=True" in str(exc), exc
    else:
        raise AssertionError("a user law replaced a built-in without override=True")

    from forgetscale.laws import fit_law, get_law, list_laws, predict
    from forgetscale.laws.synthetic import synthetic_runs

    assert list_laws() == [
        "linear", "additive", "multiplicative", "kalajdzievski", "linear_multiplicative",
        "replay_power", "replay_multiplicative", "steps_only"
    ]
    assert get_law("additive").formula["forgetting_loss"].startswith("L_f = E - A")
    df = synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0)
    assert fit_law(df, "additive").r2["forgetting_loss"] > 0.9
    assert predict("kalajdzievski:news", params_trained=2e7, step=100)["forgetting_loss"]
    print("ok")
    """
)


def test_user_law_registered_before_any_lookup_leaves_the_builtins_intact():
    src = str(Path(forgetscale.__file__).parents[1])
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", USER_LAW_FIRST], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.fixture
def restore_registry():
    from forgetscale.laws import registry

    laws, presets = dict(registry._LAWS), dict(registry._PRESETS)
    yield
    registry._LAWS.clear()
    registry._LAWS.update(laws)
    registry._PRESETS.clear()
    registry._PRESETS.update(presets)


def test_override_replaces_a_builtin_and_keeps_its_presets_consistent(restore_registry):
    from forgetscale.laws.registry import register_law

    builtin = get_law("multiplicative")
    with pytest.raises(ValueError, match="override=True"):
        register_law(dataclasses.replace(builtin, description="mine"))
    register_law(dataclasses.replace(builtin, description="mine"), override=True)
    assert get_law("multiplicative").description == "mine"
    joint = get_law("kalajdzievski")
    with pytest.raises(ValueError, match="preset kalajdzievski:"):
        register_law(dataclasses.replace(joint, params=joint.params[:5]), override=True)
    assert get_law("kalajdzievski") is joint  # a refused override changes nothing
