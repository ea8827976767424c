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
    so a killed run never leaves a stale lock behind.
    """

    def __init__(self, path: Path, run_id: str):
        self.path = path
        self.fh = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            self.fh = None
            raise UserError(
                f"run {run_id} is being trained by another process right now ({path} is locked)"
            ) from None

    def release(self) -> None:
        if self.fh is not None:
            self.path.unlink(missing_ok=True)
            self.fh.close()
            self.fh = None
