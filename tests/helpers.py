"""Helpers shared by the tests: the shipped minimal config and tiny-model configs, the check
of a one-line refusal, a WAL store in a read-only folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from forgetscale.config import build_config

# the minimal config as shipped in configs/ (it must run as it is)
MINIMAL = (Path(__file__).resolve().parent.parent / "configs" / "minimal.yaml").read_text()


def tiny_config(workdir: Path, **overrides):
    """The minimal config (quiet, a small forgetting budget) with ``overrides``."""
    import yaml

    values = yaml.safe_load(MINIMAL)
    values.update(progress=False, forgetting_max_tokens=1024)
    values.update(overrides)
    return build_config(values, base_dir=workdir)


def tiny_causal_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir)


def one_line_error(
    capsys, argv, match: str = "", *, command: str | None = None, quiet=False, after_status=False
) -> str:
    """Expect a command-line refusal: exit code 2, one line on stderr containing ``match``,
    no traceback; returns that line.

    ``argv``: the arguments to run ``forgetscale`` with (argparse's own exits count), or the
    exit code of a call already made. ``command``: the line starts ``forgetscale COMMAND:
    error:``. ``quiet``: nothing on stdout either. ``after_status``: status lines may come
    before the error, which is then the last line.
    """
    from forgetscale.cli import main

    if isinstance(argv, int):
        code = argv
    else:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse's own checks (types, choices) exit 2 themselves
            code = exc.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines, "nothing on stderr"
    if not after_status:
        assert len(lines) == 1, err
    line = lines[-1]
    if command is not None:
        assert line.startswith(f"forgetscale {command}: error:"), line
    if quiet:
        assert captured.out == "", captured.out
    assert match in line, err
    return line


WAL_NAME = "only in the wal"


@contextmanager
def read_only_wal_store(
    db: Path,
    fill: Callable[[Path], object],
    last_write: str = f"UPDATE runs SET name = '{WAL_NAME}'",
) -> Iterator[Path]:
    """The store ``db`` in a folder nobody can write to, its last write still in its -wal file.

    ``db``'s folder becomes a small tmpfs (the test is skipped without root to mount it);
    ``fill(db)`` writes the store, then a process runs ``last_write`` and ends without the
    checkpoint (as a killed writer does), the -shm is removed, and the folder is made read-only
    (remounted, or mode 0o555 when not root). SQLite cannot make the -shm it needs to read
    such a store, so a reader must read a private copy, the -wal's rows included."""
    import os
    import subprocess
    import sys

    import pytest
    from filesystems import tmpfs

    folder = db.parent
    with tmpfs(folder, size="4m"):
        fill(db)
        code = (
            "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('PRAGMA wal_autocheckpoint = 0'); "
            "c.execute(sys.argv[2]); c.commit(); os._exit(0)"
        )
        subprocess.run([sys.executable, "-c", code, str(db), last_write], check=True)
        Path(f"{db}-shm").unlink(missing_ok=True)
        assert Path(f"{db}-wal").stat().st_size > 0
        if os.geteuid() == 0:
            proc = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
            if proc.returncode != 0:
                pytest.skip(f"cannot remount read-only: {proc.stderr.decode().strip()}")
        else:
            folder.chmod(0o555)
        try:
            yield db
        finally:
            if os.geteuid() != 0:
                folder.chmod(0o755)
