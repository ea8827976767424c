"""forgetscale's figures, drawn from plain data: the one drawing path of the study report
and of ``fit --plots``.

:data:`FIGURES` is the figure registry: a name -> a function that takes the figure's
``data`` (plain lists and dicts, exactly what a study's ``report.json`` holds under
``figures``; :mod:`forgetscale.study.figure_data` and :mod:`forgetscale.laws.plots` make
it) and returns PNG bytes. One colour map (P, viridis, small to large), one label table
(:mod:`forgetscale.quantities`); held-out points are hollow. Matplotlib runs with the Agg
backend, so no display is needed.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from forgetscale import quantities
from forgetscale.output_kinds import PNG_SOFTWARE

_LABELLED = [*quantities.QUANTITIES, *quantities.VARIABLES]
#: Axis labels with units, and the short names of titles and legends, by column.
AXIS = {q.name: q.axis_label() for q in _LABELLED}
SHORT = {q.name: q.tex for q in _LABELLED}
UNITS = {q.name: q.unit_suffix() for q in _LABELLED}
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {"font.size": 10, "axes.grid": True, "grid.alpha": 0.3, "legend.fontsize": 8}
    )
    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buf = io.BytesIO()
    fig.tight_layout()
    # "tight" keeps the legends placed outside the axes inside the image
    fig.savefig(
        buf,
        format="png",
        dpi=DPI,
        bbox_inches="tight",
        pad_inches=0.15,
        metadata={"Software": PNG_SOFTWARE},  # how a later fit --plots recognises its own
    )
    plt.close(fig)
    return buf.getvalue()


class _Colours:
    """One colour and one legend label per P."""

    def __init__(self, points: Mapping[str, list]):
        plt = _pyplot()
        ps = np.asarray(points.get("params_trained", []), dtype=float)
        self.p = sorted(set(ps.tolist()))
        cmap = plt.get_cmap("viridis")
        n = max(len(self.p) - 1, 1)
        self.colour = {p: cmap(0.9 * i / n) for i, p in enumerate(self.p)}
        self.label = {}
        labels = points.get("label", [None] * len(ps))
        for p, lab in zip(ps.tolist(), labels, strict=True):
            if p not in self.label:
                name = str(lab).split(" seed")[0] if lab else ""
                self.label[p] = f"{name} (P={p:.3g})" if name else f"P={p:.3g}"

    def __call__(self, p: float):
        return self.colour.get(float(p), "grey")


def _frame(points: Mapping[str, list]):
    import pandas as pd

    return pd.DataFrame(dict(points))


def _plain_log_ticks(ax) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() != "log":
            continue
        lo, hi = sorted(axis.get_view_interval())
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        if lo > 0 and hi / lo < 3:
            subs = (1.2, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
            axis.set_minor_locator(LogLocator(subs=subs))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        elif lo > 0 and hi / lo < 20:
            axis.set_minor_locator(LogLocator(subs=(2.0, 3.0, 5.0)))
            axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        else:
            axis.set_minor_formatter(FuncFormatter(lambda v, _: ""))


def _legend_outside(fig, axes, colours: _Colours, extra: list | None = None) -> None:
    """One legend for the figure, below the axes (P values first, then the line styles)."""
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", ls="", color=colours(p), label=colours.label[p])
        for p in colours.p
    ]
    handles += extra or []
    ncol = min(len(handles), 4)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
               frameon=False, fontsize=9)  # fmt: skip


def _held(d) -> Any:
    """Which rows are held out (hollow): none unless the points say so."""
    import pandas as pd

    if "split" in d:
        return (d["split"] == "held_out").to_numpy()
    return pd.Series(False, index=d.index).to_numpy()


def forgetting_vs_finetune(data: Mapping[str, Any]) -> bytes:
    from matplotlib.lines import Line2D

    plt = _pyplot()
    df = _frame(data["points"])
    colours = _Colours(data["points"])
    panels = data["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        t = panel["target"]
        d = df.dropna(subset=[t, "finetune_loss"])
        _scatter_split(ax, d["finetune_loss"], d[t], d, _held(d), colours)
        for line in panel["per_p"]:
            x = np.array(line["x"])
            ax.plot(x, line["intercept"] + line["slope"] * x, color=colours(line["params_trained"]),
                    lw=0.9, alpha=0.8)  # fmt: skip
        law = panel.get("law") or panel.get("least_squares")
        if law and d.size:
            x = np.linspace(d["finetune_loss"].min(), d["finetune_loss"].max(), 50)
            ax.plot(x, law["s_f_ft"] - law["c_f_ft"] * x, "k--", lw=1.4)
            r2 = law.get("r2")
            ax.set_title(
                f"{SHORT[t]} = {law['s_f_ft']:.3f} - {law['c_f_ft']:.3f} $L_{{ft}}$"
                + (f"  (R$^2$ = {r2:.3f})" if r2 is not None else "")
                + ("" if panel.get("law") else "\nleast squares, no law fitted"),
                fontsize=10,
            )
        base = (panel.get("base") or {}).get("min")
        if base is not None:
            ax.axhline(base, color="0.5", ls=":", lw=1.2)
        ax.set_xlabel(AXIS["finetune_loss"])
        ax.set_ylabel(AXIS[t])
    extra = [Line2D([], [], color="k", ls="--", label="linear law, all runs")]
    if any(panel.get("per_p") for panel in panels):
        extra.append(Line2D([], [], color="0.3", lw=0.9, label="least squares per P"))
    if any((panel.get("base") or {}).get("min") is not None for panel in panels):
        extra.append(Line2D([], [], color="0.5", ls=":", label="base, step 0"))
    if _held(df).any():
        extra.append(_hollow_handle())
    _legend_outside(fig, axes, colours, extra)
    return _png(fig)


def losses_vs_steps(data: Mapping[str, Any]) -> bytes:
    from matplotlib.lines import Line2D

    plt = _pyplot()
    df = _frame(data["points"])
    colours = _Colours(data["points"])
    targets = data["targets"]
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 4.0), squeeze=False)
    any_dashed = False
    for ax, t in zip(axes[0], targets, strict=True):
        d = df.dropna(subset=[t])
        below = (d["step"] < data.get("min_step", 1)).to_numpy() | _held(d)
        ax.scatter(d["step"][~below], d[t][~below], s=16,
                   c=[colours(p) for p in d["params_trained"][~below]])  # fmt: skip
        if below.any():
            ax.scatter(d["step"][below], d[t][below], s=16, facecolors="none",
                       edgecolors=[colours(p) for p in d["params_trained"][below]])  # fmt: skip
        curve = (data.get("curves") or {}).get(t)
        spread = (data.get("seed_spread") or {}).get(t)
        title = SHORT[t]
        if curve:
            ls = "-" if curve["identified"] else "--"
            any_dashed |= not curve["identified"]
            for c in curve["per_p"]:
                n, y = np.array(c["step"]), np.array(c["predicted"])
                ax.plot(n, y, color=colours(c["params_trained"]), lw=1.3, ls=ls)
                if spread:
                    ax.fill_between(n, y - spread / 2, y + spread / 2,
                                    color=colours(c["params_trained"]), alpha=0.12, lw=0)  # fmt: skip
            title += f": {curve['law']} law" + ("" if curve["identified"] else " (not identified)")
        base = (data.get("base") or {}).get(t)
        if base and base.get("min") is not None:
            ax.axhline(base["min"], color="0.5", ls=":", lw=1.2)
        ax.set_xscale("log")
        # log y as in the paper, unless the values span too little for log ticks to read
        if len(d) and (d[t] > 0).all() and d[t].max() / d[t].min() > 1.3:
            ax.set_yscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel(AXIS["step"])
        ax.set_ylabel(AXIS[t])
        ax.set_title(title, fontsize=10)
    extra = [Line2D([], [], color="0.3", lw=1.3, label="fitted law")]
    if any((b or {}).get("min") is not None for b in (data.get("base") or {}).values()):
        extra.append(Line2D([], [], color="0.5", ls=":", label="base, step 0"))
    if any_dashed:
        extra.insert(
            1, Line2D([], [], color="0.3", lw=1.3, ls="--", label="law not identified (see Laws)")
        )
    if (df["step"] < data.get("min_step", 1)).any():
        extra.append(Line2D([], [], marker="o", ls="", markerfacecolor="none", color="0.3",
                            label="before min_step (not fitted)"))  # fmt: skip
    if _held(df).any():
        extra.append(_hollow_handle())
    if data.get("seed_spread") and any(data["seed_spread"].values()):
        from matplotlib.patches import Patch

        extra.append(Patch(color="0.3", alpha=0.2, label="law ± seed spread / 2"))
    _legend_outside(fig, axes, colours, extra)
    return _png(fig)


_SCHEME_TITLE = {
    "held_out_runs": "held-out runs",
    "held_out_steps": "held-out steps",
    "all_points": "all points",
}


def _hollow_handle():
    from matplotlib.lines import Line2D

    return Line2D([], [], marker="o", ls="", markerfacecolor="none", color="0.3",
                  label="held out (not fitted)")  # fmt: skip


def _scheme_grid(data: Mapping[str, Any], draw: Callable) -> bytes:
    """One row per held-out scheme, one column per target."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    targets = list(data)
    schemes = [k for k in _SCHEME_TITLE if any(k in v["schemes"] for v in data.values())]
    all_points: dict[str, list] = {"params_trained": [], "label": []}
    for v in data.values():
        for s in v["schemes"].values():
            all_points["params_trained"] += list(s["points"]["params_trained"])
            all_points["label"] += list(
                s["points"].get("label", [None] * len(s["points"]["params_trained"]))
            )
    colours = _Colours(all_points)
    fig, axes = plt.subplots(len(schemes), len(targets),
                             figsize=(4.3 * len(targets), 3.7 * len(schemes)), squeeze=False)  # fmt: skip
    for i, key in enumerate(schemes):
        for j, t in enumerate(targets):
            ax, v = axes[i][j], data[t]
            s = v["schemes"].get(key)
            if s is None:
                ax.axis("off")
                continue
            d = _frame(s["points"])
            held = d["split"] == "held_out"
            draw(ax, t, d, held, colours, s)
            rmse = f"in sample {_g(s.get('rmse_in_sample'))}"
            if s.get("rmse") is not None:
                rmse = f"held out {_g(s['rmse'])}, {rmse}"
            ax.set_title(
                f"{_SCHEME_TITLE[key]}: {SHORT[t]}, {v['law']} law\nRMSE {rmse}", fontsize=9
            )
    extra = [Line2D([], [], marker="o", ls="", color="0.3", label="fitted (in sample)")]
    if any(k != "all_points" for k in schemes):
        extra.append(
            Line2D([], [], marker="o", ls="", markerfacecolor="none", color="0.3", label="held out")
        )
    _legend_outside(fig, axes, colours, extra)
    return _png(fig)


