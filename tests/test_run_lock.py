"""One lock per run id wherever it trains: ``train --store <a sweep's results.db>`` and the
sweep's worker training the same run in its folder exclude each other."""

from __future__ import annotations

import dataclasses

import pytest
import yaml
from sweep_runs import make_inputs, write_sweep_file

from forgetscale.cli import main
from forgetscale.errors import UserError
from forgetscale.store import open_store
from forgetscale.sweep import worker
from forgetscale.sweep.driver import write_spec
from forgetscale.sweep.spec import load_sweep
from forgetscale.training import train
from forgetscale.training.lock import RunLock
from forgetscale.training.outputs import lock_path


@pytest.fixture
def sweep_run(tmp_path, monkeypatch, tiny_model_dir, general_jsonl):
    """The first run of a sweep, its spec.json written as the driver writes it, and the same
    run's config aimed straight at the sweep's store (as ``train --store`` would be)."""
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(
        write_sweep_file(tmp_path, make_inputs(tmp_path, tiny_model_dir, general_jsonl))
    )
    run = sweep.runs[0]
    write_spec(run, sweep)
    direct = dataclasses.replace(
        run.config, store=str(sweep.store), checkpoint_dir=None, output_dir=None
    )
    assert direct.run_id == run.run_id
    return sweep, run, direct


def test_train_into_the_sweeps_store_is_refused_while_the_worker_trains_the_run(
    sweep_run, tmp_path, capsys
):
    sweep, run, direct = sweep_run
    sweep.store.parent.mkdir(parents=True, exist_ok=True)
    with worker._store_lock(worker.read_json(run.run_dir / worker.SPEC)):  # the worker trains
        with pytest.raises(UserError, match="being trained by another process"):
            train(direct)
        cfg = tmp_path / "direct.yaml"
        cfg.write_text(yaml.safe_dump(direct.to_dict()))
        assert main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "being trained by another process" in err, err
    if sweep.store.exists():  # a refused train removes a store it created for nothing
        with open_store(sweep.store, create=False) as store:
            assert store.get_run(run.run_id) is None  # nothing written for the run


def test_the_worker_refuses_a_run_that_train_is_training_into_the_sweeps_store(sweep_run):
    sweep, run, direct = sweep_run
    sweep.store.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(lock_path(direct), direct.run_id)  # `train --store <sweep>/results.db`
    try:
        status = worker.run_folder(run.run_dir)
    finally:
        lock.release()
    assert status["status"] == "failed"
    assert "being trained by another process" in status["message"]
    assert not (run.run_dir / worker.STORE).exists()  # it never started


def test_a_lock_on_a_file_released_and_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """The release race: another holder releases (removes the file) and a third process
    creates it again between our open and our flock. The lock we end up with must be on
    the file at the path, so the next taker is refused."""
    import fcntl
    import os

    path = tmp_path / ".results.db.run.lock"
    real_flock, calls = fcntl.flock, []

    def flock_after_a_release(fh, flags):
        if not calls:  # the first file we opened is removed and a new one made at the path
            path.unlink()
            path.write_text("")
        calls.append(os.fstat(fh.fileno()).st_ino)
        return real_flock(fh, flags)

    monkeypatch.setattr(fcntl, "flock", flock_after_a_release)
    lock = RunLock(path, "run")
    assert len(calls) == 2 and calls[0] != calls[1]  # locked the removed file, then the new one
    assert os.fstat(lock.fh.fileno()).st_ino == os.stat(path).st_ino
    monkeypatch.setattr(fcntl, "flock", real_flock)
    with pytest.raises(UserError, match="being trained by another process"):
        RunLock(path, "run")
    lock.release()
    RunLock(path, "run").release()  # free again once released
