"""`forgetscale plan` on results stores drawn from known laws (tests/study_data.py): it
picks the true optimum (or one within the noise of it) and never a candidate that breaks
the budget in truth; bad budgets are one line and exit 2; emitted snippets load with the
real peft, trl and forgetscale config classes."""

from __future__ import annotations

import itertools
import json

import pytest
from study_data import BASE, P_PER_RANK, law_value, make_store

from forgetscale.cli import main
from forgetscale.laws import fit_law

RANKS, STEPS = [2, 4, 8, 16], [25, 50, 100]
LIMIT = 2.10  # an absolute L_f limit that splits the candidates
#: The upper half of a 90% new-run interval here is about 1% of L_f: a candidate whose true
#: L_f clears the limit by less is one the plan may rightly refuse.
MARGIN = 0.015
NOISE = 0.003


@pytest.fixture(scope="module")
def pilot(tmp_path_factory):
    d = tmp_path_factory.mktemp("pilot")
    store = d / "results.db"
    make_store(store, ranks=(1, 2, 4, 8, 16), seeds={1: 2, 4: 2, 16: 2}, noise=NOISE)
    fits = []
    for t in ("finetune_loss", "forgetting_loss"):
        path = d / f"{t}.json"
        fit_law(store, "multiplicative", t, holdout="largest-N", n_boot=10, workers=1).save(path)
        fits.append(str(path))
    return store, fits


def _plan(capsys, *args):
    rc = main(["plan", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_the_plan_picks_the_true_optimum_and_never_breaks_the_budget(pilot, capsys):
    store, _ = pilot
    rc, out, _ = _plan(capsys, "--from", str(store), "--law", "multiplicative", "--bootstrap",
                       "10", "--budget", f"forgetting_loss<={LIMIT}", "--ranks", *map(str, RANKS),
                       "--steps", *map(str, STEPS), "--json")  # fmt: skip
    assert rc == 0
    plan = json.loads(out)
    assert set(plan) >= {"choice", "candidates", "law", "coverage", "notes"}
    assert len(plan["candidates"]) == len(RANKS) * len(STEPS)
    assert plan["law"] == {"finetune_loss": "multiplicative", "forgetting_loss": "multiplicative"}
    assert plan["coverage"] == 0.9
    assert "seed replicates" in plan["intervals"]["forgetting_loss"]
    truth = {
        (r, n): (law_value("finetune_loss", P_PER_RANK * r, n),
                 law_value("forgetting_loss", P_PER_RANK * r, n))
        for r, n in itertools.product(RANKS, STEPS)
    }  # fmt: skip
    clear = {k: v for k, v in truth.items() if v[1] <= LIMIT * (1 - MARGIN)}
    best = min(v[0] for v in clear.values())
    ch = plan["choice"]
    assert ch is not None and set(ch["finetune_loss"]) == {"value", "lo", "hi"}
    ft, lf = truth[(ch["rank"], ch["step"])]
    assert lf <= LIMIT  # never one that breaks the budget in truth
    # as good as the best candidate that clears the budget by more than the noise
    assert ft <= best + 2 * NOISE * best
    for c in plan["candidates"]:  # every infeasible candidate says why
        assert c["feasible"] == (c["why"] == "meets every budget")
        assert c["forgetting_loss"]["hi"] > c["forgetting_loss"]["value"]


@pytest.mark.parametrize(
    "budget,needle",
    [
        ("forgetting_loss<2", "write TARGET<=VALUE"),
        ("forgetting_loss<=abc", "'abc' is not a number"),
        ("forgetting_loss<=nan", "must be finite"),
        ("forgetting_loss<=-1", "an absolute limit must be > 0"),
        ("disagreement<=5", "disagreement is a share of tokens in [0, 1]"),
        ("disagreement<=+1", "disagreement is a share of tokens in [0, 1]"),
        ("finetune_loss<=2", "it is what plan minimises"),
        ("accuracy<=0.1", "unknown target 'accuracy'"),
    ],
)
def test_bad_budgets_are_one_line_and_exit_2(pilot, budget, needle, capsys):
    store, fits = pilot
    rc, out, err = _plan(capsys, "--fit", *fits, "--budget", budget, "--params", "1e6",
                         "--steps", "50")  # fmt: skip
    lines = err.strip().splitlines()
    assert rc == 2 and out == "" and len(lines) == 1, err
    assert lines[0].startswith("forgetscale plan: error:") and needle in lines[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--budget", "forgetting_loss<=+0.5", "--params", "1e6", "--steps", "50"],
         "relative to the base model"),
        (["--budget", "kl<=0.5", "--params", "1e6", "--steps", "50"], "no --fit predicts kl"),
        (["--budget", "forgetting_loss<=2", "--params", "1e6", "--steps", "nan"],
         "--steps must be a finite number"),
        (["--budget", "forgetting_loss<=2", "--ranks", "4", "--steps", "50"],
         "--ranks needs --from"),
        (["--budget", "forgetting_loss<=2", "--params", "1e6", "--steps", "50",
          "--coverage", "1.5"], "--coverage must lie strictly between 0 and 1"),
    ],
)  # fmt: skip
def test_bad_input_without_a_table_is_one_line(pilot, args, needle, capsys):
    _, fits = pilot
    rc, out, err = _plan(capsys, "--fit", *fits, *args)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and needle in err, err


