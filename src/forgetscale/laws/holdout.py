"""Held-out evaluation: is a law right about runs it never saw?

:func:`evaluate_holdout` fits a law on part of the measurements and scores it on the
rest, under one of two schemes (:class:`~forgetscale.laws.table.Holdout`):

- ``largest-P`` (held-out runs): the runs with the largest P are held out and the
  law is fitted on the others: does it extrapolate to a bigger adapter?
- ``largest-N`` (held-out steps): the last 20% of the steps of every run are held
  out and the law is fitted on the earlier ones: does it extrapolate to a longer run?

It returns a :class:`HoldoutEvaluation`: in-sample and held-out RMSE and R^2, the fit,
and one row per point with its prediction (to plot predicted against observed with
the held-out points marked). :func:`compare_laws` ranks laws by held-out RMSE, and
``forgetscale fit --holdout``/``--plots`` report the same numbers and points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.errors import UserError
from forgetscale.laws.fitting import FitResult, fit_law
from forgetscale.laws.options import FitOptions
from forgetscale.laws.outputs import json_safe
from forgetscale.laws.registry import TARGETS, Law, get_law
from forgetscale.laws.table import Holdout, check_table, read_table, select_rows

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: ``split`` of a point in :attr:`HoldoutEvaluation.points`.
IN_SAMPLE, HELD_OUT = "in_sample", "held_out"


@dataclass
class HoldoutEvaluation:
    """A law fitted on some runs or steps and scored on the others.

    Every ``dict`` is keyed by target (one key for a single-target law, both for
    ``kalajdzievski``). RMSE and R^2 are on the loss scale.

    Attributes:
        scheme: ``largest-P``, ``largest-N`` or ``runs`` (named run ids).
        description: The held-out rows in words, e.g. "the runs with the largest P,
            P = 6.4e+08: p5".
        law: Registry name of the law.
        targets: The targets fitted and scored.
        fit: The fit on the in-sample rows (its ``holdout`` holds the same scores).
        rmse_in_sample: RMSE on the rows fitted.
        r2_in_sample: R^2 on the rows fitted.
        rmse_held_out: RMSE on the held-out rows.
        r2_held_out: R^2 on the held-out rows (NaN if they all have one value).
        n_in_sample: Number of rows fitted.
        n_held_out: Number of rows held out.
        points: One row per point (in-sample and held-out): ``run_id``,
            ``params_trained``, ``step``, ``split`` (``"in_sample"`` or ``"held_out"``),
            and per target ``<target>`` (observed) and ``predicted_<target>``.
    """

    scheme: str
    description: str
    law: str
    targets: tuple[str, ...]
    fit: FitResult
    rmse_in_sample: dict[str, float]
    r2_in_sample: dict[str, float]
    rmse_held_out: dict[str, float]
    r2_held_out: dict[str, float]
    n_in_sample: int
    n_held_out: int
    points: pd.DataFrame

    @property
    def rmse_ratio(self) -> dict[str, float]:
        """Held-out RMSE over in-sample RMSE per target (<= 2 is a law that extrapolates)."""
        return {
            t: self.rmse_held_out[t] / self.rmse_in_sample[t]
            if self.rmse_in_sample[t] > 0
            else float("nan")
            for t in self.targets
        }

    def to_json(self) -> dict[str, Any]:
        """Everything but the fit's details and the points, as strict JSON (NaN -> null)."""
        d = {
            "scheme": self.scheme,
            "description": self.description,
            "law": self.law,
            "targets": list(self.targets),
            "params": dict(self.fit.params),
            "rmse_in_sample": self.rmse_in_sample,
            "r2_in_sample": self.r2_in_sample,
            "rmse_held_out": self.rmse_held_out,
            "r2_held_out": self.r2_held_out,
            "rmse_ratio": self.rmse_ratio,
            "n_in_sample": self.n_in_sample,
            "n_held_out": self.n_held_out,
            "notes": list(self.fit.notes),
        }
        d, notes = json_safe(d)
        d["notes"] += notes
        return d


