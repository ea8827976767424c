"""`forgetscale sweep` on local worker processes: the issue's minimal sweep file as it is, runs
shared with `forgetscale train`, failed and diverged runs, and a driver killed with SIGKILL
mid-sweep and started again (nothing lost, nothing twice)."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from forgetscale.cli import main
from forgetscale.store import read_measurements
from forgetscale.sweep.driver import dry_run
from forgetscale.sweep.folders import folder_busy
from forgetscale.sweep.spec import load_sweep
from forgetscale.training import train

MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()
MINIMAL_SWEEP = """\
base: ./run.yaml             # any train config; keys given here override it
store: ./sweep/results.db
grid:
  rank: [2, 4]
  seed: [0, 1]
"""
COLUMNS = ["step", "finetune_loss", "forgetting_loss", "forgetting_loss_soft", "kl", "agreement"]


@pytest.fixture
def workdir(tmp_path, monkeypatch, tiny_model_dir, task_jsonl, general_jsonl) -> Path:
    (tmp_path / "tiny-model").symlink_to(tiny_model_dir, target_is_directory=True)
    (tmp_path / "task.jsonl").write_text(task_jsonl.read_text())
    (tmp_path / "general.jsonl").write_text(general_jsonl.read_text())
    (tmp_path / "run.yaml").write_text(MINIMAL + "forgetting_max_tokens: 1024\n")
    (tmp_path / "sweep.yaml").write_text(MINIMAL_SWEEP)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _rows(store: Path, run_id: str):
    df = read_measurements(store)
    return df[df.run_id == run_id][COLUMNS].sort_values("step").reset_index(drop=True)


def _assert_same(a, b, tol=1e-6):
    assert list(a.step) == list(b.step)
    for col in COLUMNS[1:]:
        assert (a[col] - b[col]).abs().max() <= tol, col


def test_minimal_sweep_file_runs_as_is_and_is_shared_with_train(workdir, capsys):
    sweep = load_sweep("sweep.yaml")
    first, last = sweep.runs[0], sweep.runs[-1]
    store = workdir / "sweep" / "results.db"
    # a run done by `forgetscale train` into the sweep's store counts as done by the sweep
    assert main(["train", "run.yaml", "--rank=2", "--seed=0", f"--store={store}"]) == 0
    # the same config as a last run, alone, through the train API (to compare numbers)
    alone = train(
        "run.yaml", overrides={"rank": 4, "seed": 1, "store": "alone.db", "progress": False}
    )
    assert alone.run_id == last.run_id
    capsys.readouterr()

    assert main(["sweep", "sweep.yaml", "--workers", "2", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "3 of 4 runs to do" in err
    assert "reference: building" not in err  # `train` built it where the sweep looks
    for run in sweep.runs[1:]:
        assert f"{run.run_id}  {run.label}: finished; L_ft " in out
    assert "sweep sweep: 4 runs: 4 finished; results in" in out
    # the numbers equal the train API's for the same config
    _assert_same(_rows(store, last.run_id), _rows(workdir / "alone.db", last.run_id))
    # each run wrote only its own folder; the reference is shared
    refs = list((workdir / "sweep" / "references").glob("ref-*.safetensors"))
    assert len(refs) == 1
    for run in sweep.runs[1:]:
        folder = workdir / "sweep" / "runs" / run.run_id
        status = json.loads((folder / "status.json").read_text())
        assert status["status"] == "finished" and (folder / "adapter").is_dir()
        assert not (folder / "checkpoints").exists()
    df = read_measurements(store)
    assert len(df) == 4 * 6 and not df.duplicated(["run_id", "step"]).any()

    # runs / export read the sweep's store
    assert main(["runs", "--from", str(store)]) == 0
    listing = capsys.readouterr().out
    assert listing.count("finished") == 4 and "rank=4 seed=1" in listing
    assert main(["export", "--from", str(store), "--out", "all.csv"]) == 0
    # a finished sweep run again does nothing and says so
    assert main(["sweep", "sweep.yaml", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert "all 4 runs are already finished" in out and "reference" not in err
    # and `forgetscale train` recognises a run the sweep did
    assert main(["train", "run.yaml", "--rank=4", "--seed=1", f"--store={store}"]) == 0
    assert "already finished" in capsys.readouterr().err
    # the dry run shows it all
    assert main(["sweep", "sweep.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("finished") == 5 and first.run_id in out and "4 finished" in out


def test_failed_run_exits_1_with_its_log_and_a_diverged_run_is_a_result(workdir, capsys):
    (workdir / "s.yaml").write_text(
        yaml.safe_dump(
            {
                "base": "./run.yaml",
                "store": "./s/results.db",
                "max_grad_norm": None,
                "max_steps": 4,
                "eval_steps": [0, 1, 2, 4],
                "zip": {"target_modules": ["all-linear", "nosuch"], "learning_rate": [1e30, 1e-3]},
            },
            sort_keys=False,
        )
    )
    sweep = load_sweep("s.yaml")
    diverging, failing = sweep.runs
    assert main(["sweep", "s.yaml", "--no-progress"]) == 1
    out = capsys.readouterr().out
    log = workdir / "s" / "runs" / failing.run_id / "log.txt"
    assert f"{failing.run_id}  target_modules=nosuch learning_rate=0.001: FAILED" in out
    assert f"log: {log}" in out and "unknown target module" in log.read_text()
    assert f"{diverging.run_id}  target_modules=all-linear learning_rate=1e+30: diverged" in out
    assert "2 runs: 1 diverged, 1 failed" in out
    with sqlite3.connect(workdir / "s" / "results.db") as c:
        assert c.execute("SELECT status FROM runs WHERE id=?", (diverging.run_id,)).fetchone() == (
            "diverged",
        )
    # run again: the diverged run is not retried, the failed one is (and fails again)
    assert main(["sweep", "s.yaml", "--no-progress"]) == 1
    out, err = capsys.readouterr()
    assert "1 of 2 runs to do" in err and f"{failing.run_id}" in out


def _count(store: Path, sql: str) -> int:
    if not store.is_file():
        return 0
    conn = sqlite3.connect(store)
    try:
        return conn.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # the driver is creating the tables
        return 0
    finally:
        conn.close()


def _sweep_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "forgetscale", "sweep", "sweep.yaml", "--no-progress", *extra]


def _mid_runs(sweep) -> list:
    """Runs part-way: a finished checkpoint after at least one update in their folder, and no
    verdict yet (the folder's other files, its owner marker or a checkpoint being written,
    appear before the run has measured anything)."""

    def updated(folder: Path) -> bool:
        return folder.is_dir() and any(
            p.name.startswith("step-") and int(p.name[5:]) >= 1 for p in folder.iterdir()
        )

    return [
        r
        for r in sweep.runs
        if updated(r.run_dir / "checkpoints") and not (r.run_dir / "status.json").exists()
    ]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    src = str(Path(__file__).resolve().parent.parent / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    return env


def test_sigkill_of_the_driver_or_a_worker_loses_nothing_and_writes_nothing_twice(workdir):
    """Really SIGKILL the driver mid-sweep, start it again, SIGKILL one of its workers
    mid-run, start it again: the sweep finishes, every measurement is there exactly once,
    and a run killed part-way equals the same run done in one go."""
    steps = [0, 1, 2, 5, 10, 20, 40, 60]
    (workdir / "sweep.yaml").write_text(
        MINIMAL_SWEEP + f"max_steps: 60\neval_steps: {steps}\ndropout: 0.1\n"
    )
    sweep = load_sweep("sweep.yaml")
    store = workdir / "sweep" / "results.db"
    env = _env()

    # 1. the driver, killed once one run is merged and another is part-way
    proc = subprocess.Popen(
        _sweep_cmd("--workers", "2"), cwd=workdir, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 240
    killed: list[str] = []
    runs_during = None
    while time.time() < deadline and proc.poll() is None:
        merged = _count(store, "SELECT COUNT(*) FROM runs WHERE status='finished'")
        if merged and runs_during is None:  # `forgetscale runs` works during the sweep
            runs_during = subprocess.Popen(
                [sys.executable, "-m", "forgetscale", "runs", "--from", str(store)],
                env=env, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
        mid = _mid_runs(sweep)
        if merged >= 1 and mid:
            proc.send_signal(signal.SIGKILL)
            killed.append(mid[0].run_id)
            break
        time.sleep(0.1)
    proc.wait()
    assert killed, f"the sweep ended before it could be killed mid-run: {proc.stderr.read()}"
    assert runs_during is not None
    assert runs_during.wait(timeout=60) == 0 and "finished" in runs_during.stdout.read()
    time.sleep(1.0)  # the workers died with the driver
    assert not any(folder_busy(r.run_dir) for r in sweep.runs if r.run_dir.is_dir())
    before = _count(store, "SELECT COUNT(*) FROM measurements")
    # the dry run sees the finished and the partial runs, and a measured step time
    table = io.StringIO()
    dry_run(load_sweep("sweep.yaml"), table, workers=2)
    table = table.getvalue()
    print(table)
    assert "finished" in table and "partial at step" in table and "s/step" in table
    line = next(ln for ln in table.splitlines() if ln.startswith(killed[0]))
    assert "partial at step" in line and line.split()[-1][-1] == "s"  # its time left

    # 2. the driver again; this time one of its workers is killed part-way through a run
    proc = subprocess.Popen(
        _sweep_cmd(), cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    victim = None
    while time.time() < deadline and proc.poll() is None:
        mid = [r for r in _mid_runs(sweep) if r.run_id not in killed and folder_busy(r.run_dir)]
        if mid:
            victim = mid[0]
            lines = (victim.run_dir / "log.txt").read_text().splitlines()
            pid = int([ln for ln in lines if ln.startswith("worker ")][-1].split()[1])
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    out, err = proc.communicate(timeout=300)
    assert victim is not None, f"no run to kill a worker in: {out} {err}"
    assert proc.returncode == 1, err
    assert "resume" in err and f"{victim.run_id}  {victim.label}: FAILED (worker process" in out
    assert "killed by SIGKILL" in out and f"log: {victim.run_dir / 'log.txt'}" in out
    killed.append(victim.run_id)

    # 3. and again: it finishes
    done = subprocess.run(_sweep_cmd(), cwd=workdir, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "1 of 4 runs to do (1 resume)" in done.stderr
    assert "4 runs: 4 finished" in done.stdout
    df = read_measurements(store)
    assert len(df) == 4 * len(steps) > before
    for run in sweep.runs:
        assert sorted(df[df.run_id == run.run_id].step) == steps
    # the runs killed part-way equal the same runs done in one go
    for rid in killed:
        config = next(r.config for r in sweep.runs if r.run_id == rid).to_dict()
        where = {"store": str(workdir / "alone.db"), "reference_dir": None}
        alone = train(config | where | {"checkpoint_dir": None, "output_dir": None})
        assert alone.run_id == rid
        a, b = _rows(store, rid), _rows(workdir / "alone.db", rid)
        print(f"run killed part-way vs uninterrupted: max difference {(a - b).abs().max().max()}")
        _assert_same(a, b)


def test_local_executor_builds_the_references_in_its_worker(workdir):
    from forgetscale.errors import UserError
    from forgetscale.sweep.executors.local import LocalExecutor, Options

    sweep = load_sweep("sweep.yaml")
    configs = [run.config for run in sweep.runs]
    executor = LocalExecutor(Options(workers=1, threads=1), sweep.folder)
    try:
        executor.start()
        lines: list[str] = []
        executor.build_references(configs, sweep.resources, lines.append)
        # one reference for the four runs, built by the worker process, its log shown here
        refs = list((sweep.folder / "references").glob("ref-*.safetensors"))
        assert len(refs) == 1
        assert sum("reference: building" in line for line in lines) == 1
        worker = executor.workers[0]
        assert worker is not None and worker.alive() and worker.proc.pid != os.getpid()
        # a bad reference is the run's one-line error, raised in the driver
        (workdir / "not-a-reference.safetensors").write_bytes(b"garbage")
        bad = configs[0].to_dict() | {"reference": str(workdir / "not-a-reference.safetensors")}
        from forgetscale.config import build_config

        with pytest.raises(UserError, match="reference"):
            executor.build_references([build_config(bad)], sweep.resources, lines.append)
        assert worker.alive()  # and the worker is still there for the runs
    finally:
        executor.close()


def test_the_driver_and_the_store_import_no_torch():
    # the driver plans, dispatches and merges; torch loads in the workers only (a sweep's
    # fixed cost is then one torch import, as for a loop of runs in one process)
    code = (
        "import sys, forgetscale.cli, forgetscale.commands.sweep, forgetscale.sweep.driver, "
        "forgetscale.sweep.executors.local, forgetscale.store\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'transformers' not in sys.modules, 'transformers imported'\n"
    )
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
