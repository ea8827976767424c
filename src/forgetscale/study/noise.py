"""How much of a difference is noise: the base's values at step 0, the spread over seeds,
and hard against soft forgetting.

- *Step 0* is the base model measured against its own reference: KL and 1 - agreement
  there are the numeric floor of those metrics (the dtype's rounding), and the hard L_f
  is the base's own cross-entropy on its top token (not 0).
- *The seed spread*: runs whose configs differ only in the seed (and in keys that do not
  change what is measured) are one configuration; per step, the largest difference
  between its seeds, summarised by the median and max over steps > 0.
- *Hard against soft*: where a run's hard L_f fell below its step-0 value while KL rose,
  the model grew more confident on the base's top token; that is not negative
  forgetting, and it is said in words.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from forgetscale.study.config import METRICS, TOLD_APART_RATIO
from forgetscale.study.numbers import fmt, num

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

#: Config keys that do not change what a run measures (left out when grouping seeds).
NOT_RESULT_KEYS = {
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


def noise_floor(
    df: pd.DataFrame, runs: list[dict[str, Any]], fitted_ids: set[str]
) -> dict[str, Any]:
    """``step0`` (one row per fitted run), ``step0_summary`` (min and max per metric),
    ``seed_spread`` (one entry per configuration run with several seeds),
    ``neighbour_gap`` (L_f between neighbouring P at the last common step) and ``text``."""
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
        row.update({k: num(m[k].iloc[0]) for k in metrics})
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
        key = repr(sorted((k, repr(v)) for k, v in r["config"].items() if k not in NOT_RESULT_KEYS))
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
        grouped = fl[fl["step"] == last].groupby("params_trained")["forgetting_loss"]
        at, seeds = grouped.mean(), grouped.count()
        if len(at) >= 2:
            d = np.abs(np.diff(at.sort_index().to_numpy()))
            gaps = {
                "step": last,
                "min": float(d.min()),
                "median": float(np.median(d)),
                "seeds": int(seeds.min()),  # the fewest runs averaged into one P's L_f
            }

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
            f"KL is at most {fmt(kl0)} and 1 - agreement at most {fmt(dis0)}: the numeric floor "
            "of those two metrics. The base's own hard L_f is "
            f"{fmt(summary.get('forgetting_loss', {}).get('min'), 4)}"
            + (
                f" to {fmt(summary['forgetting_loss']['max'], 4)}"
                if "forgetting_loss" in summary
                and summary["forgetting_loss"]["max"] != summary["forgetting_loss"]["min"]
                else ""
            )
            + " (not 0: it is the base's own cross-entropy on its top token)."
        )
    if spread_fl:
        med = typical_spread(spreads)["forgetting_loss"]
        worst = max(s["max"] for s in spread_fl)
        text.append(
            f"Over seeds, L_f differs by {fmt(med)} at a typical step (at most {fmt(worst)}): "
            "differences smaller than that are noise."
        )
        if gaps is not None:
            gaps = judge_gap(gaps, med)
            means, over_k = gap_words(gaps)
            text.append(
                f"At step {gaps['step']} neighbouring P values differ in L_f by {fmt(gaps['min'])} "
                f"at least{means}: {ratio_words(gaps)}x the noise of such a difference (the seed "
                f"spread{over_k})"
                + (
                    "."
                    if gaps["told_apart"]
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


def judge_gap(gap: dict[str, Any], spread: float) -> dict[str, Any]:
    """``gap`` (``neighbour_gap``: the smallest L_f difference between neighbouring P, each a
    mean over ``gap["seeds"]`` = k seeds) with what it is judged against: ``spread`` (the
    difference between two seeds at a typical step), ``ratio`` (the gap over the noise of
    such a difference, spread / sqrt(k); None where the seeds do not differ at all) and
    ``told_apart`` (ratio >= TOLD_APART_RATIO)."""
    noise = spread / math.sqrt(gap["seeds"])
    ratio = gap["min"] / noise if noise > 0 else None
    told_apart = ratio is None or ratio >= TOLD_APART_RATIO
    return {**gap, "spread": spread, "ratio": ratio, "told_apart": told_apart}


def gap_words(gap: dict[str, Any]) -> tuple[str, str]:
    """How a judged gap is worded: " (means over k seeds)" after the gap and " / sqrt(k)"
    after the spread (both empty for one seed)."""
    k = gap["seeds"]
    return (f" (means over {k} seeds)", f" / sqrt({k})") if k > 1 else ("", "")


def ratio_words(gap: dict[str, Any]) -> str:
    """A judged gap's ratio to the noise, for a sentence."""
    return "\u221e" if gap["ratio"] is None else fmt(gap["ratio"], 2)


def typical_spread(seed_spread: list[dict[str, Any]]) -> dict[str, float]:
    """Per metric, the difference between seeds at a typical step: the largest median over
    the configurations run with several seeds (``noise_floor(...)["seed_spread"]``)."""
    out: dict[str, float] = {}
    for s in seed_spread:
        for k, v in s["summary"].items():
            out[k] = max(out.get(k, v["median"]), v["median"])
    return out


# -------------------------------------------------------------------- hard vs soft


def hard_vs_soft(
    df: pd.DataFrame, runs: list[dict[str, Any]], fitted_ids: set[str]
) -> tuple[dict[str, Any], list[str]]:
    """``({"cases": [...]}, warnings)``: per fitted run, the steps where the hard L_f fell
    below its step-0 value while KL rose, and a sentence saying what that means."""
    warnings: list[str] = []
    cases = []
    for r in runs:
        if r["run_id"] not in fitted_ids:
            continue
        m = df[df["run_id"] == r["run_id"]].sort_values("step")
        base = m[m["step"] == 0]
        if not len(base) or "kl" not in m:
            continue
        h0, k0 = num(base["forgetting_loss"].iloc[0]), num(base["kl"].iloc[0])
        if h0 is None or k0 is None:
            continue
        later = m[(m["step"] > 0) & (m["forgetting_loss"] < h0) & (m["kl"] > k0)]
        if not len(later):
            continue
        rows = [
            {
                "step": int(x.step),
                "forgetting_loss": num(x.forgetting_loss),
                "forgetting_loss_soft": num(getattr(x, "forgetting_loss_soft", None)),
                "kl": num(x.kl),
                "agreement": num(getattr(x, "agreement", None)),
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
