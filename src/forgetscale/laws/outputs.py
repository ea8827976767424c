"""Writing what ``fit``, ``predict`` and ``compare`` produce, without ever losing data.

- :func:`check_output_file` and :func:`check_output_folder` refuse, before any work,
  an output that would replace an input or a results store, that is a folder where a
  file is meant (or the reverse), that cannot be written, or that has no room.
- :class:`StagedOutputs` writes every file to a temporary name beside its target and
  renames them all into place only when all were written: a failure (a full disk)
  leaves the old files as they were and no temporary file behind.
- :func:`json_safe` makes any result strict JSON: NaN and infinities become ``null``,
  with a note saying which values they were.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from forgetscale.errors import UserError

SQLITE_MAGIC = b"SQLite format 3\x00"

#: ``(path, option)`` of an input that no output may replace, e.g. ``("runs.db", "--from")``.
Input = tuple[str | Path, str]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    for parent in path.parents:
        if parent.exists():
            return parent
    return Path(path.anchor)


def _check_room(folder: Path, option: str, size: int) -> None:
    """``folder`` (existing or to be created) can take ``size`` bytes of new files."""
    target = folder if folder.exists() else _existing_ancestor(folder / "x")
    if not target.is_dir():
        raise UserError(f"{option}: {target} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=target, prefix=".forgetscale-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{option}: cannot write in {target}: {exc.strerror or exc}") from None
    stats = os.statvfs(target)
    free = stats.f_bavail * stats.f_frsize
    if free < size:
        raise UserError(
            f"{option}: no room in {target}: {free} bytes free, the output needs about {size}"
        )


def _check_target(
    path: Path,
    option: str,
    inputs: Sequence[Input],
    replaceable: Callable[[Path], bool] | None,
    what: str,
) -> None:
    for source, flag in inputs:
        if _same_file(path, Path(source)):
            raise UserError(
                f"{option}: {path} is the input given to {flag}; writing there would replace it"
            )
    if not path.exists():
        return
    if path.is_dir():
        raise UserError(f"{option}: {path} is a folder, not a file")
    if _is_sqlite(path):
        raise UserError(
            f"{option}: {path} is a SQLite file (a results store?); refusing to replace it"
        )
    if replaceable is not None and not replaceable(path):
        raise UserError(f"{option}: {path} exists and is not {what}; refusing to replace it")


def check_output_file(
    path: str | Path,
    option: str,
    *,
    inputs: Sequence[Input] = (),
    size: int = 64 * 1024,
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "an output of this command",
) -> Path:
    """Check, before any work, that ``path`` may be written; return it.

    Args:
        path: The output file.
        option: The flag that named it, for the error line (``"--save"``).
        inputs: ``(path, flag)`` of the command's inputs: the output must not be one.
        size: Bytes the output needs, about (checked against the free space).
        replaceable: When ``path`` exists, it is replaced only if this says yes
            (e.g. "is an earlier fit"); ``what`` names what it should be.
    """
    raw, path = str(path), Path(path)
    if raw.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
        raise UserError(f"{option}: {path} names a folder, not a file")
    _check_target(path, option, inputs, replaceable, what)
    _check_room(path.parent if str(path.parent) else Path("."), option, size)
    return path


def check_output_folder(
    folder: str | Path,
    option: str,
    names: Sequence[str],
    *,
    inputs: Sequence[Input] = (),
    size: int = 4 * 1024 * 1024,
) -> Path:
    """Check, before any work, that the files ``names`` may be written into ``folder``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{option}: {folder} is a file, not a folder")
    for name in names:
        _check_target(folder / name, option, inputs, None, "")
    _check_room(folder, option, size)
    return folder


class StagedOutputs:
    """Files written beside their targets under temporary names, renamed in together.

    Use as a context manager: leaving it normally renames every staged file into
    place; an exception (or a failed write) removes every temporary file and every
    folder it created, so nothing is half-written::

        with StagedOutputs() as out:
            out.write_text("fit.json", text, "--save")
            out.write("figs/a.png", lambda tmp: fig.savefig(tmp, format="png"), "--plots")
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []
        self._made: list[Path] = []

    def write(self, path: str | Path, writer: Callable[[Path], None], option: str) -> Path:
        """Stage ``path``: ``writer(tmp)`` writes the content to a temporary file."""
        path = Path(path)
        tmp = None
        try:
            missing, folder = [], path.parent.absolute()
            while not folder.exists():
                missing.append(folder)
                folder = folder.parent
            for folder in reversed(missing):
                folder.mkdir()
                self._made.append(folder)
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            tmp = Path(name)
            self._staged.append((tmp, path))
            writer(tmp)
            with tmp.open("rb+") as f:
                os.fsync(f.fileno())
        except OSError as exc:
            self.discard()
            raise UserError(f"{option}: cannot write {path}: {exc.strerror or exc}") from None
        return path

    def write_text(self, path: str | Path, text: str, option: str) -> Path:
        return self.write(path, lambda tmp: tmp.write_text(text), option)

    def commit(self) -> list[Path]:
        """Rename every staged file into place; returns their paths."""
        done = []
        for tmp, final in self._staged:
            os.replace(tmp, final)
            done.append(final)
        self._staged, self._made = [], []
        return done

    def discard(self) -> None:
        """Remove the temporary files and the folders made for them."""
        for tmp, _ in self._staged:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self._staged, self._made = [], []

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def json_safe(obj: Any) -> tuple[Any, list[str]]:
    """``obj`` with every NaN or infinite float replaced by ``None``, and notes saying where.

    Numpy scalars and arrays become plain Python numbers and lists, so the result
    always serialises with ``json.dumps(..., allow_nan=False)``.
    """
    notes: list[str] = []

    def clean(value: Any, where: str) -> Any:
        if isinstance(value, Mapping):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
            items = value.tolist() if hasattr(value, "tolist") else value
            if not isinstance(items, list):
                return clean(items, where)
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(items)]
        if isinstance(value, float) and not math.isfinite(value):
            notes.append(f"{where or 'value'} was {value} (written as null)")
            return None
        return value

    return clean(obj, ""), notes


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON of an object already passed through :func:`json_safe`."""
    return json.dumps(obj, allow_nan=False, **kwargs)
