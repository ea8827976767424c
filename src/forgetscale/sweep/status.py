"""Where each run of a sweep stands, P without loading weights, and the dry-run table.

Read only: nothing here writes the store or a run folder. A run's state comes from the
sweep's store and, where it knows more (a run no driver merged yet), from the run's own
folder: its ``results.db`` when no worker is busy in it, else its ``progress.json``.
"""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from forgetscale.config import TrainConfig, stable_json
from forgetscale.sweep.folders import RESULT_STATUSES, RunFolder
from forgetscale.sweep.spec import Sweep, SweepRun, _fmt_value

DONE = RESULT_STATUSES


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
        return self.run.folder.log

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


def _read_folder_store(folder: RunFolder, run_id: str) -> tuple[tuple | None, int, tuple | None]:
    import sqlite3

    db = folder.store
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
        folder = run.folder
        status_json = folder.status()
        busy = folder.path.is_dir() and folder.busy()
        if folder.path.is_dir() and not busy:
            frec, fn, flast = _read_folder_store(folder, rid)
            if fn > n or (frec is not None and rec is None):
                rec, n, last = frec, fn, flast
        if busy:
            progress = folder.progress()
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
    return _fmt_value(value)
