"""A results store locked by another process: wait, retry, then say so clearly.

The lock is real: a second process holds ``BEGIN EXCLUSIVE`` on the store. SQLite's
busy timeout is shortened for the test by capping ``sqlite3.connect``'s
``timeout`` and ``forgetscale.store.LOCK_WAIT_S``.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time

import pytest

import forgetscale.store as store_module
from forgetscale.errors import UserError
from forgetscale.store import open_store

HOLD_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes our stdin
"""

WAIT_S = 0.5


@pytest.fixture
def short_wait(monkeypatch):
    real_connect = sqlite3.connect

    def connect(*args, **kwargs):
        kwargs["timeout"] = min(kwargs.get("timeout", 5.0), WAIT_S)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(store_module.sqlite3, "connect", connect)
    monkeypatch.setattr(store_module, "LOCK_WAIT_S", WAIT_S)


@pytest.fixture
def locked_store(tmp_path):
    path = tmp_path / "results.db"
    with open_store(path) as s:
        s.start_run("run-a", {"model": "m"}, method="lora", rank=4, params_trained=10)
        s.add_measurement("run-a", 0, {"forgetting_loss": 2.0})
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield path
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_a_store_locked_past_the_wait_says_so(locked_store, short_wait):
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        with open_store(locked_store) as s:  # what `train` does: create=True writes
            s.start_run("run-b", {"model": "m"}, method="lora", rank=8, params_trained=20)
    message = str(info.value)
    assert "is not a" not in message, message
    assert "locked" in message and str(locked_store) in message, message
    assert "\n" not in message
    assert time.monotonic() - started >= WAIT_S  # it waited before giving up


def test_a_locked_store_can_still_be_read(locked_store, short_wait):
    """WAL: readers (runs, export, fit) are not blocked by a writer's lock."""
    with open_store(locked_store, create=False) as s:
        assert [r.id for r in s.list_runs()] == ["run-a"]


def test_a_reader_never_sees_a_store_with_only_some_tables(tmp_path, monkeypatch):
    """The tables are made in one transaction: a store another process is creating is either
    not yet a store or a whole one, never 'not a forgetscale results store (it holds the
    tables meta)'. A second connection looks while the schema is half made."""
    import sqlite3

    from forgetscale.store import open_store

    db = tmp_path / "r.db"
    seen: list[set[str]] = []
    real_connect = sqlite3.connect

    def look(statement: str) -> None:
        if "CREATE TABLE IF NOT EXISTS runs" in statement:
            with real_connect(db) as other:
                rows = other.execute("SELECT name FROM sqlite_master WHERE type='table'")
                seen.append({r[0] for r in rows})

    def connect(*args, **kwargs):
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(look)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    with open_store(db):
        pass
    assert seen == [set()]