def _scatter_split(ax, x, y, d, held, colours) -> None:
    cols = [colours(p) for p in d["params_trained"]]
    cols_in = [c for c, h in zip(cols, held, strict=True) if not h]
    cols_out = [c for c, h in zip(cols, held, strict=True) if h]
    ax.scatter(x[~held], y[~held], s=16, c=cols_in)
    if held.any():
        ax.scatter(x[held], y[held], s=26, facecolors="none", edgecolors=cols_out, linewidths=1.3)


def predicted_vs_observed(data: Mapping[str, Any]) -> bytes:
    def draw(ax, t, d, held, colours, s):
        _scatter_split(ax, d["observed"], d["predicted"], d, held, colours)
        lo = float(min(d["observed"].min(), d["predicted"].min()))
        hi = float(max(d["observed"].max(), d["predicted"].max()))
        ax.plot([lo, hi], [lo, hi], "k:", lw=1)
        ax.set_xlabel(f"observed {SHORT[t]}{UNITS[t]}")
        ax.set_ylabel(f"predicted {SHORT[t]}{UNITS[t]}")

    return _scheme_grid(data, draw)


def residuals(data: Mapping[str, Any]) -> bytes:
    spread = data.get("seed_spread") or {}

    def draw(ax, t, d, held, colours, s):
        res = d["observed"] - d["predicted"]
        sp = spread.get(t)
        if sp:
            ax.axhspan(-sp / 2, sp / 2, color="0.5", alpha=0.15, lw=0)
        _scatter_split(ax, d["step"], res, d, held, colours)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        _plain_log_ticks(ax)
        ax.set_xlabel(AXIS["step"])
        ax.set_ylabel(f"observed - predicted {SHORT[t]}{UNITS[t]}")

    return _scheme_grid(data["fits"], draw)


