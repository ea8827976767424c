"""sweep/status.py: where each run stands (from the sweep's store and the run folders), the
time left, P without loading weights, and the dry-run table; read only.

The run folders are written here as the worker writes them (a store, status.json,
progress.json, its lock held), with no training: each state is set up exactly.
"""

from __future__ import annotations

import fcntl
import io
from pathlib import Path

import pytest
from helpers import tiny_config

from forgetscale.store import ResultsStore
from forgetscale.sweep.folders import RunFolder, write_json
from forgetscale.sweep.spec import load_sweep
from forgetscale.sweep.status import (
    collect_states,
    dry_run,
    format_duration,
    parameter_count,
    time_left,
)

SWEEP = """\
base: ./run.yaml
store: ./sweep/results.db
grid:
  seed: [0, 1, 2, 3, 4, 5]
"""


def _start(store: ResultsStore, run) -> None:
    config = run.config.to_dict()
    store.start_run(run.run_id, config, method="lora", rank=4, params_trained=1000)


def _measure(store: ResultsStore, run, steps_wall) -> None:
    for step, wall in steps_wall:
        store.add_measurement(
            run.run_id, step, {"finetune_loss": 2.0, "forgetting_loss": 0.1 * step, "wall_s": wall}
        )


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def sweep(workdir):
    (workdir / "sweep.yaml").write_text(SWEEP)
    sweep = load_sweep("sweep.yaml")
    new, finished, partial, running, failed, diverged = sweep.runs
    sweep.folder.mkdir(parents=True)
    with ResultsStore(sweep.store) as store:  # the sweep's store: what the driver merged
        _start(store, finished)
        _measure(store, finished, [(0, 0.0), (12, 6.0)])  # 0.5 s/step
        store.set_status(finished.run_id, "finished")
        _start(store, partial)
        _measure(store, partial, [(0, 0.0)])  # merged earlier; its folder knows more
    partial.run_dir.mkdir(parents=True)
    with ResultsStore(partial.folder.store) as store:
        _start(store, partial)
        _measure(store, partial, [(0, 0.0), (2, 2.0), (4, 4.0)])  # 1 s/step
    running.run_dir.mkdir(parents=True)
    write_json(
        running.run_dir / "progress.json",
        {"step": 8, "finetune_loss": 1.5, "forgetting_loss": 0.7, "wall_s": 16.0,
         "measurements": 5, "time": 0.0},
    )  # fmt: skip
    failed.run_dir.mkdir(parents=True)
    write_json(failed.run_dir / "status.json", {"status": "failed", "message": "boom"})
    diverged.run_dir.mkdir(parents=True)
    write_json(diverged.run_dir / "status.json", {"status": "diverged", "diverged_step": 3})
    return sweep


def _hold_lock(run_dir: Path):
    """Hold the run folder's lock as a worker training there does."""
    fh = (run_dir / "worker.lock").open("a+")
    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fh


def test_states_from_the_store_and_the_run_folders(sweep):
    new, finished, partial, running, failed, diverged = sweep.runs
    lock = _hold_lock(running.run_dir)
    try:
        assert RunFolder(running.run_dir).busy() and not RunFolder(partial.run_dir).busy()
        with ResultsStore(sweep.store, create=False) as store:
            states = {s.run.run_id: s for s in collect_states(sweep, store)}
    finally:
        lock.close()
    s = states[new.run_id]
    assert (s.status, s.step, s.measurements, s.describe()) == ("new", 0, 0, "new")
    s = states[finished.run_id]
    assert (s.status, s.step, s.measurements, s.sec_per_step) == ("finished", 12, 2, 0.5)
    assert s.done and s.steps_done == 12 and s.describe() == "finished"
    # the folder's store has more measurements than the sweep's: it wins
    s = states[partial.run_id]
    assert (s.status, s.step, s.measurements, s.sec_per_step) == ("partial", 4, 3, 1.0)
    assert s.describe() == "partial at step 4" and s.forgetting_loss == pytest.approx(0.4)
    # a worker holds the lock: its progress.json tells where it is
    s = states[running.run_id]
    assert (s.status, s.step, s.measurements, s.sec_per_step) == ("running", 8, 5, 2.0)
    assert s.describe() == "running at step 8" and s.finetune_loss == 1.5
    s = states[failed.run_id]
    assert (s.status, s.message, s.describe()) == ("failed", "boom", "failed")
    s = states[diverged.run_id]
    assert (s.status, s.diverged_step, s.describe()) == ("diverged", 3, "diverged at step 3")
    assert s.done and s.steps_done == 12
    # the lock released (the worker died): the run is no longer running
    states = {s.run.run_id: s for s in collect_states(sweep, None)}
    assert states[running.run_id].status == "new"  # no store, no status: nothing to resume
    assert states[finished.run_id].status == "new"  # without the sweep's store, unknown


