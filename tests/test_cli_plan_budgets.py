"""`forgetscale plan` budgets beyond the hard L_f, on results stores drawn from known laws
(tests/study_data.py): the soft L_f, KL and disagreement plan to the true optimum (or one
within the noise of it) and never to a candidate that breaks the budget in truth; a
downstream budget (a suite's metric, written into the store's downstream table as a
known straight line in the hard L_f) is predicted through its measured relation to L_f,
and refused in one line when the store has no such metric."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from study_data import BASE, ENTROPY, P_PER_RANK, add_linear_downstream, law_value, make_store

from forgetscale.cli import main
from forgetscale.laws.downstream_budget import split_key
from forgetscale.laws.planning import parse_budget

RANKS, STEPS = [2, 4, 8, 16], [25, 50, 100]
NOISE = 0.003
#: A candidate whose true value clears the limit by less than this share may rightly be
#: refused: the upper half of a 90% new-run interval here is about 1% of the value.
MARGIN = 0.015
#: The synthetic downstream metric: a probe accuracy falling linearly with the hard L_f.
ACC0, ACC_SLOPE, ACC_NOISE = 0.92, -0.3, 0.003


def truth(target: str, rank: int, steps: float) -> float:
    """The true value of a target: the soft L_f follows its law, KL is the soft L_f less
    the base entropy (+0.01), agreement is exp(-KL / 2) (tests/study_data.py)."""
    P = P_PER_RANK * rank
    if target in ("finetune_loss", "forgetting_loss", "forgetting_loss_soft"):
        return law_value(target, P, steps)
    kl = law_value("forgetting_loss_soft", P, steps) - ENTROPY + 0.01
    return kl if target == "kl" else 1.0 - math.exp(-0.5 * kl)


def true_accuracy(rank: int, steps: float) -> float:
    return ACC0 + ACC_SLOPE * truth("forgetting_loss", rank, steps)


#: Step-0 (base) values the store writes, for relative budgets.
BASE_VALUES = {"kl": 2e-4, "disagreement": 1 - 0.985, **BASE}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """``(plain, with_downstream)``: the same pilot runs, the second with a probe accuracy
    at steps 0, 16, 64 and 100 of every run, a straight line in the L_f the run measured
    there plus noise (the base's value at step 0, the same for every run)."""
    d = tmp_path_factory.mktemp("budgets")
    plain, down = d / "plain.db", d / "down" / "results.db"
    down.parent.mkdir()
    for path in (plain, down):
        make_store(path, ranks=(1, 2, 4, 8, 16), seeds={1: 2, 4: 2, 16: 2}, noise=NOISE)
    add_linear_downstream(down, ACC0, ACC_SLOPE, noise=ACC_NOISE)
    return plain, down


def _plan(capsys, *args):
    capsys.readouterr()
    rc = main(["plan", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _grid_args(store, budget, *extra):
    budgets = [budget] if isinstance(budget, str) else list(budget)
    return ["--from", str(store), "--law", "multiplicative", "--bootstrap", "10", *extra,
            "--ranks", *map(str, RANKS), "--steps", *map(str, STEPS), "--budget", *budgets]  # fmt: skip


def _assert_true_optimum(plan, value_of, limit, upper=True):
    """The choice breaks no budget in truth and its true L_ft is within the noise of the
    best candidate that clears the limit by more than MARGIN."""
    grid = list(itertools.product(RANKS, STEPS))
    if upper:
        clear = [k for k in grid if value_of(*k) <= limit - MARGIN * abs(limit)]
    else:
        clear = [k for k in grid if value_of(*k) >= limit + MARGIN * abs(limit)]
    assert clear and len(clear) < len(grid)  # the limit splits the candidates
    best = min(truth("finetune_loss", *k) for k in clear)
    ch = plan["choice"]
    assert ch is not None
    key = (ch["rank"], ch["step"])
    assert value_of(*key) <= limit if upper else value_of(*key) >= limit
    ft = truth("finetune_loss", *key)
    assert ft <= best + 2 * NOISE * best
    return ch


@pytest.mark.parametrize(
    "target,relative",
    [("kl", True), ("forgetting_loss_soft", False), ("disagreement", True)],
)
def test_soft_kl_and_disagreement_budgets_plan_to_the_true_optimum(stores, target, relative,
                                                                   capsys):  # fmt: skip
    plain, _ = stores
    values = [truth(target, r, n) for r, n in itertools.product(RANKS, STEPS)]
    limit = float(np.median(values))  # halfway between two candidates: no tie
    if relative:
        budget = f"{target}<=+{limit - BASE_VALUES[target]:.6f}"
    else:
        budget = f"{target}<={limit:.6f}"
    rc, out, err = _plan(capsys, *_grid_args(plain, budget, "--json"))
    assert rc == 0, err
    plan = json.loads(out)
    assert plan["law"] == {"finetune_loss": "multiplicative", target: "multiplicative"}
    assert "seed replicates" in plan["intervals"][target]
    b = plan["budgets"][0]
    assert b["relative"] is relative and b["limit"] == pytest.approx(limit, abs=2e-6)
    if relative:
        assert b["base"] == pytest.approx(BASE_VALUES[target])
    ch = _assert_true_optimum(plan, lambda r, n: truth(target, r, n), limit)
    assert set(ch[target]) >= {"value", "lo", "hi", "limit", "meets"}
    assert ch[target]["hi"] <= b["limit"]
    for c in plan["candidates"]:
        assert c["feasible"] == (c[target]["hi"] <= b["limit"])
        assert c["feasible"] or f"{target} up to" in c["why"]
        # the predictions track the true values within a few times the noise
        assert c[target]["value"] == pytest.approx(truth(target, c["rank"], c["step"]), rel=0.02)


def test_a_downstream_budget_plans_through_the_metric_s_relation_to_lf(stores, capsys):
    _, down = stores
    # at most 0.33 below the base's accuracy (0.62): in truth L_f <= 2.1
    drop = -0.33
    limit = ACC0 + ACC_SLOPE * BASE["forgetting_loss"] + drop
    rc, out, err = _plan(capsys, *_grid_args(down.parent, f"probe:acc>={drop}", "--json"))
    assert rc == 0, err
    plan = json.loads(out)
    b = plan["budgets"][0]
    assert (b["target"], b["op"], b["relative"]) == ("probe:acc", ">=", True)
    assert b["base"] == pytest.approx(ACC0 + ACC_SLOPE * BASE["forgetting_loss"])
    assert b["limit"] == pytest.approx(limit)
    # its law is L_f's: the metric is predicted through the fitted line
    assert plan["law"] == {"finetune_loss": "multiplicative", "forgetting_loss": "multiplicative"}
    rel = plan["downstream"]["probe:acc"]
    assert (rel["suite"], rel["metric"], rel["against"]) == ("probe", "acc", "forgetting_loss")
    assert rel["slope"] == pytest.approx(ACC_SLOPE, abs=0.02)
    assert rel["slope_interval_90"][0] < rel["slope"] < rel["slope_interval_90"][1]
    # 8 runs x 3 steps after the base, and the base (one model) once
    assert (rel["points"], rel["runs"], rel["bootstrap"]) == (25, 8, 10)
    assert rel["residual_sd"] == pytest.approx(ACC_NOISE, rel=0.5)
    assert "through the relation probe:acc = " in plan["intervals"]["probe:acc"]
    ch = _assert_true_optimum(plan, true_accuracy, limit, upper=False)
    assert ch["probe:acc"]["lo"] >= limit and ch["probe:acc"]["op"] == ">="
    for c in plan["candidates"]:
        acc = c["probe:acc"]
        assert acc["lo"] < acc["value"] < acc["hi"]
        # the interval for a new run holds the true accuracy
        assert acc["lo"] - ACC_NOISE <= true_accuracy(c["rank"], c["step"]) <= acc["hi"] + ACC_NOISE
        assert c["feasible"] == (acc["lo"] >= limit)
        assert c["feasible"] or "probe:acc down to" in c["why"]
    assert any("probe:acc is predicted from L_f" in n for n in plan["notes"])
    # in words: the header names the lower end, the choice its >= limit
    rc, out, _ = _plan(capsys, *_grid_args(down, f"probe:acc>={drop}"))
    assert rc == 0 and "at the lower end of the 90% interval" in out
    assert f"probe:acc {ch['probe:acc']['value']:.4g} [" in out and f">= {limit:.4g}" in out


def test_a_downstream_budget_with_a_forgetting_budget_and_an_absolute_limit(stores, capsys):
    _, down = stores
    rc, out, err = _plan(capsys, *_grid_args(down, ["probe:acc>=0.29", "kl<=+1.3"], "--json"))
    assert rc == 0, err
    plan = json.loads(out)
    by_target = {b["target"]: b for b in plan["budgets"]}
    assert by_target["probe:acc"]["relative"] is False and by_target["probe:acc"]["limit"] == 0.29
    assert set(plan["law"]) == {"finetune_loss", "kl", "forgetting_loss"}
    ch = plan["choice"]
    assert ch is not None
    assert true_accuracy(ch["rank"], ch["step"]) >= 0.29
    assert truth("kl", ch["rank"], ch["step"]) <= 1.3 + BASE_VALUES["kl"]


@pytest.mark.parametrize(
    "which,budget,needle",
    [
        ("plain", "probe:acc>=-0.05", "has no metric 'acc' of a suite 'probe'; it has no "
         "downstream results"),
        ("down", "probe:agreement>=-0.05", "has no metric 'agreement' of a suite 'probe'; it "
         "has probe:acc"),
        ("down", "refusal:refusal_rate<=+0.02", "it has probe:acc"),
        ("fit", "probe:acc>=-0.05", "is a downstream metric: it needs --from a results store"),
        ("down", "probe:>=0.5", "a downstream budget names SUITE:METRIC"),
        ("down", "probe:acc>=nan", "must be finite"),
        ("down", "probe:acc=>0.5", "write TARGET<=VALUE"),
        ("down", "forgetting_loss>=2", "a forgetting target is bounded from above"),
        ("nobase", "probe:acc>=-0.05", "relative to the base model: the table needs step-0 "
         "downstream rows of probe:acc"),
    ],
)  # fmt: skip
def test_bad_downstream_budgets_are_one_line_and_exit_2(stores, which, budget, needle, capsys,
                                                        tmp_path):  # fmt: skip
    from helpers import one_line_error

    plain, down = stores
    if which == "fit":
        from forgetscale.laws import fit_law

        fits = []
        for t in ("finetune_loss", "forgetting_loss"):
            fits.append(str(tmp_path / f"{t}.json"))
            fit_law(down, "multiplicative", t, n_boot=0, workers=1).save(fits[-1])
        source = ["--fit", *fits]
    elif which == "nobase":  # the probe measured at steps 16 and 100 only
        nobase = tmp_path / "nobase.db"
        make_store(nobase, ranks=(1, 2, 4, 8), noise=NOISE)
        add_linear_downstream(nobase, ACC0, ACC_SLOPE, noise=ACC_NOISE, steps=(16, 100))
        source = ["--from", str(nobase)]
    else:
        source = ["--from", str(plain if which == "plain" else down)]
    one_line_error(capsys, ["plan", *source, "--budget", budget, "--params", "1e6", "--steps",
                            "50"], needle, command="plan", quiet=True)  # fmt: skip


def test_a_downstream_budget_on_a_csv_export_is_refused(stores, capsys, tmp_path):
    from helpers import one_line_error

    from forgetscale.laws.table import read_table

    _, down = stores
    csv = tmp_path / "export.csv"
    read_table(down).to_csv(csv, index=False)
    one_line_error(capsys, ["plan", "--from", str(csv), "--budget", "probe:acc>=-0.05",
                            "--params", "1e6", "--steps", "50"],
                   "needs --from a results store or study folder", command="plan")  # fmt: skip


def test_budget_syntax():
    b = parse_budget("lm-eval:arc_easy:acc_norm >= -0.02")
    assert (b.target, b.op, b.value, b.relative, b.downstream) == (
        "lm-eval:arc_easy:acc_norm", ">=", -0.02, True, True)  # fmt: skip
    assert b.law_target == "forgetting_loss"
    assert split_key(b.target) == ("lm-eval:arc_easy", "acc_norm")
    b = parse_budget("refusal:refusal_rate<=0.1")
    assert (b.op, b.relative, b.value) == ("<=", False, 0.1)
    b = parse_budget("kl<=+0.05")
    assert (b.target, b.op, b.relative, b.downstream, b.law_target) == (
        "kl", "<=", True, False, "kl")  # fmt: skip
