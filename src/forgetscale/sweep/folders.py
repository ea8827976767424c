"""A sweep run's folder, ``<sweep folder>/runs/<run id>/``: its files and how to read them.

The driver writes ``spec.json`` (the run's resolved train config); the worker
(:mod:`forgetscale.sweep.worker`) writes everything else, inside the folder only:

=================  =============================================================
file               what it holds
=================  =============================================================
``spec.json``      ``{"run_id": ..., "config": {...}}``, written by the driver
``results.db``     the run's own results store (one writer: the worker)
``log.txt``        the worker's log, appended to by every attempt
``progress.json``  the latest measured step, rewritten as the run goes on
``status.json``    the run's verdict and timings (with what an update cost),
                   written last, once it stopped
``worker.lock``    held by the worker working in the folder (see :func:`folder_busy`)
``checkpoints/``   the run's checkpoints (resumed from after an interruption)
``adapter/``       the trained adapter (or model), once the run finished
=================  =============================================================

Whoever reads a run folder (the driver, ``sweep --status``, a study) reads it through
:class:`RunFolder`, never by the file names above.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SPEC = "spec.json"
STATUS = "status.json"
PROGRESS = "progress.json"
LOG = "log.txt"
STORE = "results.db"
LOCK = "worker.lock"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"

# statuses a run folder's status.json may hold; finished and diverged are results
RESULT_STATUSES = ("finished", "diverged")


def write_json(path: Path, obj: Any) -> None:
    """Replace ``path`` by ``obj`` as JSON in one step (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file written by :func:`write_json`, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def folder_busy(run_dir: Path) -> bool:
    """Whether a worker is working in ``run_dir`` right now (holds its lock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    path = Path(run_dir) / LOCK
    if not path.exists():
        return False
    with path.open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (see the module docstring); every read answers None when the file is
    absent or unreadable."""

    path: Path

    @property
    def spec_path(self) -> Path:
        return self.path / SPEC

    @property
    def store(self) -> Path:
        return self.path / STORE

    @property
    def log(self) -> Path:
        return self.path / LOG

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def output(self) -> Path:
        """Where the worker saves the trained adapter (or model)."""
        return self.path / ADAPTER

    def spec(self) -> dict[str, Any] | None:
        return read_json(self.spec_path)

    def status(self) -> dict[str, Any] | None:
        """``status.json``: the run's verdict (``status``), ``timings`` and more, once it stopped."""
        return read_json(self.path / STATUS)

    def progress(self) -> dict[str, Any] | None:
        """``progress.json``: the latest measured step while the run goes on."""
        return read_json(self.path / PROGRESS)

    def timings(self) -> dict[str, float]:
        """Where the run's time went (seconds per part), from its status; empty when none."""
        timings = (self.status() or {}).get("timings") or {}
        return {k: v for k, v in timings.items() if isinstance(v, (int, float))}

    def costs(self) -> dict[str, float]:
        """What an update cost in the run's last call (its status's ``timings.per_update``:
        task and replay tokens, KL positions and the KL term's seconds per update, step
        seconds per update, the mitigations' setup seconds); empty when none."""
        timings = (self.status() or {}).get("timings") or {}
        return dict(timings.get("per_update") or {})

    def adapter(self) -> Path | None:
        """The trained adapter's folder, when the run saved one."""
        return self.output if (self.output / "adapter_config.json").is_file() else None

    def busy(self) -> bool:
        return folder_busy(self.path)
