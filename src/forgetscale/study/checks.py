"""The study's acceptance criteria, each ``{name, passed, detail}``:

- the linear law L_f(L_ft) reaches R^2 >= :data:`~forgetscale.study.config.LINEAR_R2`;
- a law for L_f in P and N has no parameter on a bound and misses held-out runs and
  held-out steps by at most :data:`~forgetscale.study.config.EXTRAPOLATION_RATIO` times
  its in-sample error;
- the noise floor is measured and small enough: the base's step-0 values, L_f over >= 2
  seeds, and neighbouring P whose L_f (means over k seeds) differs by at least
  :data:`~forgetscale.study.config.TOLD_APART_RATIO` times the seed spread / sqrt(k);
- with replay arms (the mitigation study), the law of L_f in the replay fraction p is
  identified and misses every held-out strength by at most that ratio too.

``passed`` is ``None`` where the criterion could not be measured.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from forgetscale.study.config import EXTRAPOLATION_RATIO, LINEAR_R2, TOLD_APART_RATIO
from forgetscale.study.fits import held_out_ratios, uses_p_and_n
from forgetscale.study.noise import gap_words, ratio_words
from forgetscale.study.numbers import fmt, num


def checks(
    laws: Mapping[str, list[dict[str, Any]]],
    noise: Mapping[str, Any],
    min_step: int = 1,
    *,
    distinct_params: int | None = None,
    replay: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The criteria, measured on the fitted ``laws`` (from ``min_step`` on), the ``noise``
    floor and, where the study has one, the ``replay`` law. ``distinct_params``: how many
    distinct P the finished runs train (fewer than 3: a law in P and N is not measurable)."""
    out = []
    lin = next((e for e in laws.get("forgetting_loss", []) if e["law"] == "linear"), None)
    if lin is not None:
        r2 = num(lin.get("r2"))
        detail = f"R^2 = {fmt(r2, 4)}"
        every = num(lin.get("r2_every_step"))
        if every is not None:
            detail += f" from step {min_step} (over every step from 1: {fmt(every, 4)})"
        out.append(
            {
                "name": f"linear law L_f(L_ft) with R^2 >= {LINEAR_R2}",
                "passed": None if r2 is None else r2 >= LINEAR_R2,
                "detail": detail if lin["status"] == "ok" else f"not fitted: {lin['error']}",
            }
        )
    good, details = [], []
    for e in laws.get("forgetting_loss", []):
        if e["status"] != "ok" or not uses_p_and_n(e["law"]):
            continue
        ratios = held_out_ratios(e)
        ok = e["identified"] and all(
            v is not None and v <= EXTRAPOLATION_RATIO for v in ratios.values()
        )
        if ok:
            good.append(e["law"])
        details.append(
            f"{e['law']}: "
            + ("no parameter on a bound" if e["identified"] else f"on a bound ({e['on_bound_words']})"
               if e.get("on_bound") else "not converged")
            + f", held-out/in-sample RMSE {fmt(ratios['held_out_runs'], 2)} (runs), "
            f"{fmt(ratios['held_out_steps'], 2)} (steps)"
        )  # fmt: skip
    few_p = distinct_params is not None and distinct_params < 3 and not details
    out.append(
        {
            "name": "a law for L_f in P and N with no parameter on a bound and held-out RMSE "
            f"<= {EXTRAPOLATION_RATIO:g}x in-sample (held-out runs and held-out steps)",
            "passed": None if few_p else bool(good),
            "detail": (
                f"not measurable: the runs train {distinct_params} distinct P, a law in P "
                "and N needs at least 3"
                if few_p
                else "; ".join(details) or "no law in P and N was fitted to L_f"
            ),
        }
    )
    out.append(_noise_check(noise, distinct_params))
    if replay is not None and replay.get("params"):
        out.append(_replay_check(replay))
    return out


def _noise_check(noise: Mapping[str, Any], distinct_params: int | None) -> dict[str, Any]:
    """The base's step 0 measured, L_f over >= 2 seeds, and neighbouring P told apart: their
    L_f (means over k seeds) at the last common step differs by >= TOLD_APART_RATIO x the
    noise of such a difference, the seed spread / sqrt(k)."""
    seeds = [s for s in noise["seed_spread"] if "forgetting_loss" in s["summary"]]
    parts = [f"step 0 measured for {len(noise['step0'])} run(s)"]
    if not seeds:
        parts.append("no configuration run with two or more seeds")
        told_apart: bool | None = False
    else:
        of = f" of {distinct_params}" if distinct_params else ""
        parts.append(f"{len(seeds)}{of} configuration(s) run with several seeds")
        gap = noise.get("neighbour_gap")
        if gap is None:
            parts.append("no two P to tell apart")
            told_apart = None
        else:  # judged by noise_floor (study/noise.py: judge_gap)
            told_apart = gap["told_apart"]
            means, over_k = gap_words(gap)
            parts.append(
                f"at step {gap['step']} neighbouring P differ in L_f by {fmt(gap['min'])} at least"
                f"{means}, {ratio_words(gap)}x the seed spread {fmt(gap['spread'])}{over_k}"
                + (
                    " (told apart)"
                    if told_apart
                    else f" (not told apart: under {TOLD_APART_RATIO:g}x)"
                )
            )
    passed = told_apart if noise["step0"] and seeds else False
    return {
        "name": "noise floor: the base's step-0 values, L_f over >= 2 seeds, and neighbouring P "
        f"told apart (L_f differs by >= {TOLD_APART_RATIO:g}x the seed spread / sqrt(seeds))",
        "passed": passed,
        "detail": "; ".join(parts),
    }


def _replay_check(replay: Mapping[str, Any]) -> dict[str, Any]:
    held = replay.get("held_out") or []
    ratios = [num(h.get("ratio")) for h in held]
    ok = (
        bool(replay.get("identified"))
        and bool(held)
        and all(r is not None and r <= EXTRAPOLATION_RATIO for r in ratios)
    )
    state = ("no parameter on a bound" if replay.get("identified")
             else f"on a bound ({', '.join(replay.get('on_bound') or []) or 'not converged'})")  # fmt: skip
    per_p = ", ".join(
        f"p = {100 * h['replay_fraction']:g}%: {fmt(num(h.get('ratio')), 2)}x" for h in held
    )
    return {
        "name": f"a law of L_f in the replay fraction p, identified, missing each held-out p by "
        f"<= {EXTRAPOLATION_RATIO:g}x in-sample",
        "passed": ok,
        "detail": f"{replay['law']}: {state}, R^2 {fmt(num(replay.get('r2')), 3)}; held-out "
        f"strength (fitted without it) RMSE/in-sample: {per_p or 'none'}",
    }
