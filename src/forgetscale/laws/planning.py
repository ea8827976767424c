"""Planning a fine-tune within a forgetting budget (``forgetscale plan``).

Every candidate (P, N) is evaluated with the laws fitted to the pilot's runs: the
predicted fine-tuning loss L_ft and each budgeted forgetting target, each with the
central ``coverage`` interval for one new run (:func:`~forgetscale.laws.intervals.interval`).
A candidate meets a budget when the upper end of that interval does; the choice is
the candidate with the lowest predicted L_ft that meets every budget. Nothing is
chosen when a law has a parameter on a bound (not identified) or no candidate meets
the budgets; candidates beyond the fitted range are flagged, and so are those beyond
the extrapolation factors the held-out tests covered (:class:`LawUse`).

A downstream budget (``probe:acc>=-0.05``: a metric of the store's downstream table) is
predicted through the metric's measured relation to the hard L_f
(:mod:`~forgetscale.laws.downstream_budget`); a ``>=`` budget is met when the lower end
of its interval is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.errors import UserError
from forgetscale.laws.downstream_budget import RELATION_LF
from forgetscale.laws.intervals import NEW_RUN, describe, draws, interval
from forgetscale.laws.registry import TARGETS, get_law, list_laws

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from forgetscale.laws.downstream_budget import Relation
    from forgetscale.laws.fitting import FitResult

#: Targets a budget may constrain (L_ft is what the plan minimises).
BUDGET_TARGETS: tuple[str, ...] = tuple(t for t in TARGETS if t != "finetune_loss")
#: The held-out tests ``plan`` runs on each law it fits.
PLAN_TESTS: tuple[tuple[str, str], ...] = (("held-out runs", "largest-P"),
                                           ("held-out steps", "largest-N"))  # fmt: skip
_BUDGET = re.compile(r"^\s*([^\s<>=]+)\s*(<=|>=)\s*(\S+)\s*$")


@dataclass(frozen=True)
class Budget:
    """``target <= value`` (absolute) or ``target <= base + value`` (``relative``: the
    value at step 0, the base model). A ``downstream`` target is ``SUITE:METRIC`` (a
    metric of the store's downstream table) and may also be bounded below (``op`` ``>=``:
    ``probe:acc>=-0.05`` = at most 0.05 below the base's accuracy)."""

    target: str
    value: float
    relative: bool
    text: str
    op: str = "<="

    @property
    def downstream(self) -> bool:
        return ":" in self.target

    @property
    def law_target(self) -> str:
        """The target whose law predicts this budget (a downstream metric: the hard L_f)."""
        return RELATION_LF if self.downstream else self.target

    def limit(self, base: Mapping[str, float] | None) -> float:
        if not self.relative:
            return self.value
        if base is None or self.target not in base:
            rows = "step-0 downstream rows of " if self.downstream else "step-0 rows with "
            hint = ("runs whose downstream: block includes step 0" if self.downstream
                    else "give --from with the runs' step 0")  # fmt: skip
            raise UserError(
                f"--budget {self.text!r} is relative to the base model: the table needs "
                f"{rows}{self.target} ({hint})"
            )
        return base[self.target] + self.value


def parse_budget(text: str) -> Budget:
    """``"forgetting_loss<=2.4"``, ``"kl<=+0.05"`` (at most 0.05 above step 0) or a
    downstream metric ``"SUITE:METRIC>=VALUE"`` / ``"SUITE:METRIC<=VALUE"``
    (``probe:acc>=-0.05``: a signed value is relative to the base model)."""
    m = _BUDGET.match(text)
    if not m:
        raise UserError(
            f"--budget {text!r}: write TARGET<=VALUE, e.g. forgetting_loss<=2.4 or "
            "forgetting_loss<=+0.5 (at most 0.5 above the base model), or "
            "SUITE:METRIC>=VALUE for a downstream metric, e.g. probe:acc>=-0.05"
        )
    target, op, raw = m.groups()
    downstream = ":" in target
    if downstream and not all(target.rpartition(":")[::2]):
        raise UserError(
            f"--budget {text!r}: a downstream budget names SUITE:METRIC, e.g. probe:acc"
        )
    if not downstream and target not in BUDGET_TARGETS:
        extra = " (it is what plan minimises)" if target == "finetune_loss" else ""
        raise UserError(
            f"--budget {text!r}: unknown target {target!r}{extra}; use one of "
            f"{', '.join(BUDGET_TARGETS)}, or SUITE:METRIC for a downstream metric"
        )
    if not downstream and op == ">=":
        raise UserError(
            f"--budget {text!r}: a forgetting target is bounded from above: write {target}<=VALUE"
        )
    relative = raw.startswith("+") or (downstream and raw.startswith("-"))
    try:
        value = float(raw)
    except ValueError:
        raise UserError(f"--budget {text!r}: {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise UserError(f"--budget {text!r}: the value must be finite, got {raw}")
    if not downstream and not relative and value <= 0:
        raise UserError(f"--budget {text!r}: an absolute limit must be > 0, got {value:g}")
    if target == "disagreement" and (value > 1 if not relative else not -1 < value < 1):
        raise UserError(
            f"--budget {text!r}: disagreement is a share of tokens in [0, 1] (a limit of "
            f"{raw} can never bind); write 0.05 for 5%"
        )
    return Budget(target, value, relative, text.strip(), op)


@dataclass
class LawUse:
    """A fitted law for one target and what the held-out tests found about it.

    Attributes:
        fit: The fit on every run (predicts the candidates).
        tested: Largest extrapolation factor per variable that a held-out test covered.
        ratios: Held-out over in-sample RMSE per test.
        coverage: Share of held-out points inside the nominal intervals, per test.
    """

    fit: FitResult
    tested: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_fit(cls, fit: FitResult) -> LawUse:
        """From a saved fit: its own held-out test, if it had one."""
        use = cls(fit)
        h = fit.holdout
        if h:
            name = "held-out test"
            use.tested = dict(h.get("extrapolation") or {})
            t = fit.targets[0]
            rmse_in = fit.rmse.get(t)
            if rmse_in and h["rmse"].get(t) is not None:
                use.ratios[name] = h["rmse"][t] / rmse_in
            if (h.get("coverage") or {}).get(t):
                use.coverage[name] = dict(h["coverage"][t])
        return use

    @property
    def identified(self) -> bool:
        return bool(self.fit.converged and not self.fit.on_bound)


def power_laws_for(target: str) -> list[str]:
    """Laws in P and N alone that predict ``target`` on their own (not joint)."""
    out = []
    for name in list_laws():
        spec = get_law(name)
        if (
            target in spec.targets
            and not spec.joint
            and set(spec.variables)
            == {
                "params_trained",
                "step",
            }
        ):
            out.append(name)
    return out


def fit_for_plan(
    df: pd.DataFrame,
    targets: Sequence[str],
    law: str | None,
    *,
    n_boot: int,
    seed: int = 0,
    min_step: float = 1,
) -> dict[str, LawUse]:
    """Fit a law per target (``law``, or the identified power law with the lowest
    held-out error) on every run, plus its held-out tests; a joint ``law`` is fitted once
    for all its targets."""
    from forgetscale.laws.fitting import fit_law

    def use_of(name: str, target: str | None) -> LawUse:
        fit = fit_law(df, name, target, min_step=min_step, n_boot=n_boot, seed=seed)
        use = LawUse(fit)
        for test, scheme in PLAN_TESTS:
            try:
                held = fit_law(df, name, target, min_step=min_step, holdout=scheme,
                               n_boot=min(n_boot, 20), seed=seed)  # fmt: skip
            except UserError:
                continue
            assert held.holdout is not None
            t = held.targets[0] if target is None else target
            for v, f in (held.holdout.get("extrapolation") or {}).items():
                use.tested[v] = max(use.tested.get(v, 1.0), f)
            if held.rmse.get(t):
                use.ratios[test] = held.holdout["rmse"][t] / held.rmse[t]
            use.coverage[test] = dict((held.holdout.get("coverage") or {}).get(t, {}))
        return use

    out: dict[str, LawUse] = {}
    if law is not None:
        spec = get_law(law)
        missing = [t for t in targets if t not in spec.targets]
        if missing:
            raise UserError(
                f"law {spec.name!r} predicts {', '.join(spec.targets)}, not "
                f"{', '.join(missing)}; choose another --law or leave --law out"
            )
        if spec.joint:
            use = use_of(spec.name, None)
            return {t: use for t in targets}
        return {t: use_of(spec.name, t) for t in targets}
    for t in targets:
        tried = []
        for name in power_laws_for(t):
            try:
                tried.append(use_of(name, t))
            except UserError:
                continue
        if not tried:
            raise UserError(f"no law in P and N could be fitted to {t} from this table")
        tried.sort(key=lambda u: (not u.identified, max(u.ratios.values(), default=math.inf)))
        out[t] = tried[0]
    return out


def rank_to_params(ranks: Sequence[float], params: Sequence[float]) -> dict[str, float]:
    """P = c * r fitted through the origin on LoRA runs: ``c``, the largest relative
    deviation, and how many runs."""
    r, P = np.asarray(ranks, dtype=float), np.asarray(params, dtype=float)
    c = float((r * P).sum() / (r * r).sum())
    return {"c": c, "max_relative_deviation": float(np.max(np.abs(c * r - P) / P)),
            "n_runs": len(r)}  # fmt: skip


def base_values(df: pd.DataFrame, targets: Sequence[str]) -> dict[str, float]:
    """Mean step-0 (base model) value of each target the table has."""
    from forgetscale.laws.table import DERIVED_TARGETS

    at0 = df[df["step"] == 0]
    out = {}
    for t in targets:
        col = at0[t] if t in at0 else None
        if col is None and t in DERIVED_TARGETS and DERIVED_TARGETS[t][0] in at0:
            src, derive = DERIVED_TARGETS[t]
            col = derive(at0[src].astype(float))
        if col is not None and col.notna().any():
            out[t] = float(col.astype(float).mean())
    return out


def _factor(x: float, lo: float, hi: float) -> float:
    return max(x / hi, lo / x, 1.0)


def _cell(value: float, lo: Any, hi: Any) -> dict[str, float | None]:
    def num(v: Any) -> float | None:
        return float(v) if v is not None and np.isfinite(v) else None

    return {"value": num(value), "lo": num(lo), "hi": num(hi)}


def make_plan(
    laws: Mapping[str, LawUse],
    budgets: Sequence[Budget],
    params_trained: Sequence[float],
    steps: Sequence[float],
    *,
    coverage: float = 0.9,
    base: Mapping[str, float] | None = None,
    ranks: Sequence[int] | None = None,
    relations: Mapping[str, Relation] | None = None,
) -> dict[str, Any]:
    """Evaluate every (P, N) and choose; returns the ``--json`` object: ``choice`` (a
    candidate or ``None``), ``candidates``, ``law`` per target, ``coverage``, ``budgets``,
    ``intervals`` (their kind per target), ``downstream`` (the relation of each
    downstream budget's metric to L_f, from ``relations``) and ``notes``."""
    if not budgets:
        raise UserError("--budget: give at least one, e.g. forgetting_loss<=+0.5")
    if not (0 < coverage < 1):
        raise UserError(f"--coverage must lie strictly between 0 and 1, got {coverage}")
    targets = ["finetune_loss", *dict.fromkeys(b.law_target for b in budgets)]
    missing = [t for t in targets if t not in laws]
    if missing:
        raise UserError(f"no fitted law for {', '.join(missing)}")
    relations = relations or {}
    extra = [b.target for b in budgets if b.downstream and b.target not in relations]
    if extra:
        raise UserError(f"no relation to L_f for {', '.join(extra)}")
    ops: dict[str, str] = {}
    for b in budgets:
        if ops.setdefault(b.target, b.op) != b.op:
            raise UserError(f"--budget: {b.target} is bounded both from above and from below; "
                            "give one side")  # fmt: skip
    down_keys = list(dict.fromkeys(b.target for b in budgets if b.downstream))
    limits = [(b, b.limit(base)) for b in budgets]
    if ranks is not None and len(ranks) != len(params_trained):
        raise AssertionError("ranks and params_trained differ in length")
    ops_given = {b.op for b in budgets}
    end = {frozenset({"<="}): "upper end", frozenset({">="}): "lower end"}.get(
        frozenset(ops_given), "upper end (the lower end for a >= budget)"
    )
    beyond = "exceeds it" if ops_given == {"<="} else "falls beyond it"
    notes: list[str] = [
        f"a candidate meets a budget when the {end} of its central {coverage:.0%} "
        f"interval for a new run does (a new run {beyond} with about "
        f"{(1 - coverage) / 2:.0%} chance if the intervals are calibrated)"
    ]
    unidentified = [t for t in targets if not laws[t].identified]
    for t in unidentified:
        fit = laws[t].fit
        why = (f"{', '.join(fit.on_bound)} on a bound" if fit.on_bound
               else "the fit did not converge")  # fmt: skip
        notes.append(
            f"no identified law for {t}: law {fit.law} has {why}, so its predictions are "
            "not results and nothing is chosen"
        )
    grid = [(i, j) for i in range(len(params_trained)) for j in range(len(steps))]
    P = np.array([float(params_trained[i]) for i, _ in grid])
    N = np.array([float(steps[j]) for _, j in grid])
    predicted: dict[str, tuple] = {}
    for t in targets:
        use = laws[t]
        spec = use.fit.law_spec
        X = {"params_trained": P, "step": N}
        predicted[t] = interval(spec, use.fit.params, {v: X[v] for v in spec.variables}, t,
                                bootstrap=use.fit.bootstrap, noise=use.fit.noise.get(t),
                                level=coverage, kind=NEW_RUN)  # fmt: skip
    if down_keys:
        use = laws[RELATION_LF]
        spec = use.fit.law_spec
        X = {"params_trained": P, "step": N}
        lf_value, lf_logs = draws(spec, use.fit.params, {v: X[v] for v in spec.variables},
                                  RELATION_LF, bootstrap=use.fit.bootstrap,
                                  noise=use.fit.noise.get(RELATION_LF))  # fmt: skip
        for key in down_keys:
            predicted[key] = relations[key].predict(lf_value, lf_logs, coverage)
    candidates = []
    for k, (i, _) in enumerate(grid):
        cand: dict[str, Any] = {}
        if ranks is not None:
            cand["rank"] = int(ranks[i])
        cand.update(params_trained=float(P[k]), step=int(N[k]) if N[k] == int(N[k]) else N[k])
        why: list[str] = []
        for t in [*targets, *down_keys]:
            value, lo, hi = predicted[t]
            cand[t] = _cell(value[k], None if lo is None else lo[k], None if hi is None else hi[k])
        for b, lim in limits:
            c = cand[b.target]
            above = b.op == "<="
            end = c["hi" if above else "lo"]
            end = end if end is not None else c["value"]
            meets = end is not None and (end <= lim if above else end >= lim)
            c["limit"] = (min if above else max)(c.get("limit", lim), lim)
            c["op"] = b.op
            c["meets"] = bool(c.get("meets", True) and meets)
            if end is None:
                why.append(f"{b.target} not finite")
            elif not meets:
                why.append(f"{b.target} up to {end:.4g} > {lim:.4g}" if above
                           else f"{b.target} down to {end:.4g} < {lim:.4g}")  # fmt: skip
        if cand["finetune_loss"]["value"] is None:
            why.append("L_ft not finite")
        why += [f"no identified law for {t}" for t in unidentified]
        flags = _extrapolation_flags(laws, targets, P[k], N[k])
        for key in down_keys:
            lf, (lf_lo, lf_hi) = cand[RELATION_LF]["value"], relations[key].lf_range
            if lf is not None and not lf_lo * (1 - 1e-9) <= lf <= lf_hi * (1 + 1e-9):
                flags["beyond"].append(
                    f"{key}: predicted L_f {lf:.5g} outside the L_f its relation was measured "
                    f"on ({lf_lo:.5g} to {lf_hi:.5g}): the line is extrapolated"
                )
        cand["extrapolation"] = flags["factors"]
        cand["beyond_tested"] = flags["beyond"]
        cand["feasible"] = not why
        cand["why"] = "; ".join(why) if why else "meets every budget"
        candidates.append(cand)
    feasible = [c for c in candidates if c["feasible"]]
    choice = min(feasible, key=lambda c: c["finetune_loss"]["value"]) if feasible else None
    if choice is None and not unidentified:
        notes.append("no candidate meets every budget: none is chosen")
    for key in down_keys:
        rel = relations[key]
        slope = rel.as_dict()["slope_interval_90"]
        notes.append(
            f"{key} is predicted from L_f: {rel.equation()}, least squares over {rel.points} "
            f"points ({rel.runs} runs' values at a step with their L_f"
            + (", the base model once" if rel.base is not None else "")
            + f"), L_f {rel.lf_range[0]:.4g} to {rel.lf_range[1]:.4g}, residual sd "
            f"{rel.sigma:.2g}"
            + (f"; slope 90% interval over run resamples [{slope[0]:.4g}, {slope[1]:.4g}]"
               if slope else "; no run resamples (its interval is the scatter alone)")
        )  # fmt: skip
    if choice is not None and choice["beyond_tested"]:
        notes.append(
            "the choice lies beyond what the held-out tests checked ("
            + "; ".join(choice["beyond_tested"])
            + "): a run at it is the first check"
        )
    n_boot = {t: 0 if laws[t].fit.bootstrap is None else len(laws[t].fit.bootstrap)
              for t in targets}  # fmt: skip
    kinds = {t: describe(NEW_RUN, n_boot[t], laws[t].fit.noise.get(t), coverage) for t in targets}
    return {
        "choice": choice,
        "candidates": candidates,
        "law": {t: laws[t].fit.law for t in targets},
        "coverage": coverage,
        "budgets": [
            {
                "target": b.target,
                "text": b.text,
                "limit": lim,
                "relative": b.relative,
                "op": b.op,
                "base": (base or {}).get(b.target) if b.relative else None,
            }
            for b, lim in limits
        ],  # fmt: skip
        "intervals": {
            **kinds,
            **{k: relations[k].describe(coverage, kinds[RELATION_LF]) for k in down_keys},
        },
        "downstream": {k: relations[k].as_dict() for k in down_keys},
        "held_out": {
            t: {"tested": laws[t].tested, "ratios": laws[t].ratios, "coverage": laws[t].coverage}
            for t in targets
        },
        "notes": notes,
    }


def _extrapolation_flags(
    laws: Mapping[str, LawUse], targets: Sequence[str], P: float, N: float
) -> dict[str, Any]:
    factors: dict[str, float] = {}
    beyond: list[str] = []
    x = {"params_trained": P, "step": N}
    names = {"params_trained": "P", "step": "N"}
    for t in targets:
        use = laws[t]
        for v, (lo, hi) in use.fit.ranges.items():
            if v not in x:
                continue
            f = _factor(x[v], lo, hi)
            factors[v] = max(factors.get(v, 1.0), f)
            tested = use.tested.get(v, 1.0)
            if f > 1.0 + 1e-9 and f > tested * (1 + 1e-9):
                ratio = ", ".join(f"{k} {r:.2g}x" for k, r in use.ratios.items())
                beyond.append(
                    f"{t}: {names[v]} {f:.2g}x beyond the fitted range, held-out tests "
                    f"reached {tested:.2g}x" + (f" (held-out error: {ratio})" if ratio else "")
                )
    return {"factors": factors, "beyond": beyond}


def check_plan(
    laws: Mapping[str, LawUse],
    choice: Mapping[str, Any],
    df: pd.DataFrame,
    *,
    coverage: float,
    tolerance: float | None = 0.05,
) -> dict[str, Any]:
    """Predicted against observed for the planned run, once it has been run: the rows of
    ``df`` at the chosen step whose P is within ``tolerance`` of the chosen P (``None``:
    every row at that step, for a table that holds only the planned run). Each
    target: the interval at the runs' own P, the observed mean, and whether each run's
    value fell inside (``{"runs", "params_trained", "step", "targets": {...}}``)."""
    from forgetscale.laws.table import _column

    P, N = float(choice["params_trained"]), float(choice["step"])
    if "params_trained" not in df or "step" not in df:
        raise UserError("--check: the table needs the columns params_trained and step")
    p = df["params_trained"].astype(float).to_numpy()
    near = np.abs(p / P - 1) <= tolerance if tolerance is not None else np.ones(len(df), bool)
    rows = df[near & (df["step"].astype(float) == N)]
    if not len(rows) and tolerance is None:
        raise UserError(f"--verify: the planned run has no measurement at step {N:g}")
    if not len(rows):
        raise UserError(
            f"--check: no run in the table has P within {tolerance:.0%} of {P:.4g} measured "
            f"at step {N:g} (the planned run)"
        )
    out: dict[str, Any] = {
        "runs": sorted(rows["run_id"].astype(str).unique()),
        "params_trained": float(rows["params_trained"].astype(float).mean()),
        "step": N,
        "targets": {},
    }
    for t, use in laws.items():
        present = t in rows or (t == "disagreement" and "agreement" in rows)
        if not present:
            continue
        y = _column(rows, t)
        spec = use.fit.law_spec
        X = {"params_trained": rows["params_trained"].astype(float).to_numpy(),
             "step": np.full(len(rows), N)}  # fmt: skip
        value, lo, hi = interval(spec, use.fit.params, {v: X[v] for v in spec.variables}, t,
                                 bootstrap=use.fit.bootstrap, noise=use.fit.noise.get(t),
                                 level=coverage)  # fmt: skip
        ok = np.isfinite(y)
        inside = (lo is not None and hi is not None) and bool(
            np.all((y[ok] >= lo[ok]) & (y[ok] <= hi[ok]))
        )
        out["targets"][t] = {
            "observed": float(np.mean(y[ok])) if ok.any() else None,
            "predicted": _cell(
                float(np.mean(value)),
                None if lo is None else np.mean(lo),
                None if hi is None else np.mean(hi),
            ),  # fmt: skip
            "inside": inside if ok.any() else None,
        }
    return out
