"""Real file systems for the output-path tests: a full disk and a read-only folder.

Both are tmpfs mounts, which need root; without it the test that asks is skipped
with the reason. A read-only folder is also made by permissions when not root
(root ignores permission bits, so it needs the mount).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tmpfs(path: Path, *, size: str = "64k", readonly: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``path`` (read-only if asked) for the block."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({proc.stderr.strip() or 'mount failed'}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextmanager
def full_disk(path: Path, *, size: str = "64k") -> Iterator[Path]:
    """A folder on a tiny tmpfs, filled to the last byte."""
    with tmpfs(path, size=size) as folder:
        with open(folder / "filler", "wb", buffering=0) as fh:
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        yield folder


@contextmanager
def readonly_folder(path: Path) -> Iterator[Path]:
    """A folder nobody can create files in (a read-only mount as root, else mode 0o555)."""
    if os.geteuid() == 0:
        with tmpfs(path, readonly=True) as folder:
            yield folder
        return
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o555)
    try:
        yield path
    finally:
        path.chmod(0o755)
