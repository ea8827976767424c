"""The data each figure of the report is drawn from, as plain data with its title and
caption (:mod:`forgetscale.study.figures` draws them):

- ``forgetting_vs_finetune``: L_f against L_ft, hard and soft, with the linear law and a
  least-squares line per P;
- ``losses_vs_steps``: the losses against N per P, with the curves of the law shown;
- ``predicted_vs_observed`` and ``residuals``: the held-out evaluations of the law shown;
- ``hard_vs_soft``: hard and soft L_f, KL and disagreement against N, step 0 included.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.study.config import METRICS, AnalysisConfig
from forgetscale.study.fits import law_entry
from forgetscale.study.noise import typical_spread

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from forgetscale.laws import FitResult


def figure_data(
    df: pd.DataFrame,
    runs: list[dict[str, Any]],
    laws: Mapping[str, list[dict[str, Any]]],
    shown: Mapping[str, dict[str, Any]],
    fits: Mapping[tuple[str, str], FitResult],
    noise: dict[str, Any],
    config: AnalysisConfig,
) -> dict[str, dict[str, Any]]:
    """``{name: {title, caption, data}}`` for every figure the runs can show."""
    labels = {r["run_id"]: r["label"] for r in runs}
    figs: dict[str, dict[str, Any]] = {}
    base = noise["step0_summary"]
    spread = typical_spread(noise["seed_spread"])

    # L_f against L_ft, hard and soft, the linear law and a line per P
    lin_targets = [t for t in ("forgetting_loss", "forgetting_loss_soft") if t in df.columns]
    fitted = df[df["step"] >= config.min_step]
    panels = []
    for t in lin_targets:
        if fitted[t].isna().all():
            continue
        law = next(
            (e for e in laws.get(t, []) if e["law"] == "linear" and e["status"] == "ok"), None
        )
        per_p = []
        for p, g in fitted.groupby("params_trained"):
            g = g.dropna(subset=[t, "finetune_loss"])
            line = _ols(g["finetune_loss"].to_numpy(), g[t].to_numpy())
            if line is not None:
                per_p.append({"params_trained": float(p), "slope": line[0], "intercept": line[1],
                              "x": [float(g["finetune_loss"].min()), float(g["finetune_loss"].max())]})  # fmt: skip
        both = fitted.dropna(subset=[t, "finetune_loss"])
        overall = _ols(both["finetune_loss"].to_numpy(), both[t].to_numpy())
        least_squares = None
        if overall is not None:
            resid = both[t].to_numpy() - (
                overall[1] + overall[0] * both["finetune_loss"].to_numpy()
            )
            ss = float(((both[t] - both[t].mean()) ** 2).sum())
            least_squares = {"s_f_ft": overall[1], "c_f_ft": -overall[0],
                             "r2": 1 - float((resid**2).sum()) / ss if ss > 0 else None}  # fmt: skip
        panels.append(
            {
                "target": t,
                "least_squares": least_squares,
                "law": None
                if law is None
                else {
                    "s_f_ft": next(p["value"] for p in law["params"] if p["name"] == "s_f_ft"),
                    "c_f_ft": next(p["value"] for p in law["params"] if p["name"] == "c_f_ft"),
                    "r2": law["r2"],
                },
                "per_p": per_p,
                "base": base.get(t),
            }
        )
    if panels and "finetune_loss" in df.columns:
        figs["forgetting_vs_finetune"] = {
            "title": "Forgetting against fine-tuning loss",
            "caption": (
                "Each point is one measurement (step >= min_step), coloured by P. Black dashed: "
                "the linear law L_f = s_f_ft - c_f_ft L_ft fitted to all runs; thin coloured "
                "lines: a least-squares line per P. Left the hard L_f (the paper's), right the "
                "soft. Dotted grey line: the base's own value at step 0."
            ),
            "data": {"points": _points(fitted, labels), "panels": panels},
        }

    # the losses against N per P with the shown law's curves (log axes)
    curve_targets = [t for t in ("finetune_loss", "forgetting_loss", "forgetting_loss_soft")
                     if t in df.columns and not df[t].isna().all()]  # fmt: skip
    curves: dict[str, Any] = {}
    for t in curve_targets:
        s = shown.get(t)
        if not s:
            continue
        fit = fits[(t, s["law"])]
        per_p = []
        for p, g in df[df["step"] > 0].groupby("params_trained"):
            n = np.geomspace(max(float(g["step"].min()), 1.0), float(g["step"].max()), 60)
            y = np.broadcast_to(
                fit.predict(t, params_trained=np.full_like(n, float(p)), step=n), n.shape
            )
            per_p.append({"params_trained": float(p), "step": n.tolist(), "predicted": y.tolist()})
        curves[t] = {"law": s["law"], "identified": s["identified"], "per_p": per_p}
    if curve_targets:
        figs["losses_vs_steps"] = {
            "title": "Losses against steps N, per P",
            "caption": (
                "Points: measurements after N updates, coloured by P (log axes). Lines: the law "
                "shown for that target (the best identified one), fitted to all runs from "
                "min_step on; dashed when no law for that target is identified (a parameter on a "
                "bound or no convergence): then the curve is not a result. Shaded band: the law "
                "± half the typical spread over seeds. Dotted grey line: the base's own value at "
                "step 0."
            ),
            "data": {
                "points": _points(df[df["step"] > 0], labels),
                "targets": curve_targets,
                "curves": curves,
                "base": {t: base.get(t) for t in curve_targets},
                "seed_spread": {t: spread.get(t) for t in curve_targets},
                "min_step": config.min_step,
            },
        }

    # predicted against observed, and residuals, held-out points marked
    pv: dict[str, Any] = {}
    for t, s in shown.items():
        entry = law_entry(laws, t, s["law"])
        schemes = {}
        for key in ("held_out_runs", "held_out_steps"):
            ev = entry.get(key)
            if ev and "points" in ev:
                schemes[key] = {
                    "description": ev["description"],
                    "rmse": ev["rmse"],
                    "rmse_in_sample": ev["rmse_in_sample"],
                    "points": ev["points"],
                }
        for sch in schemes.values():
            sch["points"] = dict(sch["points"])
            sch["points"]["label"] = [labels.get(i, i) for i in sch["points"]["run_id"]]
        if schemes:
            pv[t] = {"law": s["law"], "identified": s["identified"], "schemes": schemes}
    if pv:
        figs["predicted_vs_observed"] = {
            "title": "Predicted against observed, on runs and steps the fit never saw",
            "caption": (
                "Per target, the law shown fitted without the held-out points (hollow) and "
                "predicting them. Top row: held-out runs (the largest P); bottom row: held-out "
                "steps (the last steps of every run). On the dotted line prediction = "
                "observation."
            ),
            "data": pv,
        }
        figs["residuals"] = {
            "title": "Residuals against steps",
            "caption": (
                "Observed minus predicted, for the same fits as above, against N (held-out "
                "points hollow). Grey band: the typical spread of that quantity over seeds; "
                "residuals inside it are noise."
            ),
            "data": {"fits": pv, "seed_spread": spread},
        }

    # hard against soft, KL and disagreement against N, step 0 included
    hs_cols = [c for c in ("forgetting_loss", "forgetting_loss_soft", "kl", "disagreement")
               if c in df.columns and not df[c].isna().all()]  # fmt: skip
    if hs_cols:
        figs["hard_vs_soft"] = {
            "title": "Hard and soft L_f, KL and disagreement against N (change from step 0)",
            "caption": (
                "Each metric minus its step-0 value (the base against its own reference), per "
                "run. Where the hard L_f dips below 0 while KL rises, the model has grown more "
                "confident on the base's top token: not negative forgetting. The x axis is "
                "linear up to 1 and logarithmic beyond, so step 0 is shown."
            ),
            "data": {"points": _points(df, labels), "metrics": hs_cols},
        }
    return figs


def _points(df: pd.DataFrame, labels: Mapping[str, str]) -> dict[str, list]:
    cols = ["run_id", "params_trained", "step", *[m for m in METRICS if m in df.columns]]
    d = df[cols].copy()
    d["params_trained"] = d["params_trained"].astype(float)
    d["label"] = d["run_id"].map(labels)
    return d.to_dict(orient="list")


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)
