"""The paper's constants (Kalajdzievski, Table 1, shipped as the presets
``kalajdzievski:openorca`` and ``kalajdzievski:news``) beside this study's comparable
fits: the joint law, and the linear law L_f(L_ft) for the hard and the soft L_f.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forgetscale.study.config import SYMBOLS, AnalysisConfig
from forgetscale.study.runs import run_data

PRESETS = ("kalajdzievski:openorca", "kalajdzievski:news")


def paper_constants(
    runs: list[dict[str, Any]], laws: Mapping[str, list[dict[str, Any]]], config: AnalysisConfig
) -> dict[str, Any]:
    """``presets`` (the paper's constants and their source), ``ours`` (``{fit: {parameter:
    {value, ci, on_bound}}}``) and ``text``: what is comparable, and what is not."""
    from forgetscale.laws import get_preset

    presets = {}
    for name in PRESETS:
        _, params, source = get_preset(name)
        presets[name] = {"params": params, "source": source}
    ours: dict[str, dict[str, Any]] = {}
    for target, entries in laws.items():
        for e in entries:
            if e["status"] != "ok":
                continue
            if e["law"] == "kalajdzievski" and "kalajdzievski" not in ours:
                ours["kalajdzievski"] = _constants(e)
            if e["law"] == "linear" and target in ("forgetting_loss", "forgetting_loss_soft"):
                ours[f"linear ({SYMBOLS[target]})"] = _constants(e)
    data = run_data(runs)
    Ps = [r["params_trained"] for r in runs if r["params_trained"]]
    p_range = f"P = {min(Ps):.3g} to {max(Ps):.3g}" if Ps else "P unknown"
    text = (
        "The paper's constants (Table 1) come from Llama 2 7B chat fine-tuned with LoRA "
        "ranks 8 to 256 (P about 2e7 to 6.4e8) on OpenOrca or News for 260 steps, fitted on "
        "the steps after the first 50, with L_f measured on WikiText-103; its text does not "
        "say whether its L_f is the hard (top-token) or the soft cross-entropy. This study: "
        f"model {', '.join(data['model']) or 'unknown'}, "
        f"fine-tuned on {', '.join(data['task_data']) or 'unknown data'}, "
        f"forgetting measured on {', '.join(data['forgetting_data']) or 'an unknown corpus'}, "
        f"{p_range}, fitted from step {config.min_step}, with both hard and soft L_f. Levels "
        "and scales (s_ft, s_f_ft, c_ft, a_*, b_*) depend on the model, the tokenizer and both "
        "corpora, so they are not comparable; the exponents (alpha, beta, rho) and the slope "
        "of L_f in L_ft (c_f_ft) are comparable only in sign and order of magnitude. The "
        "paper fitted the joint law; the linear law here shares only c_f_ft and s_f_ft with it."
    )
    return {"presets": presets, "ours": ours, "text": text}


def _constants(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {
        p["name"]: {"value": p["value"], "ci": p["ci"], "on_bound": p["on_bound"]}
        for p in entry["params"]
    }
