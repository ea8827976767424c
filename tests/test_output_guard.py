"""An output replaces only a file its command wrote before: never an input, a store or its
WAL, or a user's file of the same name (every command's output path goes through
:func:`forgetscale.outputs.check_output`)."""

from __future__ import annotations

import json
import sqlite3

import pytest
from helpers import one_line_error

from forgetscale.cli import main
from forgetscale.laws.synthetic import synthetic_runs
from forgetscale.output_kinds import OUTPUT_KINDS
from forgetscale.store import open_store


def snapshot(*paths):
    return {p: p.read_bytes() for p in paths}


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "results.db"
    with open_store(path) as s:
        s.start_run("run-a", {"model": "m"}, method="lora", rank=4, params_trained=1000)
        for step in (0, 2, 4):
            s.add_measurement(
                "run-a", step, {"finetune_loss": 3.0 - step / 10, "forgetting_loss": 2.0 + step}
            )
        s.set_status("run-a", "finished")
    return path


@pytest.fixture
def user_files(tmp_path):
    """Files a user keeps beside the store: a config, a corpus, weights of an adapter."""
    (tmp_path / "lora").mkdir()
    files = {
        "config": tmp_path / "base.yaml",
        "corpus": tmp_path / "task.jsonl",
        "reference": tmp_path / "ref.safetensors",
        "adapter": tmp_path / "lora" / "adapter_model.safetensors",
        "report": tmp_path / "report.html",
    }
    files["config"].write_text("model: tiny\nmax_steps: 4\n")
    files["corpus"].write_text('{"text": "a"}\n')
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    for name in ("reference", "adapter"):
        files[name].write_bytes(len(header).to_bytes(8, "little") + header)
    files["report"].write_text("<html><title>my notes</title></html>")
    return files


@pytest.mark.parametrize("name", ["config", "corpus", "reference", "adapter", "report"])
def test_export_never_replaces_a_user_file(store, user_files, capsys, name):
    target = user_files[name]
    before = snapshot(target, store)
    one_line_error(
        capsys, ["export", "--from", str(store), "--out", str(target), "--format", "csv"],
        "refusing to replace",
    )  # fmt: skip
    assert snapshot(target, store) == before


def test_export_replaces_its_own_table_and_refuses_a_mismatched_suffix(store, tmp_path, capsys):
    out = tmp_path / "m.csv"
    for _ in range(2):  # the second export replaces the first
        assert main(["export", "--from", str(store), "--out", str(out)]) == 0
    parquet = tmp_path / "m.parquet"
    for _ in range(2):
        assert main(["export", "--from", str(store), "--out", str(parquet)]) == 0
    capsys.readouterr()
    one_line_error(
        capsys, ["export", "--from", str(store), "--format", "csv", "--out", str(tmp_path / "y.parquet")],
        "the name says parquet",
    )  # fmt: skip
    assert not (tmp_path / "y.parquet").exists()


def test_export_never_writes_over_a_wal_that_holds_measurements(tmp_path, capsys):
    """A killed writer leaves rows only in the WAL: neither s.db-wal nor s.db-shm is an output."""
    db = tmp_path / "s.db"
    with open_store(db) as s:
        s.start_run("run-a", {"model": "m"}, method="lora", rank=4, params_trained=1)
    keep = sqlite3.connect(db)  # holds the WAL open, as a writer killed mid-run would leave it
    keep.execute("PRAGMA wal_autocheckpoint=0")
    keep.execute("UPDATE runs SET status='failed'")
    keep.commit()
    wal = tmp_path / "s.db-wal"
    assert wal.stat().st_size > 0
    before = snapshot(wal, db)
    for target in (wal, tmp_path / "s.db-shm", tmp_path / "s.db-journal"):
        one_line_error(
            capsys, ["export", "--from", str(db), "--out", str(target), "--format", "csv"],
            "replace",
        )  # fmt: skip
    assert snapshot(wal, db) == before
    keep.close()


