"""The sweep driver: plan, build the references, dispatch the runs, merge their folders.

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
import gc
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from forgetscale.config import TrainConfig, stable_json
from forgetscale.errors import UserError
from forgetscale.sweep import worker as W
from forgetscale.sweep.executors import Executor, Finished, RunTask, get_executor
from forgetscale.sweep.spec import Sweep, SweepRun, coerce_dataclass

DONE = ("finished", "diverged")


# ------------------------------------------------------------------------------------------
# where each run stands


@dataclass
class RunState:
    """Where one run of the sweep stands."""

    run: SweepRun
    status: str = "new"
    """new | partial | running | finished | diverged | failed"""
    step: int = 0
    """Last measured step (0 when none)."""
    measurements: int = 0
    finetune_loss: float | None = None
    forgetting_loss: float | None = None
    sec_per_step: float | None = None
    """Measured wall time per update (evaluations included), when the run has one."""
    diverged_step: int | None = None
    message: str | None = None

    @property
    def max_steps(self) -> int:
        return self.run.config.max_steps

    @property
    def done(self) -> bool:
        return self.status in DONE

    @property
    def steps_done(self) -> int:
        return self.max_steps if self.done else self.step

    @property
    def log_path(self) -> Path:
        return self.run.run_dir / W.LOG

    def describe(self) -> str:
        if self.status in ("partial", "running", "failed") and self.measurements:
            return f"{self.status} at step {self.step}"
        if self.status == "diverged" and self.diverged_step is not None:
            return f"diverged at step {self.diverged_step}"
        return self.status


def _last_rows(conn: Any, run_id: str) -> tuple[int, tuple | None]:
    n = conn.execute("SELECT COUNT(*) FROM measurements WHERE run_id=?", (run_id,)).fetchone()[0]
    row = conn.execute(
        "SELECT step, finetune_loss, forgetting_loss, wall_s FROM measurements "
        "WHERE run_id=? ORDER BY step DESC LIMIT 1",
        (run_id,),
    ).fetchone()
    return int(n), row


def _run_row(conn: Any, run_id: str) -> tuple | None:
    return conn.execute(
        "SELECT status, diverged_step, message FROM runs WHERE id=?", (run_id,)
    ).fetchone()


def _read_folder_store(run_dir: Path, run_id: str) -> tuple[tuple | None, int, tuple | None]:
    import sqlite3

    db = run_dir / W.STORE
    if not db.is_file():
        return None, 0, None
    try:
        conn = sqlite3.connect(str(db), timeout=5.0)  # reads only
        try:
            return (_run_row(conn, run_id), *_last_rows(conn, run_id))
        finally:
            conn.close()
    except sqlite3.Error:
        return None, 0, None


def collect_states(sweep: Sweep, store: Any | None) -> list[RunState]:
    """Each run's state from the sweep's store and, where it knows more, the run's folder
    (read only: nothing is merged)."""
    states = []
    for run in sweep.runs:
        st = RunState(run)
        rid = run.run_id
        rec, n, last = (None, 0, None)
        if store is not None:
            rec = _run_row(store.conn, rid)
            n, last = _last_rows(store.conn, rid)
        folder = run.run_dir
        status_json = W.read_json(folder / W.STATUS)
        busy = folder.is_dir() and W.folder_busy(folder)
        if folder.is_dir() and not busy:
            frec, fn, flast = _read_folder_store(folder, rid)
            if fn > n or (frec is not None and rec is None):
                rec, n, last = frec, fn, flast
        if busy:
            progress = W.read_json(folder / W.PROGRESS)
            if (
                progress
                and progress.get("step") is not None
                and progress["step"] >= (last[0] if last else -1)
            ):
                n = max(n, int(progress.get("measurements") or 0))
                last = (
                    progress["step"],
                    progress.get("finetune_loss"),
                    progress.get("forgetting_loss"),
                    progress.get("wall_s"),
                )
        st.measurements = n
        if last is not None:
            st.step, st.finetune_loss, st.forgetting_loss = int(last[0]), last[1], last[2]
            if last[0] and last[3]:
                st.sec_per_step = float(last[3]) / float(last[0])
        if rec is not None and rec[0] in DONE:
            st.status, st.diverged_step, st.message = rec[0], rec[1], rec[2]
        elif status_json and status_json.get("status") in DONE:
            st.status = status_json["status"]
            st.diverged_step = status_json.get("diverged_step")
        elif busy:
            st.status = "running"
        elif status_json and status_json.get("status") == "failed":
            st.status, st.message = "failed", status_json.get("message")
        elif rec is not None and rec[0] == "failed":
            st.status, st.message = "failed", rec[2]
        elif n:
            st.status = "partial"
        states.append(st)
    return states


def _rate(states: list[RunState]) -> float | None:
    """Seconds per update, evaluations included: the median over finished runs (a whole run's
    time, so the early, densely measured steps weigh as they should), else over partial ones."""
    for pool in ([s for s in states if s.status == "finished"], states):
        rates = [s.sec_per_step for s in pool if s.sec_per_step]
        if rates:
            return statistics.median(rates)
    return None


def time_left(state: RunState, rate: float | None) -> float | None:
    if state.done:
        return 0.0
    rate = rate or state.sec_per_step
    return None if rate is None else rate * (state.max_steps - state.step)


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


# ------------------------------------------------------------------------------------------
# P without loading weights


def _model_config_source(spec: str) -> str | None:
    from forgetscale.assets import cache_dir
    from forgetscale.models import EMBEDDED_MODELS

    if spec in EMBEDDED_MODELS:
        folder = cache_dir() / "models" / spec
        return str(folder) if (folder / "config.json").is_file() else None
    if spec.endswith(".gguf"):
        return None
    path = Path(spec).expanduser()
    if path.exists():
        return str(path) if (path / "config.json").is_file() else None
    return spec  # a hub id: found when the hub cache holds its config


_P_CACHE: dict[str, int | None] = {}


def parameter_count(config: TrainConfig) -> int | None:
    """P of a run, from the model's config alone (weights never loaded: the model is built on
    the meta device and the method applied there); None when the config is not at hand."""
    key = stable_json(
        {
            k: getattr(config, k)
            for k in (
                "model",
                "method",
                "rank",
                "target_modules",
                "layers",
                "top_k_layers",
                "trust_remote_code",
            )
        }
    )
    if key in _P_CACHE:
        return _P_CACHE[key]
    _P_CACHE[key] = None
    source = _model_config_source(config.model)
    if source is None:
        return None
    import warnings

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from forgetscale.models import count_parameters
    from forgetscale.training.methods import apply_method

    try:
        model_config = AutoConfig.from_pretrained(
            source, local_files_only=True, trust_remote_code=config.trust_remote_code
        )
    except (OSError, ValueError):
        return None
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(
            model_config, trust_remote_code=config.trust_remote_code
        )
        model = apply_method(model, config)
    p = count_parameters(model).trainable_non_embedding
    _P_CACHE[key] = p
    return p


# ------------------------------------------------------------------------------------------
# executor options


def executor_options(sweep: Sweep, name: str, flags: dict[str, Any]) -> Any:
    """The executor's ``Options``: the sweep file's ``executor: {NAME: ...}`` block with the
    command line's flags on top; unknown keys and bad values are refused (one line)."""
    cls = get_executor(name)
    block = sweep.executor_options.get(name, {})
    coerce_dataclass(cls.Options, block, f"{sweep.path}: executor.{name}")
    fields = {f.name: f for f in dataclasses.fields(cls.Options)}

    def flag(key: str) -> str:
        f = fields.get(key)
        return (f.metadata.get("flag") if f else None) or f"--{name}-{key.replace('_', '-')}"

    for key in flags:
        if key not in fields:
            known = ", ".join(flag(k) for k in fields)
            raise UserError(f"{flag(key)}: not an option of the {name} executor (it has: {known})")
    try:
        return coerce_dataclass(cls.Options, {**block, **flags}, f"executor {name}")
    except UserError as exc:
        text = str(exc)
        for key in flags:
            text = text.replace(f"executor {name}.{key}", flag(key))
            text = text.replace(f"executor {name}: {key} ", f"{flag(key)}: {key} ")
        raise UserError(text) from None


