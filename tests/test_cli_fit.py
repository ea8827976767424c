"""`forgetscale fit`, `predict` and `compare` through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from forgetscale.cli import main
from forgetscale.laws.presets import TABLE1
from forgetscale.laws.synthetic import synthetic_runs

FIT_KEYS = {
    "law", "target", "params", "ci", "r2", "rmse", "n_points", "converged", "holdout", "notes"
}  # fmt: skip


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    synthetic_runs(
        "kalajdzievski:openorca", noise=0.01, seed=0, include_base=True, runs_per_p=2
    ).to_csv(path, index=False)
    return path


def _json(capsys):
    out = capsys.readouterr().out
    return json.loads(out)


def test_fit_json_schema(runs_csv, capsys):
    rc = main(["fit", "--from", str(runs_csv), "--law", "additive", "--bootstrap", "8", "--json"])
    assert rc == 0
    d = _json(capsys)
    assert set(d) == FIT_KEYS
    assert d["law"] == "additive" and d["target"] == "forgetting_loss"
    assert set(d["params"]) == {"E", "A", "alpha", "B", "beta"}
    assert set(d["ci"]) == set(d["params"])
    assert all(lo <= hi for lo, hi in d["ci"].values())
    assert 0.5 < d["r2"] <= 1 and d["rmse"] > 0 and d["converged"] is True
    assert d["holdout"] is None
    assert d["n_points"] == len(pd.read_csv(runs_csv).query("step > 0"))


def test_fit_joint_law_with_holdout_json(runs_csv, capsys):
    args = ["fit", "--from", str(runs_csv), "--law", "kalajdzievski", "--min-step", "50"]
    rc = main([*args, "--bootstrap", "0", "--holdout", "largest-P", "--json"])
    assert rc == 0
    d = _json(capsys)
    assert set(d) == FIT_KEYS
    assert d["target"] == ["finetune_loss", "forgetting_loss"]
    assert set(d["r2"]) == {"finetune_loss", "forgetting_loss"}
    assert set(d["holdout"]) == {"r2", "rmse", "n_points"} and d["holdout"]["n_points"] > 0
    assert d["ci"] == {}


def test_fit_text_save_plots_then_predict(runs_csv, tmp_path, capsys):
    fit_path, plots = tmp_path / "fit.json", tmp_path / "figs"
    rc = main(
        ["fit", "--from", str(runs_csv), "--law", "multiplicative", "--target", "finetune_loss",
         "--bootstrap", "10", "--save", str(fit_path), "--plots", str(plots)]
    )  # fmt: skip
    assert rc == 0
    out = capsys.readouterr().out
    assert "alpha" in out and "95% CI (10 run resamples)" in out and "R^2" in out
    for name in ("forgetting_vs_finetune", "loss_vs_steps", "predicted_vs_observed", "residuals"):
        assert (plots / f"{name}.png").stat().st_size > 10_000
        assert len(pd.read_csv(plots / f"{name}.csv")) > 0
    rc = main(["predict", "--law", str(fit_path), "--params", "3e7", "--steps", "120", "--json"])
    assert rc == 0
    d = _json(capsys)
    assert d["forgetting_loss"] is None and 0.5 < d["finetune_loss"] < 1.0
    lo, hi = d["ci"]["finetune_loss"]
    assert lo <= d["finetune_loss"] <= hi


def test_predict_preset_json_equals_formula(capsys):
    rc = main(
        ["predict", "--law", "kalajdzievski:news", "--params", "2e7", "--steps", "100", "--json"]
    )
    assert rc == 0
    d = _json(capsys)
    c, P, N = TABLE1["news"], 2e7, 100.0
    lft = (
        c["c_ft"] * ((c["a_ft"] / P) ** c["alpha_ft"] + (c["b_ft"] / N) ** c["beta_ft"]) ** c["rho"]
        + c["s_ft"]
    )
    inner = (c["a_f"] / P) ** c["alpha_f"] + (c["b_f"] / N) ** c["beta_f"]
    lf = c["s_f_ft"] - c["c_f_ft"] * (c["c_ft"] * inner ** c["rho"] + c["s_ft"])
    assert d["finetune_loss"] == pytest.approx(lft, rel=1e-12)
    assert d["forgetting_loss"] == pytest.approx(lf, rel=1e-12)
    rc = main(
        [
            "predict",
            "--law",
            "kalajdzievski:news",
            "--params",
            "2e7",
            "4e7",
            "--steps",
            "100",
            "--json",
        ]
    )
    assert rc == 0 and len(_json(capsys)) == 2


def test_compare_ranks(runs_csv, capsys):
    rc = main(
        ["compare", "--from", str(runs_csv), "--laws", "additive,multiplicative,linear", "--json"]
    )
    assert rc == 0
    rows = _json(capsys)
    assert [r["law"] for r in rows] and {r["law"] for r in rows} == {
        "additive",
        "multiplicative",
        "linear",
    }
    errs = [r["holdout_rmse"] for r in rows]
    assert errs == sorted(errs)


def _write(tmp_path, df, name="bad.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return str(path)


def _good():
    return synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0)


def _degenerate_cases(tmp_path):
    good = _good()
    few = good[good.run_id.isin(["p0", "p1", "p2"])].groupby("run_id").head(1)
    single_p = good.assign(params_trained=good.params_trained.iloc[0])
    nan = good.copy()
    nan.loc[3, "forgetting_loss"] = np.nan
    inf = good.copy()
    inf.loc[5, "finetune_loss"] = np.inf
    neg = good.copy()
    neg.loc[7, "forgetting_loss"] = -0.2
    missing = good.drop(columns=["params_trained"])
    f = str(tmp_path / "good.csv")
    good.to_csv(f, index=False)
    return {
        "fewer points than parameters": (["--from", _write(tmp_path, few, "few.csv"), "--law", "additive"], "parameters"),
        "single P": (["--from", _write(tmp_path, single_p, "one.csv"), "--law", "additive"], "distinct params_trained"),
        "NaN loss": (["--from", _write(tmp_path, nan, "nan.csv"), "--law", "additive"], "NaN/inf"),
        "inf loss": (["--from", _write(tmp_path, inf, "inf.csv"), "--law", "kalajdzievski"], "NaN/inf"),
        "negative loss": (["--from", _write(tmp_path, neg, "neg.csv"), "--law", "linear"], "non-positive"),
        "missing column": (["--from", _write(tmp_path, missing, "miss.csv"), "--law", "additive"], "missing column"),
        "unknown law": (["--from", f, "--law", "chinchilla"], "unknown law"),
        "no such file": (["--from", str(tmp_path / "nope.csv"), "--law", "additive"], "no such file"),
        "bad holdout": (["--from", f, "--law", "additive", "--holdout", "zzz"], "unknown run id"),
    }  # fmt: skip


def test_degenerate_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    for case, (args, needle) in _degenerate_cases(tmp_path).items():
        rc = main(["fit", *args, "--bootstrap", "0"])
        captured = capsys.readouterr()
        assert rc == 2, case
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (case, captured.err)
        assert lines[0].startswith("forgetscale fit: error:"), case
        assert needle in lines[0], (case, lines[0])
        assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize(
    "args,needle",
    [
        (["predict", "--law", "kalajdzievski", "--params", "1e7", "--steps", "10"], "preset"),
        (["predict", "--law", "kalajdzievski:openorca", "--params", "1e7"], "--steps"),
        (
            ["predict", "--law", "kalajdzievski:openorca", "--params", "1e7", "--steps", "0"],
            "step 0",
        ),
        (["predict", "--law", "nolaw", "--params", "1e7", "--steps", "10"], "unknown law"),
        (["compare", "--from", "nope.csv", "--laws", "additive"], "no such file"),
    ],
)
def test_predict_and_compare_user_errors(args, needle, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_subprocess_fit_and_error(runs_csv, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "forgetscale", "fit", "--from", str(runs_csv), "--law", "linear",
         "--min-step", "50", "--bootstrap", "0", "--json"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert set(json.loads(ok.stdout)) == FIT_KEYS
    bad = subprocess.run(
        [sys.executable, "-m", "forgetscale", "fit", "--from", str(runs_csv), "--law", "nolaw"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "unknown law" in bad.stderr


def test_fit_reads_a_results_store(tmp_path, capsys):
    from forgetscale import store

    df = _good()
    db = tmp_path / "results.db"
    with store.open_store(db) as s:
        for run_id, g in df.groupby("run_id"):
            s.start_run(run_id, {"run": run_id}, method="lora", rank=None,
                        params_trained=int(g.params_trained.iloc[0]))  # fmt: skip
            for row in g.itertuples():
                s.add_measurement(
                    run_id, row.step,
                    {"finetune_loss": row.finetune_loss, "forgetting_loss": row.forgetting_loss},
                )  # fmt: skip
    rc = main(["fit", "--from", str(db), "--law", "multiplicative", "--bootstrap", "0", "--json"])
    assert rc == 0
    assert _json(capsys)["n_points"] == len(df)
