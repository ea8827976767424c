"""Downstream budgets for ``forgetscale plan``: a suite's metric (``probe:acc``) predicted
through its measured relation to the hard L_f.

There is no law of a downstream metric in P and N; what a results store does hold is the
metric and L_f measured on the same runs at the same steps. :func:`fit_relation` pairs
every downstream row of a suite and metric with the hard L_f its run measured at that
step and fits a straight line, ``D = a + b * L_f``, by least squares: the relation the
study report prints as "change per unit of L_f", except that the base model's step-0
rows (one model measured once per run) count here as one point. A candidate's metric for
one new run (:meth:`Relation.predict`) is then

    D = a_k + b_k * L_f_k + s * t_k

with ``L_f_k`` the draws behind the candidate's L_f interval for a new run (bootstrap
refits x run noise, :func:`~forgetscale.laws.intervals.draws`), ``(a_k, b_k)`` the line
refitted on resamples of the runs (the base point kept in each), and ``s * t_k`` the
line's residual scatter (Student's t with n - 2 degrees of freedom: the metric's own
sampling noise on its n items, run-to-run spread, and whatever a line misses); the
interval is the central ``coverage`` share of these draws. A candidate whose predicted
L_f lies outside the L_f range the relation was measured on is flagged: the line is
then extrapolated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: The L_f a downstream relation is fitted against (what the study report relates to).
RELATION_LF = "forgetting_loss"
#: Draws of a downstream prediction (at least; more when L_f has more draws).
_MIN_DRAWS = 4000


def split_key(key: str) -> tuple[str, str]:
    """``"lm-eval:arc_easy:acc"`` -> ``("lm-eval:arc_easy", "acc")``: the metric is the
    part after the last colon, the suite (whose spec may hold colons) the rest."""
    suite, _, metric = key.rpartition(":")
    return suite, metric


@dataclass
class Relation:
    """A downstream metric as a straight line in the hard L_f, fitted on a store's runs.

    Attributes:
        key: ``SUITE:METRIC``.
        intercept, slope: The least-squares line on every point.
        sigma, dof: Residual standard deviation about the line and its degrees of freedom.
        boot: ``(B, 2)`` intercept and slope refitted on resamples of the runs.
        points, runs: Points the line was fitted on, and runs they came from.
        lf_range: Smallest and largest L_f among the points.
        base: The base model's value (mean of the step-0 rows), or ``None``.
    """

    key: str
    intercept: float
    slope: float
    sigma: float
    dof: int
    boot: np.ndarray
    points: int
    runs: int
    lf_range: tuple[float, float]
    base: float | None

    def predict(
        self, lf_value: np.ndarray, lf_logs: np.ndarray | None, level: float, *, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(value, lo, hi)`` of the metric for one new run at candidates whose L_f is
        predicted ``lf_value`` with log draws ``lf_logs`` (``(draws, candidates)``, or
        ``None``: L_f's point prediction only)."""
        from scipy.stats import t as student_t

        lf_value = np.asarray(lf_value, dtype=float)
        lf = np.exp(lf_logs) if lf_logs is not None else lf_value[None, :]
        rng = np.random.default_rng(seed)
        k = max(_MIN_DRAWS, len(lf))
        which = rng.permutation(np.arange(k) % len(lf))
        if len(self.boot):
            lines = self.boot[rng.permutation(np.arange(k) % len(self.boot))]
        else:
            lines = np.tile([self.intercept, self.slope], (k, 1))
        q = student_t.ppf((np.arange(k) + 0.5) / k, self.dof) if self.sigma > 0 else np.zeros(k)
        scatter = self.sigma * rng.permutation(q)
        with np.errstate(all="ignore"):
            d = lines[:, :1] + lines[:, 1:] * lf[which] + scatter[:, None]
            lo, hi = np.nanpercentile(d, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return self.intercept + self.slope * lf_value, lo, hi

    def equation(self) -> str:
        sign = "-" if self.slope < 0 else "+"
        return f"{self.key} = {self.intercept:.4g} {sign} {abs(self.slope):.4g} L_f"

    def describe(self, level: float, lf_interval: str) -> str:
        """The kind of interval in words."""
        resampled = f"{len(self.boot)} run resamples of the line" if len(self.boot) else ""
        parts = ", ".join(p for p in (
            f"L_f's draws ({lf_interval.split(': ', 1)[-1]})",
            resampled,
            f"scatter about the line (sd {self.sigma:.2g}, {self.dof} dof)",
        ) if p)  # fmt: skip
        return (f"{level:.0%} interval for a new run through the relation "
                f"{self.equation()}: {parts}")  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        suite, metric = split_key(self.key)
        slopes = self.boot[:, 1] if len(self.boot) else np.array([])
        return {
            "suite": suite,
            "metric": metric,
            "against": RELATION_LF,
            "intercept": self.intercept,
            "slope": self.slope,
            "slope_interval_90": (
                [float(np.percentile(slopes, 5)), float(np.percentile(slopes, 95))]
                if len(slopes)
                else None
            ),  # fmt: skip
            "residual_sd": self.sigma,
            "dof": self.dof,
            "points": self.points,
            "runs": self.runs,
            "bootstrap": len(self.boot),
            "lf_range": list(self.lf_range),
            "base": self.base,
        }


def read_downstream(store: str | Path) -> pd.DataFrame | None:
    """The store's downstream rows, or ``None`` for a store made before that table."""
    import pandas as pd

    from forgetscale.store import open_store

    with open_store(store, create=False) as st:
        try:
            return st.downstream()
        except pd.errors.DatabaseError:
            return None


def available(down: pd.DataFrame | None, run_ids: Any) -> list[str]:
    """``SUITE:METRIC`` of every downstream metric the runs ``run_ids`` have a value of."""
    if down is None:
        return []
    d = down[down["run_id"].isin(set(run_ids)) & down["value"].notna()]
    return sorted({f"{s}:{m}" for s, m in zip(d["suite"], d["metric"], strict=True)})


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    if len(x) < 2 or np.ptp(x) <= 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def fit_relation(
    store: str | Path,
    df: pd.DataFrame,
    key: str,
    *,
    text: str,
    n_boot: int,
    seed: int = 0,
    down: pd.DataFrame | None = None,
) -> Relation:
    """The line of ``key`` (``SUITE:METRIC``) against the hard L_f over the runs of ``df``
    (the table the laws are fitted to), with ``n_boot`` resamples of its runs. ``text`` is
    the budget as given (it names the errors)."""
    import pandas as pd

    down = read_downstream(store) if down is None else down
    runs = df["run_id"].astype(str).unique()
    have = available(down, runs)
    if key not in have:
        suite, metric = split_key(key)
        listing = ("it has " + ", ".join(have)) if have else (
            "it has no downstream results (runs record them with a downstream: block)")  # fmt: skip
        raise UserError(f"--budget {text!r}: the store {store} has no metric {metric!r} of a "
                        f"suite {suite!r}; {listing}")  # fmt: skip
    assert down is not None
    suite, metric = split_key(key)
    rows = down[(down["suite"] == suite) & (down["metric"] == metric)]
    lf = df[["run_id", "step", RELATION_LF]].astype({"run_id": str}) if RELATION_LF in df else None
    if lf is None:
        raise UserError(f"--budget {text!r}: the table has no {RELATION_LF} to relate it to")
    rows = rows.astype({"run_id": str}).merge(lf, on=["run_id", "step"], how="inner")
    rows = rows.dropna(subset=["value", RELATION_LF])
    at0, later = rows[rows["step"] == 0], rows[rows["step"] > 0]
    base_point = (
        (float(at0[RELATION_LF].astype(float).mean()), float(at0["value"].astype(float).mean()))
        if len(at0) else None
    )  # fmt: skip

    def points(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        x = frame[RELATION_LF].to_numpy(float)
        y = frame["value"].to_numpy(float)
        if base_point is not None:
            x, y = np.append(x, base_point[0]), np.append(y, base_point[1])
        return x, y

    x, y = points(later)
    fit = _line(x, y) if len(x) >= 3 else None
    if fit is None:
        raise UserError(
            f"--budget {text!r}: {key} cannot be related to L_f: it needs at least 3 points "
            f"(a run's value and L_f at one step, the base counted once) at 2 or more L_f "
            f"values; the store has {len(x)}"
        )
    intercept, slope = fit
    dof = len(x) - 2
    sigma = float(np.sqrt(np.sum((y - intercept - slope * x) ** 2) / dof))
    groups = {r: g for r, g in later.groupby("run_id")}
    ids = sorted(groups)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot if len(ids) >= 2 else 0):
        pick = rng.choice(len(ids), size=len(ids), replace=True)
        refit = _line(*points(pd.concat([groups[ids[i]] for i in pick])))
        if refit is not None:
            boot.append(refit)
    base = float(base_point[1]) if base_point is not None else None
    return Relation(key, intercept, slope, sigma, dof, np.array(boot).reshape(-1, 2), len(x),
                    len(ids), (float(x.min()), float(x.max())), base)  # fmt: skip
