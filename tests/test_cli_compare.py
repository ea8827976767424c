"""`forgetscale compare`: bad inputs are one line and exit 2, before any fitting."""

from __future__ import annotations

import pytest

from forgetscale.cli import main
from forgetscale.laws.synthetic import synthetic_runs


@pytest.fixture(scope="module")
def runs_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "runs.csv"
    synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0).to_csv(path, index=False)
    return path


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--min-step", "nan"], "--min-step (min_step) must be a finite number"),
        (["--min-step", "-1"], "--min-step (min_step) must be >= 0"),
        (["--starts", "0"], "--starts (n_starts) must be >= 1"),
        (["--starts", "-3"], "--starts (n_starts) must be >= 1"),
        (["--holdout", "largest-N", "p1"], "--holdout takes largest-P, largest-N"),
        (["--laws", "additive,additive"], "--laws names a law twice"),
        (["--laws", "additive,,linear"], "has an empty name"),
        (["--laws", " , "], "--laws is empty"),
        (["--laws", "additive,chinchilla"], "unknown law 'chinchilla'"),
    ],
)
def test_bad_inputs_are_refused_before_the_table_is_read(tmp_path, extra, needle, capsys):
    args = ["compare", "--from", str(tmp_path / "absent.csv"), "--laws", "additive", *extra]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("forgetscale compare: error:"), captured.err
    assert needle in err[0], err[0]
    assert captured.out == ""


def test_compare_scores_a_metric_target(runs_csv, capsys):
    assert main(["compare", "--from", str(runs_csv), "--laws", "multiplicative,kalajdzievski",
                 "--target", "finetune_loss", "--holdout", "largest-N"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "target: finetune_loss" in out and "multiplicative" in out
