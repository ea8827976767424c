"""A SQLite file forgetscale did not make is refused before any write; a damaged store (a
column missing, text where a number belongs) is one line in every command that reads it."""

from __future__ import annotations

import sqlite3

import pytest
from helpers import one_line_error

from forgetscale.errors import UserError
from forgetscale.store import open_store


def files_of(db):
    """The store and the files SQLite keeps beside it (a -wal appears if it was written)."""
    return {p.name: p.read_bytes() for p in db.parent.glob(f"{db.name}*") if p.is_file()}


@pytest.fixture
def foreign(tmp_path):
    """Another program's database with tables named runs and measurements."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, athlete TEXT, km REAL)")
    conn.execute("CREATE TABLE measurements (run_id INTEGER, heart_rate REAL)")
    conn.execute("INSERT INTO runs VALUES (1, 'me', 5.0)")
    conn.commit()
    conn.close()
    return db


def test_a_foreign_sqlite_file_is_refused_before_any_write(foreign, tmp_path, capsys):
    before = files_of(foreign)
    with pytest.raises(UserError, match="not a forgetscale results store"):
        open_store(foreign)
    for argv in (
        ["runs", "--from", str(foreign)],
        ["export", "--from", str(foreign)],
        ["fit", "--from", str(foreign), "--law", "additive"],
    ):
        one_line_error(capsys, argv, "not a forgetscale results store")
    assert files_of(foreign) == before  # no table added, not switched to WAL, no -wal file
    conn = sqlite3.connect(foreign)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()


def test_train_into_a_foreign_sqlite_file_is_refused(foreign, workdir, capsys):
    before = files_of(foreign)
    one_line_error(
        capsys, ["train", "run.yaml", f"--store={foreign}"], "not a forgetscale results store"
    )
    assert files_of(foreign) == before


def make_store(path):
    with open_store(path) as s:
        s.start_run("run-a", {"model": "m"}, method="lora", rank=4, params_trained=1000)
        for step in (0, 2, 4):
            s.add_measurement("run-a", step, {"finetune_loss": 3.0, "forgetting_loss": 2.0 + step})
    return path


def test_a_store_missing_a_column_is_one_line(tmp_path, capsys):
    db = make_store(tmp_path / "s.db")
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE measurements DROP COLUMN forgetting_loss")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    for argv in (
        ["runs", "--from", str(db)],
        ["export", "--from", str(db)],
        ["fit", "--from", str(db), "--law", "additive"],
    ):
        one_line_error(capsys, argv, "lacks the column(s) forgetting_loss")
    assert db.read_bytes() == before


def test_text_in_a_real_column_is_one_line(tmp_path, capsys):
    db = make_store(tmp_path / "s.db")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE measurements SET forgetting_loss = 'oops' WHERE step = 2")
    conn.commit()
    conn.close()
    for argv in (["export", "--from", str(db)], ["fit", "--from", str(db), "--law", "additive"]):
        one_line_error(capsys, argv, "measurements.forgetting_loss holds 'oops'")
    conn = sqlite3.connect(db)
    conn.execute("UPDATE measurements SET forgetting_loss = 2.0")
    conn.execute("UPDATE runs SET rank = 'four'")
    conn.commit()
    conn.close()
    one_line_error(capsys, ["runs", "--from", str(db)], "runs.rank holds 'four'")
