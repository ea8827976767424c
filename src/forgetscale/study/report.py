"""``report.html`` and ``report.json`` from a :class:`~forgetscale.study.analysis.StudyReport`.

The HTML file is self-contained: the figures are PNG data URIs, the style is inline,
there is no script and nothing is fetched, so it opens from disk anywhere. Every number
it shows is in ``report.json`` (strict JSON), including the data behind each figure.
Both files are written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from forgetscale.errors import UserError
from forgetscale.study.analysis import StudyReport
from forgetscale.study.config import EXTRAPOLATION_RATIO, SYMBOLS, TARGET_ORDER
from forgetscale.study.figures import draw

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       color: #1d2430; background: #f6f7f9; line-height: 1.45; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: #fff; }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 2px solid #dde2ea; padding-bottom: 4px; }
h3 { font-size: 1.08em; margin-top: 1.5em; }
p.sub { color: #5a6475; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #d6dbe3; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bound td { background: #fff6e0; }
tr.failed td { color: #8a93a3; }
.warnings { background: #fff4e5; border: 1px solid #f0b45a; border-radius: 6px;
            padding: 10px 16px; margin: 16px 0; }
.warnings h2, .notes h2 { border: none; margin-top: 0.3em; }
.notes { background: #eef4fb; border: 1px solid #9cbbe0; border-radius: 6px;
         padding: 10px 16px; margin: 16px 0; }
.warnings li { margin: 0.35em 0; }
.ok { color: #1b7f3b; font-weight: 600; }
.bad { color: #b3261e; font-weight: 600; }
.na { color: #8a93a3; }
.ok, .bad, .na { white-space: nowrap; }
.flag { color: #a35c00; font-weight: 600; }
figure { margin: 1.2em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e3e7ee; }
figcaption { font-size: 0.9em; color: #3c4656; max-width: 980px; margin-top: 4px; }
pre { background: #f3f5f8; padding: 8px 10px; overflow-x: auto; font-size: 0.85em;
      white-space: pre-wrap; word-break: break-word; }
pre.block { max-height: 16em; overflow-y: auto; }
.note { font-size: 0.92em; color: #3c4656; max-width: 980px; }
nav a { margin-right: 12px; }
"""

SECTIONS = [
    ("summary", "Summary"),
    ("run", "What was run"),
    ("noise", "Noise floor"),
    ("figures", "Figures"),
    ("laws", "Laws"),
    ("paper", "The paper's constants"),
    ("predict", "What would rank r forget"),
    ("hardsoft", "Hard vs soft L_f"),
    ("forgotten", "What was forgotten"),
]


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _g(x: Any, digits: int = 4) -> str:
    if x is None or isinstance(x, bool):
        return "n/a" if x is None else str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return _e(x)
    if v != v or v in (float("inf"), float("-inf")):
        return "n/a"
    return f"{v:.{digits}g}"


