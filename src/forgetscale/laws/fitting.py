"""Fitting laws to measurements, as the best scaling-law work does it.

Following Hoffmann et al. (2022, App. D.2) and Besiroglu et al. (2024):

1. the objective is the Huber loss (delta 1e-3) of log residuals
   ``log yhat - log y`` (:mod:`forgetscale.laws.objective`), with positive
   parameters optimised in log space;
2. it is evaluated at every point of a grid of initialisations (vectorised with
   numpy), and L-BFGS-B (analytic gradient) runs from the ``n_starts`` best grid
   points; the best optimum is kept;
3. convergence is reported and parameters that end on a bound are flagged;
4. confidence intervals come from a bootstrap that resamples whole runs
   (:mod:`forgetscale.laws.bootstrap`, fixed seed);
5. quality is reported as R^2 and RMSE on the loss scale, on the fitted rows and
   on held-out rows (``holdout``) that the fit never saw.

Results are :class:`FitResult` objects that save to plain JSON at full precision (no
pickle; :func:`forgetscale.laws.fitfile.load_fit` reads them back), so a saved fit
can drive :func:`forgetscale.laws.prediction.predict`. Held-out evaluation is
:mod:`forgetscale.laws.holdout`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from forgetscale.errors import UserError
from forgetscale.laws._threads import single_blas_thread
from forgetscale.laws.bootstrap import bootstrap_params
from forgetscale.laws.intervals import (
    NEW_RUN,
    describe,
    extrapolation_factors,
    holdout_coverage,
    run_noise,
)
from forgetscale.laws.objective import HUBER_DELTA, Objective
from forgetscale.laws.options import FitOptions
from forgetscale.laws.registry import Law, get_law
from forgetscale.laws.table import FitData, Holdout, check_table, read_table, select_rows
from forgetscale.outputs import StagedOutputs, check_output, dumps, json_safe

FIT_FORMAT = "forgetscale-fit/1"
CI_LEVEL = 0.95
#: Fit files larger than this are not fits (a bootstrap of 100,000 x 13 is ~30 MB).
MAX_FIT_BYTES = 64 * 1024 * 1024


def fit_file_bytes(law: Law, n_boot: int) -> int:
    """About how many bytes a saved fit of ``law`` with ``n_boot`` resamples takes."""
    return 16 * 1024 + n_boot * len(law.params) * 32


def is_fit_file(path: Path) -> bool:
    """``path`` holds a saved fit (so a new fit may replace it)."""
    try:
        if path.stat().st_size > MAX_FIT_BYTES:
            return False
        d = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(d, dict) and d.get("format") == FIT_FORMAT


@dataclass
class FitResult:
    """A fitted law.

    Attributes:
        law: Registry name of the law.
        targets: Targets fitted (two for a joint law).
        params: Best-fit parameter values (natural scale).
        ci: Bootstrap ``CI_LEVEL`` percentile interval per parameter (empty without bootstrap).
        r2: R^2 on the loss scale per target, on the fitted rows.
        rmse: Root mean squared error on the loss scale per target, on the fitted rows.
        n_points: Number of measurement rows fitted.
        n_runs: Number of distinct runs among them.
        converged: L-BFGS-B reported success for the kept optimum.
        message: L-BFGS-B's termination message for the kept optimum.
        on_bound: Parameters that ended on (within 1e-5 of the range of) a bound.
        objective: Final objective value (Huber of log residuals / delta^2, mean).
        holdout: ``{"r2": {target: ...}, "rmse": {target: ...}, "n_points": int,
            "description": str}`` on the held-out rows, or ``None``.
        min_step: Rows with ``step < min_step`` were excluded.
        n_starts: Number of L-BFGS-B starts run (best of the vectorised grid).
        n_grid: Number of grid points evaluated.
        bootstrap: Refitted parameters per resample ``(B, k)`` (natural scale), or ``None``.
        seconds: Wall time of the fit (without bootstrap) and of the bootstrap.
        notes: Warnings in words: not converged, parameters on a bound, failed
            bootstrap refits, no interval from a single run.
        noise: Run-to-run spread of the log losses per target (``sigma``, ``dof``,
            ``source``: seed replicates or residual spread), for intervals of a new run
            (:mod:`forgetscale.laws.intervals`); empty for presets and older fits.
        ranges: ``{variable: [min, max]}`` of the rows fitted (what lies beyond is
            extrapolation).
    """

    law: str
    targets: tuple[str, ...]
    params: dict[str, float]
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    r2: dict[str, float] = field(default_factory=dict)
    rmse: dict[str, float] = field(default_factory=dict)
    n_points: int = 0
    n_runs: int = 0
    converged: bool = True
    message: str = ""
    on_bound: list[str] = field(default_factory=list)
    objective: float = float("nan")
    holdout: dict[str, Any] | None = None
    min_step: float = 1
    n_starts: int = 0
    n_grid: int = 0
    bootstrap: np.ndarray | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    noise: dict[str, dict[str, Any]] = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)

    @property
    def law_spec(self) -> Law:
        return get_law(self.law)

    @property
    def joint(self) -> bool:
        return len(self.targets) > 1

    def _scalar_or_dict(self, d: Mapping[str, float]) -> Any:
        return dict(d) if self.joint else d[self.targets[0]]

    def to_json(self) -> dict[str, Any]:
        """The ``forgetscale fit --json`` object.

        For single-target laws ``target``, ``r2`` and ``rmse`` are scalars; for a joint
        law (``kalajdzievski``) ``target`` is the list of targets and ``r2``/``rmse``
        are ``{target: value}``.
        """
        holdout = None
        if self.holdout is not None:
            holdout = {
                "r2": self._scalar_or_dict(self.holdout["r2"]),
                "rmse": self._scalar_or_dict(self.holdout["rmse"]),
                "n_points": self.holdout["n_points"],
                "coverage": self._scalar_or_dict(self.holdout.get("coverage") or {})
                if self.holdout.get("coverage")
                else None,
                "extrapolation": self.holdout.get("extrapolation") or {},
                "interval": self.holdout.get("interval", ""),
            }
        return {
            "law": self.law,
            "target": list(self.targets) if self.joint else self.targets[0],
            "params": dict(self.params),
            "ci": {k: [lo, hi] for k, (lo, hi) in self.ci.items()},
            "r2": self._scalar_or_dict(self.r2),
            "rmse": self._scalar_or_dict(self.rmse),
            "n_points": self.n_points,
            "converged": self.converged,
            "holdout": holdout,
            "noise": {t: dict(v) for t, v in self.noise.items()},
            "ranges": {v: list(r) for v, r in self.ranges.items()},
            "notes": list(self.notes),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything, for :meth:`save` (plain JSON, full float precision)."""
        d = self.to_json()
        d.update(
            format=FIT_FORMAT,
            targets=list(self.targets),
            r2_by_target=dict(self.r2),
            rmse_by_target=dict(self.rmse),
            holdout_by_target=self.holdout,
            n_runs=self.n_runs,
            message=self.message,
            on_bound=list(self.on_bound),
            objective=self.objective,
            min_step=self.min_step,
            n_starts=self.n_starts,
            n_grid=self.n_grid,
            formula={t: self.law_spec.formula[t] for t in self.targets},
            bootstrap=None if self.bootstrap is None else self.bootstrap.tolist(),
            seconds=dict(self.seconds),
        )
        return d

    def to_file_text(self) -> str:
        """The fit as strict JSON text (NaN/inf as ``null``), as :meth:`save` writes it."""
        d, _ = json_safe(self.to_dict())
        return dumps(d, indent=1) + "\n"

    def save(self, path: str | Path, *, option: str = "save") -> None:
        """Write the fit as JSON, atomically; :func:`~forgetscale.laws.fitfile.load_fit`
        reads it back exactly. An existing file is replaced only if it is a fit."""
        text = self.to_file_text()
        check_output(
            path,
            what=option,
            create_parents=True,
            needed=len(text),
            kind="fit",
        )
        with StagedOutputs() as out:
            out.write_text(path, text, option)

    def predict(self, target: str, **variables: Any) -> np.ndarray:
        """Evaluate the fitted law: ``fit.predict("forgetting_loss", params_trained=P, step=N)``."""
        return self.law_spec(self.params, target, **variables)


