"""The results store: one SQLite file holding every run and its measurements.

Two tables (stdlib :mod:`sqlite3`, WAL journal so a reader can watch a run that is
being written):

``runs``
    one row per run; ``id`` is the hash of the resolved config (see
    :func:`forgetscale.config.run_id`), so starting the same config again finds
    its row instead of making a new one. ``status`` is ``running``, ``finished``,
    ``diverged`` (a NaN/inf loss, ``diverged_step`` says when) or ``failed``.
``measurements``
    one row per (run, step) with the metrics measured after ``step`` updates
    (step 0 = the base model). ``PRIMARY KEY(run_id, step)``: a resumed run that
    measures a step again writes nothing twice.

:func:`read_measurements` returns the table the laws are fitted on, with exactly
the columns in :data:`EXPORT_COLUMNS`.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forgetscale import quantities
from forgetscale.environment import library_versions
from forgetscale.errors import UserError
from forgetscale.store_checks import check_columns, not_a_number

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SCHEMA_VERSION = 1

RUN_STATUSES = ("running", "finished", "diverged", "failed")


@dataclass(frozen=True)
class Column:
    """One measured quantity: its name everywhere (store, export, the run's record)."""

    name: str
    sql: str
    """SQLite column type."""
    dtype: str
    """pandas dtype in :func:`read_measurements`."""
    help: str


# The measurement schema, from the quantities (forgetscale.quantities, declared there once):
# the SQL table, the store's reads and writes, the export columns, the training run's record
# and the callback's keys derive from it.
MEASUREMENT_COLUMNS: tuple[Column, ...] = tuple(
    Column(q.name, q.sql, q.dtype, q.help) for q in quantities.stored() if q.sql
)
METRIC_COLUMNS: tuple[str, ...] = tuple(c.name for c in MEASUREMENT_COLUMNS)
LATER_COLUMNS: tuple[str, ...] = tuple(q.name for q in quantities.stored() if q.later)
"""Measurement columns added after stores were first written: a store without them gains them
when opened for writing, and reads of one opened read-only give them as missing (NULL)."""
FORGETTING_COLUMNS: tuple[str, ...] = tuple(q.name for q in quantities.stored() if q.forgetting)
"""The columns that :class:`forgetscale.metrics.ForgettingResult` fills."""

# Run columns joined to every measurement (P is ``params_trained``), then the run settings read
# from each run's config (forgetscale.quantities: the replay fraction p, the KL weight; their
# default where a run's config lacks the key or is not JSON).
_RUN_EXPORT = (("run_id", "m.run_id", "object"), ("method", "r.method", "object"),
               ("rank", "r.rank", "Int64"), ("params_trained", "r.params_trained", "Int64"),
               *((q.name, f"COALESCE(CASE WHEN json_valid(r.config) THEN json_extract("
                          f"r.config, '$.{q.name}') END, {q.config_default!r})", q.dtype)
                 for q in quantities.run_settings()),
               ("step", "m.step", "int64"))  # fmt: skip
EXPORT_COLUMNS: tuple[str, ...] = (*(name for name, _, _ in _RUN_EXPORT), *METRIC_COLUMNS)

# Downstream suites (knowledge, refusals ...), long format: one row per run, step, suite, metric.
DOWNSTREAM_COLUMNS: tuple[Column, ...] = (
    Column("suite", "TEXT NOT NULL", "object", "suite name, e.g. probe:pydoc-cloze"),
    Column("metric", "TEXT NOT NULL", "object", "metric name, e.g. acc, refusal_rate"),
    Column("value", "REAL", "float64", "the metric's value"),
    Column("n", "INTEGER", "Int64", "items behind the value"),
    Column("ci_low", "REAL", "float64", "lower end of its 95% interval"),
    Column("ci_high", "REAL", "float64", "upper end of its 95% interval"),
)
DOWNSTREAM_EXPORT_COLUMNS: tuple[str, ...] = (
    "run_id",
    "step",
    *(c.name for c in DOWNSTREAM_COLUMNS),
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    config TEXT NOT NULL,
    model TEXT,
    task_data TEXT,
    method TEXT NOT NULL,
    rank INTEGER,
    params_trained INTEGER,
    params_embedding INTEGER,
    params_total INTEGER,
    max_steps INTEGER,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'diverged', 'failed')),
    last_step INTEGER,
    diverged_step INTEGER,
    message TEXT,
    versions TEXT,
    started REAL NOT NULL,
    ended REAL
);
CREATE TABLE IF NOT EXISTS measurements (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    {measurement_columns}
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS downstream (
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    {downstream_columns}
    PRIMARY KEY (run_id, step, suite, metric)
);
""".format(
    measurement_columns="".join(f"{c.name} {c.sql},\n    " for c in MEASUREMENT_COLUMNS),
    downstream_columns="".join(f"{c.name} {c.sql},\n    " for c in DOWNSTREAM_COLUMNS),
)


@dataclass(frozen=True)
class RunRecord:
    """One row of the ``runs`` table."""

    id: str
    name: str | None
    config: dict[str, Any]
    model: str | None
    task_data: str | None
    method: str
    rank: int | None
    params_trained: int | None
    params_embedding: int | None
    params_total: int | None
    max_steps: int | None
    status: str
    last_step: int | None
    diverged_step: int | None
    message: str | None
    versions: dict[str, str]
    started: float
    ended: float | None
    n_measurements: int = 0


def _clean(value: Any) -> Any:
    """Floats that are not finite are stored as NULL (SQLite has no NaN)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


LOCK_WAIT_S = 30.0
"""How long a write waits for another process's lock on the store before giving up."""


def _store_error(path: Path, exc: sqlite3.OperationalError) -> UserError:
    if "locked" in str(exc) or "busy" in str(exc):
        return UserError(
            f"results store {path} is locked by another process (waited {LOCK_WAIT_S:.0f} s); "
            "try again when that process is done"
        )
    return UserError(f"could not use results store {path}: {exc}")


class ResultsStore:
    """A SQLite results file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | Path, *, create: bool = True):
        self.path = Path(path)
        if not create and self.path.is_dir():
            from forgetscale.laws.table import folder_not_a_store

            raise UserError(folder_not_a_store(self.path))
        if not create and not self.path.is_file():
            raise UserError(f"results store not found: {path}")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.conn = sqlite3.connect(str(self.path), timeout=LOCK_WAIT_S)
            self.conn.execute("PRAGMA foreign_keys = ON")
            tables = {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if (tables or not create) and not {"runs", "measurements"} <= tables:
                raise UserError(
                    f"{path} is not a forgetscale results store"
                    + (f" (it holds the tables {', '.join(sorted(tables))})" if tables else "")
                )
            if tables:  # before any write: tables of this name that forgetscale did not make
                check_columns(self.conn, self.path, tables, _SCHEMA, LATER_COLUMNS)
            if create:
                self.conn.execute("PRAGMA journal_mode = WAL")
                # in one transaction: a reader never sees a store with only some tables
                self.conn.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
                for name in self._missing_columns():
                    sql = next(c.sql for c in MEASUREMENT_COLUMNS if c.name == name)
                    self.conn.execute(f"ALTER TABLE measurements ADD COLUMN {name} {sql}")
                self.conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                self.conn.commit()
        except sqlite3.OperationalError as exc:
            if not create and self._open_read_only_copy():
                return
            raise _store_error(self.path, exc) from None
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{path} is not a SQLite results store ({exc})") from None

    _copy_dir: str | None = None

    def _open_read_only_copy(self) -> bool:
        """A store in WAL mode whose folder cannot be written (SQLite cannot make the -shm
        file it needs to read one): read a private copy of the store and its -wal, with
        writes refused. False where that is not the case."""
        import shutil
        import tempfile

        wal = Path(f"{self.path}-wal")
        if not wal.is_file() or os.access(self.path.parent, os.W_OK | os.X_OK):
            return False
        try:
            self.conn.close()
        except Exception:  # pragma: no cover - the failed connection may not be open
            pass
        self._copy_dir = tempfile.mkdtemp(prefix="forgetscale-store-")
        copy = Path(self._copy_dir) / self.path.name
        try:
            shutil.copyfile(self.path, copy)
            shutil.copyfile(wal, f"{copy}-wal")
            self.conn = sqlite3.connect(str(copy), timeout=LOCK_WAIT_S)
            tables = {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            self.conn.execute("PRAGMA query_only = ON")
        except (OSError, sqlite3.Error):
            self.close()
            return False
        if not {"runs", "measurements"} <= tables:
            self.close()
            raise UserError(f"{self.path} is not a forgetscale results store")
        return True

    def _missing_columns(self) -> list[str]:
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(measurements)")}
        return [name for name in LATER_COLUMNS if name not in have]

    # -- context manager ---------------------------------------------------------------
    def close(self) -> None:
        self.conn.close()
        if self._copy_dir is not None:
            import shutil

            shutil.rmtree(self._copy_dir, ignore_errors=True)
            self._copy_dir = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            with self.conn:  # commits, or rolls back on an exception
                yield self.conn
        except sqlite3.OperationalError as exc:
            raise _store_error(self.path, exc) from None

    # -- runs ------------------------------------------------------------------------
    def get_run(self, run_id: str) -> RunRecord | None:
        row = self.conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM measurements m WHERE m.run_id = r.id) "
            "FROM runs r WHERE r.id = ?",
            (run_id,),
        ).fetchone()
        return self._record(row) if row else None

    def list_runs(self) -> list[RunRecord]:
        rows = self.conn.execute(
            "SELECT r.*, (SELECT COUNT(*) FROM measurements m WHERE m.run_id = r.id) "
            "FROM runs r ORDER BY r.started"
        ).fetchall()
        return [self._record(r) for r in rows]

    def _record(self, row: tuple) -> RunRecord:
        cols = [d[0] for d in self.conn.execute("SELECT * FROM runs LIMIT 0").description]
        d = dict(zip(cols, row[: len(cols)], strict=True))
        try:
            d["config"] = json.loads(d["config"])
            d["versions"] = json.loads(d["versions"] or "{}")
        except (TypeError, ValueError):
            raise UserError(
                f"results store {self.path} is damaged: run {d.get('id')}'s config or versions "
                "is not JSON"
            ) from None
        for name in ("rank", "params_trained", "params_embedding", "params_total", "max_steps",
                     "last_step", "diverged_step", "started", "ended"):  # fmt: skip
            if d[name] is not None and not isinstance(d[name], (int, float)):
                raise UserError(
                    f"results store {self.path} is damaged: runs.{name} holds "
                    f"{str(d[name])[:40]!r} (not a number) for run {d.get('id')}"
                )
        return RunRecord(**d, n_measurements=int(row[len(cols)]))

    def start_run(
        self,
        run_id: str,
        config: Mapping[str, Any],
        *,
        method: str,
        rank: int | None,
        params_trained: int | None,
        params_embedding: int | None = None,
        params_total: int | None = None,
        name: str | None = None,
        versions: Mapping[str, str] | None = None,
    ) -> RunRecord:
        """Insert the run, or mark an existing unfinished one ``running`` again (a resume)."""
        now = time.time()
        with self._tx() as c:
            c.execute(
                "INSERT INTO runs (id, name, config, model, task_data, method, rank, "
                "params_trained, params_embedding, params_total, max_steps, status, "
                "versions, started) VALUES (?,?,?,?,?,?,?,?,?,?,?,'running',?,?) "
                "ON CONFLICT(id) DO UPDATE SET status='running', ended=NULL, message=NULL, "
                "diverged_step=NULL, name=COALESCE(excluded.name, runs.name), "
                "params_trained=excluded.params_trained, "
                "params_embedding=excluded.params_embedding, "
                "params_total=excluded.params_total, versions=excluded.versions",
                (
                    run_id,
                    name,
                    json.dumps(dict(config), sort_keys=True),
                    config.get("model"),
                    config.get("task_data"),
                    method,
                    rank,
                    params_trained,
                    params_embedding,
                    params_total,
                    config.get("max_steps"),
                    json.dumps(dict(versions or library_versions()), sort_keys=True),
                    now,
                ),
            )
        rec = self.get_run(run_id)
        assert rec is not None
        return rec

    def set_status(
        self,
        run_id: str,
        status: str,
        *,
        message: str | None = None,
        diverged_step: int | None = None,
        last_step: int | None = None,
    ) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"bad status {status!r}")
        ended = None if status == "running" else time.time()
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status=?, message=?, diverged_step=?, ended=?, "
                "last_step=COALESCE(?, last_step) WHERE id=?",
                (status, message, diverged_step, ended, last_step, run_id),
            )

    def delete_run(self, run_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM measurements WHERE run_id=?", (run_id,))
            c.execute("DELETE FROM downstream WHERE run_id=?", (run_id,))
            c.execute("DELETE FROM runs WHERE id=?", (run_id,))

    # -- measurements ------------------------------------------------------------------
    def add_measurement(self, run_id: str, step: int, metrics: Mapping[str, Any]) -> bool:
        """Record the metrics after ``step`` updates. Returns False if already there."""
        unknown = set(metrics) - set(METRIC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric columns: {sorted(unknown)}")
        cols = ["run_id", "step", *metrics]
        values = [run_id, int(step), *(_clean(metrics[k]) for k in metrics)]
        with self._tx() as c:
            cur = c.execute(
                f"INSERT OR IGNORE INTO measurements ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)})",
                values,
            )
            c.execute(
                "UPDATE runs SET last_step=MAX(COALESCE(last_step, -1), ?) WHERE id=?",
                (int(step), run_id),
            )
        return cur.rowcount == 1

    def add_downstream(self, run_id: str, step: int, rows: Iterable[Mapping[str, Any]]) -> int:
        """Record downstream results after ``step`` updates (rows with the
        :data:`DOWNSTREAM_COLUMNS`); returns how many were new (a row is written once)."""
        names = [c.name for c in DOWNSTREAM_COLUMNS]
        added = 0
        with self._tx() as c:
            for row in rows:
                unknown = set(row) - set(names)
                if unknown:
                    raise ValueError(f"unknown downstream columns: {sorted(unknown)}")
                cur = c.execute(
                    f"INSERT OR IGNORE INTO downstream (run_id, step, {', '.join(names)}) "
                    f"VALUES ({', '.join('?' for _ in range(len(names) + 2))})",
                    [run_id, int(step), *(_clean(row.get(k)) for k in names)],
                )
                added += cur.rowcount
        return added

    def downstream_steps(self, run_id: str) -> set[int]:
        rows = self.conn.execute("SELECT DISTINCT step FROM downstream WHERE run_id=?", (run_id,))
        return {int(r[0]) for r in rows}

    def downstream(self, run_id: str | None = None) -> pd.DataFrame:
        """Downstream results in long format (:data:`DOWNSTREAM_EXPORT_COLUMNS`)."""
        import pandas as pd

        sql = f"SELECT {', '.join(DOWNSTREAM_EXPORT_COLUMNS)} FROM downstream"
        params: tuple = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            params = (run_id,)
        sql += " ORDER BY run_id, step, rowid"  # a suite's metrics in the order it gave them
        df = pd.read_sql_query(sql, self.conn, params=params)
        try:
            return df.astype({"step": "int64", **{c.name: c.dtype for c in DOWNSTREAM_COLUMNS}})
        except (ValueError, TypeError):
            numeric = ["step", *(c.name for c in DOWNSTREAM_COLUMNS if c.sql != "TEXT")]
            raise not_a_number(self.conn, self.path, "downstream", numeric) or UserError(
                f"results store {self.path} is damaged: its downstream table holds a value "
                "of the wrong type"
            ) from None

    @staticmethod
    def never_made(path: str | Path) -> bool:
        """Whether ``path`` is a store whose making was cut short before its schema was
        committed (its process killed: an empty SQLite file, no table): it holds nothing."""
        try:
            with closing(
                sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
            ) as conn:
                return conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
        except sqlite3.Error:
            return False

    def merge_run(self, other: ResultsStore | str | Path, run_id: str) -> int:
        """Copy run ``run_id`` from the store ``other`` into this one; returns the measurements
        added.

        Idempotent: the run's row takes ``other``'s values (status, last step, ...), and its
        measurements are inserted unless this store already holds that (run, step), so merging
        the same run twice, or a partial run and later the finished one, never writes a
        measurement (or downstream result) twice. One transaction: a process killed while
        merging leaves the store as it was. The columns are those both stores' tables have (read from the schema).
        """
        own = not isinstance(other, ResultsStore)
        src = ResultsStore(other, create=False) if own else other
        try:
            cur = src.conn.execute("SELECT * FROM runs WHERE id=?", (run_id,))
            row = cur.fetchone()
            if row is None:
                return 0
            run_cols = self._common_columns("runs", [d[0] for d in cur.description])
            run_values = dict(zip([d[0] for d in cur.description], row, strict=True))
            cur = src.conn.execute(
                "SELECT * FROM measurements WHERE run_id=? ORDER BY step", (run_id,)
            )
            m_all = [d[0] for d in cur.description]
            m_rows = cur.fetchall()
            has_downstream = src.conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type='table' AND name='downstream'"
            ).fetchone()
            d_all, d_rows = [], []
            if has_downstream:
                cur = src.conn.execute("SELECT * FROM downstream WHERE run_id=?", (run_id,))
                d_all, d_rows = [d[0] for d in cur.description], cur.fetchall()
        finally:
            if own:
                src.close()
        m_cols = self._common_columns("measurements", m_all)
        m_index = [m_all.index(c) for c in m_cols]
        updates = ", ".join(f"{c}=excluded.{c}" for c in run_cols if c != "id")
        with self._tx() as c:
            c.execute(
                f"INSERT INTO runs ({', '.join(run_cols)}) "
                f"VALUES ({', '.join('?' for _ in run_cols)}) "
                f"ON CONFLICT(id) DO UPDATE SET {updates}",
                [run_values[k] for k in run_cols],
            )
            before = c.total_changes
            c.executemany(
                f"INSERT OR IGNORE INTO measurements ({', '.join(m_cols)}) "
                f"VALUES ({', '.join('?' for _ in m_cols)})",
                [[r[i] for i in m_index] for r in m_rows],
            )
            added = c.total_changes - before
            if d_rows:
                d_cols = self._common_columns("downstream", d_all)
                d_index = [d_all.index(col) for col in d_cols]
                c.executemany(
                    f"INSERT OR IGNORE INTO downstream ({', '.join(d_cols)}) "
                    f"VALUES ({', '.join('?' for _ in d_cols)})",
                    [[r[i] for i in d_index] for r in d_rows],
                )
        return added

    def _common_columns(self, table: str, other_columns: list[str]) -> list[str]:
        mine = [d[0] for d in self.conn.execute(f"SELECT * FROM {table} LIMIT 0").description]
        return [c for c in mine if c in set(other_columns)]

    def measured_steps(self, run_id: str) -> set[int]:
        rows = self.conn.execute("SELECT step FROM measurements WHERE run_id=?", (run_id,))
        return {int(r[0]) for r in rows}

    def measurements(self, run_id: str | None = None) -> pd.DataFrame:
        """Measurements joined with their run's method, rank and P (all runs by default)."""
        import pandas as pd

        missing = set(self._missing_columns())  # an older store opened read-only
        select = [f"{expr} AS {name}" for name, expr, _ in _RUN_EXPORT] + [
            f"NULL AS {c}" if c in missing else f"m.{c}" for c in METRIC_COLUMNS
        ]
        sql = f"SELECT {', '.join(select)} FROM measurements m JOIN runs r ON r.id = m.run_id"
        params: tuple = ()
        if run_id is not None:
            sql += " WHERE m.run_id = ?"
            params = (run_id,)
        sql += " ORDER BY r.started, m.run_id, m.step"
        df = pd.read_sql_query(sql, self.conn, params=params)
        dtypes = {name: dtype for name, _, dtype in _RUN_EXPORT if dtype != "object"}
        settings = ", ".join(q.name for q in quantities.run_settings())
        try:
            df = df.astype({**dtypes, **{c.name: c.dtype for c in MEASUREMENT_COLUMNS}})
        except (ValueError, TypeError):
            numeric = ["step", *(c for c in METRIC_COLUMNS if c not in missing)]
            raise not_a_number(self.conn, self.path, "measurements", numeric) or UserError(
                f"results store {self.path} is damaged: its runs table holds a value that is "
                f"not a number where one belongs (method, rank or P; or in its config: {settings})"
            ) from None
        return df[list(EXPORT_COLUMNS)]


def open_store(path: str | Path, *, create: bool = True) -> ResultsStore:
    """Open (and by default create) a results store."""
    return ResultsStore(path, create=create)


def read_measurements(path: str | Path) -> pd.DataFrame:
    """All measurements of a results store as a DataFrame with :data:`EXPORT_COLUMNS`.

    One row per (run, step); ``params_trained`` is P, the trainable non-embedding
    parameter count; ``step`` is N (0 = the base model). Raises :class:`UserError`
    if ``path`` is not a results store.
    """
    with ResultsStore(path, create=False) as store:
        return store.measurements()


def write_table(df: pd.DataFrame, out: str | Path, fmt: str | None = None) -> str:
    """Write a measurements table as csv or parquet; returns the format used."""
    out = Path(out)
    if fmt is None:
        fmt = "parquet" if out.suffix.lower() == ".parquet" else "csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        df.to_csv(out, index=False)
    elif fmt == "parquet":
        try:
            df.to_parquet(out, index=False)
        except ImportError as exc:  # pragma: no cover - pyarrow is a dependency
            raise UserError(f"parquet export needs pyarrow ({exc})") from None
    else:
        raise UserError(f"unknown format {fmt!r}: use csv or parquet")
    return fmt
