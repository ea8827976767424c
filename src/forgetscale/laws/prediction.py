"""Predicting losses for a planned fine-tune from a fit or from published constants."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from forgetscale.errors import UserError
from forgetscale.laws.fitfile import load_fit
from forgetscale.laws.fitting import CI_LEVEL, FitResult
from forgetscale.laws.intervals import MEAN_LAW, NEW_RUN, describe, interval
from forgetscale.laws.options import check_values
from forgetscale.laws.registry import get_law, get_preset, list_presets

#: The ``forgetscale predict`` flag that gives each variable a law reads.
VARIABLE_FLAGS = {
    "params_trained": "--params",
    "step": "--steps",
    "finetune_loss": "--finetune-loss",
}


def resolve_law(spec: str | Path | FitResult) -> FitResult:
    """A fit from a :class:`FitResult`, a saved ``FIT.json``, or a preset name."""
    if isinstance(spec, FitResult):
        return spec
    s = str(spec)
    if s.endswith(".json") or Path(s).exists():
        return load_fit(s)
    if ":" not in s:
        law = get_law(s)  # unknown law -> UserError
        presets = [p for p in list_presets() if p.startswith(law.name + ":")]
        hint = f"a preset ({', '.join(presets)}) or " if presets else ""
        raise UserError(
            f"law {law.name!r} has no parameters until fitted: give {hint}a FIT.json "
            f"written by `forgetscale fit --save`"
        )
    law, params, _ = get_preset(s)
    return FitResult(law=law.name, targets=tuple(law.targets), params=params, n_points=0)


def predict(
    law: str | Path | FitResult,
    params_trained: Any = None,
    step: Any = None,
    *,
    finetune_loss: Any = None,
    level: float = CI_LEVEL,
    kind: str = NEW_RUN,
) -> dict[str, dict[str, Any]]:
    """Predict losses from a preset, a saved fit or a :class:`FitResult`.

    Returns ``{target: {"value": array, "lo": array | None, "hi": array | None}}`` for
    every target the fit predicts, plus ``"interval"``: the kind of interval in words.
    ``kind=NEW_RUN`` (default) is the interval for one new run (bootstrap refits x
    run-to-run noise, :func:`~forgetscale.laws.intervals.interval`); ``MEAN_LAW`` the
    bootstrap band of the mean law only. Inputs must be finite and
    positive (steps > 0 for power laws in N); a variable the law does not read is
    refused rather than ignored.
    """
    fit = resolve_law(law)
    spec = fit.law_spec
    given = {"params_trained": params_trained, "step": step, "finetune_loss": finetune_loss}
    missing = [VARIABLE_FLAGS[v] for v in spec.variables if given[v] is None]
    if missing:
        raise UserError(f"law {spec.name!r} needs {', '.join(missing)} to predict")
    unused = [
        VARIABLE_FLAGS[v] for v, x in given.items() if x is not None and v not in spec.variables
    ]
    if unused:
        reads = ", ".join(VARIABLE_FLAGS[v] for v in spec.variables)
        raise UserError(f"law {spec.name!r} does not use {', '.join(unused)} (it reads {reads})")
    if kind not in (NEW_RUN, MEAN_LAW):
        raise UserError(f"interval kind must be {NEW_RUN!r} or {MEAN_LAW!r}, got {kind!r}")
    if not (0 < level < 1):
        raise UserError(f"level must lie strictly between 0 and 1, got {level}")
    X = {}
    for v in spec.variables:
        if v == "step":
            X[v] = check_values(given[v], "--steps", above=None)
            if (X[v] < 0).any() or (spec.power_law and (X[v] <= 0).any()):
                raise UserError(
                    f"--steps {X[v].min():g}: power laws in N are undefined at step 0 and "
                    "below; use steps >= 1"
                    if spec.power_law
                    else f"--steps must be >= 0, got {X[v].min():g}"
                )
        else:
            X[v] = check_values(given[v], VARIABLE_FLAGS[v], above=0)
    try:
        X = dict(zip(X, np.broadcast_arrays(*X.values()), strict=True))
    except ValueError:
        shapes = ", ".join(f"{VARIABLE_FLAGS[v]}: {len(x)}" for v, x in X.items())
        raise UserError(f"the inputs have different lengths ({shapes})") from None
    out: dict[str, dict[str, Any]] = {}
    n_boot = 0 if fit.bootstrap is None else len(fit.bootstrap)
    for t in fit.targets:
        value, lo, hi = interval(
            spec,
            fit.params,
            X,
            t,
            bootstrap=fit.bootstrap,
            noise=fit.noise.get(t),
            level=level,
            kind=kind,
        )
        out[t] = {
            "value": value,
            "lo": lo,
            "hi": hi,
            "interval": describe(kind, n_boot, fit.noise.get(t), level),
        }
    return out
