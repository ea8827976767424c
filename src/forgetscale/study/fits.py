"""The laws fitted per target, tested on what they never saw, ranked, and flagged.

Each law named in the ``analysis:`` block is fitted to every finished run from
``min_step`` on (with bootstrap intervals that resample whole runs), and twice more
without some of the measurements, to be scored on them (:func:`holdout_evaluation`):

- *held-out runs*: the runs of the ``holdout_runs`` largest P values are left out
  and the law, fitted on the others, predicts them (does it extrapolate to a bigger
  adapter?);
- *held-out steps*: the last ``holdout_steps`` of every run's measured steps are left
  out and the law, fitted on the earlier ones, predicts them (to a longer run?).

Laws are ranked by held-out error (:func:`rank_laws`, as ``forgetscale compare``). A fit
with a parameter on a bound is a finding about the data (the runs cannot identify that
parameter), never a result: it is flagged in words, and the best law per target
(:func:`best_law`, the one predictions come from) is chosen only among fits with no
parameter on a bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.errors import UserError
from forgetscale.study.config import SYMBOLS, TARGET_ORDER, AnalysisConfig
from forgetscale.study.numbers import num

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from forgetscale.laws import FitResult

#: The held-out evaluations of a law entry: ``(key, words)``.
HELD_OUT = (("held_out_runs", "held-out runs"), ("held_out_steps", "held-out steps"))


#: Run resamples (at most) of each held-out fit, for the coverage of its intervals.
HOLDOUT_BOOTSTRAP = 30


def uses_p_and_n(law: str) -> bool:
    """Whether ``law`` predicts from P and N alone (the laws that can predict a rank)."""
    from forgetscale.laws import get_law

    return set(get_law(law).variables) == {"params_trained", "step"}


def law_entry(laws: Mapping[str, list[dict[str, Any]]], target: str, law: str) -> dict[str, Any]:
    """The entry of ``law`` among the laws fitted to ``target``."""
    return next(e for e in laws[target] if e["law"] == law)


def held_out_ratios(entry: Mapping[str, Any]) -> dict[str, float | None]:
    """Held-out over in-sample RMSE per evaluation (``None`` where there is none)."""
    return {key: num((entry.get(key) or {}).get("ratio")) for key, _ in HELD_OUT}


# ------------------------------------------------------------------------------- fitting


def fit_laws(
    df: pd.DataFrame, config: AnalysisConfig, labels: Mapping[str, str]
) -> tuple[dict[str, list[dict[str, Any]]], dict[tuple[str, str], FitResult]]:
    """Every law of ``config.laws`` fitted to ``df`` (the finished runs' measurements).

    Returns ``({target: [law entry]}, {(target, law): fit})``, targets in report order;
    a law that could not be fitted has an entry with ``status`` ``failed`` and no fit.
    """
    laws: dict[str, list[dict[str, Any]]] = {}
    fits: dict[tuple[str, str], FitResult] = {}
    for target in sorted(config.laws, key=TARGET_ORDER.index):
        entries = []
        present = target in df.columns and len(df) and not df[target].isna().all()
        for law in config.laws[target]:
            if not present:
                entries.append({"law": law, "target": target, "status": "failed",
                                "error": f"the store has no {target} values"
                                if len(df) else "no finished run to fit", "identified": False,
                                "variables": [], "joint": False, "formula": "", "notes": []})  # fmt: skip
                continue
            needed = ["finetune_loss", target] if law == "linear" else [target]
            sub = df.dropna(subset=[c for c in needed if c in df.columns])
            entry, fit = _fit_one(sub, law, target, config, labels)
            entries.append(entry)
            if fit is not None:
                fits[(target, law)] = fit
        laws[target] = entries
    return laws, fits


def _fit_one(
    df: pd.DataFrame,
    law: str,
    target: str,
    config: AnalysisConfig,
    labels: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], FitResult | None]:
    from forgetscale.laws import fit_law, get_law

    spec = get_law(law)
    entry: dict[str, Any] = {
        "law": law,
        "target": target,
        "joint": spec.joint,
        "variables": list(spec.variables),
        "formula": spec.formula.get(target, ""),
        "description": spec.description,
        "status": "ok",
        "error": None,
        "held_out_runs": None,
        "held_out_steps": None,
        "notes": [],
    }
    try:
        fit = fit_law(
            df,
            law,
            None if spec.joint else target,
            min_step=config.min_step,
            n_boot=config.bootstrap,
            seed=config.seed,
        )
    except UserError as exc:
        entry.update(status="failed", error=str(exc), identified=False)
        return entry, None
    entry.update(
        params=_params_table(fit),
        on_bound=list(fit.on_bound),
        on_bound_words=_bound_words(fit),
        converged=bool(fit.converged),
        message=fit.message,
        n_points=fit.n_points,
        n_runs=fit.n_runs,
        n_boot=0 if fit.bootstrap is None else len(fit.bootstrap),
        r2=fit.r2.get(target),
        rmse=fit.rmse.get(target),
        identified=bool(fit.converged and not fit.on_bound),
        notes=list(fit.notes),
    )
    if not spec.power_law and config.min_step > 1:
        # a law without N (L_f against L_ft) over every step as well: beside the window the
        # power laws need, the reader sees how much of its R^2 is the range of L_ft it spans
        try:
            every = fit_law(df, law, None if spec.joint else target, min_step=1, n_boot=0)
            entry["r2_every_step"] = every.r2.get(target)
        except UserError:
            pass
    for key, scheme, active in (
        ("held_out_runs", "runs", config.holdout_runs > 0),
        ("held_out_steps", "steps", config.holdout_steps > 0),
    ):
        if not active:
            continue
        try:
            entry[key] = holdout_evaluation(df, law, target, scheme, config, labels)
        except UserError as exc:
            entry[key] = {"scheme": scheme, "error": str(exc)}
    return entry, fit


def holdout_evaluation(
    df: pd.DataFrame,
    law: str,
    target: str,
    scheme: str,
    config: AnalysisConfig,
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One held-out evaluation of ``law`` on ``target``: ``scheme`` is ``runs`` (the runs of
    the ``config.holdout_runs`` largest P values) or ``steps`` (the last
    ``config.holdout_steps`` of every run's steps). The one place the study calls the
    laws' held-out API.

    Returns plain data: ``description``, ``rmse``/``r2`` (held out), ``rmse_in_sample``/
    ``r2_in_sample`` (of the fit without them), ``ratio`` (held-out over in-sample RMSE),
    ``n_held_out``, ``n_in_sample``, ``on_bound`` and ``converged`` of that fit,
    ``coverage`` (share of held-out points inside the nominal 80% and 95% intervals for a
    new run, from :data:`HOLDOUT_BOOTSTRAP` run resamples at most), ``extrapolation``
    (how far beyond the fitted P and N the held-out points lie, as factors), the
    ``interval`` in words, and the ``points`` (run, P, step, split, observed, predicted).
    """
    from forgetscale.laws import Holdout, evaluate_holdout

    if scheme == "runs":
        p_values = np.unique(df["params_trained"].to_numpy(dtype=float))
        if len(p_values) <= config.holdout_runs:
            raise UserError(
                f"holding out the runs of the {config.holdout_runs} largest P leaves no run to "
                f"fit on ({len(p_values)} distinct P)"
            )
        top = p_values[-config.holdout_runs :]
        ids = sorted(set(df.loc[df["params_trained"].astype(float).isin(top), "run_id"]))
        holdout = Holdout("runs", run_ids=tuple(ids))
    else:
        holdout = Holdout("largest-N", fraction=config.holdout_steps)
    ev = evaluate_holdout(
        df,
        law,
        target,
        holdout,
        min_step=config.min_step,
        n_boot=min(config.bootstrap, HOLDOUT_BOOTSTRAP),
        seed=config.seed,
    )
    measured = ev.fit.holdout or {}
    points = ev.points
    cols = ["run_id", "params_trained", "step", "split", target, f"predicted_{target}"]
    cols = [c for c in cols if c in points.columns]
    pts = points[cols].rename(columns={target: "observed", f"predicted_{target}": "predicted"})
    ratio = ev.rmse_ratio.get(target)
    description = ev.description
    if scheme == "runs":
        held = points[points["split"] == "held_out"]
        names = ", ".join(
            sorted({labels.get(i, i) for i in held["run_id"]}) if labels else sorted(held["run_id"])
        )
        which = "largest P" if config.holdout_runs == 1 else f"{config.holdout_runs} largest P"
        description = f"the runs of the {which} (P = {', '.join(f'{p:.3g}' for p in top)}): {names}"
    return {
        "scheme": scheme,
        "description": description,
        "rmse": ev.rmse_held_out[target],
        "r2": ev.r2_held_out[target],
        "rmse_in_sample": ev.rmse_in_sample[target],
        "r2_in_sample": ev.r2_in_sample[target],
        "ratio": ratio,
        "n_held_out": ev.n_held_out,
        "n_in_sample": ev.n_in_sample,
        "on_bound": list(ev.fit.on_bound),
        "converged": bool(ev.fit.converged),
        "coverage": (measured.get("coverage") or {}).get(target) or {},
        "extrapolation": measured.get("extrapolation") or {},
        "interval": measured.get("interval", ""),
        "points": pts.to_dict(orient="list"),
    }


def _params_table(fit: FitResult) -> list[dict[str, Any]]:
    law = fit.law_spec
    rows = []
    for p in law.params:
        ci = fit.ci.get(p.name)
        rows.append(
            {
                "name": p.name,
                "value": fit.params[p.name],
                "ci": None if ci is None else [ci[0], ci[1]],
                "on_bound": p.name in fit.on_bound,
                "lower": p.lower,
                "upper": p.upper,
                "doc": p.doc,
            }
        )
    return rows


def _bound_words(fit: FitResult) -> str:
    law = fit.law_spec
    parts = []
    for name in fit.on_bound:
        p = law.param(name)
        v = fit.params[name]
        which = "lower" if abs(v - p.lower) <= abs(v - p.upper) else "upper"
        parts.append(f"{name} = {v:.4g} (its {which} bound)")
    return ", ".join(parts)


# ---------------------------------------------------------------------- ranking, the best


def _score(e: Mapping[str, Any]) -> tuple[int, float]:
    """``(tier, RMSE)``: held-out runs (0), else held-out steps (1), else in-sample (2);
    not fitted (3) last."""
    if e["status"] != "ok":
        return (3, 0.0)
    runs = num((e.get("held_out_runs") or {}).get("rmse"))
    steps = num((e.get("held_out_steps") or {}).get("rmse"))
    if runs is not None:
        return (0, runs)
    if steps is not None:
        return (1, steps)
    return (2, num(e.get("rmse")) or math.inf)


def rank_laws(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compare ranking: by held-out-runs RMSE (then held-out steps), failures last."""
    out = []
    for i, e in enumerate(sorted(entries, key=_score), 1):
        s = _score(e)
        out.append(
            {
                "position": i if s[0] < 3 else None,
                "law": e["law"],
                "ranked_by": ("held-out runs", "held-out steps", "in-sample", "not fitted")[s[0]],
                "rmse": None if s[0] == 3 else s[1],
                "identified": e.get("identified", False),
                "uses_observed_finetune_loss": "finetune_loss" in e["variables"],
                "note": e.get("error")
                or (
                    f"on a bound: {e['on_bound_words']}"
                    if e.get("on_bound")
                    else ("not converged" if not e.get("converged", True) else "")
                ),
            }
        )
    return out


def best_law(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The law in P and N with the lowest held-out error among fits with no parameter on a
    bound (held-out runs first, then held-out steps, then in-sample)."""
    cands = [e for e in entries if e["status"] == "ok" and e["identified"]]
    cands = [e for e in cands if uses_p_and_n(e["law"])]
    if not cands:
        return None
    best = min(cands, key=_score)
    tier, rmse = _score(best)
    return {
        "law": best["law"],
        "chosen_by": ("held-out runs RMSE", "held-out steps RMSE", "in-sample RMSE")[tier],
        "rmse": rmse,
    }


def shown_laws(
    ranking: Mapping[str, list[dict[str, Any]]], best: Mapping[str, dict[str, Any] | None]
) -> dict[str, dict[str, Any]]:
    """The law drawn per target: the best one, else the best-ranked law in P and N that was
    fitted (``identified`` False: drawn dashed, never a result)."""
    shown: dict[str, dict[str, Any]] = {}
    for t, ranked in ranking.items():
        b = best[t]
        if b is not None:
            shown[t] = {"law": b["law"], "identified": True}
            continue
        pn = [r for r in ranked if r["position"] and uses_p_and_n(r["law"])]
        if pn:
            shown[t] = {"law": pn[0]["law"], "identified": False}
    return shown


# ------------------------------------------------------------------------------ warnings


def fit_warnings(
    laws: Mapping[str, list[dict[str, Any]]],
    best: Mapping[str, dict[str, Any] | None],
    df: pd.DataFrame,
    config: AnalysisConfig,
    any_finished: bool,
) -> list[str]:
    """Sentences for every law not fitted, on a bound, not converged or not evaluated on
    held-out points; per target with no identified law in P and N; and when too few P
    values were run to hold one out."""
    warnings = []
    for t, entries in laws.items():
        sym = SYMBOLS.get(t, t)
        for e in entries:
            if e["status"] != "ok":
                if any_finished:  # else one warning says that no run has finished
                    warnings.append(f"{e['law']} law for {sym} could not be fitted: {e['error']}")
                continue
            if e.get("on_bound"):
                warnings.append(
                    f"{e['law']} law for {sym}: {e['on_bound_words']} ended on a bound. These runs "
                    "cannot identify that parameter; the fit's values are not a result."
                )
            if not e.get("converged", True):
                warnings.append(f"{e['law']} law for {sym} did not converge: {e['message']}")
            for key, what in HELD_OUT:
                ev = e.get(key)
                if ev and ev.get("error"):
                    warnings.append(
                        f"{e['law']} law for {sym}: no {what} evaluation: {ev['error']}"
                    )
        if best[t] is None and any(e["status"] == "ok" and uses_p_and_n(e["law"]) for e in entries):
            warnings.append(
                f"No law for {sym} in P and N is identified by these runs (every fit has a "
                "parameter on a bound or did not converge)."
            )
    if config.holdout_runs > 0 and any_finished:
        distinct_p = df["params_trained"].nunique() if len(df) else 0
        need = config.holdout_runs + 3  # power laws need 3 distinct P to fit on
        if distinct_p < need:
            warnings.append(
                f"Too few runs to test a held-out rank: {distinct_p} distinct P values, and a "
                f"law in P needs 3 to fit on besides the {config.holdout_runs} held out "
                f"(at least {need})."
            )
    return warnings
