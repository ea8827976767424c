"""``fit --plots``: the report's figures for one fitted law, each written as PNG plus the CSV
behind it.

:func:`stage_figures` builds, for a :class:`~forgetscale.laws.FitResult` and its table (the
points and predictions from :func:`forgetscale.laws.holdout.point_table`), the data of four
figures of the figure registry (:data:`forgetscale.figures.FIGURES`) and draws them with the
same code as a study's report (one colour map, one label table):

- ``forgetting_vs_finetune.png``: L_f against L_ft per run with the fitted line of the
  ``linear`` law (the paper's Fig. 2);
- ``loss_vs_steps.png``: L_ft, L_f and the fitted targets against N, one colour per P, with
  the fitted curves (the paper's Fig. 3);
- ``predicted_vs_observed.png``: the law's prediction against the measurement;
- ``residuals.png``: observed - predicted against N.

Held-out points (``holdout``) are drawn hollow. Files are written through
:class:`~forgetscale.outputs.StagedOutputs`: all of them, or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.laws.fitting import FitResult, fit_data
from forgetscale.laws.holdout import HELD_OUT, IN_SAMPLE, point_table
from forgetscale.laws.registry import get_law
from forgetscale.laws.table import FitData, Holdout
from forgetscale.outputs import StagedOutputs

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The figures ``fit --plots`` draws (registry name -> the file name it has always had).
FIGURES: dict[str, str] = {
    "forgetting_vs_finetune": "forgetting_vs_finetune",
    "losses_vs_steps": "loss_vs_steps",
    "predicted_vs_observed": "predicted_vs_observed",
    "residuals": "residuals",
}
#: Bytes the figures need, about (checked against the free space before a fit).
FIGURES_BYTES = 4 * 1024 * 1024


def figure_files() -> list[str]:
    """Names of the files :func:`stage_figures` writes into its folder."""
    return [f"{name}.{ext}" for name in FIGURES.values() for ext in ("png", "csv")]


def figure_kinds() -> dict[str, str]:
    """Each file of :func:`figure_files` with its kind (:data:`~forgetscale.output_kinds.OUTPUT_KINDS`):
    only figures drawn before may be replaced."""
    return {name: f"figure-{name.rsplit('.', 1)[1]}" for name in figure_files()}


def stage_figures(
    fit: FitResult,
    df: pd.DataFrame,
    outdir: str | Path,
    holdout: Holdout | str | Sequence[str] | None,
    staged: StagedOutputs,
    *,
    option: str = "--plots",
) -> None:
    """Draw the four figures (PNG + CSV) for ``fit`` on ``df`` into ``staged`` (renamed into
    ``outdir`` when it commits: all of them, or none)."""
    from forgetscale.figures import draw

    out = Path(outdir)
    holdout = Holdout.parse(holdout)
    rows = point_table(fit, df, holdout, extra=("finetune_loss", "forgetting_loss"))
    if "params_trained" not in rows:
        rows["params_trained"] = 0.0
    rows["params_trained"] = rows["params_trained"].astype(float)
    made = {
        "forgetting_vs_finetune": _forgetting_vs_finetune(fit, rows),
        "losses_vs_steps": _losses_vs_steps(fit, rows),
        **dict(zip(("predicted_vs_observed", "residuals"), _evaluations(fit, rows, holdout),
                   strict=True)),
    }  # fmt: skip
    for name, made_figure in made.items():
        if made_figure is None:
            continue
        data, table = made_figure
        png = draw(name, data)
        file = out / FIGURES[name]
        staged.write(file.with_suffix(".png"), lambda tmp, b=png: Path(tmp).write_bytes(b), option)
        staged.write(
            file.with_suffix(".csv"), lambda tmp, t=table: t.to_csv(tmp, index=False), option
        )


def _points(rows: pd.DataFrame, columns: Sequence[str]) -> dict[str, list]:
    cols = ["run_id", "params_trained", "step", "split"]
    cols += [c for c in dict.fromkeys(columns) if c in rows.columns and c not in cols]
    return rows[cols].to_dict(orient="list")


def _forgetting_vs_finetune(fit: FitResult, rows: pd.DataFrame):
    """L_f against L_ft with the linear law: the fit's own when it is linear, else one fitted
    to the same in-sample rows."""
    if not {"finetune_loss", "forgetting_loss"} <= set(rows.columns):
        return None
    fitted = rows[rows["split"] == IN_SAMPLE]
    if fit.law_spec.name == "linear":
        line, r2 = fit.params, fit.r2.get("forgetting_loss")
    else:
        part = FitData(
            fitted["run_id"].to_numpy(),
            {c: fitted[c].to_numpy() for c in ("finetune_loss", "forgetting_loss")},
        )
        line, _, _ = fit_data(get_law("linear"), ("forgetting_loss",), part, n_starts=3)
        r2 = None
    law = {"s_f_ft": line["s_f_ft"], "c_f_ft": line["c_f_ft"], "r2": r2}
    panel = {"target": "forgetting_loss", "law": law, "least_squares": None, "per_p": []}
    data = {"points": _points(rows, ("finetune_loss", "forgetting_loss")), "panels": [panel]}
    table = rows[
        ["run_id", "params_trained", "step", "finetune_loss", "forgetting_loss", "split"]
    ].copy()
    table["linear_forgetting_loss"] = line["s_f_ft"] - line["c_f_ft"] * table["finetune_loss"]
    return data, table


def _losses_vs_steps(fit: FitResult, rows: pd.DataFrame):
    """The losses and the fitted targets against N per P, with the law's curves."""
    import pandas as pd

    law = fit.law_spec
    shown = rows[rows["step"] > 0]
    targets = [t for t in dict.fromkeys(["finetune_loss", "forgetting_loss", *fit.targets])
               if t in rows.columns]  # fmt: skip
    curves: dict[str, Any] = {}
    frames = []
    for t in fit.targets:
        per_p = []
        for p, g in shown.groupby("params_trained"):
            if set(law.variables) == {"params_trained", "step"}:
                n = np.geomspace(max(float(g["step"].min()), 1.0), float(g["step"].max()), 100)
                X = {"params_trained": np.full_like(n, p), "step": n}
                y = np.broadcast_to(law.predict(fit.params, X, t), n.shape)
            else:  # e.g. linear: the predictions at the observed points
                g = g.sort_values("step")
                n, y = g["step"].to_numpy(float), g[f"predicted_{t}"].to_numpy(float)
            per_p.append({"params_trained": float(p), "step": n.tolist(), "predicted": y.tolist()})
            frames.append(pd.DataFrame({"params_trained": p, "step": n, "target": t,
                                        "predicted": y}))  # fmt: skip
        curves[t] = {"law": law.name, "identified": _identified(fit), "per_p": per_p}
    data = {
        "points": _points(shown, targets),
        "targets": targets,
        "curves": curves,
        "min_step": fit.min_step,
    }
    return data, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _identified(fit: FitResult) -> bool:
    return bool(fit.converged and not fit.on_bound)


