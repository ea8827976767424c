"""Reading a fit saved by ``forgetscale fit --save`` (:meth:`FitResult.save`).

A fit file is JSON with ``"format": "forgetscale-fit/1"``. It may have been edited by
hand, so :func:`load_fit` checks every field it uses (type, finiteness, the law's
parameter names and ranges, the bootstrap's shape) and reports the first problem as
one :class:`~forgetscale.errors.UserError` line naming the file and the field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from forgetscale.errors import UserError
from forgetscale.laws.fitting import FIT_FORMAT, MAX_FIT_BYTES, FitResult
from forgetscale.laws.registry import Law, get_law


class _Fields:
    """Typed access to the fields of one fit file; errors name the file and the field."""

    def __init__(self, d: dict[str, Any], path: Path):
        self.d, self.path = d, path

    def fail(self, field: str, problem: str) -> UserError:
        return UserError(f"fit {self.path}: {field} {problem}")

    def number(self, value: Any, field: str, *, finite: bool = True) -> float:
        if value is None and not finite:
            return math.nan  # written as null: NaN or inf when saved
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(field, f"must be a number, got {value!r}")
        if finite and not math.isfinite(value):
            raise self.fail(field, f"must be finite, got {value!r}")
        return float(value)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
        if key not in self.d:
            if default is ...:
                raise self.fail(key, "is missing")
            return default
        value = self.d[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be a {names}, got {value!r}")
        return value

    def by_target(self, key: str, targets: tuple[str, ...]) -> dict[str, float]:
        value = self.get(key, dict, {})
        return {t: self.number(value[t], f"{key}.{t}", finite=False) for t in targets if t in value}


def _params(f: _Fields, law: Law) -> dict[str, float]:
    params = f.get("params", dict)
    names = set(law.param_names)
    if set(params) != names:
        missing, extra = sorted(names - set(params)), sorted(set(params) - names)
        problem = "; ".join(
            s
            for s in (
                f"lacks {', '.join(missing)}" if missing else "",
                f"has unknown {', '.join(extra)}" if extra else "",
            )
            if s
        )
        raise f.fail("params", f"do not match law {law.name!r}: {problem}")
    out = {}
    for p in law.params:
        v = f.number(params[p.name], f"params.{p.name}")
        if not p.lower <= v <= p.upper:
            raise f.fail(f"params.{p.name}", f"= {v:g} lies outside [{p.lower:g}, {p.upper:g}]")
        out[p.name] = v
    return out


def _bootstrap(f: _Fields, law: Law) -> np.ndarray | None:
    boot = f.get("bootstrap", (list, type(None)), None)
    if boot is None:
        return None
    k = len(law.params)
    rows = []
    for i, row in enumerate(boot):
        if not isinstance(row, list) or len(row) != k:
            raise f.fail(f"bootstrap[{i}]", f"must be a list of {k} numbers")
        rows.append([f.number(v, f"bootstrap[{i}]", finite=False) for v in row])
    return np.asarray(rows, dtype=float).reshape(len(rows), k)


def load_fit(path: str | Path) -> FitResult:
    """Read a fit written by :meth:`FitResult.save`, checking every field it uses."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"fit {path} is a folder, not a FIT.json file")
        if path.stat().st_size > MAX_FIT_BYTES:
            raise UserError(f"fit {path} is {path.stat().st_size} bytes, too large for a fit")
        text = path.read_bytes().decode("utf-8")
        d = json.loads(text)
    except UnicodeDecodeError:
        raise UserError(f"fit {path} is not a text file (not a FIT.json)") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"fit {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read fit {path}: {exc.strerror or exc}") from None
    if not isinstance(d, dict) or d.get("format") != FIT_FORMAT:
        raise UserError(f"{path} is not a forgetscale fit (written by `forgetscale fit --save`)")
    f = _Fields(d, path)
    try:
        law = get_law(f.get("law", str))
    except UserError as exc:
        raise UserError(f"fit {path}: {exc}") from None
    targets = f.get("targets", list)
    if (
        not targets
        or any(t not in law.targets for t in targets)
        or len(set(targets)) != len(targets)
    ):
        raise f.fail("targets", f"must be distinct targets of law {law.name!r}, got {targets!r}")
    if law.joint and sorted(targets) != sorted(law.targets):
        raise f.fail("targets", f"must be {list(law.targets)} for the joint law {law.name!r}")
    targets = tuple(targets)
    ci = {}
    for name, bounds in f.get("ci", dict, {}).items():
        if name not in law.param_names or not isinstance(bounds, list) or len(bounds) != 2:
            raise f.fail(f"ci.{name}", "must be [low, high] for a parameter of the law")
        ci[name] = (f.number(bounds[0], f"ci.{name}"), f.number(bounds[1], f"ci.{name}"))
    holdout = f.get("holdout_by_target", (dict, type(None)), None)
    if holdout is not None:
        holdout = {
            "r2": _Fields(holdout, path).by_target("r2", targets),
            "rmse": _Fields(holdout, path).by_target("rmse", targets),
            "n_points": _Fields(holdout, path).get("n_points", int, 0),
            "description": _Fields(holdout, path).get("description", str, ""),
            "coverage": {
                t: {
                    str(k): _Fields(holdout, path).number(v, f"holdout_by_target.coverage.{t}")
                    for k, v in c.items()
                }
                for t, c in _Fields(holdout, path).get("coverage", dict, {}).items()
                if t in targets and isinstance(c, dict)
            },
            "extrapolation": {
                str(k): _Fields(holdout, path).number(v, f"holdout_by_target.extrapolation.{k}")
                for k, v in _Fields(holdout, path).get("extrapolation", dict, {}).items()
            },
            "interval": _Fields(holdout, path).get("interval", str, ""),
        }
    return FitResult(
        law=law.name,
        targets=targets,
        params=_params(f, law),
        ci=ci,
        r2=f.by_target("r2_by_target", targets),
        rmse=f.by_target("rmse_by_target", targets),
        n_points=f.get("n_points", int, 0),
        n_runs=f.get("n_runs", int, 0),
        converged=f.get("converged", bool, True),
        message=f.get("message", str, ""),
        on_bound=[str(p) for p in f.get("on_bound", list, [])],
        objective=f.number(
            f.get("objective", (int, float, type(None)), None), "objective", finite=False
        ),
        holdout=holdout,
        min_step=f.number(f.get("min_step", (int, float), 1), "min_step"),
        n_starts=f.get("n_starts", int, 0),
        n_grid=f.get("n_grid", int, 0),
        bootstrap=_bootstrap(f, law),
        seconds={
            k: float(v)
            for k, v in f.get("seconds", dict, {}).items()
            if isinstance(v, (int, float))
        },
        notes=[str(n) for n in f.get("notes", list, [])],
        noise=_noise(f, targets),
        ranges=_ranges(f, law),
    )


