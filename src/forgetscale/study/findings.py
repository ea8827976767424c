"""The sections of ``report.html`` that show the results: the laws per target (ranking,
parameters with intervals and bound flags, held-out errors), the paper's constants, what
rank r would forget, hard against soft L_f, and what was forgotten (the most-forgotten
blocks and the downstream suites).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from forgetscale.study.config import TARGET_ORDER
from forgetscale.study.markup import (
    ci_cell,
    count_cell,
    esc,
    num_cell,
    num_text,
    ratio_text,
    sym,
    table,
)

if TYPE_CHECKING:  # pragma: no cover
    from forgetscale.study.analysis import StudyReport


def laws(r: StudyReport) -> str:
    out = [
        "<p class='note'>Each law is fitted to every finished run from min_step on (Huber loss "
        "on log residuals, L-BFGS-B from a grid of starts); intervals are 95% bootstrap "
        "percentile intervals over resampled whole runs. Held-out errors come from two more "
        "fits that never see the points they are scored on: <b>held-out runs</b> (the "
        "largest-P runs; does the law extrapolate to a bigger adapter?) and <b>held-out "
        "steps</b> (the last steps of every run; to a longer run?). A parameter on a bound "
        "means these runs cannot identify it: such a fit is a finding about the data, and "
        "its values are not results.</p>",
    ]
    for t in TARGET_ORDER:
        if t not in r.laws:
            continue
        out.append(f"<h3>{sym(t)} ({esc(t)})</h3>")
        rank_rows = []
        for x in r.ranking[t]:
            rank_rows.append(
                [
                    num_cell(x["position"]),
                    esc(x["law"]),
                    esc(x["ranked_by"]),
                    num_cell(x["rmse"], 3),
                    "<span class='ok'>yes</span>"
                    if x["identified"]
                    else "<span class='bad'>no</span>",
                    esc(
                        ("uses the observed L_ft; " if x["uses_observed_finetune_loss"] else "")
                        + (x["note"] or "")
                    ),
                ]  # fmt: skip
            )
        out.append(
            "<p>Ranking (as <code>forgetscale compare</code>: by held-out error):</p>"
            + table(["#", "law", "ranked by", "RMSE", "identified", "note"], rank_rows)
        )
        for e in r.laws[t]:
            out.append(_law_block(e))
    return "".join(out)


def _law_block(e: Mapping[str, Any]) -> str:
    head = f"<p><b>{esc(e['law'])}</b>: <code>{esc(e.get('formula'))}</code>"
    if e["status"] != "ok":
        return head + f" — <span class='bad'>not fitted</span>: {esc(e.get('error'))}</p>"
    flags = []
    if e.get("on_bound"):
        flags.append(
            f"<span class='flag'>on a bound: {esc(e['on_bound_words'])}. These runs cannot "
            "identify it; the values below are not results.</span>"
        )
    if not e.get("converged", True):
        flags.append(f"<span class='flag'>not converged: {esc(e.get('message'))}</span>")
    head += " " + " ".join(flags) + "</p>"
    rows, classes = [], []
    not_result = bool(e.get("on_bound")) or not e.get("converged", True)
    for p in e["params"]:
        rows.append(
            [
                esc(p["name"]),
                num_cell(p["value"], 5),
                ci_cell(p["ci"]),
                esc(f"[{num_text(p['lower'], 3)}, {num_text(p['upper'], 3)}]"),
                "<span class='flag'>on a bound</span>" if p["on_bound"] else "",
                esc(p["doc"]),
            ]
        )
        classes.append("bound" if p["on_bound"] else ("failed" if not_result else ""))
    params = table(
        ["parameter", "value", f"95% CI ({e.get('n_boot', 0)} resamples)", "allowed range", "",
         "meaning"], rows, classes,
    )  # fmt: skip
    q = [["in sample (all runs)", num_cell(e.get("rmse"), 3), num_cell(e.get("r2"), 4), num_cell(e.get("n_points")),
          "", ""]]  # fmt: skip
    for key, name in (("held_out_runs", "held-out runs"), ("held_out_steps", "held-out steps")):
        ev = e.get(key)
        if ev is None:
            continue
        if ev.get("error"):
            q.append([name, "n/a", "n/a", "", "", esc(ev["error"])])
            continue
        note = esc(ev["description"])
        if ev.get("on_bound"):
            note += f" <span class='flag'>(that fit: {esc(', '.join(ev['on_bound']))} on a bound)</span>"
        q.append(
            [name, num_cell(ev["rmse"], 3), num_cell(ev["r2"], 4), num_cell(ev["n_held_out"]),
             "\x00" + ratio_text(ev["ratio"]), note]
        )  # fmt: skip
    quality = table(["points", "RMSE", "R²", "n", "held-out / in-sample RMSE", "held out"], q)
    notes = "".join(f"<li>{esc(n)}</li>" for n in e.get("notes", []))
    return head + params + quality + (f"<ul class='note'>{notes}</ul>" if notes else "")


def paper(r: StudyReport) -> str:
    pa = r.paper
    out = [f"<p class='note'>{esc(pa['text'])}</p>"]
    presets = pa["presets"]
    names = list(next(iter(presets.values()))["params"])
    ours = pa["ours"]
    cols = list(ours)
    rows, classes = [], []
    for name in names:
        row = [esc(name)]
        bound = False
        for c in cols:
            v = ours[c].get(name)
            if v is None:
                row.append("\x00–")
                continue
            bound |= v["on_bound"]
            cell = num_text(v["value"], 4) + (
                f" [{num_text(v['ci'][0], 3)}, {num_text(v['ci'][1], 3)}]" if v.get("ci") else ""
            )
            row.append("\x00" + cell + (" (on a bound)" if v["on_bound"] else ""))
        row += [num_cell(presets[p]["params"][name]) for p in presets]
        rows.append(row)
        classes.append("bound" if bound else "")
    head = ["parameter"] + [
        f"this study: {esc(c)}"
        + (" <span class='flag'>(a parameter on a bound: not a result)</span>"
           if any(v["on_bound"] for v in ours[c].values()) else "")
        for c in cols
    ]  # fmt: skip
    head += [f"paper: {esc(p.split(':')[1])}" for p in presets]
    out.append(table(head, rows, classes))
    return "".join(out)


def predictions(r: StudyReport) -> str:
    pr = r.predictions
    out: list[str] = []
    if pr.get("note"):
        out.append(f"<p class='note'>{esc(pr['note'])}</p>")
    if not pr.get("rows"):
        return "".join(out)
    for c in pr.get("caveats", []):
        out.append(f"<p class='note'><span class='flag'>Caution:</span> {esc(c)}</p>")
    ppr = pr["params_per_rank"]
    out.append(
        "<p class='note'>Predicted at step N = "
        f"{pr['step']} (the longest run) from the best law per target (the lowest held-out "
        "error among fits with no parameter on a bound): "
        + ", ".join(f"{sym(t)}: {esc(law)}" for t, law in pr["laws"].items())
        + f". P for a rank comes from P = c·r fitted on the runs (c = {num_text(ppr['c'], 5)}, "
        f"largest deviation {num_text(100 * ppr['max_relative_deviation'], 2)}%). Intervals: 95% "
        f"bootstrap over whole runs. Ranks run: {esc(', '.join(map(str, pr['ranks_run'])))}; "
        "a rank outside them is an extrapolation.</p>"
    )
    head = ["rank", "P", "N", "outside the ranks run"]
    for t in pr["targets"]:
        head += [f"{sym(t)}", "95% interval"]
    rows = []
    for row in pr["rows"]:
        cells = [num_cell(row["rank"]), count_cell(row["params_trained"]), num_cell(row["step"]),
                 "yes" if row["extrapolation"] else "no"]  # fmt: skip
        for t in pr["targets"]:
            v = row[t]
            cells += [
                num_cell(v["value"], 4),
                ci_cell([v["lo"], v["hi"]] if v["lo"] is not None else None),
            ]
        rows.append(cells)
    out.append(table(head, rows))
    if pr.get("observed"):
        head = ["rank run", "P", "N", "runs"]
        for t in pr["targets"]:
            head += [f"{sym(t)} measured", "law"]
        rows = []
        for o in pr["observed"]:
            cells = [
                num_cell(o["rank"]),
                count_cell(o["params_trained"]),
                num_cell(o["step"]),
                num_cell(o["n_runs"]),
            ]
            for t in pr["targets"]:
                cells += [num_cell(o[t]["observed"]), num_cell(o[t]["law"])]
            rows.append(cells)
        out.append("<p>For comparison, the ranks run, at the same step:</p>" + table(head, rows))
    return "".join(out)


def hard_vs_soft(r: StudyReport) -> str:
    out = [
        "<p class='note'>The hard L_f (the paper's: cross-entropy on the base's top token) "
        "and the soft L_f (cross-entropy against the base's whole distribution) are fitted "
        "and shown side by side, since the paper's text does not settle which one its "
        "constants use. The two can disagree in sign early in a run: the hard metric falls "
        "when a model grows more confident on the base's top token, while KL and the soft "
        "L_f rise.</p>",
    ]
    cases = r.hard_vs_soft.get("cases", [])
    if not cases:
        out.append("<p>No run's hard L_f fell below its step-0 value while KL rose.</p>")
        return "".join(out)
    rows = []
    for c in cases:
        for x in c["rows"]:
            rows.append([esc(c["label"]), num_cell(x["step"]), num_cell(x["forgetting_loss"]),
                         num_cell(c["base_forgetting_loss"]), num_cell(x["forgetting_loss_soft"]), num_cell(x["kl"], 3),
                         num_cell(x["agreement"])])  # fmt: skip
    out.append(
        "<p>Where a run's hard L_f fell below its step-0 value while KL rose (not negative "
        "forgetting):</p>"
        + table(
            ["run", "step", "hard L_f", "hard L_f at step 0", "soft L_f", "KL", "agreement"], rows
        )  # fmt: skip
    )
    return "".join(out)


def forgotten(r: StudyReport) -> str:
    out: list[str] = []
    f = r.forgotten
    if f is None:
        out.append(
            "<p class='note'>Not measured: the most-forgotten blocks need the runs' adapters and "
            "the reference file.</p>"
        )
    else:
        out.append(
            f"<p class='note'>Run {esc(f['label'])} (the largest rank with a saved adapter), "
            f"measured again against <code>{esc(f['reference'])}</code>: hard L_f "
            f"{num_text(f['forgetting_loss'])} (base {num_text(f['base_forgetting_loss'])}), soft L_f "
            f"{num_text(f['forgetting_loss_soft'])}, KL {num_text(f['kl'], 3)}, agreement "
            f"{num_text(f['agreement'])}. The blocks of the forgetting corpus with the largest mean KL, "
            "most forgotten first:</p>"
        )
        for b in f["blocks"]:
            out.append(
                f"<h3>Block {esc(b['block'])}: KL {num_text(b['kl'], 3)}, hard L_f "
                f"{num_text(b['forgetting_loss'])}, agreement {num_text(b['agreement'], 3)}</h3>"
                f"<pre class='block'>{esc(b.get('text') or '(text not available)')}</pre>"
            )
    d = r.downstream
    out.append("<h3>Downstream suites</h3>")
    if not d or not d.get("rows"):
        out.append("<p class='note'>No downstream suites in the results store.</p>")
        return "".join(out)
    per_lf = d.get("per_lf") or []
    if per_lf:
        out.append(
            "<p>How much each suite's metric moves per unit of hard L_f, over every run and "
            "step (least-squares slope of the metric against L_f at the same run and step):</p>"
        )
        out.append(table(["suite", "metric", "points", "change per unit of L_f"], [
            [esc(x["suite"]), esc(x["metric"]), num_cell(x["points"]), num_cell(x["per_unit_lf"], 4)]
            for x in per_lf
        ]))  # fmt: skip
    rows = []
    for x in d["rows"]:
        ci = [x.get("ci_low"), x.get("ci_high")]
        rows.append([esc(x["label"]), esc(x["suite"]), esc(x["metric"]), num_cell(x["step"]),
                     num_cell(x.get("forgetting_loss"), 4), num_cell(x["value"], 4),
                     ci_cell(ci if ci[0] is not None else None, 3), num_cell(x.get("n"))])  # fmt: skip
    out.append(table(["run", "suite", "metric", "step", "L_f (hard)", "value", "95% interval", "n"], rows))  # fmt: skip
    return "".join(out)