def test_an_empty_table_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("run_id,params_trained,step,finetune_loss,forgetting_loss\n")
    rc, out, err = _plan(capsys, "--from", str(empty), "--budget", "forgetting_loss<=2",
                         "--params", "1e6", "--steps", "50")  # fmt: skip
    assert rc == 2 and out == "" and "the table has no rows" in err


def test_saved_fits_flag_candidates_beyond_the_tested_extrapolation(pilot, capsys):
    store, fits = pilot
    # the saved fits held out the last steps (64, 100) and were fitted up to step 32: their
    # held-out test checked N up to 100/32 = 3.1x the fitted range
    rc, out, _ = _plan(capsys, "--fit", *fits, "--from", str(store), "--budget",
                       "forgetting_loss<=+1.2", "--ranks", "8", "--steps", "32", "100", "200",
                       "--json")  # fmt: skip
    assert rc == 0
    plan = json.loads(out)
    by_step = {c["step"]: c for c in plan["candidates"]}
    assert by_step[32]["extrapolation"]["step"] == 1.0 and by_step[32]["beyond_tested"] == []
    assert by_step[100]["beyond_tested"] == []
    assert by_step[200]["extrapolation"]["step"] == pytest.approx(6.25)
    assert any("N 6.2x beyond the fitted range, held-out tests reached 3.1x" in b
               for b in by_step[200]["beyond_tested"])  # fmt: skip
    assert plan["budgets"][0]["limit"] == pytest.approx(BASE["forgetting_loss"] + 1.2)


def test_no_feasible_candidate_is_said_in_words_with_exit_0(pilot, capsys):
    _, fits = pilot
    rc, out, _ = _plan(capsys, "--fit", *fits, "--budget", "forgetting_loss<=0.5", "--params",
                       "1e6", "--steps", "50")  # fmt: skip
    assert rc == 0
    assert "choice: none" in out and "no candidate meets every budget" in out


def test_an_unidentified_law_chooses_nothing(tmp_path, capsys):
    store = tmp_path / "results.db"
    make_store(store, unbounded=True)
    rc, out, _ = _plan(capsys, "--from", str(tmp_path), "--law", "multiplicative", "--bootstrap",
                       "0", "--budget", "forgetting_loss<=+5", "--ranks", "4", "--steps", "50",
                       "--json")  # fmt: skip
    assert rc == 0
    plan = json.loads(out)
    assert plan["choice"] is None
    assert any(n.startswith("no identified law for forgetting_loss") for n in plan["notes"])


