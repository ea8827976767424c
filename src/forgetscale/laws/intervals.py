"""Prediction intervals for one new run, and how often held-out points fall inside them.

A band of the mean law (the bootstrap over runs) says where the *average* run would
land; a new run also carries its own run-to-run (seed) noise. The interval for a new
run combines both, on the log scale on which the laws are fitted:

    log y_new = log law(theta_b; P, N) + sigma * t_dof

with ``theta_b`` the bootstrap refits (fit uncertainty; the point fit alone when there
is no bootstrap) and ``sigma`` the run-to-run spread of the log losses
(:func:`run_noise`): from seed replicates (runs with the same P measured at the same
step) where the data have them, else from the spread of the fit's residuals. The
interval is the central ``level`` share of that mixture (each bootstrap refit crossed
with fixed quantiles of Student's t), so a skewed bootstrap stays skewed.

:func:`interval` is the one place every interval is computed: ``forgetscale predict``,
the study's "what would rank r forget" table and ``forgetscale plan`` all call it,
and :func:`describe` names the kind of interval they show. :func:`draws` gives the
draws behind it (``plan`` puts L_f's through a downstream metric's relation to L_f).
:func:`holdout_coverage` measures calibration: the share of held-out points inside the
nominal 80% and 95% intervals of a fit that never saw them, with the extrapolation
factor (in P and in N) that held-out test covers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: Sources of the run-to-run noise estimate (``FitResult.noise[target]["source"]``).
SEED_REPLICATES, RESIDUAL_SPREAD = "seed replicates", "residual spread"
#: Kinds of interval: for one new run, or for the mean law only.
NEW_RUN, MEAN_LAW = "new run", "mean law"
#: Nominal levels at which held-out coverage is measured.
COVERAGE_LEVELS: tuple[float, ...] = (0.8, 0.95)
#: Fewest degrees of freedom of seed replicates before they are trusted over residuals.
MIN_REPLICATE_DOF = 3
#: Quantiles of Student's t crossed with each bootstrap refit.
_N_QUANTILES = 64


def _log(y: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(y > 0, np.log(np.where(y > 0, y, 1.0)), np.nan)


def run_noise(
    law: Any,
    params: Mapping[str, float],
    run_id: np.ndarray,
    columns: Mapping[str, np.ndarray],
    targets: Sequence[str],
) -> dict[str, dict[str, Any]]:
    """Run-to-run spread of the log losses per target: ``{"sigma", "dof", "source",
    "n_groups"}``.

    ``seed replicates``: rows of different runs with the same P at the same step; the
    pooled within-group standard deviation (needs :data:`MIN_REPLICATE_DOF` degrees of
    freedom). Otherwise ``residual spread``: the standard deviation of the fit's log
    residuals, with the law's parameters taken off the degrees of freedom (this also
    holds whatever the law misses, so it is the wider of the two).
    """
    out: dict[str, dict[str, Any]] = {}
    X = {v: columns[v] for v in law.variables}
    k_per_target = len(law.params) / max(1, len(targets))
    for t in targets:
        ly = _log(np.asarray(columns[t], dtype=float))
        est = None
        if "params_trained" in columns:
            est = _replicate_spread(run_id, columns["params_trained"], columns["step"], ly)
        if est is not None:
            sigma, dof, groups = est
            out[t] = {"sigma": sigma, "dof": dof, "source": SEED_REPLICATES, "n_groups": groups}
            continue
        with np.errstate(all="ignore"):
            yhat = np.broadcast_to(np.asarray(law.predict(params, X, t), dtype=float), ly.shape)
        resid = ly - _log(yhat)
        resid = resid[np.isfinite(resid)]
        dof = max(1, int(len(resid) - np.ceil(k_per_target)))
        sigma = float(np.sqrt(np.sum(resid**2) / dof)) if len(resid) else float("nan")
        out[t] = {"sigma": sigma, "dof": dof, "source": RESIDUAL_SPREAD, "n_groups": 0}
    return out


def _replicate_spread(
    run_id: np.ndarray, P: np.ndarray, step: np.ndarray, ly: np.ndarray
) -> tuple[float, int, int] | None:
    import pandas as pd

    frame = pd.DataFrame({"run": run_id, "P": P, "step": step, "ly": ly}).dropna()
    g = frame.groupby(["P", "step"])["ly"]
    n = g.count()
    ss = g.var(ddof=1).fillna(0.0) * (n - 1)
    keep = n >= 2
    dof = int((n[keep] - 1).sum())
    if dof < MIN_REPLICATE_DOF:
        return None
    sigma = float(np.sqrt(ss[keep].sum() / dof))
    groups = frame[frame.set_index(["P", "step"]).index.isin(n[keep].index)]
    return sigma, dof, int(groups["P"].nunique())


def draws(
    law: Any,
    params: Mapping[str, float],
    X: Mapping[str, np.ndarray],
    target: str,
    *,
    bootstrap: np.ndarray | None = None,
    noise: Mapping[str, Any] | None = None,
    kind: str = NEW_RUN,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(value, logs)`` at the points ``X``: the point prediction and the draws of the
    log target whose central share :func:`interval` reports, shape ``(draws, points)``
    (each bootstrap refit crossed with fixed quantiles of Student's t for a new run;
    ``None`` when there is nothing to draw from)."""
    n = len(next(iter(X.values())))
    with np.errstate(all="ignore"):
        value = np.broadcast_to(np.asarray(law.predict(params, X, target), dtype=float), (n,))
    value = np.asarray(value, dtype=float)
    logs = None
    if bootstrap is not None and len(bootstrap):
        boot = bootstrap[np.all(np.isfinite(bootstrap), axis=1)]
        if len(boot):
            theta = {p: boot[:, i : i + 1] for i, p in enumerate(law.param_names)}
            with np.errstate(all="ignore"):
                predicted = np.broadcast_to(law.predict(theta, X, target), (len(boot), n))
            logs = _log(np.asarray(predicted, dtype=float))
    use_noise = kind == NEW_RUN and noise is not None and np.isfinite(noise.get("sigma", np.nan))
    if logs is None and not use_noise:
        return value, None
    if logs is None:
        logs = _log(value)[None, :]
    if use_noise:
        from scipy.stats import t as student_t

        q = student_t.ppf((np.arange(_N_QUANTILES) + 0.5) / _N_QUANTILES, noise["dof"])
        logs = (logs[:, None, :] + noise["sigma"] * q[None, :, None]).reshape(-1, n)
    return value, logs