def test_time_left_and_durations(sweep):
    with ResultsStore(sweep.store, create=False) as store:
        new, finished, partial, *_ = collect_states(sweep, store)
    assert time_left(finished, 0.5) == 0.0 and time_left(finished, None) == 0.0
    assert time_left(new, None) is None  # no rate anywhere: unknown
    assert time_left(new, 0.5) == 6.0 and time_left(partial, None) == 8.0  # its own rate
    assert time_left(partial, 0.5) == 4.0
    cases = {None: "?", float("nan"): "?", 0: "0s", 59.4: "59s", 61: "1m01s", 3600: "1h00m"}
    for seconds, text in cases.items():
        assert format_duration(seconds) == text
    assert format_duration(3 * 3600 + 7 * 60 + 59) == "3h07m"


def test_dry_run_table_is_read_only(sweep):
    new, finished, partial, running, failed, diverged = sweep.runs
    before = _snapshot(sweep.folder)
    out = io.StringIO()
    dry_run(sweep, out, workers=2)
    assert _snapshot(sweep.folder) == before  # nothing written: no store, no folder touched
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sweep sweep: 6 runs (seed), store ")
    assert lines[1].split() == ["id", "seed", "P", "steps", "status", "time", "left"]
    rows = {ln.split()[0]: ln for ln in lines[2:8]}
    assert list(rows) == [r.run_id for r in sweep.runs]
    # the median rate of the finished runs (0.5 s/step) gives every run still to do its time
    assert rows[new.run_id].split()[-2:] == ["new", "6s"]
    assert rows[partial.run_id].split()[-5:] == ["partial", "at", "step", "4", "4s"]
    assert rows[running.run_id].split()[-2:] == ["new", "6s"]  # no worker holds its lock
    assert rows[finished.run_id].split()[-2:] == ["finished", "-"]
    assert rows[diverged.run_id].split()[-1] == "-"
    p = parameter_count(new.config)
    assert p is not None and f"{p:,d}" in rows[new.run_id]
    assert lines[-1] == (
        "2 new, 1 finished, 1 partial, 1 failed, 1 diverged; about 22s of run time left "
        "(0.50 s/step), about 11s with 2 workers"
    )


def test_dry_run_before_any_measurement_and_when_all_done(workdir):
    (workdir / "sweep.yaml").write_text(SWEEP)
    sweep = load_sweep("sweep.yaml")
    out = io.StringIO()
    dry_run(sweep, out)
    assert out.getvalue().splitlines()[-1] == "6 new; no measured step time yet (run time unknown)"
    assert not sweep.folder.exists()  # a dry run makes no folder
    sweep.folder.mkdir()
    with ResultsStore(sweep.store) as store:
        for run in sweep.runs:
            _start(store, run)
            store.set_status(run.run_id, "finished")
    out = io.StringIO()
    dry_run(sweep, out)
    assert out.getvalue().splitlines()[-1] == "6 finished: nothing to run"


def test_parameter_count_without_loading_weights(workdir, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from forgetscale.models import count_parameters
    from forgetscale.training.methods import apply_method

    config = tiny_config(workdir, rank=2)
    model = apply_method(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    expected = count_parameters(model).trainable_non_embedding
    assert parameter_count(config) == expected > 0
    assert parameter_count(tiny_config(workdir, rank=4)) > expected  # the rank counts
    # no model config at hand: unknown, not a guess
    (workdir / "empty-model").mkdir()
    assert parameter_count(tiny_config(workdir, model="./empty-model")) is None
    assert parameter_count(tiny_config(workdir, model="./model.gguf")) is None
