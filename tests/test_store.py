"""SQLite results store: idempotence, statuses, export table."""

from __future__ import annotations

import math
import sqlite3

import pandas as pd
import pytest

from forgetscale.errors import UserError
from forgetscale.store import EXPORT_COLUMNS, open_store, read_measurements, write_table


def _metrics(step):
    return {
        "finetune_loss": 3.0 - 0.1 * step,
        "forgetting_loss": 2.0 + 0.05 * step,
        "forgetting_loss_soft": 2.5 + 0.05 * step,
        "kl": 0.01 * step,
        "base_entropy": 2.4,
        "agreement": 1.0 - 0.01 * step,
        "train_loss": None if step == 0 else 3.1 - 0.1 * step,
        "tokens_seen": 128 * step,
        "wall_s": 0.5 * step,
    }


def test_store_roundtrip_and_idempotence(tmp_path):
    db = tmp_path / "r.db"
    with open_store(db) as s:
        rec = s.start_run(
            "abc", {"model": "m", "max_steps": 4}, method="lora", rank=4, params_trained=1234
        )
        assert rec.status == "running" and rec.config["max_steps"] == 4
        assert "torch" in rec.versions
        for step in (0, 1, 2):
            assert s.add_measurement("abc", step, _metrics(step)) is True
        # re-running the same steps writes nothing twice
        assert s.add_measurement("abc", 2, _metrics(99)) is False
        # a restart of the same run id does not duplicate the run
        s.start_run(
            "abc", {"model": "m", "max_steps": 4}, method="lora", rank=4, params_trained=1234
        )
        s.add_measurement("abc", 4, _metrics(4))
        s.set_status("abc", "finished")
        assert s.measured_steps("abc") == {0, 1, 2, 4}
        assert len(s.list_runs()) == 1
    df = read_measurements(db)
    assert list(df.columns) == list(EXPORT_COLUMNS)
    assert df.step.tolist() == [0, 1, 2, 4]
    assert df.loc[df.step == 2, "finetune_loss"].item() == pytest.approx(2.8)  # first write kept
    assert (df.params_trained == 1234).all() and (df.method == "lora").all()
    assert math.isnan(df.train_loss.iloc[0])
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT COUNT(*) FROM measurements").fetchone()[0] == 4


def test_statuses_and_nan(tmp_path):
    db = tmp_path / "r.db"
    with open_store(db) as s:
        s.start_run("x", {}, method="full", rank=None, params_trained=10)
        s.add_measurement("x", 0, {"finetune_loss": float("nan"), "forgetting_loss": 1.0})
        s.set_status("x", "diverged", diverged_step=3, message="loss is nan")
        r = s.get_run("x")
        assert r.status == "diverged" and r.diverged_step == 3 and r.ended is not None
        with pytest.raises(ValueError):
            s.add_measurement("x", 1, {"bogus": 1})
        with pytest.raises(ValueError):
            s.set_status("x", "weird")
    df = read_measurements(db)
    assert math.isnan(df.finetune_loss.iloc[0]) and df["rank"].isna().all()


