"""What makes a SQLite file a forgetscale results store, checked before any write, and the
damage a read meets (a value that is not a number where one belongs) said in one line."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from forgetscale.errors import UserError

TABLES = ("runs", "measurements", "downstream")


@functools.cache
def expected_columns(schema: str, later: tuple[str, ...]) -> dict[str, tuple[set[str], set[str]]]:
    """``table -> (columns every store has, columns a store may have)``, from ``schema``
    (the columns ``later`` were added in later versions: older stores lack them)."""
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(schema)
        out = {}
        for table in TABLES:
            allowed = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            out[table] = (allowed - set(later), allowed)
        return out
    finally:
        conn.close()


def check_columns(
    conn: sqlite3.Connection, path: Path, tables: set[str], schema: str, later: tuple[str, ...]
) -> None:
    """Refuse a file whose ``runs``/``measurements``/``downstream`` tables are not the ones
    forgetscale makes (another program's, or a damaged store), naming the columns."""
    for table, (required, allowed) in expected_columns(schema, later).items():
        if table not in tables:
            continue
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        lacks, extra = sorted(required - have), sorted(have - allowed)
        if lacks:
            what = f"lacks the column(s) {', '.join(lacks[:6])}"
        elif extra:
            what = f"has column(s) forgetscale never writes: {', '.join(extra[:6])}"
        else:
            continue
        raise UserError(
            f"{path} is not a forgetscale results store (or a damaged one): its {table} table {what}"
        )


def not_a_number(
    conn: sqlite3.Connection, path: Path, table: str, columns: Iterable[str]
) -> UserError | None:
    """The first value of ``columns`` in ``table`` that SQLite holds as text or a blob where a
    number belongs (a damaged or hand-edited store), as one line; None when there is none."""
    for column in columns:
        row = conn.execute(
            f"SELECT run_id, step, {column} FROM {table} "
            f"WHERE typeof({column}) NOT IN ('integer', 'real', 'null') LIMIT 1"
        ).fetchone()
        if row is not None:
            return UserError(
                f"results store {path} is damaged: {table}.{column} holds {str(row[2])[:40]!r} "
                f"(not a number) for run {row[0]} at step {row[1]}"
            )
    return None
