"""The sweep driver: plan, have the references built, dispatch the runs, merge their folders.

The driver is the only process that writes the sweep's results store. Each run trains in
its own folder ``<sweep folder>/runs/<run id>/`` (see :mod:`forgetscale.sweep.worker`); when
an executor says the run stopped, the driver merges that folder's store into the sweep's
(:meth:`forgetscale.store.ResultsStore.merge_run`: idempotent, one transaction). On start-up
it merges every folder no worker is busy in, finished or partial, so a driver killed at any
moment (even by SIGKILL) and started again loses nothing and writes nothing twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from forgetscale.errors import UserError
from forgetscale.sweep import folders as F
from forgetscale.sweep.executors import Executor, Finished, RunTask, get_executor
from forgetscale.sweep.options import executor_options
from forgetscale.sweep.spec import Sweep, SweepRun
from forgetscale.sweep.status import DONE, RunState, collect_states, dry_run, format_duration

# ------------------------------------------------------------------------------------------
# the driver


@contextlib.contextmanager
def driver_lock(sweep: Sweep) -> Iterator[None]:
    """One driver per sweep store at a time (an flock: dropped by the OS when the driver dies)."""
    import fcntl

    from forgetscale.outputs import check_folder

    check_folder(sweep.folder, what="the sweep folder")
    path = sweep.folder / ".driver.lock"
    try:
        sweep.folder.mkdir(parents=True, exist_ok=True)
        fh = path.open("a+")
    except OSError as exc:
        raise UserError(f"cannot write the sweep folder {sweep.folder}: {exc.strerror}") from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise UserError(
                f"another forgetscale sweep ({holder}) is driving {sweep.store} right now"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_spec(run: SweepRun, sweep: Sweep) -> None:
    run.run_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "run_id": run.run_id,
        "label": run.label,
        "values": run.values,
        "sweep": str(sweep.path.resolve()),
        "store": str(Path(sweep.store).absolute()),  # the worker locks the run there too
        "config": run.config.to_dict(),
    }
    path = run.folder.spec_path
    old = F.read_json(path)
    if old != spec:
        F.write_json(path, spec)


class Driver:
    """One invocation of a sweep: ``Driver(sweep, executor_name, options).run()``."""

    def __init__(
        self,
        sweep: Sweep,
        executor_name: str,
        options: Any,
        *,
        out: TextIO | None = None,
        err: TextIO | None = None,
        progress: bool = True,
    ):
        self.sweep = sweep
        self.executor_name = executor_name
        self.options = options
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.progress = progress
        self.t0 = time.perf_counter()
        self.failures: dict[str, str] = {}

    def log(self, msg: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=self.err)

    def say(self, msg: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=self.out)
        self.out.flush()

    # -- merging ----------------------------------------------------------------------------
    def merge(self, store: Any, run: SweepRun) -> int:
        db = run.folder.store
        # a worker killed while it made the run's store left one with no table: nothing yet
        if not db.is_file() or store.never_made(db):
            return 0
        return store.merge_run(db, run.run_id)

    def merge_idle_folders(self, store: Any) -> int:
        merged = 0
        for run in self.sweep.runs:
            if run.run_dir.is_dir() and not run.folder.busy():
                merged += self.merge(store, run)
        return merged

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> int:
        from forgetscale.store import open_store

        sweep = self.sweep
        with driver_lock(sweep), open_store(sweep.store) as store:
            added = self.merge_idle_folders(store)
            if added:
                self.log(f"sweep: merged {added} measurements of earlier runs into {sweep.store}")
            states = collect_states(sweep, store)
            todo = [s for s in states if not s.done]
            if not todo:
                self.say(
                    f"sweep {sweep.name}: all {len(states)} runs are already finished in "
                    f"{sweep.store}; nothing to do"
                )
                return self.summary(states, store)
            executor = get_executor(self.executor_name)(self.options, sweep.folder)
            try:
                executor.start()
                self.log(
                    f"sweep {sweep.name}: {len(todo)} of {len(states)} runs to do "
                    f"({sum(s.measurements > 0 for s in todo)} resume); {executor.describe()}"
                )
                executor.build_references([s.run.config for s in todo], sweep.resources, self.log)
                self.dispatch(executor, store, states, todo)
            except BaseException as exc:
                executor.cancel_all()
                self.merge_idle_folders(store)
                if isinstance(exc, KeyboardInterrupt):
                    self.log("sweep: stopped; run the same command again to resume")
                raise
            finally:
                executor.close()
            return self.summary(collect_states(sweep, store), store)

    def dispatch(
        self, executor: Executor, store: Any, states: list[RunState], todo: list[RunState]
    ) -> None:
        from tqdm.auto import tqdm

        sweep = self.sweep
        total_steps = sum(s.max_steps for s in states)
        done_runs = sum(s.done for s in states)
        seen_steps = {s.run.run_id: s.steps_done for s in states}
        bar = tqdm(
            total=total_steps,
            initial=sum(seen_steps.values()),
            unit="step",
            desc=f"sweep {done_runs}/{len(states)} runs",
            file=self.err,
            disable=not self.progress,
            dynamic_ncols=True,
            mininterval=0.5,
        )
        queue = list(todo)
        running: dict[str, RunState] = {}
        try:
            while queue or executor.pending():
                cap = executor.capacity()
                while queue and (cap is None or executor.pending() < cap):
                    state = queue.pop(0)
                    write_spec(state.run, sweep)
                    executor.submit(
                        RunTask(
                            state.run.run_id, state.run.run_dir, state.run.label, sweep.resources
                        )
                    )
                    running[state.run.run_id] = state
                for fin in executor.wait(timeout=1.0):
                    state = running.pop(fin.task.run_id)
                    new = self.finished(store, state, fin)
                    done_runs += 1
                    bar.update(new.steps_done - seen_steps[new.run.run_id])
                    seen_steps[new.run.run_id] = new.steps_done
                    if not new.done:  # a failed run counts with the steps it made
                        bar.update(new.max_steps - new.steps_done)
                        seen_steps[new.run.run_id] = new.max_steps
                    bar.set_description(f"sweep {done_runs}/{len(states)} runs")
                for rid, state in running.items():
                    progress = state.run.folder.progress()
                    if progress and isinstance(progress.get("step"), int):
                        step = progress["step"]
                        if step > seen_steps[rid]:
                            bar.update(step - seen_steps[rid])
                            seen_steps[rid] = step
        finally:
            bar.close()

    def finished(self, store: Any, state: RunState, fin: Finished) -> RunState:
        run = state.run
        self.merge(store, run)
        status = run.folder.status() or {}
        if status.get("status") not in DONE:  # the run folder says how the run ended
            message = (
                (status.get("message") if status.get("status") == "failed" else None)
                or fin.message
                or "the worker stopped without a result"
            )
            self.failures[run.run_id] = message
            if store.get_run(run.run_id) is not None:
                store.set_status(run.run_id, "failed", message=message)
        (new,) = collect_states(dataclasses.replace(self.sweep, runs=[run]), store)
        if run.run_id in self.failures:
            new.status, new.message = "failed", self.failures[run.run_id]
        self.say(self.line(new, fin.log_path))
        return new

    def line(self, s: RunState, log_path: Path | None = None) -> str:
        head = f"{s.run.run_id}  {s.run.label}:"
        if s.status == "finished":
            return f"{head} finished; L_ft {_f(s.finetune_loss)}, L_f {_f(s.forgetting_loss)}"
        if s.status == "diverged":
            return (
                f"{head} diverged at step {s.diverged_step} ({s.message}); "
                f"last L_ft {_f(s.finetune_loss)}, L_f {_f(s.forgetting_loss)} at step {s.step}"
            )
        return f"{head} FAILED ({s.message}); log: {log_path or s.log_path}"

    def summary(self, states: list[RunState], store: Any) -> int:
        counts: dict[str, int] = {}
        for s in states:
            status = "failed" if s.run.run_id in self.failures else s.status
            counts[status] = counts.get(status, 0) + 1
        text = ", ".join(f"{n} {k}" for k, n in counts.items())
        self.say(
            f"sweep {self.sweep.name}: {len(states)} runs: {text}; results in {self.sweep.store} "
            f"({format_duration(time.perf_counter() - self.t0)})"
        )
        failed = [s for s in states if s.run.run_id in self.failures or s.status == "failed"]
        for s in failed:
            message = self.failures.get(s.run.run_id, s.message)
            self.say(f"  failed: {s.run.run_id}  {s.run.label}: {message}; log: {s.log_path}")
        if failed:
            self.say("run the same command again to resume the failed runs")
        return 1 if failed else 0


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def run_sweep(
    sweep: Sweep,
    *,
    executor: str | None = None,
    flags: dict[str, Any] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    progress: bool = True,
) -> int:
    """Run every run of ``sweep`` that is not finished; returns the exit code (1 if any failed)."""
    name = executor or sweep.executor
    options = executor_options(sweep, name, flags or {})
    return Driver(sweep, name, options, out=out, err=err, progress=progress).run()


__all__ = [
    "Driver",
    "RunState",
    "collect_states",
    "dry_run",
    "executor_options",
    "run_sweep",
]
