"""The learning–forgetting frontier: each arm's trajectory of L_f (and KL) against L_ft, and
the arms compared at matched L_ft.

An **arm** is what a practitioner chooses: the method and rank, the replay fraction p, the
KL weight λ (and the data it is taken on); the runs of one arm differ only by seed. The
**plain** arm is LoRA without mitigation (of the rank with the most seeds, then the smallest).

For each arm against plain, :func:`frontier` picks the **matched level** ℓ: the lowest L_ft
that every run of both arms reaches along its own trajectory (the largest of the runs'
lowest measured L_ft). Each run's L_f, KL, step and wall time at ℓ are interpolated linearly
between the two measurements whose L_ft brackets ℓ (the first time the run gets there),
never extrapolated: a run that never reaches ℓ is not in the comparison. The comparison:

- **forgetting saved**: mean L_f of plain minus mean L_f of the arm at ℓ, with a 95%
  Welch t interval over seeds (none when either arm has a single seed), and as a share of
  plain's rise of L_f from step 0;
- **cost**: the arm's mean L_ft minus plain's at the last step both ran (matched steps), with
  its interval, and the ratio of the arms' mean training wall time at that step;
- whether the arms lie on **one frontier**: an arm whose interval for the forgetting saved
  contains 0 lies on plain LoRA's frontier; without an interval, one whose difference is
  within the typical seed spread of L_f does.

:func:`section` renders the table and the sentences; :func:`draw` the figure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from forgetscale.study.markup import esc
from forgetscale.study.runs import mitigation_label


def arm_of(run: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(label, description)`` of a run's arm (every choice but the seed)."""
    cfg = run.get("config") or {}
    method, rank = run.get("method"), run.get("rank")
    p = float(cfg.get("replay_fraction") or 0.0)
    lam = float(cfg.get("kl_weight") or 0.0)
    kl_data = cfg.get("kl_data") or "task"
    label = f"{method} r={rank}" if method == "lora" and rank is not None else str(method)
    label += mitigation_label(cfg)
    desc = {"method": method, "rank": rank, "replay_fraction": p, "kl_weight": lam,
            "kl_data": kl_data if lam > 0 else None, "plain": p == 0 and lam == 0}  # fmt: skip
    return label, desc


def _at_level(traj: list[dict[str, Any]], level: float) -> dict[str, float] | None:
    """The run's values where its L_ft first reaches ``level`` (linear between the two
    measurements that bracket it); None when it never does."""
    for a, b in zip(traj, traj[1:], strict=False):
        lo, hi = sorted((a["finetune_loss"], b["finetune_loss"]))
        if lo <= level <= hi:
            span = b["finetune_loss"] - a["finetune_loss"]
            w = 0.0 if span == 0 else (level - a["finetune_loss"]) / span
            out = {}
            for key in ("forgetting_loss", "kl", "step", "wall_s"):
                va, vb = a.get(key), b.get(key)
                out[key] = None if va is None or vb is None else va + w * (vb - va)
            return out
    if traj and traj[0]["finetune_loss"] == level:
        return {k: traj[0].get(k) for k in ("forgetting_loss", "kl", "step", "wall_s")}
    return None


