"""The data each figure of the report is drawn from, as plain data with its title and
caption (:mod:`forgetscale.figures` draws them): one function per figure, registered in
:data:`DATA` under the figure's name in :data:`forgetscale.figures.FIGURES`.

- ``forgetting_vs_finetune``: L_f against L_ft, hard and soft, with the linear law and a
  least-squares line per P;
- ``losses_vs_steps``: the losses against N per P, with the curves of the law shown;
- ``predicted_vs_observed`` and ``residuals``: the held-out evaluations of the law shown;
- ``hard_vs_soft``: hard and soft L_f, KL and disagreement against N, step 0 included.

A new figure: its data function here (one entry in :data:`DATA`) and its drawing function
in :mod:`forgetscale.figures` (one entry in ``FIGURES``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale import quantities
from forgetscale.study.config import METRICS, AnalysisConfig
from forgetscale.study.fits import law_entry
from forgetscale.study.frontier import figure_data as frontier_figure
from forgetscale.study.noise import typical_spread

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from forgetscale.laws import FitResult

Figure = dict[str, Any]
"""``{title, caption, data}``: what report.json holds under ``figures`` for one figure."""


@dataclass
class Inputs:
    """What the figures are made from: the measurements and the analysis of them."""

    df: pd.DataFrame
    runs: list[dict[str, Any]]
    laws: Mapping[str, list[dict[str, Any]]]
    shown: Mapping[str, dict[str, Any]]
    fits: Mapping[tuple[str, str], FitResult]
    noise: dict[str, Any]
    config: AnalysisConfig
    #: The learning–forgetting frontier (:mod:`forgetscale.study.frontier`), if any.
    frontier: dict[str, Any] | None = None

    @cached_property
    def labels(self) -> dict[str, str]:
        return {r["run_id"]: r["label"] for r in self.runs}

    @property
    def base(self) -> dict[str, Any]:
        return self.noise["step0_summary"]

    @cached_property
    def spread(self) -> dict[str, Any]:
        return typical_spread(self.noise["seed_spread"])

    @cached_property
    def fitted(self) -> pd.DataFrame:
        return self.df[self.df["step"] >= self.config.min_step]

    def points(self, df: pd.DataFrame) -> dict[str, list]:
        return _points(df, self.labels)

    @cached_property
    def held_out(self) -> dict[str, Any]:
        """Per target shown, the held-out evaluations of its law (runs, steps)."""
        pv: dict[str, Any] = {}
        for t, s in self.shown.items():
            entry = law_entry(self.laws, t, s["law"])
            schemes = {}
            for key in ("held_out_runs", "held_out_steps"):
                ev = entry.get(key)
                if ev and "points" in ev:
                    points = dict(ev["points"])
                    points["label"] = [self.labels.get(i, i) for i in points["run_id"]]
                    schemes[key] = {
                        "description": ev["description"],
                        "rmse": ev["rmse"],
                        "rmse_in_sample": ev["rmse_in_sample"],
                        "points": points,
                    }
            if schemes:
                pv[t] = {"law": s["law"], "identified": s["identified"], "schemes": schemes}
        return pv


def figure_data(
    df: pd.DataFrame,
    runs: list[dict[str, Any]],
    laws: Mapping[str, list[dict[str, Any]]],
    shown: Mapping[str, dict[str, Any]],
    fits: Mapping[tuple[str, str], FitResult],
    noise: dict[str, Any],
    config: AnalysisConfig,
    frontier: dict[str, Any] | None = None,
) -> dict[str, Figure]:
    """``{name: {title, caption, data}}`` for every figure the runs can show, in the order
    of :data:`DATA`."""
    inputs = Inputs(df, runs, laws, shown, fits, noise, config, frontier)
    figs = {name: make(inputs) for name, make in DATA.items()}
    return {name: fig for name, fig in figs.items() if fig is not None}


def forgetting_vs_finetune(x: Inputs) -> Figure | None:
    """L_f against L_ft, hard and soft, the linear law and a least-squares line per P."""
    df, fitted = x.df, x.fitted
    if "finetune_loss" not in df.columns:
        return None
    panels = []
    for t in (t for t in quantities.forgetting_losses() if t in df.columns):
        if fitted[t].isna().all():
            continue
        law = next(
            (e for e in x.laws.get(t, []) if e["law"] == "linear" and e["status"] == "ok"), None
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
                "base": x.base.get(t),
            }
        )
    if not panels:
        return None
    return {
        "title": "Forgetting against fine-tuning loss",
        "caption": (
            "Each point is one measurement (step >= min_step), coloured by P. Black dashed: "
            "the linear law L_f = s_f_ft - c_f_ft L_ft fitted to all runs; thin coloured "
            "lines: a least-squares line per P. Left the hard L_f (the paper's), right the "
            "soft. Dotted grey line: the base's own value at step 0."
        ),
        "data": {"points": x.points(fitted), "panels": panels},
    }


def losses_vs_steps(x: Inputs) -> Figure | None:
    """The losses against N per P with the shown law's curves (log axes)."""
    df = x.df
    targets = [t for t in quantities.losses() if t in df.columns and not df[t].isna().all()]
    if not targets:
        return None
    curves: dict[str, Any] = {}
    for t in targets:
        s = x.shown.get(t)
        if not s:
            continue
        fit = x.fits[(t, s["law"])]
        per_p = []
        for p, g in df[df["step"] > 0].groupby("params_trained"):
            n = np.geomspace(max(float(g["step"].min()), 1.0), float(g["step"].max()), 60)
            y = np.broadcast_to(
                fit.predict(t, params_trained=np.full_like(n, float(p)), step=n), n.shape
            )
            per_p.append({"params_trained": float(p), "step": n.tolist(), "predicted": y.tolist()})
        curves[t] = {"law": s["law"], "identified": s["identified"], "per_p": per_p}
    return {
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
            "points": x.points(df[df["step"] > 0]),
            "targets": targets,
            "curves": curves,
            "base": {t: x.base.get(t) for t in targets},
            "seed_spread": {t: x.spread.get(t) for t in targets},
            "min_step": x.config.min_step,
        },
    }


