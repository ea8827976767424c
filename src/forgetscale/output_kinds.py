"""What an output may replace: each kind of file a command writes, recognised by its content.

:func:`forgetscale.outputs.check_output` replaces an existing file only when it is
recognisably of the same kind as the output (a fit over a fit, a figure over a figure);
a results store and the files SQLite keeps beside one are never replaced. Every recogniser
reads at most the file's head (a reference's safetensors header, a CSV's first line, a
PNG's ``Software`` text), so checking costs nothing next to the work.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


_SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


_WAL_MAGIC = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")


def is_sqlite_companion(path: Path) -> bool:
    """``path`` is (or would be) the WAL, shared-memory or rollback journal of a SQLite
    file beside it, or is a WAL file whatever its name (it may hold measurements that a
    killed writer left only there)."""
    for suffix in _SQLITE_COMPANIONS:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            if is_sqlite(path.with_name(path.name[: -len(suffix)])):
                return True
    return path.is_file() and _head(path, 4) in _WAL_MAGIC


_PEEK = 1 << 16


def _head(path: Path, n: int = _PEEK) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def _json_object(path: Path, limit: int = 1 << 30) -> dict | None:
    try:
        if path.stat().st_size > limit:
            return None
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return None
    return d if isinstance(d, dict) else None


def json_format_is(prefix: str) -> Callable[[Path], bool]:
    """A JSON object whose ``format`` key starts with ``prefix`` (our files say what they are)."""

    def check(path: Path) -> bool:
        d = _json_object(path)
        return d is not None and str(d.get("format", "")).startswith(prefix)

    return check


def _is_evaluate_report(path: Path) -> bool:
    d = _json_object(path)
    return d is not None and set(d) == {"model", "adapter", "base", "suites"}


def _is_generations(path: Path) -> bool:
    first = _head(path).split(b"\n", 1)[0]
    try:
        d = json.loads(first.decode("utf-8"))
    except ValueError:
        return False
    return isinstance(d, dict) and "suite" in d


def _csv_header(path: Path) -> list[str]:
    line = _head(path, 1 << 14).split(b"\n", 1)[0].rstrip(b"\r")
    try:
        return [c.strip('"') for c in line.decode("utf-8").split(",")]
    except UnicodeDecodeError:
        return []


def _is_table(path: Path) -> bool:
    """A measurements or downstream table ``export`` wrote (csv or parquet)."""
    head = _head(path, 4)
    if head == b"PAR1":
        try:
            import pyarrow.parquet as pq

            return "run_id" in pq.read_schema(path).names
        except Exception:
            return False
    return _csv_header(path)[:1] == ["run_id"]


def _is_figure_table(path: Path) -> bool:
    """The data of a figure ``fit --plots`` drew (csv), or its empty table."""
    header = _csv_header(path)
    if {"params_trained", "step"} <= set(header):
        return True
    return path.is_file() and _head(path).strip() in (b"", b'""')  # a figure without data


PNG_SOFTWARE = "forgetscale"
"""The ``Software`` text of the PNG figures we write (how a later run recognises them)."""


def _is_figure_png(path: Path) -> bool:
    head = _head(path, 1 << 12)
    return head.startswith(b"\x89PNG") and b"Software\x00" + PNG_SOFTWARE.encode() in head


def _is_reference(path: Path) -> bool:
    """A safetensors file whose header says it is a forgetscale reference."""
    head = _head(path, 8)
    if len(head) < 8:
        return False
    n = int.from_bytes(head, "little")
    if not 0 < n < 1 << 26:
        return False
    try:
        with path.open("rb") as f:
            f.seek(8)
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, ValueError):
        return False
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return isinstance(meta, dict) and str(meta.get("format", "")).startswith(
        "forgetscale.reference/"
    )


def _is_report_html(path: Path) -> bool:
    return b"<title>forgetscale study report</title>" in _head(path, 1 << 12)


OUTPUT_KINDS: dict[str, tuple[str, Callable[[Path], bool]]] = {
    "fit": ("a forgetscale fit", json_format_is("forgetscale-fit/")),
    "reference": ("a forgetscale reference", _is_reference),
    "table": ("a table forgetscale exported (its header starts with run_id)", _is_table),
    "figure-png": ("a figure forgetscale drew", _is_figure_png),
    "figure-csv": ("a figure table forgetscale wrote", _is_figure_table),
    "evaluate": ("an evaluate report", _is_evaluate_report),
    "generations": ("a generations file evaluate wrote", _is_generations),
    "report-json": ("a study report", json_format_is("forgetscale-study-report/")),
    "report-html": ("a study report", _is_report_html),
}
"""Every kind of file a command writes: ``kind -> (what it is, is this file one?)``.

An output may replace an existing file only when it is recognisably of the same kind
(see :func:`check_output`); anything else (a config, a corpus, a user's own file of the
same name) is refused."""