def _interval(a: list[float], b: list[float]) -> tuple[float, float] | None:
    """95% Welch t interval of mean(a) - mean(b); None with fewer than two values in either."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    se = math.sqrt(va + vb)
    diff = float(np.mean(a) - np.mean(b))
    if se == 0:
        return diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.975, df)) * se
    return diff - half, diff + half


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def frontier(
    df: Any, runs: list[dict[str, Any]], seed_spread: float | None = None
) -> dict[str, Any] | None:
    """The trajectories per arm and the comparison table (None with fewer than two arms)."""
    finished = [r for r in runs if r["status"] == "finished"]
    arms: dict[str, dict[str, Any]] = {}
    for r in finished:
        label, desc = arm_of(r)
        arm = arms.setdefault(label, {"label": label, **desc, "runs": []})
        m = df[df["run_id"] == r["run_id"]].sort_values("step")
        m = m.dropna(subset=["finetune_loss", "forgetting_loss"])
        cols = [c for c in ("step", "finetune_loss", "forgetting_loss", "kl", "wall_s")
                if c in m.columns]  # fmt: skip
        traj = [{c: (None if _nan(v) else float(v)) for c, v in zip(cols, row, strict=True)}
                for row in m[cols].itertuples(index=False)]  # fmt: skip
        if len(traj) >= 2:
            arm["runs"].append({"run_id": r["run_id"], "seed": r.get("seed"), "trajectory": traj})
    arms = {k: a for k, a in arms.items() if a["runs"]}
    if len(arms) < 2:
        return None
    plains = [a for a in arms.values() if a["plain"] and a["method"] == "lora"]
    plains.sort(key=lambda a: (-len(a["runs"]), a["rank"] if a["rank"] is not None else 0))
    plain = plains[0] if plains else None
    rows = []
    if plain is not None:
        for arm in arms.values():
            if arm is not plain:
                rows.append(_compare(arm, plain, seed_spread))
    return {
        "arms": list(arms.values()),
        "plain": None if plain is None else plain["label"],
        "rows": rows,
        "seed_spread_lf": seed_spread,
        "sentence": _sentence(rows, plain),
    }


def _nan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _compare(arm: dict[str, Any], plain: dict[str, Any], spread: float | None) -> dict[str, Any]:
    both = arm["runs"] + plain["runs"]
    level = max(min(p["finetune_loss"] for p in r["trajectory"]) for r in both)
    at = {id(r): _at_level(r["trajectory"], level) for r in both}
    lf_arm = [at[id(r)]["forgetting_loss"] for r in arm["runs"] if at[id(r)]]
    lf_plain = [at[id(r)]["forgetting_loss"] for r in plain["runs"] if at[id(r)]]
    kl_arm = [at[id(r)]["kl"] for r in arm["runs"] if at[id(r)]]
    kl_plain = [at[id(r)]["kl"] for r in plain["runs"] if at[id(r)]]
    saved = None if not lf_arm or not lf_plain else _mean(lf_plain) - _mean(lf_arm)
    ci = _interval(lf_plain, lf_arm)
    step0 = _mean([r["trajectory"][0]["forgetting_loss"] for r in plain["runs"]
                   if r["trajectory"][0]["step"] == 0])  # fmt: skip
    rise = None if step0 is None or not lf_plain else _mean(lf_plain) - step0
    # matched steps: the last step every run of both arms measured
    common = set.intersection(*({p["step"] for p in r["trajectory"]} for r in both))
    last = max(common) if common else None

    def at_step(runs, key):
        return [next(p[key] for p in r["trajectory"] if p["step"] == last) for r in runs]

    cost = cost_ci = wall_ratio = None
    if last is not None:
        ft_arm, ft_plain = at_step(arm["runs"], "finetune_loss"), at_step(plain["runs"], "finetune_loss")  # fmt: skip
        cost, cost_ci = _mean(ft_arm) - _mean(ft_plain), _interval(ft_arm, ft_plain)
        w_arm, w_plain = _mean(at_step(arm["runs"], "wall_s")), _mean(at_step(plain["runs"], "wall_s"))  # fmt: skip
        if w_arm is not None and w_plain:
            wall_ratio = w_arm / w_plain
    if saved is None:
        verdict = "not comparable"
    elif ci is not None:
        verdict = "on the frontier" if ci[0] <= 0 <= ci[1] else ("below" if saved > 0 else "above")
    elif spread is not None:
        verdict = "on the frontier" if abs(saved) <= spread else ("below" if saved > 0 else "above")
    else:
        verdict = "below (one seed)" if saved > 0 else "above (one seed)"
    return {
        "arm": arm["label"], "method": arm["method"], "rank": arm["rank"],
        "replay_fraction": arm["replay_fraction"], "kl_weight": arm["kl_weight"],
        "seeds": len(arm["runs"]), "plain_seeds": len(plain["runs"]),
        "matched_finetune_loss": level, "forgetting_loss": _mean(lf_arm),
        "forgetting_loss_plain": _mean(lf_plain), "kl": _mean(kl_arm), "kl_plain": _mean(kl_plain),
        "forgetting_saved": saved, "forgetting_saved_interval": ci,
        "forgetting_saved_share": None if saved is None or not rise or rise <= 0 else saved / rise,
        "matched_step": last, "finetune_cost": cost, "finetune_cost_interval": cost_ci,
        "wall_ratio": wall_ratio, "verdict": verdict,
        "step_at_level": _mean([at[id(r)]["step"] for r in arm["runs"] if at[id(r)]]),
    }  # fmt: skip


def _sentence(rows: list[dict[str, Any]], plain: dict[str, Any] | None) -> str:
    if plain is None:
        return "No plain LoRA arm: the arms are drawn but not compared."
    methods = [r for r in rows if r["replay_fraction"] == 0 and r["kl_weight"] == 0]
    mitig = [r for r in rows if r not in methods]
    out = []
    if methods:
        on = [r["arm"] for r in methods if r["verdict"] == "on the frontier"]
        off = [f"{r['arm']} ({r['verdict']})" for r in methods if r["verdict"] != "on the frontier"]
        if off:
            out.append(f"The methods do not all lie on one frontier with {plain['label']}: "
                       + ", ".join(off) + " at matched L_ft"
                       + (f"; on it: {', '.join(on)}" if on else "") + ".")  # fmt: skip
        else:
            out.append(f"The methods ({', '.join(on)}) lie on one frontier with "
                       f"{plain['label']}: at matched L_ft their L_f differs from it by less than the "
                       "interval over seeds (or, with one seed, the typical seed spread).")  # fmt: skip
    below = [r["arm"] for r in mitig if r["verdict"].startswith("below")]
    if mitig:
        out.append(
            "Below plain LoRA's frontier (less forgetting at the same L_ft): "
             + ", ".join(below) + "." if below else
             "No mitigation lies below plain LoRA's frontier beyond its interval."
        )  # fmt: skip
    return " ".join(out)


# ------------------------------------------------------------------------------------------
# the report's section and figure


def _fmt(v: float | None, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}g}"


def _ci(ci: Any) -> str:
    return "no interval (one seed)" if ci is None else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def section(report: Any) -> str:
    """The HTML of the frontier section ('' when the study has fewer than two arms)."""
    f = getattr(report, "frontier", None)
    if not f:
        return ""
    out = [f"<p>{esc(f['sentence'])}</p>"]
    if f["rows"]:
        head = ("arm", "seeds", "matched L_ft", "step there", "L_f", f"L_f {f['plain']}",
                "forgetting saved (95% CI)", "share of the rise", "KL", "L_ft cost at step",
                "wall-time ratio", "verdict")  # fmt: skip
        cells = []
        for r in f["rows"]:
            share = r["forgetting_saved_share"]
            cost = f"{_fmt(r['finetune_cost'], 3)} {_ci(r['finetune_cost_interval'])}"
            cells.append(
                (r["arm"], f"{r['seeds']} vs {r['plain_seeds']}", _fmt(r["matched_finetune_loss"]),
                 _fmt(r["step_at_level"], 3), _fmt(r["forgetting_loss"]),
                 _fmt(r["forgetting_loss_plain"]),
                 f"{_fmt(r['forgetting_saved'], 3)} {_ci(r['forgetting_saved_interval'])}",
                 "–" if share is None else f"{100 * share:.0f}%", _fmt(r["kl"], 3),
                 f"{cost} (step {r['matched_step']})", _fmt(r["wall_ratio"], 3), r["verdict"])
            )  # fmt: skip
        out.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>")
        for row in cells:
            out.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
        out.append("</table>")
    out.append(
        "<p class='note'>Matched L_ft: the lowest fine-tuning loss every run of the arm and of "
        "the plain arm reaches; each run's L_f and KL there are interpolated along its own "
        "trajectory, never extrapolated. Forgetting saved: plain's mean L_f minus the arm's "
        "(positive: the arm forgets less), 95% Welch interval over seeds; share: of plain's "
        "rise of L_f from step 0. Cost: the arm's L_ft minus plain's at the last step both "
        "measured (positive: it learned less) and the ratio of their training wall times. "
        "Data: <code>report.json</code> → <code>frontier</code>.</p>"
    )
    return "".join(out)


def figure_data(f: dict[str, Any] | None) -> dict[str, Any] | None:
    """The frontier figure's ``{title, caption, data}`` (none without a frontier)."""
    if not f:
        return None
    arms = [{"label": a["label"], "plain": a["plain"],
             "runs": [{"seed": r["seed"], "trajectory": r["trajectory"]} for r in a["runs"]]}
            for a in f["arms"]]  # fmt: skip
    return {
        "title": "Learning–forgetting frontier: L_f and KL against L_ft, per arm",
        "caption": (
            "Each line is one run's trajectory in step order (step 0, the base, at the "
            "right: training moves left), one colour per arm (method, rank, replay "
            "fraction, KL weight); seeds of an arm share its colour. Lower and further "
            "left is better: less forgetting for the same fine-tuning loss. Crosses: each "
            "arm's matched level against plain LoRA (the frontier table)."
        ),
        "data": {"arms": arms, "rows": f["rows"]},
    }