@pytest.mark.parametrize("fmt", ["peft", "trl", "forgetscale"])
def test_emitted_snippets_load_with_the_real_classes(pilot, fmt, capsys, tmp_path):
    store, fits = pilot
    rc, out, err = _plan(capsys, "--fit", *fits, "--from", str(store), "--budget",
                         "forgetting_loss<=+1.2", "--ranks", "4", "8", "--steps", "50", "100",
                         "--emit", fmt)  # fmt: skip
    assert rc == 0 and "choice: rank" in err  # the table on stderr, the snippet on stdout
    chosen = int(err.split("choice: rank ")[1].split()[0])
    steps = int(err.split("), N ")[1].split(":")[0])
    if fmt == "forgetscale":
        from forgetscale.config.train import load_config

        path = tmp_path / "planned.yaml"
        path.write_text(out)
        cfg = load_config(path)
        assert (cfg.rank, cfg.max_steps, cfg.method) == (chosen, steps, "lora")
        assert cfg.learning_rate == 1e-4 and cfg.model == "tiny-llama"
        return
    scope: dict = {}
    exec(compile(out, "snippet", "exec"), scope)
    lora = scope["lora_config"]
    assert (lora.r, lora.lora_alpha, lora.use_rslora) == (chosen, 16.0, True)
    assert lora.target_modules == "all-linear"
    if fmt == "trl":
        sft = scope["sft_config"]
        assert (sft.max_steps, sft.learning_rate, sft.per_device_train_batch_size) == (
            steps, 1e-4, 8)  # fmt: skip


def test_check_reports_the_planned_run_against_its_interval(pilot, capsys, tmp_path):
    store, fits = pilot
    args = ["--fit", *fits, "--from", str(store), "--budget", "forgetting_loss<=+1.2",
            "--ranks", "4", "8", "--steps", "50", "100", "--json"]  # fmt: skip
    rc, out, _ = _plan(capsys, *args)
    choice = json.loads(out)["choice"]
    # the planned run, drawn from the same laws with another noise seed
    planned = tmp_path / "planned.db"
    make_store(planned, ranks=(choice["rank"],), steps=(1, choice["step"]), noise=NOISE, seed=7)
    rc, out, _ = _plan(capsys, *args, "--check", str(planned))
    assert rc == 0
    check = json.loads(out)["check"]
    assert check["step"] == choice["step"] and len(check["runs"]) == 1
    for t in ("finetune_loss", "forgetting_loss"):
        c = check["targets"][t]
        truth = law_value(t, P_PER_RANK * choice["rank"], choice["step"])
        assert abs(c["observed"] - truth) < 4 * NOISE * truth
        assert c["inside"] == (c["predicted"]["lo"] <= c["observed"] <= c["predicted"]["hi"])
    rc, out, _ = _plan(capsys, *args[:-1], "--check", str(planned))
    assert "check (run-r" in out and ("inside" in out or "OUTSIDE" in out)
    # a table without the planned run is one line
    rc, out, err = _plan(capsys, *args, "--check", str(store).replace("results", "none"))
    assert rc == 2 and "--check: no such file" in err


@pytest.fixture
def real_pilot(tmp_path, workdir):
    """A pilot store drawn from the known laws whose runs name the real tiny model and data:
    the plan is made on the laws, the planned run is then really trained."""
    from helpers import tiny_config

    values = tiny_config(workdir, eval_steps=None, eval_log_points=3).to_dict()
    store = tmp_path / "pilot" / "results.db"
    store.parent.mkdir()
    make_store(store, ranks=(1, 2, 4, 8, 16), seeds={1: 2, 4: 2, 16: 2}, noise=NOISE,
               config=values)  # fmt: skip
    return store