# ------------------------------------------------------------------------ the fit


def start_points(law: Law, columns: Mapping[str, np.ndarray], target: str | None) -> list[dict]:
    """The grid of starting points for a fit of ``law`` to ``columns`` (natural scale):
    the law's ``grid_fn`` when it has one, else the product of its ``Param.grid``."""
    spec: Any = law.grid_fn(columns, target) if law.grid_fn else None
    if spec is None:
        spec = {p.name: p.grid for p in law.params}
    if isinstance(spec, Mapping):
        names = law.param_names
        values = [spec.get(n, law.param(n).grid) for n in names]
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
    return list(spec)


def _quality(y: np.ndarray, yhat: np.ndarray) -> tuple[float, float]:
    resid = y - yhat
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid**2)) / ss_tot if ss_tot > 0 else float("nan")
    return r2, float(np.sqrt(np.mean(resid**2)))


def _evaluate(law: Law, params: Mapping[str, float], data: FitData, targets) -> dict:
    """R^2 and RMSE (loss scale) of ``law`` with ``params`` on ``data``, per target."""
    X = {v: data.columns[v] for v in law.variables}
    r2, rmse = {}, {}
    for t in targets:
        yhat = np.asarray(law.predict(params, X, t), dtype=float)
        r2[t], rmse[t] = _quality(data.columns[t], np.broadcast_to(yhat, data.columns[t].shape))
    return {"r2": r2, "rmse": rmse, "n_points": len(data)}


