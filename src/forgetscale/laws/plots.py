"""Figures for fitted laws, like the paper's, each written as PNG plus the CSV behind it.

:func:`stage_figures` draws, for a :class:`~forgetscale.laws.FitResult` and its table
(the points and predictions come from :func:`forgetscale.laws.holdout.point_table`):

- ``forgetting_vs_finetune.png``: L_f against L_ft per run with the fitted line
  of the ``linear`` law (the paper's Fig. 2);
- ``loss_vs_steps.png``: L_ft, L_f and the fitted target against N, one colour per
  P, with the fitted curves (the paper's Fig. 3; log axes for power laws);
- ``predicted_vs_observed.png``: the law's prediction against the measurement;
- ``residuals.png``: log residuals (log predicted - log observed) against N.

Held-out points (``holdout``) are drawn hollow. Matplotlib runs with the Agg
backend, so no display is needed. Files are written through
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

LABELS = {
    "finetune_loss": "fine-tuning loss $L_{ft}$",
    "forgetting_loss": "forgetting loss $L_f$",
    "forgetting_loss_soft": "soft forgetting loss $L_f^{soft}$",
    "kl": "KL(base || model)",
    "disagreement": "1 - agreement",
    "step": "fine-tuning steps $N$",
    "params_trained": "trainable parameters $P$",
}
#: The files :func:`stage_figures` writes (each as .png and .csv).
FIGURES: tuple[str, ...] = (
    "forgetting_vs_finetune",
    "loss_vs_steps",
    "predicted_vs_observed",
    "residuals",
)
#: Bytes the figures need, about (checked against the free space before a fit).
FIGURES_BYTES = 4 * 1024 * 1024


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.grid": True, "grid.alpha": 0.3})
    return plt


def _colors(p_values: np.ndarray) -> dict[float, Any]:
    plt = _pyplot()
    uniq = np.unique(p_values)
    cmap = plt.get_cmap("viridis")
    return {p: cmap(i / max(len(uniq) - 1, 1) * 0.9) for i, p in enumerate(uniq)}


def _plain_ticks(ax) -> None:
    """Log axes labelled 60, 100, 200 rather than 6x10^1 (losses span < 1 decade)."""
    from matplotlib.ticker import FuncFormatter

    def sparse(v, _):
        lead = round(v / 10 ** np.floor(np.log10(v)), 6) if v > 0 else 0
        return f"{v:.3g}" if lead in (2.0, 5.0) else ""

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            lo, hi = sorted(axis.get_view_interval())
            narrow = lo > 0 and hi / lo < 3  # few minor ticks: label them all
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
            axis.set_minor_formatter(FuncFormatter((lambda v, _: f"{v:.3g}") if narrow else sparse))


def _scatter(ax, rows, x, y, colors, label_runs: bool = True) -> None:
    seen = set()
    groups = rows.groupby(["params_trained", "split"])
    for (p, split), g in sorted(groups, key=lambda item: (item[0][0], item[0][1] != IN_SAMPLE)):
        c = colors[p]
        label = f"P = {p:.3g}" if label_runs and p not in seen else None
        seen.add(p)
        kw = {"facecolors": "none", "edgecolors": [c]} if split == HELD_OUT else {"color": c}
        ax.scatter(g[x], g[y], s=16, label=label, **kw)


def figure_files() -> list[str]:
    """Names of the files :func:`stage_figures` writes into its folder."""
    return [f"{name}.{ext}" for name in FIGURES for ext in ("png", "csv")]


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
    import pandas as pd

    out = Path(outdir)
    holdout = Holdout.parse(holdout)
    plt = _pyplot()
    law = fit.law_spec
    plotted = ("finetune_loss", "forgetting_loss")
    rows = point_table(fit, df, holdout, extra=plotted)
    if "params_trained" not in rows:
        rows["params_trained"] = 0.0
    colors = _colors(rows["params_trained"].to_numpy())
    hollow = " (hollow: held out)" if (rows["split"] == HELD_OUT).any() else ""

    def save(fig, name: str, table: pd.DataFrame) -> None:
        fig.tight_layout()
        try:
            staged.write(
                out / f"{name}.png", lambda tmp: fig.savefig(tmp, dpi=130, format="png"), option
            )
        finally:
            plt.close(fig)
        staged.write(out / f"{name}.csv", lambda tmp: table.to_csv(tmp, index=False), option)

    # -- Fig. 2: L_f vs L_ft with the linear law ----------------------------------------
    if {"finetune_loss", "forgetting_loss"} <= set(rows.columns):
        fitted = rows[rows["split"] == IN_SAMPLE]
        if law.name == "linear":
            line = fit.params
        else:
            lin = get_law("linear")
            part = FitData(
                fitted["run_id"].to_numpy(),
                {c: fitted[c].to_numpy() for c in ("finetune_loss", "forgetting_loss")},
            )
            line, _, _ = fit_data(lin, ("forgetting_loss",), part, n_starts=3)
        fig, ax = plt.subplots(figsize=(6, 4.5))
        _scatter(ax, rows, "finetune_loss", "forgetting_loss", colors)
        xs = np.linspace(rows["finetune_loss"].min(), rows["finetune_loss"].max(), 50)
        ys = line["s_f_ft"] - line["c_f_ft"] * xs
        ax.plot(
            xs, ys, "k--", lw=1.2, label=f"L_f = {line['s_f_ft']:.3f} - {line['c_f_ft']:.3f} L_ft"
        )
        ax.set_xlabel(LABELS["finetune_loss"])
        ax.set_ylabel(LABELS["forgetting_loss"])
        ax.set_title("Forgetting vs fine-tuning loss" + hollow)
        ax.legend(fontsize=8)
        table = rows[
            ["run_id", "params_trained", "step", "finetune_loss", "forgetting_loss", "split"]
        ].copy()
        table["linear_forgetting_loss"] = line["s_f_ft"] - line["c_f_ft"] * table["finetune_loss"]
        save(fig, "forgetting_vs_finetune", table)

    # -- Fig. 3: losses vs N per P with fitted curves ------------------------------------
    panels = [t for t in dict.fromkeys([*plotted, *fit.targets]) if t in rows.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.3), squeeze=False)
    curves = []
    for ax, t in zip(axes[0], panels, strict=True):
        _scatter(ax, rows[rows["step"] > 0], "step", t, colors)
        if t in fit.targets:
            for p, g in rows.groupby("params_trained"):
                if law.variables == ("params_trained", "step") or set(law.variables) == {
                    "params_trained",
                    "step",
                }:
                    n = np.geomspace(max(g["step"].min(), 1), g["step"].max(), 100)
                    y = np.broadcast_to(
                        law.predict(
                            fit.params, {"params_trained": np.full_like(n, p), "step": n}, t
                        ),
                        n.shape,
                    )
                else:  # e.g. linear: predictions at the observed points
                    g = g.sort_values("step")
                    n, y = g["step"].to_numpy(), g[f"predicted_{t}"].to_numpy()
                ax.plot(n, y, color=colors[p], lw=1.2)
                curves.append(
                    pd.DataFrame({"params_trained": p, "step": n, "target": t, "predicted": y})
                )
        ax.set_xscale("log")
        if law.power_law:
            ax.set_yscale("log")
        _plain_ticks(ax)
        ax.set_xlabel(LABELS["step"])
        ax.set_ylabel(LABELS[t])
        ax.set_title(
            f"{LABELS[t].split(' $')[0].capitalize()} vs steps"
            + ("" if t in fit.targets else " (not fitted)")
        )
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"law: {law.name}; points: measurements, lines: fit{hollow}", fontsize=10)
    save(fig, "loss_vs_steps", pd.concat(curves, ignore_index=True) if curves else pd.DataFrame())

    # -- predicted vs observed, residuals ------------------------------------------------
    fig, axes = plt.subplots(
        1, len(fit.targets), figsize=(4.6 * len(fit.targets), 4.3), squeeze=False
    )
    for ax, t in zip(axes[0], fit.targets, strict=True):
        _scatter(ax, rows, t, f"predicted_{t}", colors)
        lo = min(rows[t].min(), rows[f"predicted_{t}"].min())
        hi = max(rows[t].max(), rows[f"predicted_{t}"].max())
        ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="y = x")
        ax.set_xlabel(f"observed {LABELS[t]}")
        ax.set_ylabel(f"predicted {LABELS[t]}")
        ax.set_title(f"R^2 = {fit.r2[t]:.4f}, RMSE = {fit.rmse[t]:.4g}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"law: {law.name}: predicted vs observed{hollow}", fontsize=10)
    cols = ["run_id", "params_trained", "step", "split"]
    cols += [c for t in fit.targets for c in (t, f"predicted_{t}")]
    save(fig, "predicted_vs_observed", rows[cols])

    fig, axes = plt.subplots(
        1, len(fit.targets), figsize=(4.6 * len(fit.targets), 4.3), squeeze=False
    )
    table = rows[["run_id", "params_trained", "step", "split"]].copy()
    for ax, t in zip(axes[0], fit.targets, strict=True):
        resid = np.log(rows[f"predicted_{t}"].clip(lower=1e-12)) - np.log(rows[t])
        table[f"log_residual_{t}"] = resid
        tmp = rows.assign(resid=resid)
        _scatter(ax, tmp[tmp["step"] > 0], "step", "resid", colors)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        _plain_ticks(ax)
        ax.set_xlabel(LABELS["step"])
        ax.set_ylabel(f"log residual of {LABELS[t].split(' $')[0]}")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"law: {law.name}: log(predicted) - log(observed){hollow}", fontsize=10)
    save(fig, "residuals", table)
