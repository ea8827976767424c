"""Run folders for the executor tests (Ray, Slurm), written as the sweep driver writes them.

Each folder holds ``spec.json`` ({"run_id", "config"}) for a tiny run of the minimal config
(configs/minimal.yaml) whose store, checkpoints and adapter live inside the folder and whose
reference cache is one folder shared by all runs, as in a sweep. Imported by the test modules
(pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from forgetscale.config import build_config
from forgetscale.sweep.executors import Finished, Resources, RunTask

ROOT = Path(__file__).resolve().parent.parent
MINIMAL = yaml.safe_load((ROOT / "configs" / "minimal.yaml").read_text())
SRC = str(ROOT / "src")
# what a resumed or remote run must reproduce exactly (wall times and hosts differ)
COMPARED = [
    "step",
    "finetune_loss",
    "forgetting_loss",
    "forgetting_loss_soft",
    "kl",
    "agreement",
    "train_loss",
    "tokens_seen",
]


@dataclass(frozen=True)
class Inputs:
    model: Path
    task: Path
    general: Path
    references: Path


def make_inputs(root: Path, model: Path, general: Path) -> Inputs:
    """The tiny model, task and general corpora, and one reference folder, shared by all runs
    (``model``, ``general``: conftest's ``tiny_model_dir`` and ``general_jsonl``)."""
    from pydoc_data.topics import topics

    task = root / "task.jsonl"
    with task.open("w") as fh:
        for key in sorted(topics)[:30]:
            fh.write(json.dumps({"text": topics[key][:1200]}) + "\n")
    return Inputs(model, task, general, root / "references")


def make_run(root: Path, inputs: Inputs, label: str, **overrides) -> RunTask:
    """A run folder ``root/label`` with its spec.json, and the RunTask naming it."""
    run_dir = root / label
    run_dir.mkdir(parents=True)
    values = {
        **MINIMAL,
        "model": str(inputs.model),
        "task_data": str(inputs.task),
        "forgetting_data": str(inputs.general),
        "forgetting_max_tokens": 1024,
        "progress": False,
        "store": str(run_dir / "results.db"),
        "checkpoint_dir": str(run_dir / "checkpoints"),
        "output_dir": str(run_dir / "adapter"),
        "reference_dir": str(inputs.references),
        **overrides,
    }
    config = build_config(values)
    spec = {"run_id": config.run_id, "config": config.to_dict()}
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    return RunTask(config.run_id, run_dir, label, Resources(cpus=1))


def write_sweep_file(root: Path, inputs: Inputs) -> Path:
    """The issue's minimal sweep file (2 ranks x 2 seeds over the minimal config) in ``root``."""
    base = {**MINIMAL, "model": str(inputs.model), "task_data": str(inputs.task),
            "forgetting_data": str(inputs.general), "progress": False}  # fmt: skip
    (root / "run.yaml").write_text(yaml.safe_dump(base))
    path = root / "sweep.yaml"
    path.write_text(
        "base: ./run.yaml\nstore: ./sweep/results.db\ngrid:\n  rank: [2, 4]\n  seed: [0, 1]\n"
    )
    return path


def copy_run(task: RunTask, root: Path, label: str | None = None) -> RunTask:
    """The same run (same config, same id) in a fresh folder under ``root``."""
    spec = json.loads((task.run_dir / "spec.json").read_text())
    label = label or task.label
    run_dir = root / label
    run_dir.mkdir(parents=True)
    config = spec["config"]
    config.update(
        store=str(run_dir / "results.db"),
        checkpoint_dir=str(run_dir / "checkpoints"),
        output_dir=str(run_dir / "adapter"),
    )
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=1))
    return RunTask(task.run_id, run_dir, label, task.resources)


def worker_env() -> dict[str, str]:
    """The environment of the tests' own subprocesses: this checkout's sources, one thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def status(task: RunTask) -> dict:
    return json.loads((task.run_dir / "status.json").read_text())


def measurements(task: RunTask):
    from forgetscale.store import read_measurements

    return read_measurements(task.run_dir / "results.db")


def max_difference(a: RunTask, b: RunTask) -> float:
    """Largest absolute difference between two runs' measurements (same steps required)."""
    ma, mb = measurements(a), measurements(b)
    assert ma.step.tolist() == mb.step.tolist(), (ma.step.tolist(), mb.step.tolist())
    assert ma.run_id.iloc[0] == mb.run_id.iloc[0]
    return float((ma[COMPARED].fillna(0) - mb[COMPARED].fillna(0)).abs().to_numpy().max())


def wait_all(executor, n: int, timeout: float) -> list[Finished]:
    """Call ``executor.wait`` until ``n`` runs finished (fails after ``timeout`` seconds)."""
    done: list[Finished] = []
    deadline = time.time() + timeout
    while len(done) < n:
        left = deadline - time.time()
        assert left > 0, f"only {len(done)} of {n} runs finished in {timeout}s"
        done += executor.wait(timeout=min(left, 5))
    return done


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def checkpoint_steps(task: RunTask) -> list[int]:
    ck = task.run_dir / "checkpoints"
    return sorted(int(p.name[5:]) for p in ck.glob("step-*")) if ck.is_dir() else []


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def config_of(task: RunTask):
    """The run's TrainConfig, from its spec.json."""
    from forgetscale.config import build_config

    return build_config(json.loads((task.run_dir / "spec.json").read_text())["config"])