def _table(
    head: Sequence[str] | None, rows: Iterable[Sequence[Any]], classes: Sequence[str] = ()
) -> str:
    """Cells are HTML already (escape before); numbers right-aligned when marked with a
    leading ``\\x00``. No header row when ``head`` is None."""
    out = ["<table>"]
    if head is not None:
        out += ["<thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for i, row in enumerate(rows):
        cls = classes[i] if i < len(classes) and classes[i] else ""
        out.append(f'<tr class="{cls}">' if cls else "<tr>")
        for cell in row:
            s = str(cell)
            if s.startswith("\x00"):
                out.append(f'<td class="num">{s[1:]}</td>')
            else:
                out.append(f"<td>{s}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _n(x: Any, digits: int = 4) -> str:
    return "\x00" + _g(x, digits)


def _p(x: Any) -> str:
    """A parameter count: digits with separators below a million, 3 significant above."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "\x00n/a"
    return "\x00" + (f"{int(round(v)):,}" if v < 1e6 else f"{v:.3g}")


def _ratio(x: Any) -> str:
    """A held-out/in-sample ratio, in red above the acceptance ratio."""
    v = None if x is None else float(x)
    if v is None or v != v:
        return "n/a"
    s = f"{v:.2g}×"
    return f"<span class='bad'>{s}</span>" if v > EXTRAPOLATION_RATIO else s


def _ci(ci: Sequence[float] | None, digits: int = 4) -> str:
    if not ci:
        return "\x00–"
    return f"\x00[{_g(ci[0], digits)}, {_g(ci[1], digits)}]"


def _sym(t: str) -> str:
    return _e(SYMBOLS.get(t, t))


# ------------------------------------------------------------------------- sections


def _header(r: StudyReport) -> str:
    when = _dt.datetime.fromtimestamp(r.created, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(f'<a href="#{k}">{_e(v)}</a>' for k, v in SECTIONS)
    return (
        "<h1>forgetscale study report</h1>"
        f'<p class="sub">Results store <code>{_e(r.store)}</code> · analysed {when} · '
        f"{len(r.runs)} run(s)</p><nav>{nav}</nav>"
    )


def _warnings(r: StudyReport) -> str:
    if not r.warnings:
        return '<div class="warnings"><h2>Warnings</h2><p>None.</p></div>'
    items = "".join(f"<li>{_e(w)}</li>" for w in r.warnings)
    return f'<div class="warnings"><h2>Warnings ({len(r.warnings)})</h2><ul>{items}</ul></div>'


def _study_notes(r: StudyReport) -> str:
    """``study["notes"]``: what the caller says about this study (e.g. what a quick preset
    cannot show), shown right below the warnings."""
    notes = (r.study or {}).get("notes")
    if not notes:
        return ""
    if isinstance(notes, str):
        notes = [notes]
    items = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return f'<div class="notes"><h2>About this study</h2><ul>{items}</ul></div>'


def _summary(r: StudyReport) -> str:
    out = ['<h2 id="summary">Summary</h2>']
    lines = []
    for t in TARGET_ORDER:
        b = r.best.get(t)
        if t not in r.laws:
            continue
        if b is None:
            lines.append(
                f"<li>{_sym(t)}: <span class='bad'>no law in P and N identified</span> by these "
                "runs (see Laws).</li>"
            )
            continue
        e = next(x for x in r.laws[t] if x["law"] == b["law"])
        hr, hs = e.get("held_out_runs") or {}, e.get("held_out_steps") or {}
        lines.append(
            f"<li>{_sym(t)}: best identified law <b>{_e(b['law'])}</b> ({_e(e['formula'])}), in-sample RMSE "
            f"{_g(e.get('rmse'), 3)} (R² {_g(e.get('r2'), 3)}); held-out runs RMSE "
            f"{_g(hr.get('rmse'), 3)} ({_ratio(hr.get('ratio'))} in-sample); held-out steps RMSE "
            f"{_g(hs.get('rmse'), 3)} ({_ratio(hs.get('ratio'))} in-sample).</li>"
        )
    lin = next((e for e in r.laws.get("forgetting_loss", []) if e["law"] == "linear"), None)
    if lin and lin["status"] == "ok":
        lines.append(
            f"<li>L_f against L_ft (linear law): R² {_g(lin.get('r2'), 3)}, slope c_f_ft "
            f"{_g(next(p['value'] for p in lin['params'] if p['name'] == 'c_f_ft'), 3)}.</li>"
        )
    out.append(f"<ul>{''.join(lines)}</ul>")
    rows = []
    for c in r.checks:
        mark = (
            "<span class='na'>n/a</span>"
            if c["passed"] is None
            else (
                "<span class='ok'>met</span>" if c["passed"] else "<span class='bad'>not met</span>"
            )
        )
        rows.append([_e(c["name"]), mark, _e(c["detail"])])
    out.append("<h3>Checks</h3>" + _table(["criterion", "", "measured"], rows))
    return "".join(out)


def _what_was_run(r: StudyReport) -> str:
    out = ['<h2 id="run">What was run</h2>']
    study = r.study or {}
    cmd = study.get("command")
    if cmd:
        if isinstance(cmd, (list, tuple)):
            cmd = " ".join(str(c) for c in cmd)
        out.append(f"<p>To reproduce:</p><pre>{_e(cmd)}</pre>")
    else:
        out.append("<p class='note'>The command that ran this study was not recorded.</p>")
    rows = []
    classes = []
    for run in r.runs:
        status = run["status"]
        cls = {"finished": "ok", "running": "na"}.get(status, "bad")
        rows.append(
            [
                _e(run["label"]),
                f"<code>{_e(run['run_id'][:12])}</code>",
                _e(run["method"]),
                _n(run["rank"]),
                _p(run["params_trained"]),
                _n(run["seed"]),
                _e(run["dtype"]),
                _n(run["learning_rate"], 3),
                _n(run["batch_size"]),
                _n(run["last_step"]),
                _n(len(run["steps"])),
                f"<span class='{cls}'>{_e(status)}</span>"
                + (
                    f" at step {run['diverged_step']}"
                    if run.get("diverged_step") is not None
                    else ""
                )
                + (f": {_e(run['message'])}" if run.get("message") else ""),
                _n(run["wall_s"], 3),
            ]
        )
        classes.append("" if status == "finished" else "failed")
    out.append(
        _table(
            [
                "run",
                "id",
                "method",
                "rank",
                "P",
                "seed",
                "dtype",
                "lr",
                "batch",
                "last step",
                "measured steps",
                "status",
                "wall time (s)",
            ],
            rows,
            classes,
        )  # fmt: skip
    )
    models = sorted({str(x["model"]) for x in r.runs if x.get("model")})
    tasks = sorted({str(x["task_data"]) for x in r.runs if x.get("task_data")})
    corpora = sorted({str(x["forgetting_data"]) for x in r.runs if x.get("forgetting_data")})
    out.append(
        "<p>"
        f"Base model: {_e(', '.join(models) or 'unknown')}; fine-tuning data: "
        f"{_e(', '.join(tasks) or 'unknown')}; forgetting corpus: "
        f"{_e(', '.join(corpora) or 'unknown')}.</p>"
    )
    # machine, versions, wall times: what the study passed in, else the runs' records
    kv = []
    for key, value in study.items():
        if key in ("command", "notes"):
            continue
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        kv.append([_e(key), _e(value)])
    if not any(k[0] == "versions" for k in kv):
        versions: dict[str, str] = {}
        for run in r.runs:
            versions.update(run.get("versions") or {})
        if versions:
            kv.append(
                ["versions (from the runs)", _e(", ".join(f"{k} {v}" for k, v in versions.items()))]
            )
    cfg = dict(r.config)
    laws = cfg.pop("laws", {})
    kv.append(
        [
            "laws fitted",
            _e("; ".join(f"{SYMBOLS.get(t, t)}: {', '.join(v)}" for t, v in laws.items())),
        ]
    )
    kv.append(["analysis", _e(", ".join(f"{k} = {v}" for k, v in cfg.items()))])
    kv.append(["analysis time (s)", _g(r.seconds.get("total"), 3)])
    out.append(_table(None, kv))
    return "".join(out)


def _noise(r: StudyReport) -> str:
    nf = r.noise_floor
    out = ['<h2 id="noise">Noise floor</h2>', f"<p class='note'>{_e(nf['text'])}</p>"]
    metrics = [m for m in ("forgetting_loss", "forgetting_loss_soft", "kl", "disagreement",
                           "finetune_loss") if any(m in s for s in nf["step0"])]  # fmt: skip
    if nf["step0"]:
        rows = [
            [_e(s["label"]), _e(s["dtype"]), _n(s.get("batch_size"))]
            + [_n(s.get(m), 4) for m in metrics]
            for s in nf["step0"]
        ]
        out.append(
            "<h3>Step 0: the base against its own reference</h3>"
            + _table(["run", "dtype", "batch"] + [_sym(m) for m in metrics], rows)
        )
    if nf["seed_spread"]:
        rows = []
        for s in nf["seed_spread"]:
            cells = [_e(s["label"]), _e(", ".join(map(str, s["seeds"]))), _n(len(s["steps"]))]
            for m in metrics:
                v = s["summary"].get(m)
                cells.append("\x00" + (f"{_g(v['median'], 3)} / {_g(v['max'], 3)}" if v else "n/a"))
            rows.append(cells)
        out.append(
            "<h3>Spread over seeds: max |difference| per step, median / max over steps &gt; 0</h3>"
            + _table(["configuration", "seeds", "steps"] + [_sym(m) for m in metrics], rows)
        )
    return "".join(out)


def _noise_line(r: StudyReport) -> str:
    """The noise floor in one sentence, repeated under every figure."""
    nf = r.noise_floor
    parts = []
    for m in ("forgetting_loss", "forgetting_loss_soft", "finetune_loss"):
        vals = [s["summary"][m]["median"] for s in nf["seed_spread"] if m in s["summary"]]
        if vals:
            parts.append(f"{SYMBOLS[m]} {_g(max(vals), 2)}")
    s0 = nf["step0_summary"]
    floor = []
    if "kl" in s0:
        floor.append(f"KL {_g(s0['kl']['max'], 2)}")
    if "disagreement" in s0:
        floor.append(f"1 - agreement {_g(s0['disagreement']['max'], 2)}")
    out = []
    if parts:
        out.append("typical difference between seeds: " + ", ".join(parts))
    else:
        out.append("no configuration was run with two seeds: the seed-to-seed noise is unknown")
    if floor:
        out.append("the base against itself at step 0: " + ", ".join(floor))
    return "Noise floor: " + "; ".join(out) + "."


def _figures(r: StudyReport, images: Mapping[str, bytes]) -> str:
    out = ['<h2 id="figures">Figures</h2>']
    noise = _e(_noise_line(r))
    if not images:
        out.append("<p>No figures: no run has finished.</p>")
    for name, fig in r.figures.items():
        png = images.get(name)
        if png is None:
            continue
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure id="fig-{_e(name)}"><h3>{_e(fig["title"])}</h3>'
            f'<img src="{uri}" alt="{_e(fig["title"])}">'
            f"<figcaption>{_e(fig['caption'])} <b>{noise}</b> Data: <code>report.json</code> → "
            f"<code>figures.{_e(name)}.data</code>.</figcaption></figure>"
        )
    return "".join(out)


def _laws(r: StudyReport) -> str:
    out = [
        '<h2 id="laws">Laws</h2>',
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
        out.append(f"<h3>{_sym(t)} ({_e(t)})</h3>")
        rank_rows = []
        for x in r.ranking[t]:
            rank_rows.append(
                [
                    _n(x["position"]),
                    _e(x["law"]),
                    _e(x["ranked_by"]),
                    _n(x["rmse"], 3),
                    "<span class='ok'>yes</span>"
                    if x["identified"]
                    else "<span class='bad'>no</span>",
                    _e(
                        ("uses the observed L_ft; " if x["uses_observed_finetune_loss"] else "")
                        + (x["note"] or "")
                    ),
                ]  # fmt: skip
            )
        out.append(
            "<p>Ranking (as <code>forgetscale compare</code>: by held-out error):</p>"
            + _table(["#", "law", "ranked by", "RMSE", "identified", "note"], rank_rows)
        )
        for e in r.laws[t]:
            out.append(_law_block(e))
    return "".join(out)


def _law_block(e: Mapping[str, Any]) -> str:
    head = f"<p><b>{_e(e['law'])}</b>: <code>{_e(e.get('formula'))}</code>"
    if e["status"] != "ok":
        return head + f" — <span class='bad'>not fitted</span>: {_e(e.get('error'))}</p>"
    flags = []
    if e.get("on_bound"):
        flags.append(
            f"<span class='flag'>on a bound: {_e(e['on_bound_words'])}. These runs cannot "
            "identify it; the values below are not results.</span>"
        )
    if not e.get("converged", True):
        flags.append(f"<span class='flag'>not converged: {_e(e.get('message'))}</span>")
    head += " " + " ".join(flags) + "</p>"
    rows, classes = [], []
    not_result = bool(e.get("on_bound")) or not e.get("converged", True)
    for p in e["params"]:
        rows.append(
            [
                _e(p["name"]),
                _n(p["value"], 5),
                _ci(p["ci"]),
                _e(f"[{_g(p['lower'], 3)}, {_g(p['upper'], 3)}]"),
                "<span class='flag'>on a bound</span>" if p["on_bound"] else "",
                _e(p["doc"]),
            ]
        )
        classes.append("bound" if p["on_bound"] else ("failed" if not_result else ""))
    params = _table(
        ["parameter", "value", f"95% CI ({e.get('n_boot', 0)} resamples)", "allowed range", "",
         "meaning"], rows, classes,
    )  # fmt: skip
    q = [["in sample (all runs)", _n(e.get("rmse"), 3), _n(e.get("r2"), 4), _n(e.get("n_points")),
          "", ""]]  # fmt: skip
    for key, name in (("held_out_runs", "held-out runs"), ("held_out_steps", "held-out steps")):
        ev = e.get(key)
        if ev is None:
            continue
        if ev.get("error"):
            q.append([name, "n/a", "n/a", "", "", _e(ev["error"])])
            continue
        note = _e(ev["description"])
        if ev.get("on_bound"):
            note += (
                f" <span class='flag'>(that fit: {_e(', '.join(ev['on_bound']))} on a bound)</span>"
            )
        q.append(
            [name, _n(ev["rmse"], 3), _n(ev["r2"], 4), _n(ev["n_held_out"]),
             "\x00" + _ratio(ev["ratio"]), note]
        )  # fmt: skip
    quality = _table(["points", "RMSE", "R²", "n", "held-out / in-sample RMSE", "held out"], q)
    notes = "".join(f"<li>{_e(n)}</li>" for n in e.get("notes", []))
    return head + params + quality + (f"<ul class='note'>{notes}</ul>" if notes else "")


def _paper(r: StudyReport) -> str:
    pa = r.paper
    out = ['<h2 id="paper">The paper\'s constants</h2>', f"<p class='note'>{_e(pa['text'])}</p>"]
    presets = pa["presets"]
    names = list(next(iter(presets.values()))["params"])
    ours = pa["ours"]
    cols = list(ours)
    rows, classes = [], []
    for name in names:
        row = [_e(name)]
        bound = False
        for c in cols:
            v = ours[c].get(name)
            if v is None:
                row.append("\x00–")
                continue
            bound |= v["on_bound"]
            cell = _g(v["value"], 4) + (
                f" [{_g(v['ci'][0], 3)}, {_g(v['ci'][1], 3)}]" if v.get("ci") else ""
            )
            row.append("\x00" + cell + (" (on a bound)" if v["on_bound"] else ""))
        row += [_n(presets[p]["params"][name]) for p in presets]
        rows.append(row)
        classes.append("bound" if bound else "")
    head = ["parameter"] + [
        f"this study: {_e(c)}"
        + (" <span class='flag'>(a parameter on a bound: not a result)</span>"
           if any(v["on_bound"] for v in ours[c].values()) else "")
        for c in cols
    ]  # fmt: skip
    head += [f"paper: {_e(p.split(':')[1])}" for p in presets]
    out.append(_table(head, rows, classes))
    return "".join(out)


def _predictions(r: StudyReport) -> str:
    pr = r.predictions
    out = ['<h2 id="predict">What would rank r forget</h2>']
    if pr.get("note"):
        out.append(f"<p class='note'>{_e(pr['note'])}</p>")
    if not pr.get("rows"):
        return "".join(out)
    for c in pr.get("caveats", []):
        out.append(f"<p class='note'><span class='flag'>Caution:</span> {_e(c)}</p>")
    ppr = pr["params_per_rank"]
    out.append(
        "<p class='note'>Predicted at step N = "
        f"{pr['step']} (the longest run) from the best law per target (the lowest held-out "
        "error among fits with no parameter on a bound): "
        + ", ".join(f"{_sym(t)}: {_e(law)}" for t, law in pr["laws"].items())
        + f". P for a rank comes from P = c·r fitted on the runs (c = {_g(ppr['c'], 5)}, "
        f"largest deviation {_g(100 * ppr['max_relative_deviation'], 2)}%). Intervals: 95% "
        f"bootstrap over whole runs. Ranks run: {_e(', '.join(map(str, pr['ranks_run'])))}; "
        "a rank outside them is an extrapolation.</p>"
    )
    head = ["rank", "P", "N", "outside the ranks run"]
    for t in pr["targets"]:
        head += [f"{_sym(t)}", "95% interval"]
    rows = []
    for row in pr["rows"]:
        cells = [_n(row["rank"]), _p(row["params_trained"]), _n(row["step"]),
                 "yes" if row["extrapolation"] else "no"]  # fmt: skip
        for t in pr["targets"]:
            v = row[t]
            cells += [_n(v["value"], 4), _ci([v["lo"], v["hi"]] if v["lo"] is not None else None)]
        rows.append(cells)
    out.append(_table(head, rows))
    if pr.get("observed"):
        head = ["rank run", "P", "N", "runs"]
        for t in pr["targets"]:
            head += [f"{_sym(t)} measured", "law"]
        rows = []
        for o in pr["observed"]:
            cells = [_n(o["rank"]), _p(o["params_trained"]), _n(o["step"]), _n(o["n_runs"])]
            for t in pr["targets"]:
                cells += [_n(o[t]["observed"]), _n(o[t]["law"])]
            rows.append(cells)
        out.append("<p>For comparison, the ranks run, at the same step:</p>" + _table(head, rows))
    return "".join(out)


def _hard_soft(r: StudyReport) -> str:
    out = [
        '<h2 id="hardsoft">Hard vs soft L_f</h2>',
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
            rows.append([_e(c["label"]), _n(x["step"]), _n(x["forgetting_loss"]),
                         _n(c["base_forgetting_loss"]), _n(x["forgetting_loss_soft"]), _n(x["kl"], 3),
                         _n(x["agreement"])])  # fmt: skip
    out.append(
        "<p>Where a run's hard L_f fell below its step-0 value while KL rose (not negative "
        "forgetting):</p>"
        + _table(
            ["run", "step", "hard L_f", "hard L_f at step 0", "soft L_f", "KL", "agreement"], rows
        )  # fmt: skip
    )
    return "".join(out)


def _forgotten(r: StudyReport) -> str:
    out = ['<h2 id="forgotten">What was forgotten</h2>']
    f = r.forgotten
    if f is None:
        out.append(
            "<p class='note'>Not measured: the most-forgotten blocks need the runs' adapters and "
            "the reference file.</p>"
        )
    else:
        out.append(
            f"<p class='note'>Run {_e(f['label'])} (the largest rank with a saved adapter), "
            f"measured again against <code>{_e(f['reference'])}</code>: hard L_f "
            f"{_g(f['forgetting_loss'])} (base {_g(f['base_forgetting_loss'])}), soft L_f "
            f"{_g(f['forgetting_loss_soft'])}, KL {_g(f['kl'], 3)}, agreement "
            f"{_g(f['agreement'])}. The blocks of the forgetting corpus with the largest mean KL, "
            "most forgotten first:</p>"
        )
        for b in f["blocks"]:
            out.append(
                f"<h3>Block {_e(b['block'])}: KL {_g(b['kl'], 3)}, hard L_f "
                f"{_g(b['forgetting_loss'])}, agreement {_g(b['agreement'], 3)}</h3>"
                f"<pre class='block'>{_e(b.get('text') or '(text not available)')}</pre>"
            )
    d = r.downstream
    out.append("<h3>Downstream suites</h3>")
    if not d or not d.get("rows"):
        out.append("<p class='note'>No downstream suites in the results store.</p>")
        return "".join(out)
    rows = []
    for x in d["rows"]:
        ci = [x.get("ci_low"), x.get("ci_high")]
        rows.append([_e(x["label"]), _e(x["suite"]), _e(x["metric"]), _n(x["step"]),
                     _n(x["value"], 4), _ci(ci if ci[0] is not None else None, 3), _n(x.get("n"))])  # fmt: skip
    out.append(_table(["run", "suite", "metric", "step", "value", "95% interval", "n"], rows))
    return "".join(out)


def render_html(report: StudyReport, images: Mapping[str, bytes]) -> str:
    """The whole page as one string."""
    body = "".join(
        [
            _header(report),
            _warnings(report),
            _study_notes(report),
            _summary(report),
            _what_was_run(report),
            _noise(report),
            _figures(report, images),
            _laws(report),
            _paper(report),
            _predictions(report),
            _hard_soft(report),
            _forgotten(report),
            "<hr><p class='note'>Every number on this page is in <code>report.json</code> "
            "beside it. Made by forgetscale.</p>",
        ]
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>forgetscale study report</title>"
        f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_report(report: StudyReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.json`` into ``out_dir``.

    Returns ``(html_path, json_path)``.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out}: {exc}") from exc
    data = report.to_json()
    images = {name: draw(name, fig["data"]) for name, fig in data["figures"].items()}
    html_path, json_path = out / "report.html", out / "report.json"
    try:
        _write_atomic(json_path, json.dumps(data, allow_nan=False, indent=1) + "\n")
        _write_atomic(html_path, render_html(report, images))
    except OSError as exc:
        raise UserError(f"cannot write the report into {out}: {exc}") from exc
    return html_path, json_path