def interval(
    law: Any,
    params: Mapping[str, float],
    X: Mapping[str, np.ndarray],
    target: str,
    *,
    bootstrap: np.ndarray | None = None,
    noise: Mapping[str, Any] | None = None,
    level: float = 0.95,
    kind: str = NEW_RUN,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """``(value, lo, hi)`` at the points ``X``: the central ``level`` interval for one new
    run (``kind=NEW_RUN``: bootstrap refits x run noise) or for the mean law
    (``MEAN_LAW``: bootstrap refits only). ``lo``/``hi`` are ``None`` when there is
    nothing to build the interval from."""
    value, logs = draws(law, params, X, target, bootstrap=bootstrap, noise=noise, kind=kind)
    if logs is None:
        return value, None, None
    n = len(value)
    with np.errstate(all="ignore"):
        ok = np.isfinite(logs).any(axis=0)
        lo = np.full(n, np.nan)
        hi = np.full(n, np.nan)
        if ok.any():
            qs = np.nanpercentile(logs[:, ok], [50 * (1 - level), 50 * (1 + level)], axis=0)
            lo[ok], hi[ok] = np.exp(qs[0]), np.exp(qs[1])
    return value, lo, hi


def describe(kind: str, n_boot: int, noise: Mapping[str, Any] | None, level: float = 0.95) -> str:
    """The kind of interval in words, e.g. "95% interval for a new run: fit uncertainty
    (100 run resamples) + run-to-run noise from seed replicates (sigma 1.2% of the loss)"."""
    fit_part = f"fit uncertainty ({n_boot} run resamples)" if n_boot else ""
    noisy = kind == NEW_RUN and noise is not None and np.isfinite(noise.get("sigma", np.nan))
    noise_part = (
        f"run-to-run noise from {noise['source']} (sigma {100 * noise['sigma']:.2g}% of the loss)"
        if noisy
        else ""
    )
    parts = " + ".join(p for p in (fit_part, noise_part) if p)
    if not parts:
        return "no interval (no bootstrap refits and no noise estimate)"
    what = "for a new run" if kind == NEW_RUN else "of the mean law"
    if kind == NEW_RUN and not noisy:
        what = "of the mean law (no run-to-run noise estimate in this fit)"
    return f"{level:.0%} interval {what}: {parts}"


def extrapolation_factors(
    fitted: Mapping[str, np.ndarray], held: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """How far beyond the fitted range the held-out points lie, per variable (``step``,
    ``params_trained``): ``max(held max / fitted max, fitted min / held min, 1)``."""
    out = {}
    for v in ("params_trained", "step"):
        if v not in fitted or v not in held or not len(fitted[v]) or not len(held[v]):
            continue
        f, h = np.asarray(fitted[v], dtype=float), np.asarray(held[v], dtype=float)
        f, h = f[f > 0], h[h > 0]
        if not len(f) or not len(h):
            continue
        out[v] = float(max(h.max() / f.max(), f.min() / h.min(), 1.0))
    return out


def holdout_coverage(
    law: Any,
    params: Mapping[str, float],
    bootstrap: np.ndarray | None,
    noise: Mapping[str, Mapping[str, Any]],
    held_columns: Mapping[str, np.ndarray],
    targets: Sequence[str],
    levels: Sequence[float] = COVERAGE_LEVELS,
) -> dict[str, dict[str, float]]:
    """Share of held-out points inside the nominal new-run intervals, per target and level
    (``{target: {"0.8": share, "0.95": share}}``)."""
    X = {v: np.asarray(held_columns[v], dtype=float) for v in law.variables}
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        y = np.asarray(held_columns[t], dtype=float)
        out[t] = {}
        for level in levels:
            _, lo, hi = interval(
                law, params, X, t, bootstrap=bootstrap, noise=noise.get(t), level=level
            )
            if lo is None or hi is None:
                continue
            out[t][f"{level:g}"] = float(np.mean((y >= lo) & (y <= hi)))
    return out