def predicted_vs_observed(x: Inputs) -> Figure | None:
    """Predicted against observed on held-out runs and steps, held-out points marked."""
    if not x.held_out:
        return None
    return {
        "title": "Predicted against observed, on runs and steps the fit never saw",
        "caption": (
            "Per target, the law shown fitted without the held-out points (hollow) and "
            "predicting them. Top row: held-out runs (the largest P); bottom row: held-out "
            "steps (the last steps of every run). On the dotted line prediction = "
            "observation."
        ),
        "data": x.held_out,
    }


def residuals(x: Inputs) -> Figure | None:
    """Observed minus predicted for the fits of :func:`predicted_vs_observed`, against N."""
    if not x.held_out:
        return None
    return {
        "title": "Residuals against steps",
        "caption": (
            "Observed minus predicted, for the same fits as above, against N (held-out "
            "points hollow). Grey band: the typical spread of that quantity over seeds; "
            "residuals inside it are noise."
        ),
        "data": {"fits": x.held_out, "seed_spread": x.spread},
    }


def hard_vs_soft(x: Inputs) -> Figure | None:
    """Hard and soft L_f, KL and disagreement against N, step 0 included."""
    df = x.df
    cols = [c for c in quantities.rising_targets() if c in df.columns and not df[c].isna().all()]
    if not cols:
        return None
    return {
        "title": "Hard and soft L_f, KL and disagreement against N (change from step 0)",
        "caption": (
            "Each metric minus its step-0 value (the base against its own reference), per "
            "run. Where the hard L_f dips below 0 while KL rises, the model has grown more "
            "confident on the base's top token: not negative forgetting. The x axis is "
            "linear up to 1 and logarithmic beyond, so step 0 is shown."
        ),
        "data": {"points": x.points(df), "metrics": cols},
    }


#: Figure name (as in :data:`forgetscale.figures.FIGURES`) -> the function making its data,
#: in the report's order.
DATA: dict[str, Callable[[Inputs], Figure | None]] = {
    "forgetting_vs_finetune": forgetting_vs_finetune,
    "losses_vs_steps": losses_vs_steps,
    "predicted_vs_observed": predicted_vs_observed,
    "residuals": residuals,
    "hard_vs_soft": hard_vs_soft,
    "frontier": lambda x: frontier_figure(x.frontier),
}


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