def point_table(
    fit: FitResult, df: pd.DataFrame, holdout: Holdout | None, extra: Sequence[str] = ()
) -> pd.DataFrame:
    """The rows ``fit`` used and held out, each with the fit's predictions.

    Columns: ``run_id``, ``params_trained`` (if present), ``step``, ``split``, the
    observed targets, ``predicted_<target>``, and the ``extra`` columns asked for.
    """
    import pandas as pd

    law = fit.law_spec
    data = check_table(df, law, fit.targets, extra=[c for c in extra if c in df.columns])
    train, held = select_rows(data, law, fit.targets, min_step=fit.min_step, holdout=holdout)
    frames = []
    for split, part in ((IN_SAMPLE, train), (HELD_OUT, held)):
        if part is None:
            continue
        frame = pd.DataFrame({"run_id": part.run_id, **part.columns, "split": split})
        X = {v: part.columns[v] for v in law.variables}
        for t in fit.targets:
            frame[f"predicted_{t}"] = np.broadcast_to(law.predict(fit.params, X, t), (len(part),))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def evaluate_holdout(
    table: Any,
    law: str | Law,
    target: str | None = None,
    scheme: Holdout | str | Sequence[str] = "largest-P",
    *,
    min_step: float = 1,
    n_boot: int = 0,
    seed: int = 0,
    n_starts: int | None = 10,
    workers: int | None = None,
) -> HoldoutEvaluation:
    """Fit ``law`` without the held-out rows of ``scheme`` and score it on them.

    Args:
        table: A DataFrame with the export columns, or a path (CSV, parquet, results store).
        law: A law name or :class:`~forgetscale.laws.registry.Law`.
        target: The column to model (see :func:`~forgetscale.laws.fitting.fit_law`).
        scheme: ``"largest-P"`` (held-out runs: the largest-P runs, fitted on the
            others), ``"largest-N"`` (held-out steps: the last 20% of every run's
            steps, fitted on the earlier ones), run ids, or a
            :class:`~forgetscale.laws.table.Holdout` (e.g. another ``fraction``).
        min_step, n_boot, seed, n_starts, workers: as for :func:`fit_law`.
    """
    opts = FitOptions(
        min_step=min_step,
        holdout=scheme,
        n_boot=n_boot,
        seed=seed,
        n_starts=n_starts,
        workers=workers,
    )
    holdout = opts.holdout
    if holdout is None:
        raise UserError("a held-out evaluation needs a scheme: largest-P, largest-N or run ids")
    assert isinstance(holdout, Holdout)
    df = table if hasattr(table, "columns") else read_table(table)
    fit = fit_law(
        df,
        law,
        target,
        min_step=opts.min_step,
        holdout=holdout,
        n_boot=opts.n_boot,
        seed=opts.seed,
        n_starts=opts.n_starts,
        workers=opts.workers,
    )
    assert fit.holdout is not None
    return HoldoutEvaluation(
        scheme=holdout.scheme,
        description=fit.holdout["description"],
        law=fit.law,
        targets=fit.targets,
        fit=fit,
        rmse_in_sample=dict(fit.rmse),
        r2_in_sample=dict(fit.r2),
        rmse_held_out=dict(fit.holdout["rmse"]),
        r2_held_out=dict(fit.holdout["r2"]),
        n_in_sample=fit.n_points,
        n_held_out=fit.holdout["n_points"],
        points=point_table(fit, df, holdout),
    )


def compare_laws(
    table: Any,
    laws: Sequence[str],
    target: str = "forgetting_loss",
    *,
    min_step: float = 1,
    holdout: Holdout | str | Sequence[str] | None = "largest-P",
    n_starts: int | None = 10,
) -> list[dict[str, Any]]:
    """Evaluate each law on the same held-out rows and rank them by held-out RMSE on ``target``.

    Returns one dict per law, best first: ``law, n_params, r2, rmse, holdout_r2,
    holdout_rmse, holdout_n_points, converged, note``. Laws that cannot be fitted
    (or do not predict ``target``) come last with ``holdout_rmse = None`` and the
    reason in ``note``.
    """
    if holdout is None:
        raise UserError("compare ranks laws by held-out error: give --holdout")
    if target not in TARGETS:
        raise UserError(f"unknown target {target!r}; use one of {', '.join(TARGETS)}")
    FitOptions(min_step=min_step, holdout=holdout, n_starts=n_starts)  # checked before any work
    if len(set(laws)) != len(laws):
        raise UserError("--laws names a law twice")
    specs = [get_law(n) for n in laws]  # unknown law -> UserError before any fitting
    df = table if hasattr(table, "columns") else read_table(table)
    rows, failed = [], []
    for spec in specs:
        base = {"law": spec.name, "n_params": len(spec.params)}
        if target not in spec.targets:
            failed.append({**base, "note": f"skipped: does not predict {target}"})
            continue
        try:
            ev = evaluate_holdout(df, spec, target, holdout, min_step=min_step, n_starts=n_starts)
        except UserError as exc:
            failed.append({**base, "note": f"skipped: {exc}"})
            continue
        fit = ev.fit
        notes = []
        if spec.joint:
            notes.append("joint fit")
        if "finetune_loss" in spec.variables:
            notes.append("uses observed L_ft")
        if not fit.converged:
            notes.append("not converged")
        if fit.on_bound:
            notes.append("on bound: " + ",".join(fit.on_bound))
        rows.append(
            {
                **base,
                "r2": ev.r2_in_sample[target],
                "rmse": ev.rmse_in_sample[target],
                "holdout_r2": ev.r2_held_out[target],
                "holdout_rmse": ev.rmse_held_out[target],
                "holdout_n_points": ev.n_held_out,
                "converged": fit.converged,
                "note": "; ".join(notes),
            }
        )
    if not rows:
        reasons = "; ".join(f"{f['law']}: {f['note']}" for f in failed)
        raise UserError(f"no law could be fitted ({reasons})")
    rows.sort(key=lambda r: r["holdout_rmse"])
    for f in failed:
        f.update(r2=None, rmse=None, holdout_r2=None, holdout_rmse=None, converged=None)
    return rows + failed