def resolve_fit_targets(law: Law, target: str | None) -> tuple[str, ...]:
    """The columns a fit of ``law`` models: ``target`` (default: the law's first), or
    all of a joint law's targets (then ``target``, if given, must be one of them)."""
    if target is not None and target not in law.targets:
        raise UserError(f"law {law.name!r} predicts {', '.join(law.targets)}, not {target!r}")
    if law.joint:
        return tuple(law.targets)
    return (target or law.targets[0],)


#: A parameter whose move to its nearest bound changes the objective by at most this share
#: is reported as on that bound (see :func:`flat_towards_bound`).
FLAT_TOLERANCE = 1e-4


def flat_towards_bound(obj: Objective, z: np.ndarray, flagged: Sequence[str]) -> list[str]:
    """Parameters (not yet in ``flagged``) that stopped short of a bound only because the
    objective is flat towards it: an asymptote E that is negligible beside the losses ends
    anywhere near its lower bound, with a bootstrap interval as narrow as the optimiser's
    tolerance. Moved onto its nearest bound, such a parameter changes the objective by at most
    :data:`FLAT_TOLERANCE` of its value: the fit cannot tell it from one on the bound, and it is
    reported as on the bound (a finding about the data, not a result)."""
    f_best = obj.value(z)
    out = []
    for i, name in enumerate(obj.law.param_names):
        if name in flagged:
            continue
        moved = np.array(z, dtype=float)
        lo, hi = obj.zlower[i], obj.zupper[i]
        moved[i] = lo if z[i] - lo <= hi - z[i] else hi
        if obj.value(moved) - f_best <= FLAT_TOLERANCE * abs(f_best):
            out.append(name)
    return out


