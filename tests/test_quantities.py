"""One vocabulary: every measured quantity is declared once (forgetscale/quantities.py) and
the store, the laws, the study and the figures derive from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from forgetscale import quantities
from forgetscale.quantities import quantity

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_everything_derives_from_the_declarations():
    from forgetscale.figures import AXIS, SHORT
    from forgetscale.laws.registry import TARGETS
    from forgetscale.laws.table import DERIVED_TARGETS
    from forgetscale.store import FORGETTING_COLUMNS, LATER_COLUMNS, METRIC_COLUMNS
    from forgetscale.study.config import METRICS, SYMBOLS, TARGET_ORDER

    stored = [q.name for q in quantities.QUANTITIES if q.sql]
    assert list(METRIC_COLUMNS) == stored
    assert set(LATER_COLUMNS) == {"task_tokens_seen", "replay_tokens_seen", "train_kl"}
    assert set(FORGETTING_COLUMNS) == {"forgetting_loss", "forgetting_loss_soft", "kl",
                                       "base_entropy", "agreement"}  # fmt: skip
    targets = [q.name for q in quantities.QUANTITIES if q.target]
    assert list(TARGETS) == targets and set(TARGET_ORDER) == set(targets) == set(SYMBOLS)
    assert set(METRICS) == set(targets)
    assert DERIVED_TARGETS["disagreement"][0] == "agreement"
    assert float(DERIVED_TARGETS["disagreement"][1](0.25)) == 0.75
    for name in [*targets, "step", "params_trained"]:  # every figure's axes have labels
        assert AXIS[name] and SHORT[name]
    # the rise/fall rule of the power laws is the quantity's
    assert quantity("forgetting_loss").rises and not quantity("finetune_loss").rises
    assert TARGETS["kl"].rises and TARGETS["kl"].symbol == "KL"
    assert quantity("forgetting_loss").axis_label() == "hard forgetting loss $L_f$ (nats/token)"
    assert quantity("disagreement").axis_label() == "1 - agreement (share of positions)"
    # the run settings read from each run's config: export columns beside P, law variables,
    # one value per run, defaulting as the config's keys added later do
    from forgetscale.config.train import LATER_KEYS
    from forgetscale.laws.registry import VARIABLE_COLUMNS
    from forgetscale.laws.table import PER_RUN_COLUMNS
    from forgetscale.store import EXPORT_COLUMNS

    settings = [q.name for q in quantities.run_settings()]
    assert settings == ["replay_fraction", "kl_weight"]
    for q in quantities.run_settings():
        assert q.config_default == LATER_KEYS[q.name] and q.variable
        assert q.name in VARIABLE_COLUMNS and q.name in PER_RUN_COLUMNS and AXIS[q.name]
    assert EXPORT_COLUMNS[:7] == ("run_id", "method", "rank", "params_trained", *settings, "step")


# one quantity added in one place (a task-data KL, as a mitigation study would measure),
# before any other module is imported: the store keeps it, a law fits it, the study and
# the figures name it
ADD_ONE = """
import dataclasses, json, sys
from forgetscale import quantities

quantities.QUANTITIES = quantities.QUANTITIES + (
    quantities.Quantity(
        "task_kl", "KL_task", "KL on task data", "task KL", "KL(base || model) on task data",
        "nats/token", "mean KL(base || model) on held-out task data", "REAL", rises=True,
        target=True,
    ),
)

import numpy as np

from forgetscale.commands.fit import add_arguments
from forgetscale.figures import AXIS, SHORT
from forgetscale.laws import fit_law
from forgetscale.laws.registry import TARGETS
from forgetscale.laws.synthetic import synthetic_runs
from forgetscale.store import EXPORT_COLUMNS, ResultsStore, read_measurements
from forgetscale.study.config import METRICS, SYMBOLS, TARGET_ORDER, AnalysisConfig

db = sys.argv[1]
with ResultsStore(db) as store:
    store.start_run("r1", {"model": "m"}, method="lora", rank=2, params_trained=10)
    store.add_measurement("r1", 4, {"forgetting_loss": 2.5, "task_kl": 0.125})
df = read_measurements(db)
import argparse

parser = argparse.ArgumentParser()
add_arguments(parser)
choices = next(a.choices for a in parser._actions if a.dest == "target")
runs = synthetic_runs("multiplicative", {"E": 3.0, "A": 5.0, "alpha": 0.3, "beta": 0.4},
                      targets=["forgetting_loss"], noise=0.0)
runs["task_kl"] = runs["forgetting_loss"] / 10
fit = fit_law(runs, "multiplicative", "task_kl", n_boot=0)
config = AnalysisConfig(laws={"task_kl": ["multiplicative"]})
print(json.dumps({
    "in_export": "task_kl" in EXPORT_COLUMNS,
    "stored": float(df["task_kl"].iloc[0]),
    "target": TARGETS["task_kl"].symbol,
    "choice": "task_kl" in choices,
    "fit_E": fit.params["E"],
    "formula": fit.law_spec.formula["task_kl"],
    "study": ["task_kl" in TARGET_ORDER, SYMBOLS["task_kl"], "task_kl" in METRICS,
              list(config.laws)],
    "figures": [AXIS["task_kl"], SHORT["task_kl"]],
}))
"""


def test_a_new_quantity_is_one_declaration(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(ADD_ONE), str(tmp_path / "s.db")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["in_export"] and got["stored"] == 0.125 and got["choice"]
    assert got["target"] == "KL_task" and got["formula"].startswith("KL_task = E - A")
    assert abs(got["fit_E"] - 0.3) < 1e-2  # rises: E - A P^-alpha N^-beta, E = 3.0 / 10
    assert got["study"] == [True, "KL on task data", True, ["task_kl"]]
    assert got["figures"] == ["KL(base || model) on task data (nats/token)", "task KL"]
