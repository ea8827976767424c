"""What a study's runs say: the laws fitted and tested on runs they never saw, the noise
floor, hard against soft forgetting, and predictions for ranks not run.

:func:`analyse` reads a results store and returns a :class:`StudyReport`, every number
of the report as plain data (its :meth:`StudyReport.to_json` is strict JSON: NaN and
infinities become ``null``). The figures are data here too; :mod:`forgetscale.study.report`
draws them and writes ``report.html`` beside ``report.json``.

How the laws are tested (docs/design.md, "The laws"): each law named in the study's
``analysis:`` block is fitted to every finished run from ``min_step`` on (with
bootstrap intervals that resample whole runs), and twice more without some of the
measurements, to be scored on them:

- *held-out runs*: the runs of the ``holdout_runs`` largest P values are left out
  and the law, fitted on the others, predicts them (does it extrapolate to a bigger
  adapter?);
- *held-out steps*: the last ``holdout_steps`` of every run's measured steps are left
  out and the law, fitted on the earlier ones, predicts them (to a longer run?).

A fit with a parameter on a bound is a finding about the data (the runs cannot
identify that parameter), never a result: it is flagged in words, and the
predictions for ranks not run come only from a law with no parameter on a bound.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from forgetscale.laws.fitting import FitResult

REPORT_FORMAT = "forgetscale-study-report/1"

#: Laws fitted per target when the study file names none.
DEFAULT_LAWS: dict[str, list[str]] = {
    "forgetting_loss": ["linear", "multiplicative", "additive"],
    "finetune_loss": ["multiplicative", "additive"],
    "forgetting_loss_soft": ["multiplicative"],
}

#: Targets in the order the report shows them.
TARGET_ORDER = ("forgetting_loss", "forgetting_loss_soft", "finetune_loss", "kl", "disagreement")
SYMBOLS = {
    "finetune_loss": "L_ft",
    "forgetting_loss": "L_f (hard)",
    "forgetting_loss_soft": "L_f (soft)",
    "kl": "KL",
    "disagreement": "1 - agreement",
}
#: Measured columns shown for the base (step 0) and in the seed spread.
METRICS = ("forgetting_loss", "forgetting_loss_soft", "kl", "disagreement", "finetune_loss")
#: Config keys that do not change what a run measures (left out when grouping seeds).
_NOT_RESULT_KEYS = {
    "seed",
    "name",
    "store",
    "output_dir",
    "checkpoint_dir",
    "checkpoint_every",
    "keep_checkpoint",
    "reference",
    "reference_dir",
    "progress",
    "device",
}
#: The acceptance ratio of held-out to in-sample RMSE.
EXTRAPOLATION_RATIO = 2.0
#: The R^2 the linear law L_f(L_ft) should reach.
LINEAR_R2 = 0.9


def _cfg(default: Any = None, help: str = "", factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class AnalysisConfig:
    """The ``analysis:`` block of a study file: which laws, which held-out design.

    Every key is checked when the config is made; a bad value is a
    :class:`~forgetscale.errors.UserError` naming the key.
    """

    laws: dict[str, list[str]] = _cfg(
        help="laws to fit per target: {target: [law, ...]}. Targets: forgetting_loss, "
        "forgetting_loss_soft, finetune_loss, kl, disagreement; laws: linear (L_f as a "
        "function of L_ft), multiplicative, additive, kalajdzievski (joint L_ft and L_f)",
        factory=lambda: {k: list(v) for k, v in DEFAULT_LAWS.items()},
    )
    min_step: int = _cfg(
        1, "steps below this are not fitted (step 0 is the base model; the paper used 50)"
    )
    holdout_runs: int = _cfg(
        1,
        "held-out runs: the runs of this many largest P values are left out of a second "
        "fit, which predicts them (0 = no held-out runs)",
    )
    holdout_steps: float = _cfg(
        0.25,
        "held-out steps: this fraction of every run's measured steps (the last ones) is "
        "left out of a third fit, which predicts them (0 = no held-out steps)",
    )
    bootstrap: int = _cfg(200, "bootstrap resamples of whole runs for the intervals (0 = none)")
    predict_ranks: list[int] = _cfg(
        help="LoRA ranks to predict (default: the powers of two from half the smallest to "
        "4x the largest rank run, that were not run)",
        factory=list,
    )
    seed: int = _cfg(0, "seed of the bootstrap")

    def __post_init__(self) -> None:
        from forgetscale.laws import get_law
        from forgetscale.laws.registry import TARGETS

        where = "analysis"
        laws = self.laws
        if not isinstance(laws, Mapping) or not laws:
            raise UserError(f"{where}.laws: give a mapping {{target: [law, ...]}}, got {laws!r}")
        clean: dict[str, list[str]] = {}
        for target, names in laws.items():
            if target not in TARGETS:
                raise UserError(
                    f"{where}.laws: unknown target {target!r}; use one of {', '.join(TARGETS)}"
                )
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, Sequence) or not names:
                raise UserError(f"{where}.laws.{target}: give a non-empty list of law names")
            names = [str(n) for n in names]
            if len(set(names)) != len(names):
                raise UserError(f"{where}.laws.{target}: a law is named twice")
            for name in names:
                try:
                    law = get_law(name)
                except UserError as exc:
                    raise UserError(f"{where}.laws.{target}: {exc}") from None
                if target not in law.targets:
                    raise UserError(
                        f"{where}.laws.{target}: law {name!r} predicts "
                        f"{', '.join(law.targets)}, not {target}"
                    )
            clean[str(target)] = names
        object.__setattr__(self, "laws", clean)
        for key, low in (("min_step", 0), ("holdout_runs", 0), ("bootstrap", 0), ("seed", 0)):
            value = getattr(self, key)
            if not _is_int(value) or value < low:
                raise UserError(f"{where}.{key}: give an integer >= {low}, got {value!r}")
            object.__setattr__(self, key, int(value))
        hs = self.holdout_steps
        if isinstance(hs, bool) or not isinstance(hs, (int, float)) or not 0 <= hs < 1:
            raise UserError(f"{where}.holdout_steps: give a fraction in [0, 1), got {hs!r}")
        object.__setattr__(self, "holdout_steps", float(hs))
        ranks = self.predict_ranks
        if isinstance(ranks, (str, bytes)) or not isinstance(ranks, Sequence):
            raise UserError(f"{where}.predict_ranks: give a list of ranks, got {ranks!r}")
        if any(not _is_int(r) or r < 1 for r in ranks):
            raise UserError(f"{where}.predict_ranks: ranks are integers >= 1, got {list(ranks)!r}")
        object.__setattr__(self, "predict_ranks", sorted({int(r) for r in ranks}))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AnalysisConfig:
        """The config from a study file's ``analysis:`` mapping (unknown keys refused)."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise UserError(f"analysis: give a mapping of keys, got {values!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(
                f"analysis: unknown key(s) {', '.join(map(str, unknown))}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**dict(values))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Each key's help line."""
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StudyReport:
    """Everything the report shows, as plain data.

    Attributes (the keys of ``report.json``, besides ``format``):
        created: Unix time of the analysis.
        store: The results store analysed.
        study: What was run, as the caller passed it (command, machine, versions, wall times).
        config: The :class:`AnalysisConfig` used.
        runs: One entry per run: id, label, method, rank, P, seed, dtype, learning rate,
            batch size, steps measured, status, wall time, model, data, versions, config.
        warnings: Plain sentences, shown first.
        checks: The study's acceptance criteria: ``name``, ``passed``, ``detail``.
        laws: ``{target: [law entry]}``: parameters with intervals and bound flags, in-sample
            R^2/RMSE, ``held_out_runs`` and ``held_out_steps`` evaluations, notes.
        ranking: ``{target: [...]}``, best first, by held-out error (the compare ranking).
        best: ``{target: {law, chosen_by, rmse}}`` among fits with no parameter on a bound
            (``None`` where none).
        shown_laws: ``{target: {law, identified}}``: the law drawn in the figures.
        predictions: ``rows`` for ranks not run (value and interval per target),
            ``observed`` for the ranks run, ``params_per_rank``, ``step``, ``note``.
        paper: The paper's Table 1 presets, this study's comparable constants, the sentence.
        noise_floor: ``step0`` values per run, ``seed_spread`` per configuration, ``text``.
        hard_vs_soft: ``cases`` where the hard L_f fell below step 0 while KL rose.
        forgotten: The most-forgotten blocks of the largest-rank run, or ``None``.
        downstream: ``rows`` of the store's ``downstream`` table, or ``None``.
        figures: ``{name: {title, caption, data}}``: the data each figure is drawn from.
        seconds: Wall time of the fits, of the figure data and in total.
    """

    created: float
    store: str
    study: dict[str, Any]
    config: dict[str, Any]
    runs: list[dict[str, Any]]
    warnings: list[str]
    checks: list[dict[str, Any]]
    laws: dict[str, list[dict[str, Any]]]
    ranking: dict[str, list[dict[str, Any]]]
    best: dict[str, dict[str, Any] | None]
    shown_laws: dict[str, dict[str, Any]]
    predictions: dict[str, Any]
    paper: dict[str, Any]
    noise_floor: dict[str, Any]
    hard_vs_soft: dict[str, Any]
    forgotten: dict[str, Any] | None
    downstream: dict[str, Any] | None
    figures: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Strict JSON data: ``format`` plus every field (NaN and infinities as ``null``)."""
        from forgetscale.outputs import json_safe

        d, _ = json_safe({"format": REPORT_FORMAT, **asdict(self)})
        return d


# ------------------------------------------------------------------------------- helpers


def _num(x: Any) -> float | None:
    """A finite float, or None."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if v is None else f"{v:.{digits}g}"


