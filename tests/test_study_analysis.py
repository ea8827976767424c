"""forgetscale.study.analysis: a results store to the numbers of the report.

The stores hold measurements drawn from known laws (tests/study_data.py), written
through the real store API; the analysis must recover the laws, find small held-out
errors, and say in words when a design cannot identify a law.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from study_data import P_PER_RANK, TRUE, analysed, law_value, make_store

from forgetscale.errors import UserError
from forgetscale.study.analysis import AnalysisConfig, analyse
from forgetscale.study.checks import checks
from forgetscale.study.config import DEFAULT_LAWS
from forgetscale.study.fits import holdout_evaluation
from forgetscale.study.noise import judge_gap, typical_spread
from forgetscale.study.predictions import default_ranks, params_per_rank

# ------------------------------------------------------------------------- the config


def test_config_defaults():
    c = AnalysisConfig()
    assert c.laws == DEFAULT_LAWS and c.laws is not DEFAULT_LAWS
    assert (c.min_step, c.holdout_runs, c.holdout_steps, c.bootstrap, c.seed) == (
        1,
        1,
        0.25,
        200,
        0,
    )
    assert c.predict_ranks == []
    assert set(AnalysisConfig.help()) == set(c.to_dict())
    assert all(AnalysisConfig.help().values())
    assert AnalysisConfig.from_dict(None) == c
    assert AnalysisConfig.from_dict({"laws": {"kl": "multiplicative"}}).laws == {
        "kl": ["multiplicative"]
    }
    assert AnalysisConfig(predict_ranks=[64, 8, 8]).predict_ranks == [8, 64]


@pytest.mark.parametrize(
    "values, key",
    [
        ({"laws": {"perplexity": ["linear"]}}, "analysis.laws"),
        ({"laws": {"finetune_loss": ["linear"]}}, "analysis.laws.finetune_loss"),
        ({"laws": {"forgetting_loss": ["nope"]}}, "analysis.laws.forgetting_loss"),
        ({"laws": {"forgetting_loss": []}}, "analysis.laws.forgetting_loss"),
        ({"laws": {"forgetting_loss": ["linear", "linear"]}}, "analysis.laws.forgetting_loss"),
        ({"laws": {}}, "analysis.laws"),
        ({"min_step": -1}, "analysis.min_step"),
        ({"min_step": 1.5}, "analysis.min_step"),
        ({"bootstrap": True}, "analysis.bootstrap"),
        ({"holdout_runs": -1}, "analysis.holdout_runs"),
        ({"holdout_steps": 1.0}, "analysis.holdout_steps"),
        ({"holdout_steps": "a lot"}, "analysis.holdout_steps"),
        ({"predict_ranks": [0]}, "analysis.predict_ranks"),
        ({"predict_ranks": "8"}, "analysis.predict_ranks"),
        ({"seed": -3}, "analysis.seed"),
        ({"bootstraps": 3}, "unknown key(s) bootstraps"),
    ],
)
def test_config_refuses_bad_values_naming_the_key(values, key):
    with pytest.raises(UserError, match=key.replace("(", r"\(").replace(")", r"\)")):
        AnalysisConfig.from_dict(values)


# ---------------------------------------------------------------------- small helpers


def test_default_ranks_are_powers_of_two_not_run():
    assert default_ranks([1, 4, 16, 64]) == [2, 8, 32, 128, 256]
    assert default_ranks([8, 16]) == [4, 32, 64]
    assert default_ranks([]) == []


def test_params_per_rank_is_linear_through_the_origin():
    runs = [
        {"method": "lora", "rank": r, "params_trained": 1000 * r + (5 if r == 2 else 0)}
        for r in (1, 2, 4)
    ]
    ppr = params_per_rank(runs)
    assert ppr["c"] == pytest.approx(1000, rel=1e-3)
    assert 0 < ppr["max_relative_deviation"] < 0.01
    assert params_per_rank([{"method": "full", "rank": None, "params_trained": 10}]) is None


def test_holdout_evaluation_holds_out_the_largest_p_runs_and_the_last_steps(tmp_path):
    from forgetscale.store import read_measurements

    path = tmp_path / "s.db"
    make_store(path, ranks=(1, 2, 4, 8, 16, 32))
    df = read_measurements(path)
    config = AnalysisConfig(holdout_runs=2, holdout_steps=0.25)
    ev = holdout_evaluation(df, "multiplicative", "forgetting_loss", "runs", config)
    pts = pd.DataFrame(ev["points"])
    held = pts[pts["split"] == "held_out"]
    assert sorted(held["params_trained"].unique()) == [16 * P_PER_RANK, 32 * P_PER_RANK]
    assert "the 2 largest P" in ev["description"]
    assert ev["rmse"] < 0.02 and ev["ratio"] < 3

    ev = holdout_evaluation(df, "multiplicative", "forgetting_loss", "steps", config)
    pts = pd.DataFrame(ev["points"])
    held = pts[pts["split"] == "held_out"]
    assert set(held["step"]) == {64, 100}  # 25% of 8 measured steps >= 1 = the last 2
    assert ev["n_held_out"] == 6 * 2


# ------------------------------------------------------------------ known laws recovered


def test_recovers_the_true_laws_with_small_held_out_errors():
    _, _, rep = analysed("good")
    for target, true in TRUE.items():
        entry = next(e for e in rep.laws[target] if e["law"] == "multiplicative")
        assert entry["status"] == "ok" and entry["identified"], entry.get("error")
        params = {p["name"]: p for p in entry["params"]}
        for name, value in true.items():
            rel = 0.15 if name in ("alpha", "beta", "A") else 0.03
            assert params[name]["value"] == pytest.approx(value, rel=rel), (target, name)
            assert params[name]["ci"] is not None
        assert entry["r2"] > 0.99
        for key in ("held_out_runs", "held_out_steps"):
            ev = entry[key]
            assert ev["rmse"] < 0.03, (target, key, ev["rmse"])
            assert ev["ratio"] < 2.5, (target, key, ev["ratio"])
        assert rep.best[target]["law"] == "multiplicative"
    check = next(c for c in rep.checks if "P and N" in c["name"])
    assert check["passed"] is True


def test_ranking_is_by_held_out_runs_error():
    _, _, rep = analysed("good")
    ranking = rep.ranking["forgetting_loss"]
    # every law the default analysis fits to L_f: linear, multiplicative, the two jointly
    # (linear_multiplicative) and additive
    assert [r["position"] for r in ranking] == [1, 2, 3, 4]
    assert {r["law"] for r in ranking} == {
        "linear",
        "multiplicative",
        "linear_multiplicative",
        "additive",
    }
    assert all(r["ranked_by"] == "held-out runs" for r in ranking)
    rmse = [r["rmse"] for r in ranking]
    assert rmse == sorted(rmse)
    linear = next(r for r in ranking if r["law"] == "linear")
    assert linear["uses_observed_finetune_loss"]


def test_predicts_ranks_not_run_from_the_best_law_with_intervals():
    _, _, rep = analysed("good")
    pr = rep.predictions
    assert pr["ranks_run"] == [1, 2, 4, 8, 16, 32]
    assert [r["rank"] for r in pr["rows"]] == [64, 128]
    assert pr["params_per_rank"]["c"] == pytest.approx(P_PER_RANK)
    assert pr["step"] == 100
    for row in pr["rows"]:
        assert row["extrapolation"]
        for target in ("forgetting_loss", "finetune_loss", "forgetting_loss_soft"):
            v = row[target]
            truth = law_value(target, row["params_trained"], 100)
            assert v["value"] == pytest.approx(truth, rel=0.01)
            assert v["lo"] <= v["value"] <= v["hi"]
    assert [o["rank"] for o in pr["observed"]] == [1, 2, 4, 8, 16, 32]


def test_noise_floor_step_zero_and_seed_spread():
    _, _, rep = analysed("good")
    nf = rep.noise_floor
    assert len(nf["step0"]) == 7
    assert nf["step0_summary"]["kl"]["max"] == pytest.approx(2e-4)
    assert nf["step0_summary"]["disagreement"]["max"] == pytest.approx(0.015)
    (spread,) = nf["seed_spread"]
    assert spread["label"] == "r=4" and spread["seeds"] == [0, 1]
    assert 0 < spread["summary"]["forgetting_loss"]["median"] < 0.05
    assert "seeds" in nf["text"] and "floor" in nf["text"]


def _noise(spread, gap, step0=True, seeds=1):
    spreads = (
        []
        if spread is None
        else [{"summary": {"forgetting_loss": {"median": m, "max": 2 * m}}} for m in spread]
    )
    gaps = None if gap is None else {"step": 100, "min": gap, "median": 2 * gap, "seeds": seeds}
    if gaps is not None and spreads:  # as noise_floor judges it
        gaps = judge_gap(gaps, typical_spread(spreads)["forgetting_loss"])
    return {
        "step0": [{"run_id": "a"}] if step0 else [],
        "seed_spread": spreads,
        "neighbour_gap": gaps,
    }


@pytest.mark.parametrize(
    "spread, gap, step0, seeds, passed, words",
    [
        ([0.01], 0.03, True, 1, True, "3x the seed spread 0.01 (told apart)"),
        # the typical spread is the largest median over the configurations run with seeds
        (
            [0.004, 0.02],
            0.03,
            True,
            1,
            False,
            "1.5x the seed spread 0.02 (not told apart: under 2x)",
        ),
        ([0.01], 0.02, True, 1, True, "2x the seed spread"),
        # means over 4 seeds: the noise of their difference is the spread / 2
        ([0.04], 0.03, True, 4, False, "1.5x the seed spread 0.04 / sqrt(4) (not told apart"),
        ([0.02], 0.03, True, 4, True, "(means over 4 seeds), 3x the seed spread 0.02 / sqrt(4)"),
        ([0.01], 0.03, True, 4, True, "6x the seed spread 0.01 / sqrt(4) (told apart)"),
        (None, 0.03, True, 1, False, "no configuration run with two or more seeds"),
        ([0.01], 0.03, False, 1, False, "step 0 measured for 0 run(s)"),
        ([0.01], None, True, 1, None, "no two P to tell apart"),
    ],
)
def test_noise_check_asks_that_neighbouring_ranks_are_told_apart(
    spread, gap, step0, seeds, passed, words
):
    (noise_check,) = [
        c for c in checks({}, _noise(spread, gap, step0, seeds), distinct_params=5)
        if c["name"].startswith("noise floor")
    ]  # fmt: skip
    assert noise_check["passed"] is passed
    assert words in noise_check["detail"]


def test_noise_check_on_a_store_reads_the_noise_floor():
    _, _, rep = analysed("good")
    (c,) = [c for c in rep.checks if c["name"].startswith("noise floor")]
    nf = rep.noise_floor
    gap = nf["neighbour_gap"]
    spread = nf["seed_spread"][0]["summary"]["forgetting_loss"]["median"]
    ratio = gap["min"] / (spread / math.sqrt(gap["seeds"]))
    assert gap["seeds"] == 1  # the good store has two seeds of one rank only
    assert gap["ratio"] == pytest.approx(ratio) and gap["spread"] == spread
    assert c["passed"] is (ratio >= 2) is gap["told_apart"]
    assert f"{ratio:.2g}x the seed spread" in c["detail"]


def test_report_data_is_strict_json_with_every_figure():
    _, ids, rep = analysed("good")
    d = rep.to_json()
    text = json.dumps(d, allow_nan=False)
    assert json.loads(text)["format"] == "forgetscale-study-report/1"
    assert {r["run_id"] for r in d["runs"]} == set(ids)
    assert set(d["figures"]) == {
        "forgetting_vs_finetune",
        "losses_vs_steps",
        "predicted_vs_observed",
        "residuals",
        "hard_vs_soft",
        "frontier",  # the ranks are arms: each one's trajectory of L_f against L_ft
    }
    for fig in d["figures"].values():
        assert fig["title"] and fig["caption"] and fig["data"]
    assert d["study"]["command"].startswith("forgetscale study")
    assert d["paper"]["presets"]["kalajdzievski:openorca"]["params"]["rho"] == 7.6885
    assert "hard" in d["paper"]["text"] and "min" not in d["paper"]["text"].split("fitted")[0]


def test_nan_becomes_null():
    _, _, rep = analysed("good")
    rep.noise_floor["poison"] = float("nan")
    try:
        d = rep.to_json()
        assert d["noise_floor"]["poison"] is None
        json.dumps(d, allow_nan=False)
    finally:
        del rep.noise_floor["poison"]


# ------------------------------------------------------------ designs that cannot tell


def test_degenerate_design_puts_parameters_on_bounds_and_says_so():
    _, _, rep = analysed("degenerate")
    entries = {e["law"]: e for e in rep.laws["forgetting_loss"]}
    e = entries["multiplicative"]
    assert "E" in e["on_bound"] and not e["identified"]
    assert "upper bound" in e["on_bound_words"]
    assert rep.best["forgetting_loss"] is None
    assert rep.predictions["rows"] == []
    assert "no prediction of it is shown" in rep.predictions["note"]
    text = " ".join(rep.warnings)
    assert "ended on a bound" in text and "not a result" in text
    assert "No law for L_f (hard) in P and N is identified" in text
    check = next(c for c in rep.checks if "P and N" in c["name"])
    assert check["passed"] is False and "on a bound" in check["detail"]
    # curves are still drawn (dashed, flagged), never as a result
    assert rep.shown_laws["forgetting_loss"]["identified"] is False


def test_failed_and_diverged_runs_are_warned_about_and_not_fitted():
    _, ids, rep = analysed("mixed")
    text = " ".join(rep.warnings)
    assert "Run r=16 diverged" in text and "at step" in text
    assert "Run r=32 failed: out of memory" in text
    entry = rep.laws["forgetting_loss"][0]
    assert entry["n_runs"] == 4
    statuses = {r["label"]: r["status"] for r in rep.runs}
    assert statuses["r=16"] == "diverged" and statuses["r=32"] == "failed"


def test_hard_below_base_while_kl_rises_is_said_in_words():
    _, _, rep = analysed("mixed")
    (case,) = rep.hard_vs_soft["cases"]
    assert case["label"] == "r=2"
    assert [r["step"] for r in case["rows"]] == [1, 2, 4]
    (w,) = [w for w in rep.warnings if "negative forgetting" in w]
    assert w.startswith("Run r=2: at steps 1, 2, 4 the hard L_f fell below")
    assert "KL rose" in w and "more confident on the base's top token" in w


def test_too_few_runs_for_a_held_out_rank(tmp_path):
    path = tmp_path / "s.db"
    make_store(path, ranks=(1, 2, 4), steps=(1, 4, 16, 64))
    rep = analyse(path, AnalysisConfig(bootstrap=0, laws={"forgetting_loss": ["multiplicative"]}))
    assert any("Too few runs to test a held-out rank" in w for w in rep.warnings)
    entry = rep.laws["forgetting_loss"][0]
    assert "distinct params_trained" in entry["held_out_runs"]["error"]
    assert entry["held_out_steps"]["rmse"] is not None


def test_downstream_table_when_present():
    _, ids, rep = analysed("mixed")
    rows = rep.downstream["rows"]
    assert {r["suite"] for r in rows} == {"arc-easy"}
    assert {r["run_id"] for r in rows} == set(ids)
    with_lf = [r for r in rows if r["forgetting_loss"] is not None]  # L_f at that run and step
    assert len(with_lf) >= 2
    (per_lf,) = [x for x in rep.downstream["per_lf"] if x["metric"] == with_lf[0]["metric"]]
    import numpy as np

    same = [r for r in with_lf if r["metric"] == with_lf[0]["metric"]]
    x = [r["forgetting_loss"] for r in same]
    y = [r["value"] for r in same]
    assert per_lf["points"] == len(same)
    assert per_lf["per_unit_lf"] == pytest.approx(np.polyfit(x, y, 1)[0])  # a straight OLS
    assert analysed("good")[2].downstream is None


def test_run_ids_select_runs_and_unknown_ids_are_refused(tmp_path):
    path = tmp_path / "s.db"
    ids = list(make_store(path, ranks=(1, 2, 4, 8), steps=(1, 4, 16, 64)))
    config = AnalysisConfig(bootstrap=0, holdout_runs=0, laws={"forgetting_loss": ["linear"]})
    rep = analyse(path, config, run_ids=ids[:3])
    assert [r["run_id"] for r in rep.runs] == ids[:3]
    assert rep.laws["forgetting_loss"][0]["held_out_runs"] is None
    with pytest.raises(UserError, match="not in the store"):
        analyse(path, config, run_ids=["nope"])
    with pytest.raises(UserError, match="not found"):
        analyse(tmp_path / "missing.db", config)


def test_most_forgotten_blocks_of_the_largest_rank_with_an_adapter(tmp_path, monkeypatch):
    from forgetscale import metrics
    from forgetscale.metrics import BlockReport, ForgettingResult

    calls = []

    def fake_measure(model, reference, **kw):
        calls.append((model, reference, kw))
        return ForgettingResult(
            forgetting_loss=2.0, forgetting_loss_soft=2.2, kl=0.5, base_entropy=1.0,
            agreement=0.7, tokens=100, base_forgetting_loss=1.0,
            most_forgotten=[BlockReport(block=3, kl=1.5, forgetting_loss=3.0, agreement=0.4,
                                        text="def f(x): <return>")],
        )  # fmt: skip

    monkeypatch.setattr(metrics, "measure", fake_measure)
    path = tmp_path / "s.db"
    ids = list(make_store(path, ranks=(1, 2, 4, 8), steps=(1, 4, 16, 64)))
    config = AnalysisConfig(bootstrap=0, laws={"forgetting_loss": ["linear"]})
    rep = analyse(path, config, adapters={ids[0]: "a1", ids[2]: "a4"}, reference="ref.st")
    (call,) = calls
    assert call[0] == "tiny-llama" and call[1] == "ref.st"
    assert call[2]["adapter"] == "a4" and call[2]["dtype"] == "bfloat16"
    assert call[2]["report_blocks"] == 5
    assert rep.forgotten["label"] == "r=4"
    assert rep.forgotten["blocks"][0]["text"] == "def f(x): <return>"

    def broken(*a, **k):
        raise RuntimeError("no such adapter")

    monkeypatch.setattr(metrics, "measure", broken)
    rep = analyse(path, config, adapters={ids[0]: "a1"}, reference="ref.st")
    assert rep.forgotten is None
    assert any("could not be measured: no such adapter" in w for w in rep.warnings)


def test_a_store_without_soft_values_skips_that_target(tmp_path):
    from forgetscale.store import open_store

    path = tmp_path / "s.db"
    make_store(path, ranks=(1, 2, 4, 8), steps=(1, 4, 16, 64))
    with open_store(path) as st:
        st.conn.execute("UPDATE measurements SET forgetting_loss_soft = NULL")
        st.conn.commit()
    config = AnalysisConfig(bootstrap=0, laws={"forgetting_loss_soft": ["multiplicative"]})
    rep = analyse(path, config)
    (entry,) = rep.laws["forgetting_loss_soft"]
    assert entry["status"] == "failed" and "no forgetting_loss_soft" in entry["error"]
    assert any("could not be fitted" in w for w in rep.warnings)
    assert math.isfinite(rep.seconds["total"])


# ------------------------------------------------------------------- real tiny runs


def test_real_tiny_runs_with_adapters_and_reference(workdir):
    """Four tiny LoRA runs trained for real (store, step 0, saved adapters, reference):
    the analysis reads them as they are and measures the largest rank's forgotten text."""
    from helpers import tiny_config

    from forgetscale.training import train

    adapters, reference = {}, None
    for rank in (1, 2, 4, 8):
        cfg = tiny_config(workdir, rank=rank, max_steps=8, eval_steps=[0, 1, 2, 4, 8],
                          output_dir=str(workdir / f"adapter-r{rank}"))  # fmt: skip
        result = train(cfg, log=lambda _: None)
        assert result.status == "finished"
        adapters[result.run_id] = str(workdir / f"adapter-r{rank}")
        reference = result.reference
    config = AnalysisConfig(bootstrap=0, laws={"forgetting_loss": ["linear", "multiplicative"]})
    rep = analyse(workdir / "results.db", config, adapters=adapters, reference=reference)
    assert [r["rank"] for r in rep.runs] == [1, 2, 4, 8]
    assert all(r["steps"] == [0, 1, 2, 4, 8] and r["wall_s"] > 0 for r in rep.runs)
    assert rep.predictions["params_per_rank"]["max_relative_deviation"] < 1e-9  # P = c r exactly
    # the base against its own reference in float32: KL 0 and full agreement
    assert rep.noise_floor["step0_summary"]["kl"]["max"] == pytest.approx(0, abs=1e-6)
    assert rep.noise_floor["step0_summary"]["disagreement"]["max"] == pytest.approx(0, abs=1e-9)
    f = rep.forgotten
    assert f is not None, rep.warnings
    assert f["label"] == "r=8" and len(f["blocks"]) == 5
    assert all(b["text"] for b in f["blocks"]) and f["kl"] > 0
    json.dumps(rep.to_json(), allow_nan=False)