def test_read_measurements_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_measurements(tmp_path / "none.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(UserError):
        read_measurements(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (a)").connection.close()
    with pytest.raises(UserError, match="not a forgetscale results store"):
        read_measurements(other)


def test_write_table(tmp_path):
    db = tmp_path / "r.db"
    with open_store(db) as s:
        s.start_run("a", {}, method="lora", rank=8, params_trained=99)
        s.add_measurement("a", 0, _metrics(0))
        s.add_measurement("a", 3, _metrics(3))
    df = read_measurements(db)
    write_table(df, tmp_path / "m.csv")
    write_table(df, tmp_path / "m.parquet")
    back_csv = pd.read_csv(tmp_path / "m.csv")
    back_pq = pd.read_parquet(tmp_path / "m.parquet")
    assert list(back_csv.columns) == list(EXPORT_COLUMNS) == list(back_pq.columns)
    assert back_csv.forgetting_loss.tolist() == df.forgetting_loss.tolist()  # full precision
    assert back_pq.finetune_loss.tolist() == df.finetune_loss.tolist()


def test_downstream_rows_are_written_once_and_read_back(tmp_path):
    from forgetscale.store import DOWNSTREAM_EXPORT_COLUMNS

    with open_store(tmp_path / "r.db") as store:
        store.start_run("r1", {"model": "m"}, method="lora", rank=4, params_trained=10)
        rows = [
            {
                "suite": "probe",
                "metric": "acc",
                "value": 0.5,
                "n": 200,
                "ci_low": 0.43,
                "ci_high": 0.57,
            },
            {
                "suite": "probe",
                "metric": "agreement",
                "value": 1.0,
                "n": 200,
                "ci_low": 0.98,
                "ci_high": 1.0,
            },
        ]
        assert store.add_downstream("r1", 0, rows) == 2
        assert store.add_downstream("r1", 0, rows) == 0
        df = store.downstream()
        assert list(df.columns) == list(DOWNSTREAM_EXPORT_COLUMNS)
        assert df.value.tolist() == [0.5, 1.0] and df.n.tolist() == [200, 200]
        assert store.downstream_steps("r1") == {0}
        store.delete_run("r1")
        assert store.downstream().empty


def test_a_wal_store_in_a_read_only_folder_is_read_by_runs_export_fit_and_compare(tmp_path, capsys):
    """A store whose last writes are still in its -wal file (a process ended without the
    checkpoint), in a folder nobody can write to: SQLite cannot make the -shm it needs to
    read it, so the readers read a private copy, the -wal's rows included; nothing is
    written beside the store."""
    from helpers import WAL_NAME, read_only_wal_store
    from study_data import make_store

    from forgetscale.cli import main

    def fill(db):
        make_store(db, ranks=(1, 2, 4, 8), seeds={1: 2, 4: 2})

    with read_only_wal_store(tmp_path / "ro" / "results.db", fill) as db:
        folder = db.parent
        before = sorted(p.name for p in folder.iterdir())
        assert main(["runs", "--from", str(db)]) == 0
        assert WAL_NAME in capsys.readouterr().out
        assert main(["export", "--from", str(db)]) == 0
        capsys.readouterr()
        for cmd in (["fit", "--law", "multiplicative"], ["compare"]):
            rc = main([*cmd, "--from", str(db), "--target", "forgetting_loss"])
            assert rc == 0, capsys.readouterr().err
        with open_store(db, create=False) as st:
            assert {r.name for r in st.list_runs()} == {WAL_NAME}
        assert sorted(p.name for p in folder.iterdir()) == before


SWEEP = "base: ./run.yaml\nstore: ./sweep/results.db\ngrid: {seed: [0, 1]}\n"


def _started_sweep_runs(db):
    """The sweep's two runs started (running) in its store ``db``."""
    from forgetscale.sweep.spec import load_sweep

    sweep = load_sweep("sweep.yaml")
    with open_store(db) as st:
        for run in sweep.runs:
            st.start_run(run.run_id, run.config.to_dict(), method="lora", rank=4, params_trained=1)
            st.add_measurement(run.run_id, 0, {"finetune_loss": 2.0, "forgetting_loss": 1.0})


def test_sweep_dry_run_reads_a_wal_store_in_a_read_only_folder(workdir, capsys):
    """The runs' last status is only in the -wal: the dry run reads it, and writes nothing."""
    from helpers import read_only_wal_store

    from forgetscale.cli import main

    (workdir / "sweep.yaml").write_text(SWEEP)
    last = "UPDATE runs SET status = 'finished'"
    with read_only_wal_store(workdir / "sweep" / "results.db", _started_sweep_runs, last) as db:
        before = sorted(p.name for p in db.parent.iterdir())
        capsys.readouterr()
        assert main(["sweep", "sweep.yaml", "--dry-run"]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert out.splitlines()[-1] == "2 finished: nothing to run", out
        assert sorted(p.name for p in db.parent.iterdir()) == before


def test_study_analyse_only_in_a_read_only_folder_is_one_line(workdir, capsys):
    """The report goes beside the store: a read-only study folder is refused before the store
    is read, in one line; the -wal stays as it was."""
    from helpers import one_line_error, read_only_wal_store

    (workdir / "sweep.yaml").write_text(SWEEP)
    with read_only_wal_store(workdir / "sweep" / "results.db", _started_sweep_runs) as db:
        wal = db.with_name(db.name + "-wal")
        before = {p.name: p.read_bytes() for p in db.parent.iterdir()}
        one_line_error(capsys, ["study", "sweep.yaml", "--analyse-only"], "study folder")
        assert {p.name: p.read_bytes() for p in db.parent.iterdir()} == before
        assert wal.stat().st_size > 0


def test_a_store_cut_short_before_its_schema_is_one_that_was_never_made(tmp_path):
    """A worker killed between creating its store's file and committing the schema leaves an
    empty SQLite file: the sweep's driver merges nothing from it (it used to stop the sweep
    with 'is not a forgetscale results store')."""
    import sqlite3

    from forgetscale.store import ResultsStore

    empty = tmp_path / "empty.db"
    empty.touch()
    assert ResultsStore.never_made(empty)
    bare = tmp_path / "bare.db"
    sqlite3.connect(bare).execute("PRAGMA journal_mode = WAL").close()
    assert ResultsStore.never_made(bare)
    with ResultsStore(tmp_path / "real.db"):
        pass
    assert not ResultsStore.never_made(tmp_path / "real.db")
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").close()
    assert not ResultsStore.never_made(other)
    with ResultsStore(bare) as store:  # making it later works as for a new file
        assert store.measured_steps("r") == set()