def test_verify_runs_the_planned_configuration_and_checks_it(real_pilot, capsys, tmp_path):
    from forgetscale.laws.table import read_table
    from forgetscale.store import open_store

    pilot_before = real_pilot.read_bytes()
    planned = tmp_path / "planned.db"
    args = ["--from", str(real_pilot), "--law", "multiplicative", "--bootstrap", "10",
            "--budget", "forgetting_loss<=+1.2", "--ranks", "2", "4", "--steps", "4", "8",
            "--no-progress"]  # fmt: skip
    rc, out, err = _plan(capsys, *args, "--json", "--verify", str(planned))
    assert rc == 0, err
    plan = json.loads(out)
    choice, check = plan["choice"], plan["check"]
    assert choice is not None
    with open_store(planned, create=False) as st:
        (run,) = st.list_runs()
    # the chosen configuration was really trained, in its own store, on the pilot's config
    assert (run.rank, run.max_steps, run.status) == (choice["rank"], choice["step"], "finished")
    pilot = pilot_config(real_pilot)
    for key in ("model", "task_data", "forgetting_data", "learning_rate", "block_size"):
        assert run.config[key] == pilot[key]
    assert run.config["store"] == str(planned)
    assert real_pilot.read_bytes() == pilot_before  # the pilot is untouched
    df = read_table(planned)
    at = df[df["step"] == choice["step"]]
    v = check["verify"]
    assert v["run_id"] == run.id and check["runs"] == [run.id] and v["pilot_runs"] == 8
    assert v["seconds"] > 0 and v["grid_runs"] == 4 and v["grid_seconds"] > 0
    for t in ("finetune_loss", "forgetting_loss"):
        c = check["targets"][t]
        assert c["observed"] == pytest.approx(float(at[t].iloc[0]))
        lo, hi = c["predicted"]["lo"], c["predicted"]["hi"]
        assert c["inside"] == (lo <= c["observed"] <= hi)
    # the words say it too; running the same plan again finds the run finished
    rc, out, err = _plan(capsys, *args, "--verify", str(planned))
    assert rc == 0 and "already finished" in err
    assert f"verify: planned run {run.id}" in out and "the pilot took" in out
    assert "inside" in out or "OUTSIDE" in out


def pilot_config(store):
    from forgetscale.store import open_store

    with open_store(store, create=False) as st:
        return st.list_runs()[0].config


@pytest.mark.parametrize(
    "where, needle",
    [
        ("pilot", "is the pilot's store"),
        ("folder", "is a folder"),
        ("text", "is not a SQLite results store"),
        ("check", "--check is for one run"),
    ],
)
def test_verify_refuses_a_bad_store_before_any_work(real_pilot, where, needle, capsys, tmp_path):
    from helpers import one_line_error

    target = {"pilot": real_pilot, "folder": tmp_path, "text": tmp_path / "notes.txt"}.get(
        where, tmp_path / "planned.db")  # fmt: skip
    if where == "text":
        target.write_text("my notes\n")
    extra = ["--check", str(real_pilot)] if where == "check" else []
    one_line_error(capsys, ["plan", "--from", str(real_pilot), "--budget", "forgetting_loss<=+1",
                            "--ranks", "2", "--steps", "4", "--verify", str(target), *extra],
                   needle, command="plan")  # fmt: skip
    if where == "text":
        assert target.read_text() == "my notes\n"
    assert not (tmp_path / "planned.db").exists()


def test_a_check_folder_without_a_store_names_check_not_from(pilot, capsys, tmp_path):
    from helpers import one_line_error

    _, fits = pilot
    line = one_line_error(capsys, ["plan", "--fit", *fits, "--budget", "forgetting_loss<=2.4",
                                   "--params", "1e6", "--steps", "50", "--check", str(tmp_path)],
                          "a folder, but no study results store", command="plan")  # fmt: skip
    assert line.startswith(f"forgetscale plan: error: --check {tmp_path}:"), line


@pytest.mark.parametrize("flag", [["--emit", "forgetscale"], ["--verify", "planned.db"]])
def test_emit_and_verify_refuse_fractional_steps(pilot, flag, capsys, tmp_path, monkeypatch):
    """`--steps 50.5 --emit forgetscale` planned N = 50.5 but emitted max_steps: 51; the run
    it names is not the one planned: refused in one line, nothing written."""
    from helpers import one_line_error

    monkeypatch.chdir(tmp_path)
    store, _ = pilot
    one_line_error(capsys, ["plan", "--from", str(store), "--budget", "forgetting_loss<=2.4",
                            "--ranks", "2", "--steps", "50", "50.5", *flag],
                   "--steps 50.5 is not a whole number", command="plan")  # fmt: skip
    assert list(tmp_path.iterdir()) == []
