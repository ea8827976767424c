"""The worker of one sweep run: train the run inside its own folder.

``RUN_DIR/spec.json`` (written by the driver) holds ``{"run_id": ..., "config": {...}}``, the
run's resolved train config whose ``store``, ``checkpoint_dir``, ``output_dir`` point into
``RUN_DIR`` and whose ``reference_dir`` is the sweep's shared reference folder. The worker
writes nothing outside ``RUN_DIR`` (and the reference folder, when the driver has not built
the reference yet): its measurements go to ``RUN_DIR/results.db`` (one writer, on the
worker's own file: SQLite over a network file system is never shared), its log to
``RUN_DIR/log.txt``, and ``RUN_DIR/status.json`` last, once the run stopped.

Started again on a folder whose run was interrupted, it resumes from the checkpoint there.

Run it as ``python -m forgetscale.sweep.worker RUN_DIR`` or call :func:`run_folder`.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

SPEC = "spec.json"
STATUS = "status.json"
LOG = "log.txt"
STORE = "results.db"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    os.replace(tmp, path)


def run_folder(run_dir: str | os.PathLike[str], *, threads: int | None = None) -> dict[str, Any]:
    """Train the run described by ``run_dir/spec.json``; returns what it writes to status.json.

    ``threads``: torch intra-op threads for this worker (None = leave torch's default); set it
    when several workers share one machine's cores.
    """
    import torch

    from forgetscale.config import build_config
    from forgetscale.training import train

    run_dir = Path(run_dir)
    spec = json.loads((run_dir / SPEC).read_text())
    if threads:
        torch.set_num_threads(threads)
    status: dict[str, Any] = {"run_id": spec["run_id"], "host": os.uname().nodename}
    t0 = time.time()
    with (run_dir / LOG).open("a", buffering=1) as log_file:

        def log(msg: str) -> None:
            print(msg, file=log_file, flush=True)

        try:
            config = build_config(spec["config"])
            if config.run_id != spec["run_id"]:
                raise RuntimeError(
                    f"{run_dir / SPEC} resolves to run {config.run_id}, not {spec['run_id']}"
                )
            result = train(config, log=log)
            status.update(
                status=result.status,
                steps=result.steps,
                message=result.message,
                diverged_step=result.diverged_step,
            )
        except BaseException as exc:  # the folder must say why, whatever happened
            log(traceback.format_exc())
            status.update(status="failed", message=f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, Exception):
                status["wall_s"] = time.time() - t0
                _write_json(run_dir / STATUS, status)
                raise
    status["wall_s"] = time.time() - t0
    _write_json(run_dir / STATUS, status)
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m forgetscale.sweep.worker RUN_DIR", file=sys.stderr)
        return 2
    threads = int(os.environ.get("FORGETSCALE_THREADS", "0")) or None
    status = run_folder(args[0], threads=threads)
    return 0 if status["status"] in ("finished", "diverged") else 1


if __name__ == "__main__":
    sys.exit(main())
