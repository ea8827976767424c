"""The learning–forgetting frontier in the study report: arms at matched L_ft."""

from __future__ import annotations

import json

import numpy as np
import pytest

from forgetscale.store import open_store
from forgetscale.study.frontier import _at_level, arm_of

STEPS = (0, 2, 4, 8, 16, 32, 64)
# plain LoRA, full fine-tuning and IA3 share one frontier L_f = 1 + 0.4 (4 - L_ft); replay
# forgets half as much per unit of L_ft and learns slower; the KL arm lies on a frontier 0.3
# as steep
ARMS = {
    "plain": dict(method="lora", rank=4, cfg={}, slope=0.4, speed=1.0, seeds=2),
    "replay": dict(method="lora", rank=4, cfg={"replay_fraction": 0.05, "replay_data": "r"},
                   slope=0.2, speed=0.7, seeds=2),
    "kl": dict(method="lora", rank=4, cfg={"kl_weight": 0.5, "kl_data": "task"}, slope=0.3,
               speed=0.9, seeds=2),
    "full": dict(method="full", rank=None, cfg={}, slope=0.4, speed=1.6, seeds=1),
}  # fmt: skip


def finetune_loss(n: float, speed: float) -> float:
    return 1.5 + 2.5 * (1 + speed * n) ** -0.4


def make_frontier_store(path, noise: float = 0.002) -> None:
    rng = np.random.default_rng(0)
    with open_store(path) as st:
        for name, arm in ARMS.items():
            for seed in range(arm["seeds"]):
                run_id = f"{name}-{seed}"
                cfg = {"model": "tiny", "task_data": "t", "forgetting_data": "pydoc",
                       "method": arm["method"], "rank": arm["rank"], "seed": seed,
                       "max_steps": max(STEPS), **arm["cfg"]}  # fmt: skip
                p = 120_000 * (arm["rank"] or 100)
                st.start_run(run_id, cfg, method=arm["method"], rank=arm["rank"],
                             params_trained=p, versions={"forgetscale": "test"})  # fmt: skip
                for n in STEPS:
                    ft = finetune_loss(n, arm["speed"])
                    lf = (
                        1.0
                        + arm["slope"] * (4.0 - ft)
                        + (noise * rng.standard_normal() if n else 0)
                    )
                    st.add_measurement(
                        run_id, n,
                        {"finetune_loss": ft, "forgetting_loss": lf,
                         "forgetting_loss_soft": lf + 0.1, "kl": max(lf - 1.0, 0.0),
                         "base_entropy": 1.1, "agreement": 0.9,
                         "wall_s": 2.0 * n * (1.2 if name == "kl" else 1.0)},
                    )  # fmt: skip
                st.set_status(run_id, "finished")


def test_values_at_a_level_are_interpolated_along_the_trajectory_never_extrapolated():
    traj = [{"step": 0, "finetune_loss": 4.0, "forgetting_loss": 1.0, "kl": 0.0, "wall_s": 0.0},
            {"step": 4, "finetune_loss": 3.0, "forgetting_loss": 1.4, "kl": 0.2, "wall_s": 8.0},
            {"step": 8, "finetune_loss": 2.5, "forgetting_loss": 1.5, "kl": 0.3, "wall_s": 16.0}]  # fmt: skip
    at = _at_level(traj, 2.75)
    assert at == pytest.approx({"forgetting_loss": 1.45, "kl": 0.25, "step": 6, "wall_s": 12})
    assert _at_level(traj, 4.0)["forgetting_loss"] == 1.0
    assert _at_level(traj, 2.4) is None  # below the run's lowest L_ft: not extrapolated
    assert _at_level(traj, 4.1) is None


def test_arms_are_method_rank_replay_and_kl_without_the_seed():
    run = {"method": "lora", "rank": 8, "config": {"replay_fraction": 0.25, "seed": 3}}
    assert arm_of(run)[0] == "lora r=8 + replay 25%"
    run = {"method": "full", "rank": None, "config": {"kl_weight": 0.1, "kl_data": "replay"}}
    label, desc = arm_of(run)
    assert label == "full + KL 0.1 on replay" and not desc["plain"]
    assert arm_of({"method": "lora", "rank": 4, "config": {}})[1]["plain"]


@pytest.fixture(scope="module")
def frontier_report(tmp_path_factory):
    from forgetscale.study.analysis import analyse

    path = tmp_path_factory.mktemp("frontier") / "results.db"
    make_frontier_store(path)
    return analyse(path, {"min_step": 2, "bootstrap": 0, "holdout_runs": 0, "holdout_steps": 0})


def test_arms_are_compared_with_plain_lora_at_matched_finetune_loss(frontier_report):
    f = frontier_report.frontier
    assert f["plain"] == "lora r=4"
    rows = {r["arm"]: r for r in f["rows"]}
    assert set(rows) == {"lora r=4 + replay 5%", "lora r=4 + KL 0.5 on task", "full"}
    replay = rows["lora r=4 + replay 5%"]
    # the matched level: the lowest L_ft both arms' runs reach = the slower replay arm's last
    level = finetune_loss(64, 0.7)
    assert replay["matched_finetune_loss"] == pytest.approx(level)
    true_saved = (0.4 - 0.2) * (4.0 - level)
    assert replay["forgetting_saved"] == pytest.approx(true_saved, abs=0.01)
    lo, hi = replay["forgetting_saved_interval"]
    assert lo <= true_saved <= hi and lo > 0
    assert replay["verdict"] == "below"
    assert replay["forgetting_saved_share"] == pytest.approx(0.5, abs=0.03)
    # what it cost: a higher L_ft at the last step, in about the same wall time
    assert replay["matched_step"] == 64
    assert replay["finetune_cost"] == pytest.approx(
        finetune_loss(64, 0.7) - finetune_loss(64, 1.0), abs=1e-9
    )
    assert replay["finetune_cost_interval"] is None or replay["finetune_cost_interval"][0] > 0
    assert replay["wall_ratio"] == pytest.approx(1.0)
    assert rows["lora r=4 + KL 0.5 on task"]["wall_ratio"] == pytest.approx(1.2)
    # full fine-tuning, one seed, on plain LoRA's frontier (within the seed spread)
    assert rows["full"]["forgetting_saved_interval"] is None
    assert rows["full"]["verdict"] == "on the frontier"
    assert "lie on one frontier" in f["sentence"] and "replay 5%" in f["sentence"]


def test_the_report_shows_the_frontier_figure_and_table(frontier_report, tmp_path):
    from forgetscale.study.report import write_report

    html, js = write_report(frontier_report, tmp_path)
    text = html.read_text()
    assert 'id="frontier"' in text and 'id="fig-frontier"' in text
    assert "lora r=4 + replay 5%" in text and "forgetting saved" in text
    data = json.loads(js.read_text())
    assert data["frontier"]["rows"] and "frontier" in data["figures"]


def test_a_study_of_one_arm_has_no_frontier(tmp_path):
    from study_data import make_store

    from forgetscale.study.analysis import analyse

    make_store(tmp_path / "one.db", ranks=(4,), seeds={4: 2})
    report = analyse(tmp_path / "one.db", {"min_step": 1, "bootstrap": 0, "holdout_runs": 0,
                                           "holdout_steps": 0})  # fmt: skip
    assert report.frontier is None
