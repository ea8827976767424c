"""The worker of one sweep run: train the run inside its own folder.

``RUN_DIR/spec.json`` (written by the driver) holds ``{"run_id": ..., "config": {...}}``, the
run's resolved train config whose ``store``, ``checkpoint_dir``, ``output_dir`` point into
``RUN_DIR`` and whose ``reference_dir`` is the sweep's shared reference folder. The folder's
files are listed, and read, by :mod:`forgetscale.sweep.folders`. Training a run, the worker
writes nothing outside ``RUN_DIR``: the sweep's references are built before any run is
dispatched, where the runs run (:mod:`forgetscale.sweep.references`; the local executor asks
its first worker to build them, see :func:`serve`). Its measurements go to
``RUN_DIR/results.db`` (one writer, on the worker's own file: SQLite over a network file
system is never shared), its log to ``RUN_DIR/log.txt``, its latest measured step to
``RUN_DIR/progress.json`` (a plain file the driver may read while the run goes on), and
``RUN_DIR/status.json`` last, once the run stopped.

Started again on a folder whose run was interrupted, it resumes from the checkpoint there.
Two workers on one folder (a job requeued while its first attempt still runs) take turns:
the second waits for the first's lock on ``RUN_DIR/worker.lock``, then finds the run done or
resumes it.

Run it as ``python -m forgetscale.sweep.worker RUN_DIR`` or call :func:`run_folder`.
``python -m forgetscale.sweep.worker --serve`` is the local executor's long-lived worker:
it reads one run folder per line on stdin and answers each with its status as one JSON line
on stdout (so torch and transformers are imported once per worker, not once per run); a
``{"references": [config, ...]}`` line has it build the sweep's references first.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from forgetscale.sweep.folders import (  # noqa: F401 - the run folder's format, re-exported
    LOCK,
    LOG,
    PROGRESS,
    RESULT_STATUSES,
    SPEC,
    STATUS,
    STORE,
    folder_busy,
    read_json,
)
from forgetscale.sweep.folders import write_json as _write_json


@contextlib.contextmanager
def _folder_lock(run_dir: Path, log):
    """Exclusive lock on the run folder for as long as the worker works in it (dropped by the
    OS when the process dies, even by SIGKILL)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with (run_dir / LOCK).open("a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            log(f"another worker holds {run_dir / LOCK}; waiting for it to stop")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _ProgressWriter(threading.Thread):
    """Copies the run's latest measurement from its own store to ``progress.json`` (a file
    the driver can read safely from another machine), once a second."""

    def __init__(self, run_dir: Path):
        super().__init__(daemon=True, name="progress")
        self.run_dir = run_dir
        self.stop = threading.Event()
        self.last: tuple | None = None

    def poll(self) -> None:
        db = self.run_dir / STORE
        if not db.is_file():
            return
        try:
            conn = sqlite3.connect(str(db), timeout=1.0)  # (read-only ones leave -wal files)
            try:
                row = conn.execute(
                    "SELECT step, finetune_loss, forgetting_loss, wall_s, "
                    "(SELECT COUNT(*) FROM measurements) FROM measurements "
                    "ORDER BY step DESC LIMIT 1"
                ).fetchone()
            finally:
                conn.close()
        except sqlite3.Error:
            return
        if row is None or row == self.last:
            return
        self.last = row
        step, l_ft, l_f, wall, n = row
        _write_json(
            self.run_dir / PROGRESS,
            {
                "step": step,
                "finetune_loss": l_ft,
                "forgetting_loss": l_f,
                "wall_s": wall,
                "measurements": n,
                "time": time.time(),
            },
        )

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.poll()

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=5)
        self.poll()


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

        with _folder_lock(run_dir, log):
            (run_dir / STATUS).unlink(missing_ok=True)  # an earlier attempt's verdict
            log(f"worker {os.getpid()} on {status['host']}: run {spec['run_id']} ({time.ctime()})")
            progress = _ProgressWriter(run_dir)
            progress.start()
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
                    timings=result.timings(),
                )
            except Exception as exc:  # the folder must say why the run failed
                log(traceback.format_exc())
                status.update(status="failed", message=f"{type(exc).__name__}: {exc}")
            except BaseException as exc:  # interrupted (preempted, Ctrl-C): no verdict, it resumes
                log(f"worker {os.getpid()}: interrupted ({type(exc).__name__}); the run resumes")
                progress.close()
                raise
            progress.close()
            status["wall_s"] = time.time() - t0
            _write_json(run_dir / STATUS, status)
    return status


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies (a driver
    killed with SIGKILL leaves no orphan training on)."""
    parent = int(os.environ.get("FORGETSCALE_PARENT_PID", "0") or 0)
    if not parent or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover
        return
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def serve(threads: int | None = None) -> int:
    """The local executor's worker: one run folder per stdin line, one JSON status line back.

    While a run trains, this process's stdout and stderr go to the run's log (so library
    warnings and tracebacks land there); answers go to the original stdout.
    """
    _die_with_parent()
    _quiet_libraries()
    # import what a run needs now, while the driver plans the sweep
    import peft  # noqa: F401

    import forgetscale.training  # noqa: F401

    # what is loaded now lives as long as the worker: keep it out of the collections after
    # each run (a full collection over torch and transformers takes ~0.2 s; over one run's
    # leftovers next to nothing)
    gc.collect()
    gc.freeze()
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    idle_err = os.dup(2)
    os.dup2(idle_err, 1)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request = json.loads(line)
        if "references" in request:  # the sweep's references, before any run
            from forgetscale.sweep.references import build_here

            def log(message: str) -> None:
                answers.write(json.dumps({"log": message}) + "\n")

            answer = build_here(request["references"], threads=threads, log=log)
            answers.write(json.dumps({**answer, "lines": []}) + "\n")  # lines sent already
            continue
        run_dir = Path(request["run_dir"])
        with (run_dir / LOG).open("a") as log_file:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(log_file.fileno(), 1)
            os.dup2(log_file.fileno(), 2)
            try:
                status = run_folder(run_dir, threads=threads)
            except BaseException as exc:  # noqa: BLE001 - answered, then the worker goes on
                status = {"status": "failed", "message": f"{type(exc).__name__}: {exc}"}
                if not isinstance(exc, Exception):
                    raise
            finally:
                sys.stdout.flush(), sys.stderr.flush()
                os.dup2(idle_err, 1)
                os.dup2(idle_err, 2)
        gc.collect()  # the run's model and optimizer, before the next one loads
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass
        answers.write(json.dumps({"run_dir": str(run_dir), **status}) + "\n")
    answers.flush()
    os._exit(0)  # nothing left to write; skip the slow interpreter teardown


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    threads = int(os.environ.get("FORGETSCALE_THREADS", "0") or 0) or None
    if args == ["--serve"]:
        return serve(threads)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m forgetscale.sweep.worker RUN_DIR | --serve", file=sys.stderr)
        return 2
    _quiet_libraries()
    status = run_folder(args[0], threads=threads)
    return 0 if status["status"] in RESULT_STATUSES else 1


if __name__ == "__main__":
    sys.exit(main())