def _law_uses_pn(name: str) -> bool:
    from forgetscale.laws import get_law

    return set(get_law(name).variables) == {"params_trained", "step"}


def _run_entries(records: list, meas: pd.DataFrame) -> list[dict[str, Any]]:
    by_rank: dict[Any, int] = {}
    for rec in records:
        by_rank[(rec.method, rec.rank, rec.params_trained)] = (
            by_rank.get((rec.method, rec.rank, rec.params_trained), 0) + 1
        )
    out = []
    for rec in records:
        cfg = rec.config or {}
        m = meas[meas["run_id"] == rec.id]
        wall = _num(m["wall_s"].max()) if len(m) else None
        if wall is None and rec.ended is not None:
            wall = float(rec.ended - rec.started)
        seed = cfg.get("seed")
        if rec.rank is not None and rec.method == "lora":
            label = f"r={rec.rank}"
        elif rec.name:
            label = str(rec.name)
        else:
            label = f"{rec.method} {rec.id[:8]}"
        if by_rank[(rec.method, rec.rank, rec.params_trained)] > 1 and seed is not None:
            label += f" seed {seed}"
        steps = sorted(int(s) for s in m["step"].tolist())
        out.append(
            {
                "run_id": rec.id,
                "label": label,
                "name": rec.name,
                "method": rec.method,
                "rank": rec.rank,
                "params_trained": rec.params_trained,
                "seed": seed,
                "dtype": cfg.get("dtype"),
                "learning_rate": cfg.get("learning_rate"),
                "batch_size": cfg.get("batch_size"),
                "max_steps": rec.max_steps,
                "last_step": rec.last_step,
                "steps": steps,
                "status": rec.status,
                "diverged_step": rec.diverged_step,
                "message": rec.message,
                "wall_s": wall,
                "model": rec.model,
                "task_data": rec.task_data,
                "forgetting_data": cfg.get("forgetting_data"),
                "versions": rec.versions,
                "config": cfg,
            }
        )
    return out


