"""Outputs: paths checked before any work, files written atomically, strict JSON.

Every command that writes a file goes through this module:

- :func:`check_output` runs first, before any model is loaded or any table read,
  and refuses an output that is one of the command's own inputs (the results
  store, the corpus, the model's files), a folder, a folder that does not exist
  or a place that cannot be written (it really creates and removes a temporary
  file next to the target, so permissions, read-only mounts and quotas all show).
- :func:`atomic_output` (and :func:`atomic_write` for bytes or text in memory)
  writes to a temporary file in the target's folder, fsyncs it and renames it
  over the target: a reader sees the old file or the new one, never half of
  one. The temporary file is removed on any failure, a full disk or a refused
  write becomes one :class:`~forgetscale.errors.UserError` line naming the path.
- :class:`StagedOutputs` writes several files (a fit and its figures) that appear together
  or not at all; :func:`json_safe` and :func:`dumps` make any result strict JSON.
- Temporary files left by a writer that was killed (``SIGKILL``, power loss)
  are removed by the next write to the same target: their names carry the host
  and process id of the writer, so only files of writers that are gone are
  touched.

A target that exists and is not a regular file (``/dev/null``, a named pipe) is
written in place: renaming over a device would replace it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from forgetscale.errors import UserError
from forgetscale.output_kinds import OUTPUT_KINDS, is_sqlite, is_sqlite_companion

TMP_SUFFIX = ".tmp"
STALE_AFTER_S = 24 * 3600.0
"""A temporary file of another host is removed once it is this old (its writer is surely gone)."""

_WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EFBIG: "the file is too large for this file system",
    errno.EIO: "an input/output error (a failing disk or a lost network mount)",
}
_OS_ERROR_IN_TEXT = re.compile(r"os error (\d+)|\[errno (\d+)\]", re.IGNORECASE)

StrPath = str | os.PathLike[str]


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def tmp_name(path: StrPath) -> Path:
    """A fresh temporary name next to ``path``: ``.NAME.HOST.PID.RANDOM.tmp``."""
    path = Path(path)
    return path.with_name(
        f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}"
    )


def _writer_gone(host: str, pid: int, mtime: float) -> bool:
    if host != _host():
        return time.time() - mtime > STALE_AFTER_S
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # a live process of another user
        return False
    return False


def remove_stale_tmp(path: StrPath) -> list[Path]:
    """Remove temporary files of ``path`` whose writer is gone; returns the removed paths."""
    path = Path(path)
    folder = path.parent
    pattern = re.compile(
        re.escape(f".{path.name}.")
        + r"(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+"
        + re.escape(TMP_SUFFIX)
        + "$"
    )
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime
            if not entry.is_file(follow_symlinks=False):
                continue
            if _writer_gone(match["host"], int(match["pid"]), mtime):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist, so writing one cannot replace the other
        return False


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def _describe(exc: OSError) -> str:
    return _WRITE_ERRNOS.get(exc.errno or 0) or exc.strerror or str(exc)


def check_output(
    path: StrPath,
    *,
    inputs: Iterable[StrPath | tuple[StrPath, str] | None] = (),
    what: str = "--out",
    create_parents: bool = False,
    replaceable: Callable[[Path], bool] | None = None,
    replaceable_what: str = "an output of this command",
    needed: int | None = None,
    kind: str | None = None,
) -> Path:
    """Check that ``path`` can be written, before any work; returns it (``~`` expanded).

    Refuses (with a :class:`UserError` naming ``what`` and the path) a path that
    is, or resolves to, one of ``inputs``, an existing file inside an input that
    is a folder (a model folder's weights), a folder, a path whose folder does not
    exist (unless ``create_parents``: then the nearest existing folder must be
    writable) and a folder where a temporary file cannot be created.
    ``None`` entries of ``inputs`` are ignored, so optional inputs can be passed as they are;
    an input given as ``(path, flag)`` is named by its flag in the error.

    An existing SQLite file (a results store) and SQLite's ``-wal``/``-shm``/``-journal``
    files beside one are never replaced; another existing file is replaced only when it is
    recognisably an output of the same ``kind`` (one of :data:`OUTPUT_KINDS`: a file this
    command wrote before), or when ``replaceable(path)`` says yes (``replaceable_what`` names
    what it must be). Without either, an existing regular file is never replaced.
    With ``needed`` (bytes), the free space is checked too (:func:`check_space`).
    """
    raw, path = str(path), Path(path).expanduser()
    if raw.endswith(("/", os.sep)) or not path.name or path.name in (".", ".."):
        raise UserError(f"{what} {path} is a folder; give a file name")
    for given in inputs:
        if given is None:
            continue
        given, flag = given if isinstance(given, tuple) else (given, None)
        source = Path(given).expanduser()
        if _same_file(path, source):
            named = f"the input given to {flag}" if flag else f"an input of this command ({source})"
            raise UserError(f"{what} {path} is {named}; writing there would replace it")
        if source.is_dir() and path.exists() and _is_inside(path, source):
            raise UserError(
                f"{what} {path} would replace a file inside the input folder {source}; "
                "give a path outside it"
            )
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    if path.is_file() and is_sqlite(path):
        raise UserError(
            f"{what} {path} is a SQLite file (a results store?); refusing to replace it"
        )
    if is_sqlite_companion(path):
        raise UserError(
            f"{what} {path} is a file SQLite keeps beside a results store "
            "(it may hold measurements not yet in the store); refusing to replace it"
        )
    if kind is not None:
        replaceable_what, replaceable = OUTPUT_KINDS[kind]
    if path.is_file() and (replaceable is None or not replaceable(path)):
        raise UserError(
            f"{what} {path} exists and is not {replaceable_what}; refusing to replace it "
            "(remove it or choose another name)"
        )
    if path.exists() and not path.is_file():  # /dev/null, a pipe: written in place
        if not os.access(path, os.W_OK):
            raise UserError(f"cannot write {what} {path}: permission denied")
        return path
    parent = path.parent
    if not parent.is_dir():
        if parent.exists():
            raise UserError(f"cannot write {what} {path}: {parent} is not a folder")
        if not create_parents:
            raise UserError(f"cannot write {what} {path}: folder {parent} does not exist")
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise UserError(f"cannot write {what} {path}: {parent} is not a folder")
    probe = tmp_name(parent / path.name)
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {_describe(exc)}") from None
    os.close(fd)
    with suppress(OSError):
        os.unlink(probe)
    if needed is not None:
        check_space(path, needed, what=what)
    return path


def check_output_folder(
    folder: StrPath,
    names: Iterable[str] | Mapping[str, str],
    *,
    inputs: Iterable[StrPath | tuple[StrPath, str] | None] = (),
    what: str = "--out",
    needed: int | None = None,
    kind: str | None = None,
) -> Path:
    """Check, before any work, that the files ``names`` may be written into ``folder``
    (created if missing); see :func:`check_output`. ``names`` maps each file to its
    kind (:data:`OUTPUT_KINDS`), or lists them when they all are of ``kind``."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder")
    inputs = list(inputs)
    kinds = dict(names) if isinstance(names, Mapping) else dict.fromkeys(names, kind)
    for name, file_kind in kinds.items():
        check_output(folder / name, inputs=inputs, what=what, create_parents=True, kind=file_kind)
    if needed is not None:
        check_space(folder / "x", needed, what=what)
    return folder


