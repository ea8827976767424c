"""`forgetscale study` end to end on a tiny model: a study file (a sweep plus analysis:) runs,
writes report.html and report.json, re-runs only re-analyse, and bad study files are one line."""

from __future__ import annotations

import json

import pytest

from forgetscale.cli import main
from forgetscale.store import read_measurements

STUDY = """\
base: ./run.yaml
forgetting_max_tokens: 1024
max_steps: 6
eval_steps: [0, 1, 2, 3, 4, 5, 6]
store: ./study/results.db
grid:
  rank: [1, 2, 4, 8]
analysis:
  min_step: 1
  holdout_runs: 1
  holdout_steps: 0.3
  bootstrap: 8
  laws: {forgetting_loss: [linear, multiplicative], finetune_loss: [multiplicative]}
"""


def test_a_study_runs_writes_its_report_and_a_rerun_only_reanalyses(workdir, capsys):
    (workdir / "study.yaml").write_text(STUDY)
    assert main(["study", "study.yaml", "--no-progress"]) == 0
    out = capsys.readouterr().out
    html, data = workdir / "study" / "report.html", workdir / "study" / "report.json"
    assert f"report: {html}" in out and html.is_file() and data.is_file()
    report = json.loads(data.read_text())
    assert len(report["runs"]) == 4
    assert {"forgetting_loss", "finetune_loss"} <= set(report["laws"])
    assert report["study"]["command"].startswith("forgetscale study study.yaml")
    assert "<img" in html.read_text()
    n = len(read_measurements(workdir / "study" / "results.db"))
    assert n == 4 * 7
    wall = report["study"]["runs_wall_s"]
    assert wall > 0
    # a finished study only re-analyses; --analyse-only skips the runs explicitly
    assert main(["study", "study.yaml", "--no-progress"]) == 0
    assert "all 4 runs are already finished" in capsys.readouterr().out
    wall = json.loads(data.read_text())["study"]["runs_wall_s"]  # + the check that all finished
    assert main(["study", "study.yaml", "--analyse-only"]) == 0
    assert len(read_measurements(workdir / "study" / "results.db")) == n
    # the re-analysis keeps what the runs took, and says how to reproduce the whole study
    again = json.loads(data.read_text())["study"]
    assert again["runs_wall_s"] == wall
    assert again["command"] == "forgetscale study study.yaml"


def test_out_moves_the_study_and_notes_reach_the_report(workdir, capsys):
    text = STUDY.replace("[1, 2, 4, 8]", "[1, 2]") + 'notes: "Two ranks: a smoke test."\n'
    (workdir / "study.yaml").write_text(text)
    assert main(["study", "study.yaml", "--out", "elsewhere", "--no-progress"]) == 0
    assert (workdir / "elsewhere" / "report.html").is_file()
    assert not (workdir / "study").exists()
    report = json.loads((workdir / "elsewhere" / "report.json").read_text())
    assert report["study"]["notes"] == ["Two ranks: a smoke test."]
    assert "Two ranks: a smoke test." in (workdir / "elsewhere" / "report.html").read_text()
    assert set(report["study"]["run_time_s"]) >= {"steps", "eval_forgetting", "eval_finetune"}
    # seconds only: each run's per-update costs (status.json's timings) are not summed
    assert all(isinstance(v, float) for v in report["study"]["run_time_s"].values())
    out = capsys.readouterr().out
    assert "checks:" in out and "L_f@0" in out  # the one-screen summary


@pytest.mark.parametrize(
    "text, message",
    [
        (STUDY.replace("  min_step: 1\n", "  min_stp: 1\n"), "analysis.*min_stp"),
        (STUDY.replace("  bootstrap: 8\n", "  bootstrap: -1\n"), "bootstrap"),
        (STUDY + "analyses: {}\n", "analyses: unknown key"),
        ("base: ./run.yaml\nanalysis: {}\n", "no grid: or zip: block"),
        (STUDY + "notes: {a: 1}\n", "notes: a sentence or a list of sentences"),
    ],
)
def test_bad_study_files_are_one_line(workdir, capsys, text, message):
    import re

    (workdir / "study.yaml").write_text(text)
    assert main(["study", "study.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(message, err[0]), err
    assert not (workdir / "study").exists()


@pytest.mark.parametrize(
    "block, message",
    [
        ("{bootstrap: 1}", r"analysis\.bootstrap must be 0 \(no intervals\) or at least 2"),
        ("{bootstrap: 1000000000}", r"analysis\.bootstrap must be at most 100000, got 1000000000"),
        ("{bootstrap: 2.5}", r"analysis\.bootstrap must be an integer"),
        ("{bootstrap: true}", r"analysis\.bootstrap must be an integer"),
        ("{min_step: abc}", r"analysis\.min_step must be an integer"),
        ("{min_step: 100}", r"analysis\.min_step: 100 is past every run's last step \(6\)"),
        ("{holdout_runs: 4}", r"analysis\.holdout_runs: .* none of the study's 4 runs"),
        ("{holdout_steps: 1.5}", r"analysis\.holdout_steps must be less than 1"),
        ("{seed: -1}", r"analysis\.seed must be at least 0"),
        ("{predict_ranks: 4}", r"analysis\.predict_ranks must be a list"),
        ("{predict_ranks: [0]}", r"analysis\.predict_ranks must be positive"),
        ("{laws: {kl: [nope]}}", r"analysis\.laws\.kl: unknown law 'nope'"),
        ("{laws: {kl: [3]}}", r"analysis\.laws\.kl: law names are strings"),
        ("{laws: {bogus: [linear]}}", r"analysis\.laws: unknown target 'bogus'"),
        ("{laws: {finetune_loss: [linear]}}", r"law 'linear' predicts forgetting_loss"),
        ("{bootstrapp: 8}", r"analysis: unknown key\(s\) bootstrapp; .*did you mean bootstrap"),
        ("[1]", r"analysis: a mapping"),
    ],
)
def test_dry_run_checks_the_analysis_block_before_any_run(workdir, capsys, block, message):
    """A bad analysis: block is refused when the study file is read (--dry-run included),
    not after the sweep has trained, and never by a command-line flag the user did not set."""
    import re

    text = STUDY[: STUDY.index("analysis:")] + f"analysis: {block}\n"
    (workdir / "study.yaml").write_text(text)
    for argv in (["study", "study.yaml", "--dry-run"], ["study", "study.yaml", "--no-progress"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and re.search(message, err[0]), err
        assert "--bootstrap" not in err[0]
        assert not (workdir / "study").exists()


def test_a_missing_study_file_names_the_built_in_studies(workdir, capsys):
    assert main(["study", "nope.yaml"]) == 2
    assert "built-in study: default, quick, mitigation" in capsys.readouterr().err


def test_a_folder_given_as_the_study_file_is_called_a_folder(tmp_path, capsys):
    from helpers import one_line_error

    one_line_error(capsys, ["study", str(tmp_path), "--dry-run"], "is a folder; give the study",
                   command="study")  # fmt: skip
    assert list(tmp_path.iterdir()) == []


def test_the_built_in_studies_are_valid(workdir, capsys):
    for name in ("default", "quick", "mitigation"):
        assert main(["study", name, "--dry-run", "--out", "x"]) == 0
    out = capsys.readouterr().out
    assert "sweep default: 8 runs" in out and "sweep quick: 4 runs" in out
    assert "sweep mitigation: 9 runs" in out