def fit_data(
    law: Law,
    targets: Sequence[str],
    data: FitData,
    *,
    n_starts: int | None = 10,
    delta: float = HUBER_DELTA,
    init: Mapping[str, float] | None = None,
) -> tuple[dict[str, float], dict[str, Any], np.ndarray]:
    """Fit ``law`` to already-selected rows; returns ``(params, info, z_best)``."""
    from scipy.optimize import minimize

    X = {v: data.columns[v] for v in law.variables}
    Y = {t: data.columns[t] for t in targets}
    obj = Objective(law, targets, X, Y, delta)
    points = (
        [init]
        if init is not None
        else start_points(law, data.columns, None if law.joint else targets[0])
    )
    Z = np.array([obj.to_z(p) for p in points])
    Z = np.unique(Z, axis=0)
    values = obj.values(Z)
    order = np.argsort(values)
    if n_starts is not None:
        order = order[: max(1, n_starts)]
    loose = {"maxiter": 500, "ftol": 1e-8, "gtol": 1e-7}
    strict = {"maxiter": 3000, "ftol": 1e-10, "gtol": 1e-9}
    with single_blas_thread():
        # stage 1: every start, loosely; stage 2: polish the best one strictly
        best = None
        for i in order:
            res = minimize(
                obj.value_and_grad,
                Z[i],
                jac=True,
                method="L-BFGS-B",
                bounds=obj.bounds,
                options=loose,
            )
            if best is None or res.fun < best.fun:
                best = res
        assert best is not None
        best = minimize(
            obj.value_and_grad,
            best.x,
            jac=True,
            method="L-BFGS-B",
            bounds=obj.bounds,
            options=strict,
        )
    assert best is not None
    converged = bool(best.success)
    message = best.message if isinstance(best.message, str) else str(best.message)
    if not converged and message.startswith("ABNORMAL"):
        # With residuals much larger than the Huber delta the objective is nearly an L1
        # norm, and L-BFGS-B's line search can stop at one of its kinks. Check that point
        # with a derivative-free polish: if Nelder-Mead finds nothing better, it is a minimum.
        with single_blas_thread():
            polish = minimize(
                obj.value,
                best.x,
                method="Nelder-Mead",
                bounds=obj.bounds,
                options={"xatol": 1e-8, "fatol": 1e-12, "maxiter": 400 * len(best.x)},
            )
        if polish.fun < best.fun - 1e-9 * max(1.0, abs(best.fun)):
            best = polish  # a better point: report it, still flagged as not converged
            message = "L-BFGS-B line search failed; Nelder-Mead improved the point"
        else:
            converged = True
            message = "minimum at a kink of the Huber loss (L-BFGS-B line search stopped; Nelder-Mead found nothing better)"
    z = best.x
    span = obj.zupper - obj.zlower
    on_bound = [
        p
        for p, zi, lo, hi, s in zip(law.param_names, z, obj.zlower, obj.zupper, span, strict=True)
        if zi - lo <= 1e-5 * s or hi - zi <= 1e-5 * s
    ]
    on_bound += flat_towards_bound(obj, z, on_bound)
    values_nat = obj.from_z(z)
    params = {p: float(v) for p, v in zip(law.param_names, values_nat, strict=True)}
    info = {
        "converged": converged,
        "message": message,
        "on_bound": on_bound,
        "objective": float(best.fun),
        "n_starts": len(order),
        "n_grid": len(Z),
    }
    return params, info, z


