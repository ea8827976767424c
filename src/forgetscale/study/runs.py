"""The runs of a study as the report shows them, read from the results store: one entry
per run (its label, settings and status), its measurements, and its downstream rows.

A run's label is ``r=<rank>`` for a LoRA run (its name, or method and id, otherwise),
with ``seed <n>`` added where several runs share a rank. Only finished runs are fitted;
the others are named in a warning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forgetscale.errors import UserError
from forgetscale.store import DOWNSTREAM_EXPORT_COLUMNS, RunRecord, open_store
from forgetscale.study.numbers import num

#: Methods whose name is label enough for a run that is not LoRA (a sweep names its runs by
#: every axis, e.g. "method=full replay_fraction=0 ...", which says less).
METHODS_BY_NAME = frozenset({"full", "ia3", "top-layers"})


def read_runs(
    store: str | Path, run_ids: Sequence[str] | None = None
) -> tuple[list[dict[str, Any]], pd.DataFrame, dict[str, Any] | None]:
    """``(runs, measurements, downstream)`` of the runs ``run_ids`` (default: every run).

    ``measurements`` holds the store's columns plus ``disagreement`` (1 - agreement);
    ``downstream`` is ``{"rows": [...]}`` (each row labelled with its run), or ``None``
    when the store has no downstream results for these runs.
    """
    import pandas as pd

    with open_store(store, create=False) as st:
        records = st.list_runs()
        if run_ids is not None:
            wanted = list(dict.fromkeys(run_ids))
            known = {r.id for r in records}
            unknown = [r for r in wanted if r not in known]
            if unknown:
                raise UserError(f"run(s) not in the store {store}: {', '.join(unknown)}")
            records = [r for r in records if r.id in set(wanted)]
        meas = st.measurements()
        try:
            down = st.downstream()
        except pd.errors.DatabaseError:  # a store made before the downstream table
            down = None
    if not records:
        raise UserError(f"the results store {store} holds no runs")
    ids = {r.id for r in records}
    meas = meas[meas["run_id"].isin(ids)]
    meas = meas.assign(disagreement=1.0 - meas["agreement"])
    runs = _run_entries(records, meas)
    return runs, meas, _downstream(down, runs, meas)


def status_warnings(runs: list[dict[str, Any]]) -> list[str]:
    """A sentence for every run that is not fitted (failed, diverged, not finished), and
    one when no run has finished."""
    warnings = []
    for r in runs:
        if r["status"] == "failed":
            warnings.append(
                f"Run {r['label']} failed"
                + (f": {r['message']}" if r["message"] else "")
                + "; it is not fitted."
            )
        elif r["status"] == "diverged":
            warnings.append(
                f"Run {r['label']} diverged (a NaN or infinite loss"
                + (f" at step {r['diverged_step']}" if r["diverged_step"] is not None else "")
                + "); it is not fitted."
            )
        elif r["status"] == "running":
            warnings.append(
                f"Run {r['label']} has not finished (last step {r['last_step']}); it is not fitted."
            )
    if not any(r["status"] == "finished" for r in runs):
        warnings.append("No run has finished: there is nothing to fit.")
    return warnings


def _downstream(
    down: pd.DataFrame | None, runs: list[dict[str, Any]], meas: pd.DataFrame
) -> dict[str, Any] | None:
    """The downstream rows, each with the hard L_f of its run at its step, and per suite and
    metric how much it moves per unit of L_f (a least-squares slope over every run and step:
    what a study reader wants to know of forgetting's cost)."""
    if down is None:
        return None
    labels = {r["run_id"]: r["label"] for r in runs}
    down = down[down["run_id"].isin(labels)]
    if not len(down):
        return None
    lf = meas[["run_id", "step", "forgetting_loss"]]
    down = down.merge(lf, on=["run_id", "step"], how="left")
    down = down.sort_values(["run_id", "suite", "metric", "step"], kind="stable")
    per_lf = []
    for (suite, metric), g in down.groupby(["suite", "metric"], sort=True):
        g = g.dropna(subset=["value", "forgetting_loss"])
        x, y = g["forgetting_loss"].to_numpy(float), g["value"].to_numpy(float)
        slope = float(np.polyfit(x, y, 1)[0]) if len(g) >= 2 and np.ptp(x) > 0 else None
        per_lf.append({"suite": suite, "metric": metric, "points": len(g), "per_unit_lf": slope})
    cols = [*DOWNSTREAM_EXPORT_COLUMNS, "forgetting_loss"]
    down = down[cols].astype(object)
    rows = down.where(down.notna(), None).to_dict(orient="records")
    return {"rows": [{**row, "label": labels[row["run_id"]]} for row in rows], "per_lf": per_lf}


def mitigation_label(config: dict[str, Any]) -> str:
    """`` + replay 1%``, `` + KL 0.5 on task`` (both, or nothing for a plain run): the part of
    a run's label that names its mitigation (the study's tables, figures and frontier)."""
    p = float(config.get("replay_fraction") or 0.0)
    lam = float(config.get("kl_weight") or 0.0)
    label = f" + replay {100 * p:g}%" if p > 0 else ""
    if lam > 0:
        label += f" + KL {lam:g} on {config.get('kl_data') or 'task'}"
    return label


def _arm_key(rec: RunRecord) -> tuple[Any, ...]:
    cfg = rec.config or {}
    return (rec.method, rec.rank, rec.params_trained, mitigation_label(cfg))


def _run_entries(records: list[RunRecord], meas: pd.DataFrame) -> list[dict[str, Any]]:
    per_arm: dict[Any, int] = {}
    for rec in records:
        per_arm[_arm_key(rec)] = per_arm.get(_arm_key(rec), 0) + 1
    methods = {rec.method for rec in records}
    out = []
    for rec in records:
        cfg = rec.config or {}
        m = meas[meas["run_id"] == rec.id]
        wall = num(m["wall_s"].max()) if len(m) else None
        if wall is None and rec.ended is not None:
            wall = float(rec.ended - rec.started)
        seed = cfg.get("seed")
        if rec.rank is not None and rec.method == "lora":
            label = f"r={rec.rank}" if methods == {"lora"} else f"lora r={rec.rank}"
        elif rec.name and rec.method not in METHODS_BY_NAME:
            label = str(rec.name)
        else:
            label = str(rec.method)
        label += mitigation_label(cfg)
        if per_arm[_arm_key(rec)] > 1 and seed is not None:
            label += f" seed {seed}"
        steps = sorted(int(s) for s in m["step"].tolist())
        out.append(
            {
                "run_id": rec.id,
                "label": label,
                "name": rec.name,
                "method": rec.method,
                "rank": rec.rank,
                "params_trained": rec.params_trained,
                "seed": seed,
                "dtype": cfg.get("dtype"),
                "learning_rate": cfg.get("learning_rate"),
                "batch_size": cfg.get("batch_size"),
                "max_steps": rec.max_steps,
                "last_step": rec.last_step,
                "steps": steps,
                "status": rec.status,
                "diverged_step": rec.diverged_step,
                "message": rec.message,
                "wall_s": wall,
                "model": rec.model,
                "task_data": rec.task_data,
                "forgetting_data": cfg.get("forgetting_data"),
                "versions": rec.versions,
                "config": cfg,
            }
        )
    return out


def run_data(runs: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The base models (``model``), fine-tuning data (``task_data``) and forgetting corpora
    (``forgetting_data``) of ``runs``, each sorted."""
    keys = ("model", "task_data", "forgetting_data")
    return {k: sorted({str(r[k]) for r in runs if r.get(k)}) for k in keys}
