"""A law of L_f with the replay fraction p as a variable, fitted to a study's replay arms and
tested on a held-out strength of p.

The runs used: finished, without the KL penalty, of the method of the plain arm (LoRA):
the plain runs (p = 0) and the replay runs. With two or more values of P among them the law
is ``replay_multiplicative`` (P, N, p), else ``replay_power`` (N, p) (one P cannot identify
an exponent in P). Both are in :mod:`forgetscale.laws.library`, after Bethune et al. (2025).

The law is fitted to every such run from ``min_step`` on (bootstrap intervals over runs) and
then once per value of p > 0 without the runs of that p, predicting them (*held-out
strength*: does the law say what a replay fraction it never saw does?). A fit is
*identified* when it converged with no parameter on a bound; otherwise the report says the
runs cannot identify it, with the numbers.
"""

from __future__ import annotations

from typing import Any

from forgetscale.errors import UserError
from forgetscale.study.markup import esc

WIDE = 10.0
"""B is not identified when its bootstrap interval spans more than this factor."""

PAPER = (
    "Bethune et al. (ICML 2025): L_pt = L_pt0 + A D^beta / ((1 + B p) M)^alpha for a model of "
    "size M fine-tuned on D tokens with a fraction p of pretraining data injected; about 1% "
    "injected prevents forgetting of the pretraining set. Their constants are per model "
    "family and domain (not comparable in units with these runs); the comparable reading is "
    "the factor 1/(1 + B p) by which replay divides forgetting."
)


def _eligible(runs: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for r in runs:
        cfg = r.get("config") or {}
        if r["status"] != "finished" or r.get("method") != "lora":
            continue
        if float(cfg.get("kl_weight") or 0) > 0:
            continue
        out[r["run_id"]] = float(cfg.get("replay_fraction") or 0.0)
    return out


def replay_law(df: Any, runs: list[dict[str, Any]], config: Any) -> dict[str, Any] | None:
    """The fit, its held-out strengths and the words (None without two values of p)."""
    from forgetscale.laws import fit_law

    p_of = _eligible(runs)
    fractions = sorted(set(p_of.values()))
    if len(fractions) < 2 or not any(p > 0 for p in fractions):
        return None
    sub = df[df["run_id"].isin(list(p_of))].dropna(subset=["forgetting_loss"]).copy()
    sub["replay_fraction"] = sub["run_id"].map(p_of)
    law = "replay_multiplicative" if sub["params_trained"].nunique() >= 2 else "replay_power"
    out: dict[str, Any] = {"law": law, "fractions": fractions, "paper": PAPER,
                           "runs": len(p_of), "held_out": []}  # fmt: skip
    try:
        fit = fit_law(sub, law, "forgetting_loss", min_step=config.min_step,
                      n_boot=config.bootstrap, seed=config.seed)  # fmt: skip
    except UserError as exc:
        out.update(identified=False, error=str(exc), sentence=f"Not fitted: {exc}")
        return out
    out.update(
        params={k: float(v) for k, v in fit.params.items()},
        ci={k: [float(a), float(b)] for k, (a, b) in fit.ci.items()},
        on_bound=list(fit.on_bound), converged=bool(fit.converged),
        r2=float(fit.r2["forgetting_loss"]), rmse=float(fit.rmse["forgetting_loss"]),
        notes=list(fit.notes),
    )  # fmt: skip
    lo, hi = out["ci"].get("B", (None, None))
    out["b_spread"] = None if not lo or not hi else hi / lo
    wide = out["b_spread"] is not None and out["b_spread"] > WIDE
    out["identified"] = bool(fit.converged and not fit.on_bound and not wide)
    if len(fractions) >= 3:
        for p in [f for f in fractions if f > 0]:
            held = sorted(r for r, v in p_of.items() if v == p)
            try:
                h = fit_law(sub, law, "forgetting_loss", min_step=config.min_step,
                            holdout=held, seed=config.seed)  # fmt: skip
            except UserError as exc:
                out["held_out"].append({"replay_fraction": p, "error": str(exc)})
                continue
            rmse_held = (h.holdout or {}).get("rmse", {}).get("forgetting_loss")
            rmse_in = float(h.rmse["forgetting_loss"])
            out["held_out"].append({
                "replay_fraction": p, "runs": held, "rmse_held_out": rmse_held,
                "rmse_in_sample": rmse_in,
                "ratio": None if rmse_held is None or rmse_in == 0 else rmse_held / rmse_in,
                "identified": bool(h.converged and not h.on_bound), "on_bound": list(h.on_bound),
                "B": float(h.params["B"]),
            })  # fmt: skip
    out["sentence"] = _sentence(out)
    return out


def _sentence(f: dict[str, Any]) -> str:
    B = f["params"]["B"]
    factors = ", ".join(
        f"p = {100 * p:g}%: x{1 / (1 + B * p):.2f}" for p in f["fractions"] if p > 0
    )
    if not f["identified"]:
        where = ", ".join(f["on_bound"]) or (
            "no convergence" if not f["converged"] else
            "B's bootstrap interval [{:.3g}, {:.3g}] spans more than {:g}x".format(*f["ci"]["B"], WIDE)
        )  # fmt: skip
        text = (f"{f['law']} is not identified on these runs ({where}; R^2 {f['r2']:.3f}, "
                f"RMSE {f['rmse']:.4f}): its constants are not a result.")  # fmt: skip
    else:
        text = (f"{f['law']} fits with R^2 {f['r2']:.3f} (RMSE {f['rmse']:.4f}); B = {B:.3g}: "
                f"replay divides the forgetting term by 1 + B p ({factors}).")  # fmt: skip
    held = [h for h in f["held_out"] if "ratio" in h]
    if held:
        parts = [f"p = {100 * h['replay_fraction']:g}%: {h['ratio']:.2f}x in-sample RMSE"
                 + ("" if h["identified"] else " (fit not identified)")
                 for h in held if h["ratio"] is not None]  # fmt: skip
        text += (
            " Held-out strength (fitted without that p, predicting it): " + "; ".join(parts) + "."
        )
    elif len(f["fractions"]) < 3:
        text += " No held-out strength: it needs three or more values of p."
    return text


def section(report: Any) -> str:
    """The HTML of the replay-law section ('' without replay arms)."""
    f = getattr(report, "replay_law", None)
    if not f:
        return ""
    out = [f"<p>{esc(f.get('sentence', ''))}</p>", f"<p class='note'>{esc(f['paper'])}</p>"]
    if "params" in f:
        rows = "".join(
            f"<tr><td>{esc(k)}</td><td>{v:.4g}</td><td>"
            + (esc("[{:.3g}, {:.3g}]".format(*f["ci"][k])) if k in f["ci"] else "–")
            + f"</td><td>{'on a bound' if k in f['on_bound'] else ''}</td></tr>"
            for k, v in f["params"].items()
        )
        out.append("<table><tr><th>constant</th><th>fitted</th><th>95% bootstrap interval"
                   f"</th><th></th></tr>{rows}</table>")  # fmt: skip
    return "".join(out)