def fit_law(
    table: Any,
    law: str | Law,
    target: str | None = None,
    *,
    min_step: float = 1,
    holdout: Holdout | str | Sequence[str] | None = None,
    n_boot: int = 0,
    seed: int = 0,
    n_starts: int | None = 10,
    delta: float = HUBER_DELTA,
    workers: int | None = None,
) -> FitResult:
    """Fit a law to a measurement table.

    Args:
        table: A pandas DataFrame with the export columns, or a path to a CSV,
            parquet or SQLite results store.
        law: Law name (see :func:`forgetscale.laws.list_laws`) or a :class:`Law`.
        target: The column to model: ``forgetting_loss`` (default for non-joint laws),
            ``finetune_loss``, ``forgetting_loss_soft``, ``kl`` or ``disagreement``
            (1 - agreement). Joint laws fit all their targets.
        min_step: Exclude rows with ``step < min_step``. Power laws in N always
            exclude step 0 (the base model, N = 0). The paper used 50.
        holdout: ``"largest-P"`` (the runs with the largest P), ``"largest-N"`` (the
            last 20% of the steps of every run), run ids, or a
            :class:`~forgetscale.laws.table.Holdout`: these rows are not fitted; the
            result reports R^2/RMSE on them (see also
            :func:`forgetscale.laws.holdout.evaluate_holdout`).
        n_boot: Bootstrap resamples (whole runs) for confidence intervals; 0 = none.
        seed: Seed of the bootstrap resampling.
        n_starts: L-BFGS-B starts from the best grid points (``None`` = every grid point).
        delta: Huber threshold on log residuals.
        workers: Processes for the bootstrap (``None`` = automatic, 1 = serial).

    Every option is checked (:class:`~forgetscale.laws.options.FitOptions`) before
    the table is read.
    """
    opts = FitOptions(
        min_step=min_step,
        holdout=holdout,
        n_boot=n_boot,
        seed=seed,
        n_starts=n_starts,
        delta=delta,
        workers=workers,
    )
    spec = law if isinstance(law, Law) else get_law(law)
    targets = resolve_fit_targets(spec, target)
    df = table if hasattr(table, "columns") else read_table(table)
    data = check_table(df, spec, targets)
    train, held = select_rows(data, spec, targets, min_step=opts.min_step, holdout=opts.holdout)

    t0 = time.perf_counter()
    params, info, z = fit_data(spec, targets, train, n_starts=opts.n_starts, delta=opts.delta)
    seconds = {"fit": time.perf_counter() - t0}
    quality = _evaluate(spec, params, train, targets)
    holdout_quality = None
    if held is not None:
        assert isinstance(opts.holdout, Holdout)
        holdout_quality = _evaluate(spec, params, held, targets)
        holdout_quality["description"] = opts.holdout.describe(held)
        holdout_quality["extrapolation"] = extrapolation_factors(train.columns, held.columns)
    result = FitResult(
        law=spec.name,
        targets=targets,
        params=params,
        r2=quality["r2"],
        rmse=quality["rmse"],
        n_points=len(train),
        n_runs=len(np.unique(train.run_id)),
        min_step=opts.min_step,
        holdout=holdout_quality,
        seconds=seconds,
        noise=run_noise(spec, params, train.run_id, train.columns, targets),
        ranges={
            v: [float(train.columns[v].min()), float(train.columns[v].max())]
            for v in spec.variables
        },
        **info,
    )
    if not result.converged:
        result.notes.append(f"L-BFGS-B did not converge: {result.message}")
    if result.on_bound:
        result.notes.append(
            f"{', '.join(result.on_bound)} ended on a bound; the law may not be "
            "identifiable from these runs"
        )
    if opts.n_boot > 0 and result.n_runs < 2:
        result.notes.append(
            "no confidence intervals: the bootstrap resamples whole runs, and the fit "
            "has only 1 run"
        )
    elif opts.n_boot > 0:
        t0 = time.perf_counter()
        X = {v: train.columns[v] for v in spec.variables}
        Y = {t: train.columns[t] for t in targets}
        boot = bootstrap_params(
            spec.name, targets, X, Y, train.run_id, z, opts.n_boot, opts.seed, opts.delta,
            opts.workers,
        )  # fmt: skip
        result.bootstrap = boot
        result.ci = confidence_intervals(spec, boot)
        seconds["bootstrap"] = time.perf_counter() - t0
        failed = int((~np.all(np.isfinite(boot), axis=1)).sum())
        if failed:
            result.notes.append(f"{failed} bootstrap refits failed and were ignored")
    if held is not None and result.holdout is not None:
        result.holdout["coverage"] = holdout_coverage(
            spec, params, result.bootstrap, result.noise, held.columns, targets
        )
        n_boot = 0 if result.bootstrap is None else len(result.bootstrap)
        noise = result.noise.get(targets[0])
        result.holdout["interval"] = describe(NEW_RUN, n_boot, noise).split(":", 1)[-1].strip()
    return result


def confidence_intervals(
    law: Law, boot: np.ndarray, level: float = CI_LEVEL
) -> dict[str, tuple[float, float]]:
    """Percentile intervals per parameter from bootstrap refits (NaN rows ignored)."""
    lo_q, hi_q = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    ok = boot[np.all(np.isfinite(boot), axis=1)]
    if len(ok) == 0:
        return {}
    lo, hi = np.percentile(ok, [lo_q, hi_q], axis=0)
    return {p: (float(a), float(b)) for p, a, b in zip(law.param_names, lo, hi, strict=True)}
