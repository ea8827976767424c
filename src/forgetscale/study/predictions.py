"""What would rank r forget: the best law per target, evaluated at ranks not run.

P for a rank comes from P = c * r fitted on the LoRA runs (:func:`params_per_rank`);
N is the longest run's last step. Intervals are for one new run at that rank (fit
uncertainty combined with run-to-run noise, :mod:`forgetscale.laws.intervals`). Only a law with no parameter on a bound predicts
(:func:`~forgetscale.study.fits.best_law`); one that misses held-out points by more than
:data:`~forgetscale.study.config.EXTRAPOLATION_RATIO` times its in-sample error carries a
caveat. The ranks run are evaluated too, beside what was measured there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.study.config import EXTRAPOLATION_RATIO, SYMBOLS, TARGET_ORDER, AnalysisConfig
from forgetscale.study.fits import held_out_ratios, law_entry

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from forgetscale.laws import FitResult


def params_per_rank(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """P = c * r fitted (least squares through the origin) on the LoRA runs; ``None``
    when no LoRA run has both a rank and P."""
    pairs = [
        (r["rank"], r["params_trained"])
        for r in runs
        if r["method"] == "lora" and r["rank"] and r["params_trained"]
    ]
    if not pairs:
        return None
    r = np.array([p[0] for p in pairs], dtype=float)
    P = np.array([p[1] for p in pairs], dtype=float)
    c = float((r * P).sum() / (r * r).sum())
    dev = float(np.max(np.abs(c * r - P) / P))
    return {"c": c, "max_relative_deviation": dev, "n_runs": len(pairs)}


def default_ranks(ranks_run: Sequence[int]) -> list[int]:
    """Powers of two from half the smallest to 4x the largest rank run, not run."""
    if not ranks_run:
        return []
    lo, hi = max(1, min(ranks_run) // 2), max(ranks_run) * 4
    out, r = [], 1
    while r <= hi:
        if r >= lo and r not in ranks_run:
            out.append(r)
        r *= 2
    return out


def predictions(
    df: pd.DataFrame,
    runs: list[dict[str, Any]],
    laws: Mapping[str, list[dict[str, Any]]],
    best: Mapping[str, dict[str, Any] | None],
    fits: Mapping[tuple[str, str], FitResult],
    config: AnalysisConfig,
    fitted_ids: set[str],
) -> dict[str, Any]:
    """``rows`` for the ranks not run, ``observed`` for the ranks run, with the
    ``targets``, their ``laws``, ``params_per_rank``, ``ranks_run``, ``step``, a ``note``
    when nothing can be predicted and the ``caveats``."""
    out = _predict(df, runs, best, fits, config, fitted_ids)
    out["caveats"] = []
    for t in out.get("targets", []):
        entry = law_entry(laws, t, best[t]["law"])  # type: ignore[index]
        bad = {key.removeprefix("held_out_"): v for key, v in held_out_ratios(entry).items()
               if v is not None and v > EXTRAPOLATION_RATIO}  # fmt: skip
        if bad:
            out["caveats"].append(
                f"The {entry['law']} law for {SYMBOLS.get(t, t)} misses held-out points by more "
                f"than {EXTRAPOLATION_RATIO:g}x its in-sample error ("
                + ", ".join(f"held-out {k}: {v:.2g}x" for k, v in bad.items())
                + "): its predictions for ranks not run are rough at best."
            )
    return out


def _predict(
    df: pd.DataFrame,
    runs: list[dict[str, Any]],
    best: Mapping[str, dict[str, Any] | None],
    fits: Mapping[tuple[str, str], FitResult],
    config: AnalysisConfig,
    fitted_ids: set[str],
) -> dict[str, Any]:
    from forgetscale.laws import predict

    used = [r for r in runs if r["run_id"] in fitted_ids]
    out: dict[str, Any] = {"rows": [], "observed": [], "targets": [], "laws": {}, "note": ""}
    ppr = params_per_rank(used)
    if ppr is None:
        out["note"] = "no LoRA runs with a rank: P cannot be derived for a rank not run"
        return out
    ranks_run = sorted({int(r["rank"]) for r in used if r["rank"]})
    ranks = config.predict_ranks or default_ranks(ranks_run)
    ranks = [r for r in ranks if r not in ranks_run]
    horizon = max((max(r["steps"]) for r in used if r["steps"]), default=0)
    out.update(params_per_rank=ppr, ranks_run=ranks_run, step=horizon)
    if not ranks:
        out["note"] = "every rank asked for was run"
        return out
    if horizon < 1:
        out["note"] = "no measured steps"
        return out
    targets = [t for t in TARGET_ORDER if best.get(t)]
    if "forgetting_loss" not in targets:
        out["note"] = (
            "no law for the hard L_f in P and N was identified (every fit has a parameter "
            "on a bound, did not converge or could not be fitted): no prediction of it is shown"
        )
    if not targets:
        return out
    out["targets"] = targets
    out["laws"] = {t: best[t]["law"] for t in targets}  # type: ignore[index]
    P = np.array([ppr["c"] * r for r in ranks])
    N = np.full(len(ranks), float(horizon))
    values: dict[str, dict[str, Any]] = {}
    for t in targets:
        fit = fits[(t, best[t]["law"])]  # type: ignore[index]
        values[t] = predict(fit, params_trained=P, step=N)[t]  # for a new run
    out["intervals"] = {t: values[t]["interval"] for t in targets}
    lo_run, hi_run = min(ranks_run), max(ranks_run)
    for i, r in enumerate(ranks):
        row: dict[str, Any] = {
            "rank": r,
            "params_trained": float(P[i]),
            "step": int(horizon),
            "extrapolation": r < lo_run or r > hi_run,
        }
        for t in targets:
            v = values[t]
            row[t] = {
                "value": float(v["value"][i]),
                "lo": None if v["lo"] is None else float(v["lo"][i]),
                "hi": None if v["hi"] is None else float(v["hi"][i]),
            }
        out["rows"].append(row)
    # the ranks run, at the same step: what was measured beside what the law says
    for r in ranks_run:
        ids = [x["run_id"] for x in used if x["rank"] == r]
        at = df[df["run_id"].isin(ids) & (df["step"] == horizon)]
        if not len(at):
            continue
        p = float(at["params_trained"].astype(float).mean())
        obs = {"rank": r, "params_trained": p, "step": int(horizon), "n_runs": len(ids)}
        for t in targets:
            fit = fits[(t, best[t]["law"])]  # type: ignore[index]
            law_value = float(np.ravel(fit.predict(t, params_trained=p, step=float(horizon)))[0])
            vals = at[t].dropna() if t in at else at.iloc[0:0]
            obs[t] = {"observed": float(vals.mean()) if len(vals) else None, "law": law_value}
        out["observed"].append(obs)
    return out