def _read_downstream(conn: Any, run_ids: set[str]) -> list[dict[str, Any]] | None:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "downstream" not in tables:
        return None
    cols = [d[0] for d in conn.execute("SELECT * FROM downstream LIMIT 0").description]
    want = ["run_id", "step", "suite", "metric", "value", "n", "ci_low", "ci_high"]
    if not {"run_id", "step", "suite", "metric", "value"} <= set(cols):
        return None
    sel = [c for c in want if c in cols]
    rows = conn.execute(
        f"SELECT {', '.join(sel)} FROM downstream ORDER BY run_id, suite, metric, step"
    ).fetchall()
    return [dict(zip(sel, r, strict=True)) for r in rows if r[0] in run_ids]


def _with_disagreement(df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    if "agreement" in df.columns:
        df["disagreement"] = 1.0 - df["agreement"]
    return df


# -------------------------------------------------------------------------- the laws


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
    ``n_held_out``, ``n_in_sample``, ``on_bound`` and ``converged`` of that fit, and the
    ``points`` (run, P, step, split, observed, predicted).
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
    ev = evaluate_holdout(df, law, target, holdout, min_step=config.min_step, n_boot=0)
    points = ev.points
    cols = ["run_id", "params_trained", "step", "split", target, f"predicted_{target}"]
    cols = [c for c in cols if c in points.columns]
    pts = points[cols].rename(columns={target: "observed", f"predicted_{target}": "predicted"})
    pts["split"] = pts["split"].map({"in_sample": "in_sample", "held_out": "held_out"})
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


def _rank_laws(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compare ranking: by held-out-runs RMSE (then held-out steps), failures last."""

    def score(e: dict[str, Any]) -> tuple:
        runs = _num((e.get("held_out_runs") or {}).get("rmse"))
        steps = _num((e.get("held_out_steps") or {}).get("rmse"))
        if e["status"] != "ok":
            return (3, 0.0)
        if runs is not None:
            return (0, runs)
        if steps is not None:
            return (1, steps)
        return (2, _num(e.get("rmse")) or math.inf)

    order = sorted(entries, key=score)
    out = []
    for i, e in enumerate(order, 1):
        s = score(e)
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


def _best_law(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The law in P and N with the lowest held-out error among fits with no parameter on a
    bound (held-out runs first, then held-out steps, then in-sample)."""
    cands = [e for e in entries if e["status"] == "ok" and e["identified"]]
    cands = [e for e in cands if _law_uses_pn(e["law"])]
    if not cands:
        return None

    def key(e: dict[str, Any]) -> tuple:
        runs = _num((e.get("held_out_runs") or {}).get("rmse"))
        steps = _num((e.get("held_out_steps") or {}).get("rmse"))
        if runs is not None:
            return (0, runs)
        if steps is not None:
            return (1, steps)
        return (2, _num(e.get("rmse")) or math.inf)

    best = min(cands, key=key)
    k = key(best)
    return {
        "law": best["law"],
        "chosen_by": ("held-out runs RMSE", "held-out steps RMSE", "in-sample RMSE")[k[0]],
        "rmse": k[1],
    }


# ----------------------------------------------------------------------- predictions


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


def _predictions(
    df: pd.DataFrame,
    runs: list[dict[str, Any]],
    best: dict[str, dict[str, Any] | None],
    fits: dict[tuple[str, str], FitResult],
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
        values[t] = predict(fit, params_trained=P, step=N)[t]
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


# ----------------------------------------------------------------------- noise floor


def _noise_floor(
    df: pd.DataFrame, runs: list[dict[str, Any]], fitted_ids: set[str]
) -> dict[str, Any]:
    labels = {r["run_id"]: r["label"] for r in runs}
    metrics = [m for m in METRICS if m in df.columns]
    step0 = []
    for r in runs:
        if r["run_id"] not in fitted_ids:
            continue
        m = df[(df["run_id"] == r["run_id"]) & (df["step"] == 0)]
        if not len(m):
            continue
        row = {"run_id": r["run_id"], "label": r["label"], "dtype": r["dtype"]}
        row.update({k: _num(m[k].iloc[0]) for k in metrics})
        row["batch_size"] = r["batch_size"]
        step0.append(row)

    summary: dict[str, Any] = {}
    for k in metrics:
        vals = [s[k] for s in step0 if s[k] is not None]
        if vals:
            summary[k] = {"min": min(vals), "max": max(vals)}

    # seeds: runs whose configs differ only in the seed (and bookkeeping keys)
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        if r["run_id"] not in fitted_ids:
            continue
        key = repr(
            sorted((k, repr(v)) for k, v in r["config"].items() if k not in _NOT_RESULT_KEYS)
        )
        key += repr((r["method"], r["rank"], r["params_trained"]))
        groups.setdefault(key, []).append(r)
    spreads = []
    for members in groups.values():
        if len(members) < 2:
            continue
        ids = [m["run_id"] for m in members]
        sub = df[df["run_id"].isin(ids)]
        steps = sorted(set.intersection(*(set(sub[sub.run_id == i]["step"]) for i in ids)))
        per_metric: dict[str, list[float | None]] = {}
        for k in metrics:
            vals = []
            for s in steps:
                v = sub[(sub["step"] == s)][k].dropna()
                vals.append(float(v.max() - v.min()) if len(v) == len(ids) else None)
            per_metric[k] = vals
        summ = {}
        for k, vals in per_metric.items():
            later = [v for s, v in zip(steps, vals, strict=True) if s > 0 and v is not None]
            if later:
                summ[k] = {"median": float(np.median(later)), "max": float(np.max(later))}
        spreads.append(
            {
                "label": members[0]["label"].split(" seed")[0],
                "run_ids": ids,
                "seeds": [m["seed"] for m in members],
                "labels": [labels[i] for i in ids],
                "steps": [int(s) for s in steps],
                "max_abs_diff": per_metric,
                "summary": summ,
            }
        )

    # the gaps between neighbouring P at the last common step, against the seed spread
    gaps = None
    fl = df[df["run_id"].isin(fitted_ids)]
    if len(fl) and "forgetting_loss" in fl:
        last = int(fl.groupby("run_id")["step"].max().min())
        at = fl[fl["step"] == last].groupby("params_trained")["forgetting_loss"].mean()
        if len(at) >= 2:
            d = np.abs(np.diff(at.sort_index().to_numpy()))
            gaps = {"step": last, "min": float(d.min()), "median": float(np.median(d))}

    spread_fl = [
        s["summary"]["forgetting_loss"] for s in spreads if "forgetting_loss" in s["summary"]
    ]
    text = []
    kl0 = summary.get("kl", {}).get("max")
    dis0 = summary.get("disagreement", {}).get("max")
    dtypes = sorted({str(s["dtype"]) for s in step0 if s["dtype"]})
    if step0:
        text.append(
            f"At step 0 (the base against its own reference, in {', '.join(dtypes) or 'the runs’ dtype'}) "
            f"KL is at most {_fmt(kl0)} and 1 - agreement at most {_fmt(dis0)}: the numeric floor "
            "of those two metrics. The base's own hard L_f is "
            f"{_fmt(summary.get('forgetting_loss', {}).get('min'), 4)}"
            + (
                f" to {_fmt(summary['forgetting_loss']['max'], 4)}"
                if "forgetting_loss" in summary
                and summary["forgetting_loss"]["max"] != summary["forgetting_loss"]["min"]
                else ""
            )
            + " (not 0: it is the base's own cross-entropy on its top token)."
        )
    if spread_fl:
        med = max(s["median"] for s in spread_fl)
        worst = max(s["max"] for s in spread_fl)
        text.append(
            f"Over seeds, L_f differs by {_fmt(med)} at a typical step (at most {_fmt(worst)}): "
            "differences smaller than that are noise."
        )
        if gaps is not None:
            ratio = gaps["min"] / med if med > 0 else math.inf
            text.append(
                f"At step {gaps['step']} neighbouring P values differ in L_f by {_fmt(gaps['min'])} "
                f"at least ({_fmt(ratio, 2)}x the seed spread)"
                + (
                    "."
                    if ratio >= 2
                    else ": some neighbouring ranks are not told apart by these runs."
                )
            )
    else:
        text.append(
            "No configuration was run with two or more seeds, so the seed-to-seed spread of L_f "
            "is unknown: small differences between runs may be noise."
        )
    return {
        "step0": step0,
        "step0_summary": summary,
        "seed_spread": spreads,
        "neighbour_gap": gaps,
        "text": " ".join(text),
    }


# -------------------------------------------------------------------- hard vs soft


def _hard_vs_soft(
    df: pd.DataFrame, runs: list[dict[str, Any]], fitted_ids: set[str]
) -> tuple[dict[str, Any], list[str]]:
    warnings: list[str] = []
    cases = []
    for r in runs:
        if r["run_id"] not in fitted_ids:
            continue
        m = df[df["run_id"] == r["run_id"]].sort_values("step")
        base = m[m["step"] == 0]
        if not len(base) or "kl" not in m:
            continue
        h0, k0 = _num(base["forgetting_loss"].iloc[0]), _num(base["kl"].iloc[0])
        if h0 is None or k0 is None:
            continue
        later = m[(m["step"] > 0) & (m["forgetting_loss"] < h0) & (m["kl"] > k0)]
        if not len(later):
            continue
        rows = [
            {
                "step": int(x.step),
                "forgetting_loss": _num(x.forgetting_loss),
                "forgetting_loss_soft": _num(getattr(x, "forgetting_loss_soft", None)),
                "kl": _num(x.kl),
                "agreement": _num(getattr(x, "agreement", None)),
            }
            for x in later.itertuples()
        ]
        first = rows[0]
        cases.append({"run_id": r["run_id"], "label": r["label"], "base_forgetting_loss": h0,
                      "base_kl": k0, "rows": rows})  # fmt: skip
        agree = (
            f" and agreement with the base fell to {first['agreement']:.3f}"
            if first["agreement"] is not None
            else ""
        )
        steps = ", ".join(str(x["step"]) for x in rows)
        warnings.append(
            f"Run {r['label']}: at step{'s' if len(rows) > 1 else ''} {steps} the hard L_f fell "
            f"below the base's own value ({first['forgetting_loss']:.3f} vs {h0:.3f} at step "
            f"{first['step']}) while KL rose to {first['kl']:.3g}{agree}. This is not negative "
            "forgetting: the hard metric rewards a model that grows more confident on the "
            "base's top token. The soft L_f and KL show the change."
        )
    return {"cases": cases}, warnings


# --------------------------------------------------------------------- the paper


def _paper(
    runs: list[dict[str, Any]], laws: dict[str, list[dict[str, Any]]], config: AnalysisConfig
) -> dict[str, Any]:
    from forgetscale.laws import get_preset

    presets = {}
    for name in ("kalajdzievski:openorca", "kalajdzievski:news"):
        _, params, source = get_preset(name)
        presets[name] = {"params": params, "source": source}
    ours: dict[str, dict[str, Any]] = {}
    for target, entries in laws.items():
        for e in entries:
            if e["status"] != "ok":
                continue
            if e["law"] == "kalajdzievski" and "kalajdzievski" not in ours:
                ours["kalajdzievski"] = {
                    p["name"]: {"value": p["value"], "ci": p["ci"], "on_bound": p["on_bound"]}
                    for p in e["params"]
                }
            if e["law"] == "linear" and target in ("forgetting_loss", "forgetting_loss_soft"):
                ours[f"linear ({SYMBOLS[target]})"] = {
                    p["name"]: {"value": p["value"], "ci": p["ci"], "on_bound": p["on_bound"]}
                    for p in e["params"]
                }
    models = sorted({str(r["model"]) for r in runs if r["model"]})
    tasks = sorted({str(r["task_data"]) for r in runs if r["task_data"]})
    corpora = sorted({str(r["forgetting_data"]) for r in runs if r["forgetting_data"]})
    Ps = [r["params_trained"] for r in runs if r["params_trained"]]
    p_range = f"P = {min(Ps):.3g} to {max(Ps):.3g}" if Ps else "P unknown"
    text = (
        "The paper's constants (Table 1) come from Llama 2 7B chat fine-tuned with LoRA "
        "ranks 8 to 256 (P about 2e7 to 6.4e8) on OpenOrca or News for 260 steps, fitted on "
        "the steps after the first 50, with L_f measured on WikiText-103; its text does not "
        "say whether its L_f is the hard (top-token) or the soft cross-entropy. This study: "
        f"model {', '.join(models) or 'unknown'}, fine-tuned on {', '.join(tasks) or 'unknown data'}, "
        f"forgetting measured on {', '.join(corpora) or 'an unknown corpus'}, {p_range}, fitted "
        f"from step {config.min_step}, with both hard and soft L_f. Levels and scales "
        "(s_ft, s_f_ft, c_ft, a_*, b_*) depend on the model, the tokenizer and both corpora, "
        "so they are not comparable; the exponents (alpha, beta, rho) and the slope of L_f "
        "in L_ft (c_f_ft) are comparable only in sign and order of magnitude. The paper "
        "fitted the joint law; the linear law here shares only c_f_ft and s_f_ft with it."
    )
    return {"presets": presets, "ours": ours, "text": text}


# ------------------------------------------------------------------ what was forgotten


def _forgotten(
    runs: list[dict[str, Any]], adapters: Mapping[str, str], reference: str
) -> dict[str, Any]:
    from forgetscale.metrics import measure

    known = [r for r in runs if r["run_id"] in adapters]
    if not known:
        raise UserError("none of the runs given adapters is in the report")
    run = max(known, key=lambda r: (r["params_trained"] or 0, r["rank"] or 0))
    model = run["model"] or run["config"].get("model")
    if not model:
        raise UserError(f"run {run['label']} does not record its base model")
    result = measure(
        model,
        reference,
        adapter=adapters[run["run_id"]],
        dtype=run["dtype"] or "float32",
        report_blocks=5,
        progress=False,
    )
    return {
        "run_id": run["run_id"],
        "label": run["label"],
        "adapter": str(adapters[run["run_id"]]),
        "reference": str(reference),
        "forgetting_loss": result.forgetting_loss,
        "forgetting_loss_soft": result.forgetting_loss_soft,
        "kl": result.kl,
        "agreement": result.agreement,
        "base_forgetting_loss": result.base_forgetting_loss,
        "blocks": [asdict(b) for b in result.most_forgotten],
    }


# ------------------------------------------------------------------------- figures


def _points(df: pd.DataFrame, labels: Mapping[str, str]) -> dict[str, list]:
    cols = ["run_id", "params_trained", "step", *[m for m in METRICS if m in df.columns]]
    d = df[cols].copy()
    d["params_trained"] = d["params_trained"].astype(float)
    d["label"] = d["run_id"].map(labels)
    return d.to_dict(orient="list")


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float] | None:
    if len(x) < 2 or np.ptp(x) == 0:
        return None
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def _figures(
    df: pd.DataFrame,
    runs: list[dict[str, Any]],
    laws: dict[str, list[dict[str, Any]]],
    shown: dict[str, dict[str, Any]],
    fits: dict[tuple[str, str], FitResult],
    noise: dict[str, Any],
    config: AnalysisConfig,
) -> dict[str, dict[str, Any]]:
    labels = {r["run_id"]: r["label"] for r in runs}
    figs: dict[str, dict[str, Any]] = {}
    base = {k: v for k, v in noise["step0_summary"].items()}
    spread = {}
    for s in noise["seed_spread"]:
        for k, v in s["summary"].items():
            spread[k] = max(spread.get(k, 0.0), v["median"])

    # L_f against L_ft, hard and soft, the linear law and a line per P
    lin_targets = [t for t in ("forgetting_loss", "forgetting_loss_soft") if t in df.columns]
    fitted = df[df["step"] >= config.min_step]
    panels = []
    for t in lin_targets:
        if fitted[t].isna().all():
            continue
        law = next(
            (e for e in laws.get(t, []) if e["law"] == "linear" and e["status"] == "ok"), None
        )
        per_p = []
        for p, g in fitted.groupby("params_trained"):
            g = g.dropna(subset=[t, "finetune_loss"])
            line = _ols(g["finetune_loss"].to_numpy(), g[t].to_numpy())
            if line is not None:
                per_p.append({"params_trained": float(p), "slope": line[0], "intercept": line[1],
                              "x": [float(g["finetune_loss"].min()), float(g["finetune_loss"].max())]})  # fmt: skip
        both = fitted.dropna(subset=[t, "finetune_loss"])
        overall = _ols(both["finetune_loss"].to_numpy(), both[t].to_numpy())
        least_squares = None
        if overall is not None:
            resid = both[t].to_numpy() - (
                overall[1] + overall[0] * both["finetune_loss"].to_numpy()
            )
            ss = float(((both[t] - both[t].mean()) ** 2).sum())
            least_squares = {"s_f_ft": overall[1], "c_f_ft": -overall[0],
                             "r2": 1 - float((resid**2).sum()) / ss if ss > 0 else None}  # fmt: skip
        panels.append(
            {
                "target": t,
                "least_squares": least_squares,
                "law": None
                if law is None
                else {
                    "s_f_ft": next(p["value"] for p in law["params"] if p["name"] == "s_f_ft"),
                    "c_f_ft": next(p["value"] for p in law["params"] if p["name"] == "c_f_ft"),
                    "r2": law["r2"],
                },
                "per_p": per_p,
                "base": base.get(t),
            }
        )
    if panels and "finetune_loss" in df.columns:
        figs["forgetting_vs_finetune"] = {
            "title": "Forgetting against fine-tuning loss",
            "caption": (
                "Each point is one measurement (step >= min_step), coloured by P. Black dashed: "
                "the linear law L_f = s_f_ft - c_f_ft L_ft fitted to all runs; thin coloured "
                "lines: a least-squares line per P. Left the hard L_f (the paper's), right the "
                "soft. Dotted grey line: the base's own value at step 0."
            ),
            "data": {"points": _points(fitted, labels), "panels": panels},
        }

    # the losses against N per P with the shown law's curves (log axes)
    curve_targets = [t for t in ("finetune_loss", "forgetting_loss", "forgetting_loss_soft")
                     if t in df.columns and not df[t].isna().all()]  # fmt: skip
    curves: dict[str, Any] = {}
    for t in curve_targets:
        s = shown.get(t)
        if not s:
            continue
        fit = fits[(t, s["law"])]
        per_p = []
        for p, g in df[df["step"] > 0].groupby("params_trained"):
            n = np.geomspace(max(float(g["step"].min()), 1.0), float(g["step"].max()), 60)
            y = np.broadcast_to(
                fit.predict(t, params_trained=np.full_like(n, float(p)), step=n), n.shape
            )
            per_p.append({"params_trained": float(p), "step": n.tolist(), "predicted": y.tolist()})
        curves[t] = {"law": s["law"], "identified": s["identified"], "per_p": per_p}
    if curve_targets:
        figs["losses_vs_steps"] = {
            "title": "Losses against steps N, per P",
            "caption": (
                "Points: measurements after N updates, coloured by P (log axes). Lines: the law "
                "shown for that target (the best identified one), fitted to all runs from "
                "min_step on; dashed when no law for that target is identified (a parameter on a "
                "bound or no convergence): then the curve is not a result. Shaded band: the law "
                "± half the typical spread over seeds. Dotted grey line: the base's own value at "
                "step 0."
            ),
            "data": {
                "points": _points(df[df["step"] > 0], labels),
                "targets": curve_targets,
                "curves": curves,
                "base": {t: base.get(t) for t in curve_targets},
                "seed_spread": {t: spread.get(t) for t in curve_targets},
                "min_step": config.min_step,
            },
        }

    # predicted against observed, and residuals, held-out points marked
    pv: dict[str, Any] = {}
    for t, s in shown.items():
        entry = next(e for e in laws[t] if e["law"] == s["law"])
        schemes = {}
        for key in ("held_out_runs", "held_out_steps"):
            ev = entry.get(key)
            if ev and "points" in ev:
                schemes[key] = {
                    "description": ev["description"],
                    "rmse": ev["rmse"],
                    "rmse_in_sample": ev["rmse_in_sample"],
                    "points": ev["points"],
                }
        for sch in schemes.values():
            sch["points"] = dict(sch["points"])
            sch["points"]["label"] = [labels.get(i, i) for i in sch["points"]["run_id"]]
        if schemes:
            pv[t] = {"law": s["law"], "identified": s["identified"], "schemes": schemes}
    if pv:
        figs["predicted_vs_observed"] = {
            "title": "Predicted against observed, on runs and steps the fit never saw",
            "caption": (
                "Per target, the law shown fitted without the held-out points (hollow) and "
                "predicting them. Top row: held-out runs (the largest P); bottom row: held-out "
                "steps (the last steps of every run). On the dotted line prediction = "
                "observation."
            ),
            "data": pv,
        }
        figs["residuals"] = {
            "title": "Residuals against steps",
            "caption": (
                "Observed minus predicted, for the same fits as above, against N (held-out "
                "points hollow). Grey band: the typical spread of that quantity over seeds; "
                "residuals inside it are noise."
            ),
            "data": {"fits": pv, "seed_spread": spread},
        }

    # hard against soft, KL and disagreement against N, step 0 included
    hs_cols = [c for c in ("forgetting_loss", "forgetting_loss_soft", "kl", "disagreement")
               if c in df.columns and not df[c].isna().all()]  # fmt: skip
    if hs_cols:
        figs["hard_vs_soft"] = {
            "title": "Hard and soft L_f, KL and disagreement against N (change from step 0)",
            "caption": (
                "Each metric minus its step-0 value (the base against its own reference), per "
                "run. Where the hard L_f dips below 0 while KL rises, the model has grown more "
                "confident on the base's top token: not negative forgetting. The x axis is "
                "linear up to 1 and logarithmic beyond, so step 0 is shown."
            ),
            "data": {"points": _points(df, labels), "metrics": hs_cols},
        }
    return figs


# ---------------------------------------------------------------------------- checks


def _checks(laws: dict[str, list[dict[str, Any]]], noise: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    lin = next((e for e in laws.get("forgetting_loss", []) if e["law"] == "linear"), None)
    if lin is not None:
        r2 = _num(lin.get("r2"))
        out.append(
            {
                "name": f"linear law L_f(L_ft) with R^2 >= {LINEAR_R2}",
                "passed": None if r2 is None else r2 >= LINEAR_R2,
                "detail": f"R^2 = {_fmt(r2, 4)}"
                if lin["status"] == "ok"
                else f"not fitted: {lin['error']}",
            }
        )
    good, details = [], []
    for e in laws.get("forgetting_loss", []):
        if e["status"] != "ok" or not _law_uses_pn(e["law"]):
            continue
        ratios = {}
        for key in ("held_out_runs", "held_out_steps"):
            ev = e.get(key) or {}
            ratios[key] = _num(ev.get("ratio"))
        ok = e["identified"] and all(
            v is not None and v <= EXTRAPOLATION_RATIO for v in ratios.values()
        )
        if ok:
            good.append(e["law"])
        details.append(
            f"{e['law']}: "
            + ("no parameter on a bound" if e["identified"] else f"on a bound ({e['on_bound_words']})"
               if e.get("on_bound") else "not converged")
            + f", held-out/in-sample RMSE {_fmt(ratios['held_out_runs'], 2)} (runs), "
            f"{_fmt(ratios['held_out_steps'], 2)} (steps)"
        )  # fmt: skip
    out.append(
        {
            "name": "a law for L_f in P and N with no parameter on a bound and held-out RMSE "
            f"<= {EXTRAPOLATION_RATIO:g}x in-sample (held-out runs and held-out steps)",
            "passed": bool(good),
            "detail": "; ".join(details) or "no law in P and N was fitted to L_f",
        }
    )
    seeds = [s for s in noise["seed_spread"] if "forgetting_loss" in s["summary"]]
    out.append(
        {
            "name": "noise floor: the base's step-0 values and the spread of L_f over >= 2 seeds",
            "passed": bool(noise["step0"]) and bool(seeds),
            "detail": (
                f"step 0 measured for {len(noise['step0'])} run(s); "
                + (
                    f"{len(seeds)} configuration(s) run with several seeds"
                    if seeds
                    else "no configuration run with two or more seeds"
                )
            ),
        }
    )
    return out


# --------------------------------------------------------------------------- analyse


def analyse(
    store: str | Path,
    config: AnalysisConfig | Mapping[str, Any] | None,
    *,
    run_ids: list[str] | None = None,
    adapters: dict[str, str] | None = None,
    reference: str | None = None,
    study: dict | None = None,
) -> StudyReport:
    """Analyse the runs of a results store: laws, held-out errors, noise floor, predictions.

    Args:
        store: The SQLite results store.
        config: The ``analysis:`` block (an :class:`AnalysisConfig`, or its mapping).
        run_ids: The runs of this study (default: every run in the store).
        adapters: ``{run_id: adapter folder}``; with ``reference``, the largest-rank run
            among them is measured again to show its most-forgotten blocks of text.
        reference: The reference file (``forgetscale reference``) of the forgetting corpus.
        study: What was run (command, machine, versions, wall times), passed through.
    """
    from forgetscale.store import open_store

    t_start = time.perf_counter()
    if config is None or isinstance(config, Mapping):
        config = AnalysisConfig.from_dict(config)
    if not isinstance(config, AnalysisConfig):
        raise TypeError("config must be an AnalysisConfig (or the analysis: mapping)")
    with open_store(store, create=False) as st:
        records = st.list_runs()
        meas = st.measurements()
        if run_ids is not None:
            wanted = list(dict.fromkeys(run_ids))
            known = {r.id for r in records}
            unknown = [r for r in wanted if r not in known]
            if unknown:
                raise UserError(f"run(s) not in the store {store}: {', '.join(unknown)}")
            records = [r for r in records if r.id in set(wanted)]
        downstream_rows = _read_downstream(st.conn, {r.id for r in records})
    if not records:
        raise UserError(f"the results store {store} holds no runs")
    meas = _with_disagreement(meas[meas["run_id"].isin({r.id for r in records})])
    runs = _run_entries(records, meas)
    warnings: list[str] = []

    for r in runs:
        if r["status"] == "failed":
            warnings.append(
                f"Run {r['label']} failed"
                + (f": {r['message']}" if r["message"] else "")
                + "; it is not fitted."
            )
        elif r["status"] == "diverged":
            warnings.append(
                f"Run {r['label']} diverged (a NaN or infinite loss"
                + (f" at step {r['diverged_step']}" if r["diverged_step"] is not None else "")
                + "); it is not fitted."
            )
        elif r["status"] == "running":
            warnings.append(
                f"Run {r['label']} has not finished (last step {r['last_step']}); it is not fitted."
            )
    fitted_ids = {r["run_id"] for r in runs if r["status"] == "finished"}
    labels = {r["run_id"]: r["label"] for r in runs}
    df = meas[meas["run_id"].isin(fitted_ids)].copy()
    if not fitted_ids:
        warnings.append("No run has finished: there is nothing to fit.")

    # the laws
    laws: dict[str, list[dict[str, Any]]] = {}
    fits: dict[tuple[str, str], FitResult] = {}
    t_fit = time.perf_counter()
    distinct_p = df["params_trained"].nunique() if len(df) else 0
    for target in sorted(config.laws, key=lambda t: TARGET_ORDER.index(t)):
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
    seconds = {"fits": time.perf_counter() - t_fit}

    ranking = {t: _rank_laws(e) for t, e in laws.items()}
    best = {t: _best_law(e) for t, e in laws.items()}
    shown: dict[str, dict[str, Any]] = {}
    for t in laws:
        if best[t] is not None:
            shown[t] = {"law": best[t]["law"], "identified": True}  # type: ignore[index]
            continue
        pn = [r for r in ranking[t] if r["position"] and _law_uses_pn(r["law"])]
        if pn:
            shown[t] = {"law": pn[0]["law"], "identified": False}

    for t, entries in laws.items():
        sym = SYMBOLS.get(t, t)
        for e in entries:
            if e["status"] != "ok":
                if fitted_ids:  # else one warning says that no run has finished
                    warnings.append(f"{e['law']} law for {sym} could not be fitted: {e['error']}")
                continue
            if e.get("on_bound"):
                warnings.append(
                    f"{e['law']} law for {sym}: {e['on_bound_words']} ended on a bound. These runs "
                    "cannot identify that parameter; the fit's values are not a result."
                )
            if not e.get("converged", True):
                warnings.append(f"{e['law']} law for {sym} did not converge: {e['message']}")
            for key, what in (
                ("held_out_runs", "held-out runs"),
                ("held_out_steps", "held-out steps"),
            ):
                ev = e.get(key)
                if ev and ev.get("error"):
                    warnings.append(
                        f"{e['law']} law for {sym}: no {what} evaluation: {ev['error']}"
                    )
        if best[t] is None and any(e["status"] == "ok" and _law_uses_pn(e["law"]) for e in entries):
            warnings.append(
                f"No law for {sym} in P and N is identified by these runs (every fit has a "
                "parameter on a bound or did not converge)."
            )
    if config.holdout_runs > 0 and fitted_ids:
        need = config.holdout_runs + 3  # power laws need 3 distinct P to fit on
        if distinct_p < need:
            warnings.append(
                f"Too few runs to test a held-out rank: {distinct_p} distinct P values, and a "
                f"law in P needs 3 to fit on besides the {config.holdout_runs} held out "
                f"(at least {need})."
            )

    predictions = _predictions(df, runs, best, fits, config, fitted_ids)
    predictions["caveats"] = []
    for t in predictions.get("targets", []):
        entry = next(e for e in laws[t] if e["law"] == best[t]["law"])  # type: ignore[index]
        ratios = {
            what: _num((entry.get(key) or {}).get("ratio"))
            for key, what in (("held_out_runs", "runs"), ("held_out_steps", "steps"))
        }
        bad = {k: v for k, v in ratios.items() if v is not None and v > EXTRAPOLATION_RATIO}
        if bad:
            text = (
                f"The {entry['law']} law for {SYMBOLS.get(t, t)} misses held-out points by more "
                f"than {EXTRAPOLATION_RATIO:g}x its in-sample error ("
                + ", ".join(f"held-out {k}: {v:.2g}x" for k, v in bad.items())
                + "): its predictions for ranks not run are rough at best."
            )
            predictions["caveats"].append(text)
            warnings.append(text)
    noise = _noise_floor(df, runs, fitted_ids)
    hard_soft, hs_warnings = _hard_vs_soft(df, runs, fitted_ids)
    warnings.extend(hs_warnings)

    forgotten = None
    if adapters and reference:
        try:
            forgotten = _forgotten(runs, adapters, reference)
        except Exception as exc:  # a report without the blocks beats no report
            warnings.append(f"The most-forgotten blocks could not be measured: {exc}")
    downstream = None
    if downstream_rows:
        labels = {r["run_id"]: r["label"] for r in runs}
        downstream = {
            "rows": [
                {**row, "label": labels.get(row["run_id"], row["run_id"])}
                for row in downstream_rows
            ]
        }

    t_fig = time.perf_counter()
    figures = _figures(df, runs, laws, shown, fits, noise, config)
    seconds["figure_data"] = time.perf_counter() - t_fig
    seconds["total"] = time.perf_counter() - t_start
    return StudyReport(
        created=time.time(),
        store=str(store),
        # what the caller passed, as plain JSON (paths and other objects as text)
        study=json.loads(json.dumps(dict(study or {}), default=str)),
        config=config.to_dict(),
        runs=runs,
        warnings=warnings,
        checks=_checks(laws, noise),
        laws=laws,
        ranking=ranking,
        best=best,
        shown_laws=shown,
        predictions=predictions,
        paper=_paper(runs, laws, config),
        noise_floor=noise,
        hard_vs_soft=hard_soft,
        forgotten=forgotten,
        downstream=downstream,
        figures=figures,
        seconds=seconds,
    )