# ------------------------------------------------------------------------------------------
# the dry run


def dry_run(sweep: Sweep, out: TextIO | None = None, *, workers: int | None = None) -> None:
    """Print the table of runs (id, grid values, P, steps, status, time left); no side effect."""
    out = out or sys.stdout
    from forgetscale.store import ResultsStore

    store = ResultsStore(sweep.store, create=False) if sweep.store.is_file() else None
    try:
        states = collect_states(sweep, store)
    finally:
        if store is not None:
            store.close()
    rate = _rate(states)
    values = [[_cell(s.run.values[a]) for a in sweep.axes] for s in states]
    widths = [max(len(a), *(len(v[i]) for v in values)) for i, a in enumerate(sweep.axes)]
    ps = [parameter_count(s.run.config) for s in states]
    print(
        f"sweep {sweep.name}: {len(states)} runs ({' x '.join(sweep.axes)}), store {sweep.store}",
        file=out,
    )
    head = "  ".join(
        [f"{'id':<16}", *(f"{a:<{w}}" for a, w in zip(sweep.axes, widths, strict=True))]
        + [f"{'P':>12}", f"{'steps':>5}", f"{'status':<20}", "time left"]
    )
    print(head, file=out)
    for s, v, p in zip(states, values, ps, strict=True):
        left = time_left(s, rate)
        print(
            "  ".join(
                [f"{s.run.run_id:<16}", *(f"{c:<{w}}" for c, w in zip(v, widths, strict=True))]
                + [
                    f"{'?' if p is None else format(p, ',d'):>12}",
                    f"{s.max_steps:>5}",
                    f"{s.describe():<20}",
                    "-" if s.done else format_duration(left),
                ]
            ),
            file=out,
        )
    counts: dict[str, int] = {}
    for s in states:
        counts[s.status] = counts.get(s.status, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in counts.items())
    todo = [s for s in states if not s.done]
    if not todo:
        print(f"{summary}: nothing to run", file=out)
        return
    if rate is None:
        print(f"{summary}; no measured step time yet (run time unknown)", file=out)
        return
    total = sum(time_left(s, rate) or 0.0 for s in todo)
    text = f"{summary}; about {format_duration(total)} of run time left ({rate:.2f} s/step)"
    if workers and workers > 1:
        text += f", about {format_duration(total / min(workers, len(todo)))} with {workers} workers"
    print(text, file=out)


