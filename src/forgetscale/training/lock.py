"""An exclusive per-run lock, so that two processes never train the same run at once.

There is one lock per (results store, run id), :func:`run_lock_path`, wherever the run
trains: ``train --store S`` takes it, and so does a sweep's worker for the sweep's store
``S`` while it trains the run in its own folder (its measurements reach ``S`` when the
driver merges them), so ``train --store <a sweep's results.db>`` cannot train a run the
sweep is training at the same moment, nor the other way round.
"""

from __future__ import annotations

import os
from pathlib import Path

from forgetscale.errors import UserError


def run_lock_path(store: str | os.PathLike[str], run_id: str) -> Path:
    """The lock file of run ``run_id`` of the results store ``store`` (beside the store)."""
    store = Path(store).absolute()
    return store.with_name(f".{store.name}.{run_id}.lock")


class RunLock:
    """An exclusive lock on a run, so that two processes never train the same run at once.

    ``fcntl.flock`` locks are dropped by the OS when the holder dies (even by SIGKILL),
    so a killed run never leaves a stale lock behind. A holder removes the file as it
    releases; a process that opened the file just before that removal would lock a file no
    longer at ``path`` while a third one locks the new file there, so the lock counts only
    once the locked file is still the one at ``path`` (else it is taken again).
    """

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.fh = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            fh = path.open("a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise UserError(
                    f"run {run_id} is being trained by another process right now ({path} is locked)"
                ) from None
            if _same_inode(fh, path):
                self.fh = fh
                return
            fh.close()  # the file was released and removed under us: lock the one there now
        raise UserError(f"cannot take the lock {path}: it keeps being replaced")

    def release(self) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            self.fh.close()
            self.fh = None


def _same_inode(fh, path: Path) -> bool:
    try:
        here = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)
