"""Plain-text reports for fits, comparisons and predictions (used by the CLI)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from forgetscale.laws.fitting import CI_LEVEL, FitResult
from forgetscale.laws.registry import TARGETS


def _finite(x: float | None) -> bool:
    return x is not None and bool(np.isfinite(x))


def _g(x: float | None, digits: int = 5) -> str:
    return f"{x:.{digits}g}" if _finite(x) else "-"


def _f(x: float | None, decimals: int) -> str:
    return f"{x:.{decimals}f}" if _finite(x) else "-"


def format_fit(fit: FitResult) -> str:
    """Parameter table with intervals, fit quality (in-sample and held-out) and warnings."""
    law = fit.law_spec
    lines = [
        f"law: {law.name}" + (f" (joint fit of {', '.join(fit.targets)})" if fit.joint else "")
    ]
    for t in fit.targets:
        lines.append(f"  {law.formula[t]}")
    excl = f"steps >= {fit.min_step:g}" + ("; step 0 excluded" if law.power_law else "")
    lines.append(f"data: {fit.n_points} points from {fit.n_runs} runs ({excl})")
    if fit.holdout is not None:
        desc = fit.holdout.get("description") or "held out"
        lines.append(f"held out (never fitted): {fit.holdout['n_points']} points, {desc}")
    status = "converged" if fit.converged else "NOT converged"
    lines.append(
        f"fit: {status}; Huber(delta=1e-3) on log residuals, L-BFGS-B from the best "
        f"{fit.n_starts} of {fit.n_grid} grid starts; {fit.seconds.get('fit', 0):.2f} s"
    )
    n_boot = 0 if fit.bootstrap is None else len(fit.bootstrap)
    ci_head = (
        f"{int(CI_LEVEL * 100)}% CI ({n_boot} run resamples)" if fit.ci else "CI (no bootstrap)"
    )
    lines.append("")
    lines.append(f"{'param':<10} {'value':>13}   {ci_head}")
    for p in law.params:
        v = fit.params[p.name]
        ci = fit.ci.get(p.name)
        ci_s = f"[{_g(ci[0])}, {_g(ci[1])}]" if ci else "-"
        flag = "  (on bound)" if p.name in fit.on_bound else ""
        lines.append(f"{p.name:<10} {_g(v, 6):>13}   {ci_s}{flag}")
    lines.append("")
    head = f"{'target':<16} {'R^2':>8} {'RMSE':>9}"
    if fit.holdout is not None:
        head += f" {'held-out R^2':>13} {'held-out RMSE':>14} {'ratio':>6}"
    lines.append(head.rstrip())
    for t in fit.targets:
        row = f"{t:<16} {_f(fit.r2[t], 4):>8} {_f(fit.rmse[t], 5):>9}"
        if fit.holdout is not None:
            held = fit.holdout["rmse"][t]
            ratio = held / fit.rmse[t] if fit.rmse[t] > 0 else None
            row += f" {_f(fit.holdout['r2'][t], 4):>13} {_f(held, 5):>14} {_f(ratio, 2):>6}"
        lines.append(row)
    if fit.holdout is not None:
        lines.append("ratio: held-out RMSE / in-sample RMSE (near 1: the law extrapolates)")
        lines.extend(format_coverage(fit.holdout, fit.targets))
    lines.extend(f"warning: {note}" for note in fit.notes)
    return "\n".join(lines)


def format_coverage(holdout: dict[str, Any], targets: Sequence[str]) -> list[str]:
    """Lines on calibration: held-out points inside the nominal intervals for a new run,
    and how far beyond the fitted range the held-out test reaches."""
    lines = []
    factors = holdout.get("extrapolation") or {}
    reach = ", ".join(
        f"{'N' if v == 'step' else 'P'} up to {f:.2g}x the fitted range" for v, f in factors.items()
    )
    if reach:
        lines.append(f"this held-out test extrapolates {reach}")
    for t in targets:
        cov = (holdout.get("coverage") or {}).get(t)
        if cov:
            shares = ", ".join(f"{float(k):.0%} interval: {v:.0%}" for k, v in cov.items())
            lines.append(f"held-out {t} inside the nominal intervals for a new run: {shares}")
    if lines and holdout.get("interval"):
        lines.append(f"(intervals: {holdout['interval']})")
    return lines


def format_compare(rows: Sequence[dict[str, Any]], target: str, holdout_desc: str) -> str:
    """Ranking table for ``forgetscale compare``."""
    lines = [
        f"target: {target}; ranked by RMSE on held-out points ({holdout_desc})",
        "",
        f"{'rank':<5} {'law':<16} {'params':>6} {'R^2':>8} {'RMSE':>9} "
        f"{'held-out R^2':>13} {'held-out RMSE':>14}  note",
    ]
    for i, r in enumerate(rows, 1):
        if r["holdout_rmse"] is None:
            lines.append(f"{'-':<5} {r['law']:<16} {r['n_params']:>6}  {r['note']}")
            continue
        lines.append(
            f"{i:<5} {r['law']:<16} {r['n_params']:>6} {_f(r['r2'], 4):>8} {_f(r['rmse'], 5):>9} "
            f"{_f(r['holdout_r2'], 4):>13} {_f(r['holdout_rmse'], 5):>14}  {r.get('note', '')}".rstrip()
        )
    return "\n".join(lines)


def format_prediction(rows: Sequence[dict[str, Any]], header: str) -> str:
    """Table of predictions (one row per P, N) for ``forgetscale predict``."""
    targets = [t for t in TARGETS if rows and rows[0].get(t) is not None]
    keys = [k for k in ("params_trained", "step", "finetune_loss_in") if k in rows[0]]
    names = {"params_trained": "P", "step": "N", "finetune_loss_in": "L_ft (given)"}
    lines = [header, ""]
    head = " ".join(f"{names[k]:>12}" for k in keys)
    head += "".join(f"  {TARGETS[t].symbol + ' (' + t + ')':<34}" for t in targets)
    lines.append(head.rstrip())
    for r in rows:
        line = " ".join(f"{_g(r[k], 6):>12}" for k in keys)
        for t in targets:
            ci = r["ci"].get(t)
            cell = _f(r[t], 4) + (f" [{_f(ci[0], 4)}, {_f(ci[1], 4)}]" if ci else "")
            line += f"  {cell:<34}"
        lines.append(line.rstrip())
    return "\n".join(lines)