def _cell(value: Any) -> str:
    from forgetscale.sweep.spec import _fmt_value

    return _fmt_value(value)


# ------------------------------------------------------------------------------------------
# references: built once, before dispatch


def _reference_key(config: TrainConfig) -> str:
    return stable_json(
        {
            k: getattr(config, k)
            for k in (
                "model",
                "adapter",
                "dtype",
                "trust_remote_code",
                "device",
                "forgetting_data",
                "text_field",
                "forgetting_block_size",
                "block_size",
                "forgetting_max_tokens",
                "reference_top_k",
                "reference",
                "reference_dir",
            )
        }
        | {"block": config.forgetting_block_size or config.block_size}
    )


def build_references(configs: list[TrainConfig], log: Callable[[str], None]) -> list[Path]:
    """Find or build the reference cache of each distinct base model x forgetting setting among
    ``configs``, exactly as each run would (the same lookup, the same path), so that every run
    finds it ready. The base model is loaded once per (model, adapter, dtype)."""
    import torch

    from forgetscale.models import apply_adapter, load_model, resolve_device

    # the run's own lookup: one place, shared with forgetscale train
    from forgetscale.training.run import _reference_for_run as reference_for_run

    groups: dict[str, TrainConfig] = {}
    for config in configs:
        groups.setdefault(_reference_key(config), config)
    by_model: dict[tuple, list[TrainConfig]] = {}
    for config in groups.values():
        key = (config.model, config.adapter, config.dtype, config.trust_remote_code, config.device)
        by_model.setdefault(key, []).append(config)
    paths = []
    for (model_spec, adapter, dtype, trust, device), group in by_model.items():
        loaded = load_model(
            model_spec, dtype=dtype, trust_remote_code=trust, device=resolve_device(device)
        )
        model, name = loaded.model, model_spec
        if adapter:
            model = apply_adapter(model, adapter).merge_and_unload()
            name = f"{model_spec}+{adapter}"
        for config in group:
            _, path = reference_for_run(config, model, loaded.tokenizer, name, log)
            paths.append(Path(path))
        del model, loaded
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return paths


# ------------------------------------------------------------------------------------------
# the driver


@contextlib.contextmanager
def driver_lock(sweep: Sweep) -> Iterator[None]:
    """One driver per sweep store at a time (an flock: dropped by the OS when the driver dies)."""
    import fcntl

    sweep.folder.mkdir(parents=True, exist_ok=True)
    path = sweep.folder / ".driver.lock"
    with path.open("a+") as fh:
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
        "config": run.config.to_dict(),
    }
    path = run.run_dir / W.SPEC
    old = W.read_json(path)
    if old != spec:
        W._write_json(path, spec)


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
        db = run.run_dir / W.STORE
        if not db.is_file():
            return 0
        return store.merge_run(db, run.run_id)

    def merge_idle_folders(self, store: Any) -> int:
        merged = 0
        for run in self.sweep.runs:
            if run.run_dir.is_dir() and not W.folder_busy(run.run_dir):
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
                build_references([s.run.config for s in todo], self.log)
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
                    progress = W.read_json(state.run.run_dir / W.PROGRESS)
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
        status = W.read_json(run.run_dir / W.STATUS) or {}
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


__all__ = ["Driver", "RunState", "build_references", "collect_states", "dry_run", "run_sweep"]