def _noise(f: _Fields, targets: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    out = {}
    for t, d in f.get("noise", dict, {}).items():
        if t not in targets:
            raise f.fail(f"noise.{t}", "names no target of the fit")
        if not isinstance(d, dict):
            raise f.fail(f"noise.{t}", f"must be an object, got {d!r}")
        g = _Fields(d, f.path)
        sigma = f.number(d.get("sigma"), f"noise.{t}.sigma", finite=False)
        if math.isfinite(sigma) and sigma < 0:
            raise f.fail(f"noise.{t}.sigma", f"must be >= 0, got {sigma:g}")
        dof = g.get("dof", int, 1)
        if dof < 1:
            raise f.fail(f"noise.{t}.dof", f"must be >= 1, got {dof}")
        out[t] = {
            "sigma": sigma,
            "dof": dof,
            "source": g.get("source", str, ""),
            "n_groups": g.get("n_groups", int, 0),
        }
    return out


def _ranges(f: _Fields, law: Law) -> dict[str, list[float]]:
    out = {}
    for v, r in f.get("ranges", dict, {}).items():
        if v not in law.variables or not isinstance(r, list) or len(r) != 2:
            raise f.fail(f"ranges.{v}", "must be [min, max] of a variable of the law")
        lo, hi = f.number(r[0], f"ranges.{v}"), f.number(r[1], f"ranges.{v}")
        if lo > hi:
            raise f.fail(f"ranges.{v}", f"has min {lo:g} above max {hi:g}")
        out[v] = [lo, hi]
    return out
