"""What the Ray and Slurm executors share: finding this forgetscale from another process,
recording which process trains a run folder."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

WORKER_FILE = "worker.json"


def source_path() -> str | None:
    """The folder this ``forgetscale`` is imported from when that is a source tree (a checkout
    on ``PYTHONPATH`` or an editable install), None when it is an installed package.

    Workers started by a cluster do not always inherit the driver's environment (a Ray cluster
    started elsewhere, ``sbatch --export=NONE``): putting this folder first on their
    ``PYTHONPATH`` makes them run the same code as the driver wherever the folder is visible
    (a shared file system); elsewhere they import the forgetscale installed on the node.
    """
    import forgetscale

    parent = Path(forgetscale.__file__).resolve().parent.parent
    if parent.name in ("site-packages", "dist-packages"):
        return None
    return str(parent)


def note_worker(run_dir: str | os.PathLike[str], executor: str, **extra: Any) -> dict[str, Any]:
    """Record in ``run_dir/worker.json`` which process on which host trains the run now and how
    many times a worker started on this folder (a retry or a requeue starts it again)."""
    path = Path(run_dir) / WORKER_FILE
    try:
        starts = int(json.loads(path.read_text()).get("starts", 0))
    except (OSError, ValueError, AttributeError):
        starts = 0
    info = {
        "executor": executor,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.time(),
        "starts": starts + 1,
        **extra,
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, path)
    return info
