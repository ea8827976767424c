"""`forgetscale predict`: every bad number is one line and exit 2; --json is strict JSON."""

from __future__ import annotations

import json

import pytest

from forgetscale.cli import main
from forgetscale.laws import fit_law
from forgetscale.laws.synthetic import synthetic_runs

PRESET = ["predict", "--law", "kalajdzievski:openorca"]


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} in --json output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    "args,needle",
    [
        ([*PRESET, "--params", "nan", "--steps", "100"], "--params must be a finite number, got nan"),
        ([*PRESET, "--params", "inf", "--steps", "100"], "--params must be a finite number, got inf"),
        ([*PRESET, "--params=-4e7", "--steps", "100"], "--params must be > 0"),
        ([*PRESET, "--params", "0", "--steps", "100"], "--params must be > 0"),
        ([*PRESET, "--params", "4e7", "--steps", "nan"], "--steps must be a finite number"),
        ([*PRESET, "--params", "4e7", "--steps=-inf"], "--steps must be a finite number"),
        ([*PRESET, "--params", "4e7", "--steps", "-10"], "undefined at step 0"),
        ([*PRESET, "--params", "4e7", "--steps", "100", "--finetune-loss", "0.7"],
         "does not use --finetune-loss"),
    ],
)  # fmt: skip
def test_bad_numbers_are_refused(args, needle, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forgetscale predict: error:"), captured.err
    assert needle in err[0], err[0]
    assert captured.out == ""


@pytest.fixture(scope="module")
def linear_fit(tmp_path_factory):
    df = synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0)
    path = tmp_path_factory.mktemp("fit") / "linear.json"
    fit_law(df, "linear", min_step=50).save(path)
    return path


@pytest.mark.parametrize(
    "value,needle",
    [("nan", "finite"), ("-0.5", "> 0"), ("0", "> 0")],
)
def test_bad_finetune_loss_for_the_linear_law(linear_fit, value, needle, capsys):
    assert main(["predict", "--law", str(linear_fit), "--finetune-loss", value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--finetune-loss must be" in err[0] and needle in err[0]
    assert (
        main(["predict", "--law", str(linear_fit), "--finetune-loss", "0.7", "--steps", "9"]) == 2
    )
    assert "does not use --steps" in capsys.readouterr().err


def test_json_with_an_overflowing_prediction_writes_null_and_a_note(tmp_path, capsys):
    df = synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0)
    fit = fit_law(df, "multiplicative")
    fit.params["alpha"] = 5.0  # still within the law's range
    path = tmp_path / "steep.json"
    fit.save(path)
    assert main(["predict", "--law", str(path), "--params", "1e-100", "4e7", "--steps", "100",
                 "--json"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    rows = strict_json(captured.out)
    assert rows[0]["forgetting_loss"] is None
    assert rows[0]["notes"] == ["forgetting_loss was -inf (written as null)"]
    assert rows[1]["forgetting_loss"] > 0 and rows[1]["notes"] == []
    assert "not finite" in captured.err
    assert main([*PRESET, "--params", "4e7", "--steps", "100", "--json"]) == 0
    one = strict_json(capsys.readouterr().out)
    assert one["notes"] == [] and one["forgetting_loss"] > 0


def test_intervals_are_for_a_new_run_unless_asked_for_the_mean_law(tmp_path, capsys):
    df = synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0, runs_per_p=2)
    path = tmp_path / "fit.json"
    fit_law(df, "multiplicative", n_boot=10, workers=1).save(path)
    args = ["predict", "--law", str(path), "--params", "4e7", "--steps", "200", "--json"]
    assert main(args) == 0
    run = strict_json(capsys.readouterr().out)
    assert main([*args, "--interval", "mean"]) == 0
    mean = strict_json(capsys.readouterr().out)
    (rlo, rhi), (mlo, mhi) = run["ci"]["forgetting_loss"], mean["ci"]["forgetting_loss"]
    assert rlo < mlo <= mhi < rhi
    assert run["interval"].startswith("95% interval for a new run")
    assert "seed replicates" in run["interval"]
    assert mean["interval"].startswith("95% interval of the mean law")
    assert main(args[:-1]) == 0  # the text output names the kind too
    assert "L_f: 95% interval for a new run" in capsys.readouterr().out