def hard_vs_soft(data: Mapping[str, Any]) -> bytes:
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    df = _frame(data["points"]).sort_values(["run_id", "step"])
    colours = _Colours(data["points"])
    metrics = data["metrics"]
    ncol = 2 if len(metrics) > 2 else len(metrics)
    nrow = -(-len(metrics) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 3.6 * nrow), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, m in zip(flat, metrics, strict=False):
        for _, g in df.groupby("run_id"):
            g = g.dropna(subset=[m])
            if not len(g):
                continue
            y = g[m].to_numpy(dtype=float)
            base = g[g["step"] == 0][m]
            if len(base):
                y = y - float(base.iloc[0])
            p = float(g["params_trained"].iloc[0])
            ax.plot(g["step"], y, marker="o", ms=3, lw=1, color=colours(p))
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel(AXIS["step"])
        ax.set_ylabel(f"change in {SHORT[m]}{UNITS[m]}")
        ax.set_title(f"{SHORT[m]} minus its step-0 value", fontsize=10)
    for ax in flat[len(metrics) :]:
        ax.axis("off")
    _legend_outside(fig, axes, colours)
    return _png(fig)


def frontier(data: Mapping[str, Any]) -> bytes:
    """PNG of the frontier figure: L_f and KL against L_ft, trajectories per arm."""
    from matplotlib.lines import Line2D

    plt = _pyplot()
    arms = data["arms"]
    cmap = plt.get_cmap("tab10")
    colour = {a["label"]: cmap(i % 10) for i, a in enumerate(arms)}
    has_kl = any(p.get("kl") is not None for a in arms for r in a["runs"] for p in r["trajectory"])
    panels = ["forgetting_loss", "kl"] if has_kl else ["forgetting_loss"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
    rows = {r["arm"]: r for r in data.get("rows", [])}
    for ax, key in zip(axes[0], panels, strict=True):
        for a in arms:
            for r in a["runs"]:
                pts = [p for p in r["trajectory"] if p.get(key) is not None]
                ax.plot([p["finetune_loss"] for p in pts], [p[key] for p in pts], "-o",
                        color=colour[a["label"]], ms=3, lw=1.6 if a["plain"] else 1.1,
                        alpha=0.85)  # fmt: skip
            row = rows.get(a["label"])
            value = None if row is None else row["forgetting_loss" if key == "forgetting_loss" else "kl"]  # fmt: skip
            if value is not None:
                ax.plot([row["matched_finetune_loss"]], [value], "x", color=colour[a["label"]],
                        ms=9, mew=2)  # fmt: skip
        ax.set_xlabel(AXIS["finetune_loss"])
        ax.set_ylabel(AXIS[key])
    handles = [Line2D([], [], color=colour[a["label"]], marker="o", label=a["label"]) for a in arms]
    ncol = min(len(handles), 4)
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
               frameon=False, fontsize=9)  # fmt: skip
    return _png(fig)


def _g(x: float | None) -> str:
    return "?" if x is None else f"{x:.3g}"


#: The figure registry: figure name -> drawing function (data -> PNG bytes).
FIGURES: dict[str, Callable[[Mapping[str, Any]], bytes]] = {
    "forgetting_vs_finetune": forgetting_vs_finetune,
    "losses_vs_steps": losses_vs_steps,
    "predicted_vs_observed": predicted_vs_observed,
    "residuals": residuals,
    "hard_vs_soft": hard_vs_soft,
    "frontier": frontier,
}


def draw(name: str, data: Mapping[str, Any]) -> bytes:
    """PNG bytes of figure ``name`` drawn from its report data."""
    return FIGURES[name](data)
