"""An exclusive per-run lock, so that two processes never train the same run at once."""

from __future__ import annotations

from pathlib import Path

from forgetscale.errors import UserError


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