def test_reference_and_evaluate_never_replace_their_inputs(user_files, tmp_path, capsys):
    cfg = user_files["config"]
    before = snapshot(cfg, user_files["corpus"])
    one_line_error(
        capsys, ["reference", "--model", "tiny", "--data", str(user_files["corpus"]), "--out", str(cfg)],
        "refusing to replace",
    )  # fmt: skip
    one_line_error(
        capsys, ["reference", "--model", "tiny", "--data", str(user_files["corpus"]),
                 "--out", str(user_files["corpus"])],
        "is the input given to --data",
    )  # fmt: skip
    one_line_error(
        capsys, ["evaluate", "--model", "tiny", "--suite", "probe", "--out", str(cfg)],
        "refusing to replace",
    )  # fmt: skip
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    before[questions] = questions.read_bytes()
    one_line_error(
        capsys, ["evaluate", "--model", "tiny", "--suite", f"mc:{questions}", "--generations-out",
                 str(questions)],
        f"is the input given to --suite mc:{questions}",
    )  # fmt: skip
    same = tmp_path / "same.json"
    one_line_error(
        capsys, ["evaluate", "--model", "tiny", "--suite", "probe", "--out", str(same),
                 "--generations-out", str(same)],
        "--out and --generations-out are the same file",
    )  # fmt: skip
    assert snapshot(*before) == before and not same.exists()


def test_evaluate_never_writes_its_results_over_its_own_questions(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n')
    before = snapshot(questions)
    one_line_error(
        capsys, ["evaluate", "--model", "tiny", "--suite", f"mc:{questions}", "--out", str(questions)],
        f"is the input given to --suite mc:{questions}",
    )  # fmt: skip
    assert snapshot(questions) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def test_reference_never_replaces_a_fit(tmp_path, capsys):
    corpus = tmp_path / "general.jsonl"
    corpus.write_text('{"text": "a"}\n')
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"format": "forgetscale-fit/1", "law": "additive"}))
    before = snapshot(fit, corpus)
    one_line_error(
        capsys, ["reference", "--model", "tiny", "--data", str(corpus), "--out", str(fit)],
        "refusing to replace",
    )  # fmt: skip
    assert snapshot(fit, corpus) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.json", "general.jsonl"]


def test_evaluate_cache_dir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for cache in (blocker, blocker / "sub"):
        one_line_error(
            capsys, ["evaluate", "--model", "tiny", "--suite", "probe", "--cache-dir", str(cache)],
            "--cache-dir",
        )  # fmt: skip
    assert blocker.read_text() == "x"


@pytest.fixture
def runs_csv(tmp_path):
    path = tmp_path / "runs.csv"
    synthetic_runs("kalajdzievski:openorca", noise=0.01, seed=0, include_base=True).to_csv(
        path, index=False
    )
    return path


def test_fit_plots_replace_only_their_own_figures(runs_csv, tmp_path, capsys):
    figs = tmp_path / "figs"
    argv = ["fit", "--from", str(runs_csv), "--law", "additive", "--bootstrap", "0"]
    assert main([*argv, "--plots", str(figs)]) == 0
    assert main([*argv, "--plots", str(figs)]) == 0  # its own figures: replaced
    capsys.readouterr()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "residuals.csv").write_text("my,own\n1,2\n")
    (mine / "fit.json").write_text('{"mine": 1}')
    before = snapshot(mine / "residuals.csv", mine / "fit.json")
    one_line_error(capsys, [*argv, "--plots", str(mine)], "residuals.csv exists and is not")
    one_line_error(capsys, [*argv, "--save", str(mine / "fit.json")], "is not a forgetscale fit")
    assert snapshot(*before) == before
    assert sorted(p.name for p in mine.iterdir()) == ["fit.json", "residuals.csv"]


@pytest.mark.parametrize(
    "name, text",
    [("report.json", '{"my": "notes"}'), ("report.html", "<html><title>my notes</title></html>")],
)
def test_study_never_replaces_a_users_report(tmp_path, capsys, name, text):
    out = tmp_path / "study"
    out.mkdir()
    (out / name).write_text(text)
    before = snapshot(out / name)
    one_line_error(
        capsys, ["study", "quick", "--out", str(out), "--analyse-only"], f"{name} exists"
    )
    assert snapshot(out / name) == before
    assert sorted(p.name for p in out.iterdir()) == [name]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    one_line_error(capsys, ["study", "quick", "--out", str(blocker), "--dry-run"], str(blocker))
    assert blocker.read_text() == "x"


def test_each_kind_recognises_its_own_files_only(tmp_path):
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("model: tiny\n")
    empty_json = tmp_path / "x.json"
    empty_json.write_text("{}")
    for kind, (_what, recognised) in OUTPUT_KINDS.items():
        assert not recognised(foreign), kind
        assert not recognised(empty_json), kind
        assert not recognised(tmp_path), kind  # a folder is nobody's output
    fit = tmp_path / "fit.json"
    fit.write_text(json.dumps({"format": "forgetscale-fit/1"}))
    assert OUTPUT_KINDS["fit"][1](fit) and not OUTPUT_KINDS["report-json"][1](fit)
