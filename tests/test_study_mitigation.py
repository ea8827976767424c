"""The built-in mitigation study, scaled down to a tiny model: every arm runs, and the report
compares them on the frontier and fits the replay law."""

from __future__ import annotations

import json

import pytest
import yaml

from forgetscale.cli import main
from forgetscale.study.runner import STUDIES_DIR


@pytest.mark.slow
def test_the_mitigation_study_scaled_down_runs_every_arm_and_reports_them(workdir, capsys):
    from pydoc_data.topics import topics

    with (workdir / "replay.jsonl").open("w") as fh:  # pydoc the evaluation does not read
        for key in sorted(topics)[60:80]:
            fh.write(json.dumps({"text": topics[key][:1500]}) + "\n")
    study = yaml.safe_load((STUDIES_DIR / "mitigation.yaml").read_text())
    zipped = study["zip"]
    assert len(zipped["method"]) == 9 and set(zipped["replay_fraction"]) == {0, 0.01, 0.05, 0.25}
    assert sorted(set(zipped["kl_weight"])) == [0, 0.5, 2.0] and "full" in zipped["method"]
    # the same arms on the tiny model: its files, short runs, a learning rate that moves it
    study["base"] = {**study["base"], "model": "./tiny-model", "task_data": "./task.jsonl",
                     "forgetting_data": "./general.jsonl", "replay_data": "./replay.jsonl",
                     "rank": 4, "block_size": 32, "batch_size": 8, "max_steps": 6,
                     "eval_steps": [0, 1, 2, 4, 6], "forgetting_max_tokens": 1024,
                     "heldout_max_tokens": 512, "progress": False}  # fmt: skip
    zipped["learning_rate"] = [5e-3 if m == "lora" else 1e-3 for m in zipped["method"]]
    study["store"] = "./mitigation/results.db"
    study["analysis"] = {**study["analysis"], "min_step": 1, "bootstrap": 8}
    (workdir / "mitigation.yaml").write_text(yaml.safe_dump(study))
    assert main(["study", "mitigation.yaml", "--no-progress"]) == 0
    screen = capsys.readouterr().out
    report = json.loads((workdir / "mitigation" / "report.json").read_text())
    assert len(report["runs"]) == 9 and all(r["status"] == "finished" for r in report["runs"])
    # each run is named by its arm (the seed only where the arm has several), on the screen too
    assert sorted(r["label"] for r in report["runs"]) == sorted([
        "lora r=4 seed 0", "lora r=4 seed 1", "lora r=4 + replay 1% seed 0",
        "lora r=4 + replay 1% seed 1", "lora r=4 + replay 5%", "lora r=4 + replay 25%",
        "lora r=4 + KL 0.5 on task", "lora r=4 + KL 2 on task", "full"])  # fmt: skip
    assert "lora r=4 + KL 2 on task " in screen
    # the checks that apply: no law in P and N from two P (not measurable), the replay law
    checks = {c["name"].split(" with")[0].split(",")[0]: c for c in report["checks"]}
    pn = checks["a law for L_f in P and N"]
    assert pn["passed"] is None and "2 distinct P" in pn["detail"]
    replay = checks["a law of L_f in the replay fraction p"]
    law_ok = report["replay_law"]["identified"] and all(
        h["ratio"] <= 2 for h in report["replay_law"]["held_out"]
    )
    assert replay["passed"] == bool(law_ok) and "held-out strength" in replay["detail"]
    assert "[n/a    ] a law for L_f in P and N" in screen
    f = report["frontier"]
    assert f["plain"] == "lora r=4"
    assert {r["arm"] for r in f["rows"]} == {
        "lora r=4 + replay 1%", "lora r=4 + replay 5%", "lora r=4 + replay 25%",
        "lora r=4 + KL 0.5 on task", "lora r=4 + KL 2 on task", "full",
    }  # fmt: skip
    for row in f["rows"]:
        assert row["forgetting_saved"] is not None and row["matched_step"] == 6
    two_seeds = next(r for r in f["rows"] if r["arm"] == "lora r=4 + replay 1%")
    assert two_seeds["seeds"] == 2 and two_seeds["forgetting_saved_interval"] is not None
    law = report["replay_law"]
    assert law["law"] == "replay_power" and law["fractions"] == [0.0, 0.01, 0.05, 0.25]
    assert [h["replay_fraction"] for h in law["held_out"]] == [0.01, 0.05, 0.25]
    html = (workdir / "mitigation" / "report.html").read_text()
    assert 'id="fig-frontier"' in html and 'id="replaylaw"' in html
    assert "The mitigation study" in html
