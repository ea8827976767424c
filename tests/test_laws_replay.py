"""Laws with the replay fraction p as a variable: fitted, and tested on a held-out p."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forgetscale.laws import fit_law, get_law
from forgetscale.store import open_store

TRUE = {"L0": 1.0, "A": 0.05, "beta": 0.5, "B": 40.0}
FRACTIONS = (0.0, 0.01, 0.05, 0.25)
STEPS = (0, 4, 8, 16, 32, 64)


def lf(n, p, P=None, c=TRUE, alpha=0.2):
    scale = 1.0 if P is None else (P / 1e6) ** alpha
    return c["L0"] + c["A"] * scale * n ** c["beta"] / (1 + c["B"] * p)


def table(noise=0.002, effect=True, ranks=(None,)):
    rng = np.random.default_rng(0)
    rows = []
    for P in ranks:
        for p in FRACTIONS:
            for seed in range(2):
                run = f"P{P}-p{p}-s{seed}"
                for n in STEPS:
                    y = lf(n, p if effect else 0.0, P) * np.exp(noise * rng.standard_normal())
                    rows.append({"run_id": run, "step": n, "params_trained": P or 1e6,
                                 "replay_fraction": p, "forgetting_loss": y})  # fmt: skip
    return pd.DataFrame(rows)


def test_replay_power_recovers_the_replay_efficiency():
    fit = fit_law(table(), "replay_power", "forgetting_loss", min_step=0, n_boot=20)
    assert fit.converged and not fit.on_bound
    assert fit.params["B"] == pytest.approx(TRUE["B"], rel=0.15)
    assert fit.params["beta"] == pytest.approx(TRUE["beta"], rel=0.1)
    lo, hi = fit.ci["B"]
    assert lo < TRUE["B"] < hi
    predicted = get_law("replay_power")(
        fit.params, "forgetting_loss", step=64, replay_fraction=0.01
    )
    assert float(predicted) == pytest.approx(lf(64, 0.01), rel=0.01)


def test_replay_multiplicative_in_p_n_and_the_replay_fraction():
    fit = fit_law(table(ranks=(1e6, 4e6, 16e6)), "replay_multiplicative", min_step=0)
    assert fit.converged and not fit.on_bound
    assert fit.params["alpha"] == pytest.approx(0.2, abs=0.03)
    assert fit.params["B"] == pytest.approx(TRUE["B"], rel=0.15)


def test_one_value_of_p_cannot_fit_the_replay_laws():
    from forgetscale.errors import UserError

    df = table()
    with pytest.raises(UserError, match="replay_fraction"):
        fit_law(df[df["replay_fraction"] == 0], "replay_power", min_step=0)


def _replay_store(path, effect=True, total=False, noise=0.002):
    rng = np.random.default_rng(1)
    with open_store(path) as st:
        for p in FRACTIONS:
            for seed in range(2):
                run_id = f"p{p}-s{seed}"
                cfg = {"model": "tiny", "task_data": "t", "forgetting_data": "pydoc",
                       "method": "lora", "rank": 4, "seed": seed, "max_steps": max(STEPS),
                       **({"replay_fraction": p, "replay_data": "r"} if p else {})}  # fmt: skip
                st.start_run(run_id, cfg, method="lora", rank=4, params_trained=480_000,
                             versions={"forgetscale": "test"})  # fmt: skip
                for n in STEPS:
                    y = lf(n, p if effect else 0.0) if not (total and p) else TRUE["L0"]
                    y *= float(np.exp(noise * rng.standard_normal()))
                    st.add_measurement(run_id, n, {
                        "forgetting_loss": y, "forgetting_loss_soft": y + 0.1, "kl": y - 1.0,
                        "base_entropy": 1.1, "agreement": 0.9, "wall_s": 2.0 * n,
                        "finetune_loss": 4.0 - 0.3 * np.log1p(n) * (1 - p)})  # fmt: skip
                st.set_status(run_id, "finished")


ANALYSIS = {"min_step": 0, "bootstrap": 20, "holdout_runs": 0, "holdout_steps": 0}


def test_the_study_fits_the_law_and_predicts_each_held_out_strength(tmp_path):
    from forgetscale.study.analysis import analyse
    from forgetscale.study.report import write_report

    _replay_store(tmp_path / "r.db")
    report = analyse(tmp_path / "r.db", ANALYSIS)
    r = report.replay_law
    assert r["law"] == "replay_power" and r["identified"]
    assert r["params"]["B"] == pytest.approx(TRUE["B"], rel=0.2)
    assert [h["replay_fraction"] for h in r["held_out"]] == [0.01, 0.05, 0.25]
    assert all(h["ratio"] is not None and h["ratio"] < 5 for h in r["held_out"])
    assert "Held-out strength" in r["sentence"]
    html, _ = write_report(report, tmp_path / "out")
    assert 'id="replaylaw"' in html.read_text()


def test_replay_that_changes_nothing_is_measured_as_such(tmp_path):
    from forgetscale.study.analysis import analyse

    _replay_store(tmp_path / "flat.db", effect=False)
    r = analyse(tmp_path / "flat.db", ANALYSIS).replay_law
    assert r["identified"] and r["ci"]["B"][1] < 0.5  # 1 + B p stays within 1.13 at p = 25%
    assert "p = 25%: x0.9" in r["sentence"] or "p = 25%: x1.0" in r["sentence"]


def test_the_report_says_when_the_law_is_not_identified(tmp_path):
    from forgetscale.study.analysis import analyse

    # every replay fraction, 1% included, stops forgetting entirely, in noisy runs: the data
    # bound B from below only
    _replay_store(tmp_path / "all.db", total=True, noise=0.01)
    r = analyse(tmp_path / "all.db", ANALYSIS).replay_law
    assert not r["identified"] and (r["on_bound"] or r["b_spread"] > 10)
    assert "not identified" in r["sentence"] and "not a result" in r["sentence"]


def test_fit_reads_the_replay_fraction_from_a_store_and_its_export(tmp_path, capsys):
    """`forgetscale fit --from STORE --law replay_power` on a store as train writes it (p in
    each run's config, absent from a plain run's): p and the KL weight are export columns."""
    import json

    from forgetscale.cli import main
    from forgetscale.store import EXPORT_COLUMNS, read_measurements

    db = tmp_path / "r.db"
    _replay_store(db)
    with open_store(db) as st:  # a KL run: its weight is exported, its p is 0
        cfg = {"model": "tiny", "task_data": "t", "method": "lora", "kl_weight": 0.5}
        st.start_run("kl", cfg, method="lora", rank=4, params_trained=480_000)
        st.add_measurement("kl", 4, {"forgetting_loss": 1.01, "finetune_loss": 3.9})
        st.set_status("kl", "finished")
    df = read_measurements(db)
    assert list(df.columns) == list(EXPORT_COLUMNS)
    assert EXPORT_COLUMNS.index("replay_fraction") < EXPORT_COLUMNS.index("step")
    per_run = df.groupby("run_id")[["replay_fraction", "kl_weight"]].first()
    for p in FRACTIONS:
        assert per_run.loc[f"p{p}-s1"].tolist() == [p, 0.0]  # p = 0: the key is absent
    assert per_run.loc["kl"].tolist() == [0.0, 0.5]
    assert df.replay_fraction.dtype == df.kl_weight.dtype == np.float64
    # the KL run is no replay run: the replay law's runs are those without the KL penalty
    assert main(["export", "--from", str(db), "--out", str(tmp_path / "all.csv")]) == 0
    table = pd.read_csv(tmp_path / "all.csv")
    table[table.kl_weight == 0].to_csv(tmp_path / "replay.csv", index=False)
    with open_store(db) as st:
        st.delete_run("kl")
    capsys.readouterr()
    fits = {}
    for source in (db, tmp_path / "replay.csv"):
        argv = ["fit", "--from", str(source), "--law", "replay_power", "--min-step", "0",
                "--bootstrap", "20", "--json"]  # fmt: skip
        assert main(argv) == 0
        fits[source.suffix] = json.loads(capsys.readouterr().out)
    fit = fits[".db"]
    assert fit["law"] == "replay_power" and fit["converged"]
    assert fit["params"]["B"] == pytest.approx(TRUE["B"], rel=0.2)
    assert fit["params"]["beta"] == pytest.approx(TRUE["beta"], rel=0.1)
    assert fits[".csv"]["params"] == pytest.approx(fit["params"], rel=1e-6)
    # the table as the store gave it: two values of p at least, or one line saying so
    single = table[(table.replay_fraction == 0) & (table.kl_weight == 0)]
    single.to_csv(tmp_path / "plain.csv", index=False)
    argv = ["fit", "--from", str(tmp_path / "plain.csv"), "--law", "replay_power"]
    assert main(argv) == 2
    assert "replay_fraction" in capsys.readouterr().err