def _evaluations(fit: FitResult, rows: pd.DataFrame, holdout: Holdout | None):
    """Predicted against observed, and the residuals: one row of panels, the held-out points
    (if any) hollow."""
    held = bool((rows["split"] == HELD_OUT).any())
    scheme = "all_points"
    if held:
        scheme = "held_out_steps" if holdout and holdout.scheme == "largest-N" else "held_out_runs"
    pv: dict[str, Any] = {}
    for t in fit.targets:
        points = _points(rows, ())
        points["observed"] = rows[t].tolist()
        points["predicted"] = rows[f"predicted_{t}"].tolist()
        rmse_held = (fit.holdout or {}).get("rmse", {}).get(t) if held else None
        pv[t] = {
            "law": fit.law_spec.name,
            "identified": _identified(fit),
            "schemes": {
                scheme: {
                    "description": (fit.holdout or {}).get("description"),
                    "rmse": rmse_held,
                    "rmse_in_sample": fit.rmse.get(t),
                    "r2": fit.r2.get(t),
                    "points": points,
                }
            },
        }
    cols = ["run_id", "params_trained", "step", "split"]
    observed = rows[cols + [c for t in fit.targets for c in (t, f"predicted_{t}")]]
    residuals = rows[cols].copy()
    for t in fit.targets:
        residuals[f"residual_{t}"] = rows[t] - rows[f"predicted_{t}"]
        residuals[f"log_residual_{t}"] = np.log(rows[f"predicted_{t}"].clip(lower=1e-12)) - np.log(
            rows[t]
        )
    return (pv, observed), ({"fits": pv, "seed_spread": {}}, residuals)
