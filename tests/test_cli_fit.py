"""`forgetscale fit`, `predict` and `compare` through the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import one_line_error

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


# --------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "option,needle",
    [
        (["--min-step", "nan"], "--min-step (min_step) must be a finite number, got nan"),
        (["--min-step", "inf"], "--min-step (min_step) must be a finite number, got inf"),
        (["--min-step", "-5"], "--min-step (min_step) must be >= 0"),
        (["--bootstrap", "-1"], "--bootstrap (n_boot) must be >= 0"),
        (["--bootstrap", "1"], "--bootstrap (n_boot) must be 0 (no intervals) or >= 2"),
        (["--bootstrap", "100000000"], "--bootstrap (n_boot) must be <= 100000"),
        (["--seed", "-1"], "--seed (seed) must be >= 0"),
        (["--starts", "0"], "--starts (n_starts) must be >= 1"),
        (["--workers", "0"], "--workers (workers) must be >= 1"),
        (["--holdout", "largest-P", "p0"], "--holdout takes largest-P, largest-N, or one or more"),
        (["--holdout", "p0", "p0"], "--holdout names a run id twice"),
        (["--target", "finetune_loss", "--law", "linear"], "predicts forgetting_loss"),
        (["--target", "kl", "--law", "kalajdzievski"], "not 'kl'"),
    ],
)
def test_every_bad_option_is_refused_before_any_work(option, needle, tmp_path, capsys):
    save = tmp_path / "fit.json"
    # --from does not exist: an option error must come before the table is even read
    args = ["fit", "--from", str(tmp_path / "absent.csv"), "--law", "additive"]
    rc = main([*args, "--save", str(save), *option])
    one_line_error(capsys, rc, needle, command="fit", quiet=True)
    assert not save.exists()


@pytest.fixture
def results_store(tmp_path):
    from forgetscale import store

    db = tmp_path / "results.db"
    with store.open_store(db) as s:
        for run_id, g in _good().groupby("run_id"):
            s.start_run(run_id, {"run": run_id}, method="lora", rank=None,
                        params_trained=int(g.params_trained.iloc[0]))  # fmt: skip
            for row in g.itertuples():
                s.add_measurement(
                    run_id, row.step,
                    {"finetune_loss": row.finetune_loss, "forgetting_loss": row.forgetting_loss},
                )  # fmt: skip
    return db


def test_save_and_plots_never_replace_the_results_store(results_store, capsys):
    before = results_store.read_bytes()
    base = ["fit", "--from", str(results_store), "--law", "linear", "--bootstrap", "0"]
    rc = main([*base, "--save", str(results_store)])
    one_line_error(capsys, rc, "--save ", command="fit", quiet=True)
    rc = main([*base, "--plots", str(results_store)])
    one_line_error(capsys, rc, "is a file, not a folder", command="fit", quiet=True)
    assert results_store.read_bytes() == before
    assert sorted(p.name for p in results_store.parent.iterdir()) == ["results.db"]


def test_save_refuses_the_input_a_folder_and_a_file_that_is_no_fit(runs_csv, tmp_path, capsys):
    base = ["fit", "--from", str(runs_csv), "--law", "linear", "--bootstrap", "0"]
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    cases = {
        str(runs_csv): "is the input given to --from",
        str(tmp_path): "is a folder; give a file name",
        str(notes): "exists and is not a forgetscale fit; refusing to replace it",
        str(notes / "fit.json"): "is not a folder",
        str(tmp_path / "new") + "/": "is a folder; give a file name",
    }
    for path, needle in cases.items():
        one_line_error(capsys, main([*base, "--save", path]), needle, command="fit", quiet=True)
    assert notes.read_text() == "my notes"
    fit_json = tmp_path / "deeper" / "fit.json"  # missing folders are made
    assert main([*base, "--save", str(fit_json)]) == 0
    assert main([*base, "--save", str(fit_json), "--json"]) == 0  # an earlier fit is replaced
    capsys.readouterr()
    assert not list(tmp_path.rglob("*.tmp"))


def _namespace_available() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"],
            capture_output=True, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _forgetscale_env():
    import os
    from pathlib import Path

    import forgetscale

    src = str(Path(forgetscale.__file__).parents[1])
    return {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(not _namespace_available(), reason="needs unshare (user + mount namespace)")
@pytest.mark.parametrize(
    "mount,needle",
    [
        # a full disk: a 64 KiB file system, filled
        ("mount -t tmpfs -o size=64k tmpfs {d} && head -c 70000 /dev/zero 2>/dev/null > {d}/fill || true",
         "the disk has 0 bytes free"),
        # a read-only file system: refused even for root
        ("mount -t tmpfs -o ro tmpfs {d}", "the file system is read-only"),
    ],
)  # fmt: skip
def test_full_disk_and_read_only_refused_before_fitting(tmp_path, mount, needle):
    few = _good().groupby("run_id").head(1).head(3)  # a fit of these would fail: too few points
    table = tmp_path / "few.csv"
    few.to_csv(table, index=False)
    d = tmp_path / "mnt"
    d.mkdir()
    cmd = (
        mount.format(d=d)
        + f" && {sys.executable} -m forgetscale fit --from {table} --law additive"
        + f" --bootstrap 0 --save {d}/fit.json; echo rc=$? >&2; ls -A {d}"
    )
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", cmd],
        capture_output=True, text=True, timeout=120, env=_forgetscale_env(),
    )  # fmt: skip
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == "rc=2", done.stderr
    assert len(lines) == 2 and needle in lines[0], done.stderr  # the disk, not the fit
    assert "fit.json" not in done.stdout.split() and ".tmp" not in done.stdout


def test_a_write_that_fails_after_the_fit_leaves_nothing(runs_csv, tmp_path):
    # RLIMIT_FSIZE makes every write beyond 20 kB fail (EFBIG), as a full disk would
    save, plots = tmp_path / "fit.json", tmp_path / "figs"
    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000)); "
        "from forgetscale.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "fit", "--from", str(runs_csv), "--law", "linear",
         "--bootstrap", "0", "--save", str(save), "--plots", str(plots)],
        capture_output=True, text=True, timeout=120, env=_forgetscale_env(),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write --plots" in lines[0] and "too large" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no fit.json, no figs, no tmp


def strict_json(text: str):
    """json.loads that fails on NaN/Infinity, which are not JSON."""

    def refuse(constant):
        raise AssertionError(f"{constant} in --json output")

    return json.loads(text, parse_constant=refuse)


def test_json_is_valid_in_every_mode(runs_csv, tmp_path, capsys):
    df = pd.read_csv(runs_csv)
    lone = pd.concat([df[df.run_id != "p0-s0"], df[(df.run_id == "p0-s0") & (df.step == 50)]])
    path = tmp_path / "lone.csv"
    lone.to_csv(path, index=False)
    modes = {
        "single target": ["fit", "--from", str(runs_csv), "--law", "linear", "--bootstrap", "4"],
        "joint": ["fit", "--from", str(runs_csv), "--law", "kalajdzievski", "--bootstrap", "0"],
        "undefined held-out R^2": ["fit", "--from", str(path), "--law", "multiplicative",
                                   "--bootstrap", "0", "--holdout", "p0-s0"],
        "compare, undefined R^2": ["compare", "--from", str(path), "--laws", "multiplicative",
                                   "--holdout", "p0-s0"],
    }  # fmt: skip
    for mode, args in modes.items():
        assert main([*args, "--json"]) == 0, mode
        out = capsys.readouterr().out
        d = strict_json(out)
        if mode == "undefined held-out R^2":
            assert d["holdout"]["r2"] is None and d["holdout"]["n_points"] == 1
            assert d["notes"] == ["holdout.r2 was nan (written as null)"]
        if mode.startswith("compare"):
            assert d[0]["holdout_r2"] is None and "holdout_r2 was nan" in d[0]["note"]


def test_bootstrap_over_one_run_says_it_cannot_give_an_interval(runs_csv, tmp_path, capsys):
    one = pd.read_csv(runs_csv).query("run_id == 'p3-s0'")
    path = tmp_path / "one.csv"
    one.to_csv(path, index=False)
    assert main(["fit", "--from", str(path), "--law", "linear", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "CI (no bootstrap)" in out
    assert "warning: no confidence intervals: the bootstrap resamples whole runs" in out
    assert main(["fit", "--from", str(path), "--law", "linear", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["ci"] == {} and any("only 1 run" in n for n in d["notes"])


def test_fit_target_disagreement_from_the_agreement_column(tmp_path, capsys):
    true = {"E": 0.3, "A": 10.0, "alpha": 0.2, "beta": 0.4}
    P = [1e6 * 2**k for k in range(6)]
    df = synthetic_runs("multiplicative", true, targets=["disagreement"], params_trained=P)
    path = tmp_path / "agreement.csv"
    df.to_csv(path, index=False)
    args = ["fit", "--from", str(path), "--law", "multiplicative", "--target", "disagreement"]
    assert main([*args, "--bootstrap", "0", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["target"] == "disagreement" and d["r2"] > 0.95
    assert d["params"]["E"] == pytest.approx(0.3, rel=0.05)


def _one_run_or_two(tmp_path):
    """Tables where rows of one run_id cannot be one run, each with the words of its refusal."""
    good = _good()
    differ = pd.concat([good, good.iloc[[3]].assign(forgetting_loss=9.0)])
    p_moves = good.copy()
    p_moves.loc[2, "params_trained"] = good.params_trained.iloc[2] + 1
    fractional = good.astype({"step": float})
    fractional.loc[4, "step"] = 20.5
    p0 = good[good.run_id == "p0"]
    shared = pd.concat([good.assign(tokens_seen=good.step * 64),
                        p0.assign(step=p0.step + 1, tokens_seen=(p0.step + 1) * 8)])  # fmt: skip
    return {
        "two values at one step": (differ, "run 'p0' has two rows for step 40 with different "
                                   "values (forgetting_loss"),
        "P changes within a run": (p_moves, "run 'p0' has 2 values of params_trained"),
        "fractional steps": (fractional, "column step has fractional values (e.g. 20.5"),
        "two runs share an id": (shared, "run 'p0': tokens_seen falls from"),
    }  # fmt: skip


@pytest.mark.parametrize("command", ["fit", "compare"])
def test_rows_that_cannot_be_one_run_are_refused_in_words(tmp_path, capsys, command):
    for case, (df, needle) in _one_run_or_two(tmp_path).items():
        path = _write(tmp_path, df, "t.csv")
        law = ["--law", "multiplicative", "--bootstrap", "0"] if command == "fit" else [
            "--laws", "multiplicative"]  # fmt: skip
        rc = main([command, "--from", path, *law])
        line = one_line_error(capsys, rc, needle, command=command, quiet=True)
        assert "two runs share" in line or "fractional" in line, (case, line)


def test_rows_repeated_exactly_are_dropped_with_a_warning(tmp_path, capsys):
    good = _good()
    once = _write(tmp_path, good, "once.csv")
    twice = _write(tmp_path, pd.concat([good, good.iloc[[3, 4, 5]]]), "twice.csv")
    argv = ["fit", "--law", "multiplicative", "--bootstrap", "0", "--json"]
    assert main([*argv, "--from", once]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main([*argv, "--from", twice]) == 0
    captured = capsys.readouterr()
    got = json.loads(captured.out)
    assert got["params"] == expected["params"] and got["n_points"] == expected["n_points"]
    assert captured.err.strip() == (
        "warning: dropped 3 row(s) that repeat another row exactly (same run_id, step and "
        "values); each (run, step) is fitted once"
    )