def check_folder(folder: StrPath, *, what: str) -> Path:
    """Check, before any work, that ``folder`` is (or can be made as) a folder files can be
    written into: it is not a file, and it (or its nearest existing parent) is writable.
    Nothing is created."""
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"cannot make {what} {folder}: {existing} is not a folder")
    probe = tmp_name(existing / "probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        verb = "write into" if existing == folder else "make"
        raise UserError(f"cannot {verb} {what} {folder}: {_describe(exc)}") from None
    os.close(fd)
    with suppress(OSError):
        os.unlink(probe)
    return folder


def check_space(path: StrPath, needed: int, *, what: str = "--out") -> None:
    """Refuse, before the work, an output of about ``needed`` bytes that cannot fit.

    The free space of the folder ``path`` goes to (or its nearest existing parent) is
    compared with ``needed``; a write can still fail later (another writer fills the
    disk), which :func:`atomic_output` reports as one line.
    """
    folder = Path(path).expanduser().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if needed > free:
        raise UserError(
            f"cannot write {what} {path}: it needs about {_size(needed)} and the disk has "
            f"{_size(free)} free"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _fsync_path(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some file systems do not open folders; the rename is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


def write_error(exc: BaseException) -> OSError | None:
    """The write error behind ``exc`` (full disk, permission, read-only file system, I/O):
    an :class:`OSError`, or a library error whose text names one (safetensors says
    ``... (os error 28)``, pyarrow ``[errno 28] ...``). ``None`` for anything else."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc if exc.errno in _WRITE_ERRNOS else None
    match = _OS_ERROR_IN_TEXT.search(str(exc))
    if match is None:
        return None
    code = int(match.group(1) or match.group(2))
    return OSError(code, os.strerror(code)) if code in _WRITE_ERRNOS else None


@contextmanager
def atomic_output(path: StrPath, *, what: str = "--out") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The caller writes the whole file to the yielded path (any library's ``save``
    will do). On leaving the block the file is fsynced and renamed over ``path``;
    if the block raises, the temporary file is removed and ``path`` is untouched.
    Write errors (full disk, permission, read-only file system), also when a library
    wraps them, become one :class:`UserError` line naming ``path``. Temporary files
    of earlier writers of ``path`` that were killed are removed first.

    Example:
        >>> with atomic_output("table.csv") as tmp:
        ...     df.to_csv(tmp, index=False)
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_file() and not path.is_dir():  # a device or a pipe
        try:
            yield path
        except Exception as exc:
            os_error = write_error(exc)
            if os_error is None:
                raise
            raise UserError(f"cannot write {what} {path}: {_describe(os_error)}") from exc
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {what} {path}: {_describe(exc)}") from None
    remove_stale_tmp(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp)
        os_error = write_error(exc) if isinstance(exc, Exception) else None
        if os_error is None:
            raise
        raise UserError(f"cannot write {what} {path}: {_describe(os_error)}") from exc


def atomic_write(path: StrPath, data: bytes | str, *, what: str = "--out") -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; see :func:`atomic_output`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path).expanduser()
    with atomic_output(path, what=what) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
            fh.flush()
    return path


# ------------------------------------------------------------------------------------------
# several files at once, and strict JSON


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
            raise UserError(f"cannot write {option} {path}: {_describe(exc)}") from None
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
            items = value.tolist() if hasattr(value, "tolist") else list(value)
            if not isinstance(items, list):  # a numpy or torch scalar
                return clean(items, where)
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(items)]
        if isinstance(value, float) and not math.isfinite(value):
            notes.append(f"{where or 'value'} was {value} (written as null)")
            return None
        return value

    return clean(obj, ""), notes


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON of ``obj`` (through :func:`json_safe`: never NaN, never invalid JSON)."""
    return json.dumps(json_safe(obj)[0], allow_nan=False, default=str, **kwargs)
