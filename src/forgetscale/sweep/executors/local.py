"""The local executor: ``--workers N`` worker processes on this machine.

Each worker is a long-lived ``python -m forgetscale.sweep.worker --serve`` process that trains
one run folder after the other (torch and transformers are imported once per worker, not
once per run). The machine's cores are shared out: each worker gets ``cores // N`` threads
(``FORGETSCALE_THREADS``, ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``; never more than an
``OMP_NUM_THREADS`` the sweep was started with). On a machine with several GPUs there is one
worker per GPU by default, each seeing only its own (``CUDA_VISIBLE_DEVICES``).

A worker that dies (killed, out of memory) is reported as a stopped run and replaced by a
fresh process for the next run; its run resumes from its checkpoint when the sweep runs
again. On Linux the workers die with the driver (a SIGKILLed driver leaves no orphan).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from forgetscale.config.fields import check_fields, config_field
from forgetscale.errors import UserError
from forgetscale.sweep.executors.base import Executor, Finished, RunTask
from forgetscale.sweep.folders import LOG

#: The most worker processes (and torch threads per worker) one machine is given: each worker
#: loads its own copy of the model, so a number above this is a typo, not a plan.
MAX_LOCAL_WORKERS = 256


@dataclass(frozen=True)
class Options:
    """Options of the local executor (``executor: {local: {...}}`` or flags)."""

    workers: int | None = config_field(
        None,
        "worker processes, runs at once (default: one per GPU when there are several, else "
        "1 = one run after the other)",
        flag="--workers",
        ge=1,
    )
    threads: int | None = config_field(
        None, "torch threads per worker (default: cores // workers)", ge=1
    )
    gpus: list[int] | None = config_field(
        None, "GPU indices to use (default: every GPU this process sees)", ge=0
    )

    def __post_init__(self) -> None:
        check_fields(self, "", symbols=True)
        for key in ("workers", "threads"):
            value = getattr(self, key)
            if value is not None and value > MAX_LOCAL_WORKERS:
                why = (
                    "each worker is a process with its own copy of the model; more runs at "
                    "once belong on --executor ray or slurm"
                    if key == "workers"
                    else "no machine has that many cores for one worker"
                )
                raise UserError(
                    f"{key} must be at most {MAX_LOCAL_WORKERS} on one machine, got {value} ({why})"
                )


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries.

    torch is asked only where a GPU driver is loaded (the NVIDIA driver's /proc entry, ROCm's
    /dev/kfd): on a Linux machine with neither there is no GPU to find, and the driver process
    of a sweep, which never needs torch, does not pay for importing it."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    drivers = (Path("/proc/driver/nvidia"), Path("/dev/kfd"))
    if sys.platform.startswith("linux") and not any(p.exists() for p in drivers):
        return []
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:  # pragma: no cover
        return []


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


class _Worker:
    def __init__(self, index: int, env: dict[str, str], log_path: Path, answers: queue.Queue):
        self.index = index
        self.task: RunTask | None = None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with log_path.open("a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "forgetscale.sweep.worker", "--serve"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                env=env,
                text=True,
                bufsize=1,
            )
        self.reader = threading.Thread(target=self._read, args=(answers,), daemon=True)
        self.reader.start()

    def _read(self, answers: queue.Queue) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                answers.put((self, json.loads(line)))
            except ValueError:
                continue
        answers.put((self, None))  # the process ended

    def give(self, task: RunTask) -> None:
        assert self.proc.stdin is not None
        self.task = task
        self.proc.stdin.write(json.dumps({"run_dir": str(task.run_dir)}) + "\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None


class LocalExecutor(Executor):
    name: ClassVar[str] = "local"
    Options: ClassVar[type] = Options

    def __init__(self, options: Options, sweep_dir: Path):
        super().__init__(options, sweep_dir)
        if options.gpus is not None:
            gpus = [str(g) for g in options.gpus]
        else:
            gpus = visible_gpus()
        self.gpus = gpus
        self.n_workers = options.workers or (len(gpus) if len(gpus) > 1 else 1)
        threads = options.threads or max(1, _cores() // self.n_workers)
        if options.threads is None and os.environ.get("OMP_NUM_THREADS", "").isdigit():
            threads = min(threads, max(1, int(os.environ["OMP_NUM_THREADS"])))
        self.threads = threads
        self.answers: queue.Queue = queue.Queue()
        self.workers: list[_Worker | None] = [None] * self.n_workers
        self.waiting: list[RunTask] = []
        self.submitted = 0

    def start(self) -> None:
        """Start the workers now: their imports overlap with the driver's planning."""
        for i, w in enumerate(self.workers):
            if w is None:
                self._start(i)

    def build_references(self, configs, resources, log) -> None:
        """Build the references in the first worker (torch is loaded there already, and on a
        machine with GPUs it sees one), with its log lines shown by the driver."""
        from forgetscale.sweep.references import check_answer

        worker = self.workers[0] if self.workers[0] is not None else self._start(0)
        assert worker.proc.stdin is not None
        request = {"references": [c.to_dict() for c in configs]}
        try:
            worker.proc.stdin.write(json.dumps(request) + "\n")
            worker.proc.stdin.flush()
        except OSError:
            pass  # the worker is gone: its end of the answers says so below
        while True:
            who, answer = self.answers.get()
            if who is not worker:  # pragma: no cover - no run is submitted yet
                continue
            if answer is None:
                rc = worker.proc.wait()
                raise RuntimeError(
                    f"the local worker building the reference stopped (exit code {rc}); "
                    f"see {worker.log_path}"
                )
            if "log" in answer:
                log(answer["log"])
            else:
                check_answer(answer, f"traceback in {worker.log_path}")
                return

    def describe(self) -> str:
        gpu = ""
        if self.gpus:
            gpu = f", GPUs {','.join(self._gpus_of(i) for i in range(self.n_workers))}"
        return f"local: {self.n_workers} worker(s), {self.threads} thread(s) each{gpu}"

    def _gpus_of(self, index: int) -> str:
        return self.gpus[index % len(self.gpus)] if self.gpus else ""

    def _env(self, index: int) -> dict[str, str]:
        env = dict(os.environ)
        # the workers import the very forgetscale the driver runs (a relative PYTHONPATH or
        # another install would otherwise win in their working folder)
        import forgetscale

        here = str(Path(forgetscale.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(
            [here, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
        )
        t = str(self.threads)
        env.update(
            FORGETSCALE_THREADS=t,
            OMP_NUM_THREADS=t,
            MKL_NUM_THREADS=t,
            FORGETSCALE_PARENT_PID=str(os.getpid()),
            TOKENIZERS_PARALLELISM="false",
        )
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self._gpus_of(index)
        return env

    def _start(self, index: int) -> _Worker:
        log = self.sweep_dir / "logs" / f"local-worker-{index}.log"
        worker = _Worker(index, self._env(index), log, self.answers)
        self.workers[index] = worker
        return worker

    def _dispatch(self) -> None:
        while self.waiting:
            for i, w in enumerate(self.workers):
                if w is None or (w.task is None and not w.alive()):
                    w = self._start(i)
                if w.task is None:
                    w.give(self.waiting.pop(0))
                    break
            else:
                return

    def submit(self, task: RunTask) -> None:
        self.waiting.append(task)
        self.submitted += 1
        self._dispatch()

    def wait(self, timeout: float | None = None) -> list[Finished]:
        out: list[Finished] = []
        try:
            item = self.answers.get(timeout=timeout)
        except queue.Empty:
            return out
        while True:
            out.extend(self._handle(*item))
            try:
                item = self.answers.get_nowait()
            except queue.Empty:
                break
        self._dispatch()
        self.submitted -= len(out)
        return out

    def _handle(self, worker: _Worker, answer: dict[str, Any] | None) -> list[Finished]:
        task, worker.task = worker.task, None
        if answer is None and self.workers[worker.index] is worker:
            self.workers[worker.index] = None
        if task is None:
            return []
        log = task.run_dir / LOG
        if answer is not None:
            return [Finished(task, True, answer.get("message"), log)]
        rc = worker.proc.wait()
        how = f"killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
        if rc < 0:
            try:
                how = f"killed by {signal.Signals(-rc).name}"
            except ValueError:
                pass
        return [Finished(task, False, f"worker process {worker.proc.pid} {how}", log)]

    def pending(self) -> int:
        return self.submitted

    def capacity(self) -> int | None:
        return self.n_workers

    def _stop(self, *, kill: bool) -> None:
        for w in self.workers:
            if w is None or not w.alive():
                continue
            if kill:
                w.proc.terminate()
            elif w.proc.stdin is not None:
                try:
                    w.proc.stdin.close()
                except OSError:
                    pass
        for w in self.workers:
            if w is None:
                continue
            try:
                w.proc.wait(timeout=10 if kill else 60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()

    def cancel_all(self) -> None:
        self.waiting.clear()
        self._stop(kill=True)

    def close(self) -> None:
        self._stop(kill=False)


EXECUTOR = LocalExecutor