def test_study_passed_through_as_plain_json(tmp_path):
    from pathlib import Path

    path = tmp_path / "s.db"
    make_store(path, ranks=(1, 2), steps=(1, 4))
    config = AnalysisConfig(bootstrap=0, holdout_runs=0, laws={"forgetting_loss": ["linear"]})
    study = {"command": ["forgetscale", "study"], "out": Path("/x"), "wall_s": float("nan")}
    d = analyse(path, config, study=study).to_json()
    assert d["study"] == {"command": ["forgetscale", "study"], "out": "/x", "wall_s": None}
    json.dumps(d, allow_nan=False)


def test_predictions_from_a_law_that_misses_held_out_points_carry_a_caveat(tmp_path):
    from forgetscale.store import open_store

    assert analysed("good")[2].predictions["caveats"] == []  # the true law extrapolates
    path = tmp_path / "s.db"
    make_store(path, ranks=(1, 2, 4, 8, 16))
    with open_store(path) as st:  # the last steps fall off the law
        st.conn.execute(
            "UPDATE measurements SET forgetting_loss = 0.8 * forgetting_loss WHERE step >= 64"
        )
        st.conn.commit()
    rep = analyse(path, AnalysisConfig(bootstrap=0, laws={"forgetting_loss": ["multiplicative"]}))
    assert rep.best["forgetting_loss"]["law"] == "multiplicative"
    (c,) = rep.predictions["caveats"]
    assert "held-out steps" in c and "rough at best" in c and c in rep.warnings
