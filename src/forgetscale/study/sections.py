"""The sections of ``report.html`` that a reader needs before the results: the
warnings, the study's own notes, the summary and checks, what was run, the noise floor,
and the figures (with the noise floor in one sentence under each).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING

from forgetscale.study.config import SYMBOLS, TARGET_ORDER
from forgetscale.study.fits import law_entry
from forgetscale.study.markup import (
    count_cell,
    esc,
    num_cell,
    num_text,
    ratio_text,
    sym,
    table,
)
from forgetscale.study.noise import typical_spread
from forgetscale.study.runs import run_data

if TYPE_CHECKING:  # pragma: no cover
    from forgetscale.study.analysis import StudyReport


def warnings(r: StudyReport) -> str:
    if not r.warnings:
        return '<div class="warnings"><h2>Warnings</h2><p>None.</p></div>'
    items = "".join(f"<li>{esc(w)}</li>" for w in r.warnings)
    return f'<div class="warnings"><h2>Warnings ({len(r.warnings)})</h2><ul>{items}</ul></div>'


def study_notes(r: StudyReport) -> str:
    """``study["notes"]``: what the caller says about this study (e.g. what a quick preset
    cannot show), shown right below the warnings."""
    notes = (r.study or {}).get("notes")
    if not notes:
        return ""
    if isinstance(notes, str):
        notes = [notes]
    items = "".join(f"<li>{esc(n)}</li>" for n in notes)
    return f'<div class="notes"><h2>About this study</h2><ul>{items}</ul></div>'


def summary(r: StudyReport) -> str:
    out: list[str] = []
    lines = []
    for t in TARGET_ORDER:
        b = r.best.get(t)
        if t not in r.laws:
            continue
        if b is None:
            lines.append(
                f"<li>{sym(t)}: <span class='bad'>no law in P and N identified</span> by these "
                "runs (see Laws).</li>"
            )
            continue
        e = law_entry(r.laws, t, b["law"])
        hr, hs = e.get("held_out_runs") or {}, e.get("held_out_steps") or {}
        lines.append(
            f"<li>{sym(t)}: best identified law <b>{esc(b['law'])}</b> ({esc(e['formula'])}), in-sample RMSE "
            f"{num_text(e.get('rmse'), 3)} (R² {num_text(e.get('r2'), 3)}); held-out runs RMSE "
            f"{num_text(hr.get('rmse'), 3)} ({ratio_text(hr.get('ratio'))} in-sample); held-out steps RMSE "
            f"{num_text(hs.get('rmse'), 3)} ({ratio_text(hs.get('ratio'))} in-sample).</li>"
        )
    lin = next((e for e in r.laws.get("forgetting_loss", []) if e["law"] == "linear"), None)
    if lin and lin["status"] == "ok":
        lines.append(
            f"<li>L_f against L_ft (linear law): R² {num_text(lin.get('r2'), 3)}, slope c_f_ft "
            f"{num_text(next(p['value'] for p in lin['params'] if p['name'] == 'c_f_ft'), 3)}.</li>"
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
        rows.append([esc(c["name"]), mark, esc(c["detail"])])
    out.append("<h3>Checks</h3>" + table(["criterion", "", "measured"], rows))
    return "".join(out)


def what_was_run(r: StudyReport) -> str:
    out: list[str] = []
    study = r.study or {}
    cmd = study.get("command")
    if cmd:
        if isinstance(cmd, (list, tuple)):
            cmd = " ".join(str(c) for c in cmd)
        out.append(f"<p>To reproduce:</p><pre>{esc(cmd)}</pre>")
    else:
        out.append("<p class='note'>The command that ran this study was not recorded.</p>")
    rows = []
    classes = []
    for run in r.runs:
        status = run["status"]
        cls = {"finished": "ok", "running": "na"}.get(status, "bad")
        rows.append(
            [
                esc(run["label"]),
                f"<code>{esc(run['run_id'][:12])}</code>",
                esc(run["method"]),
                num_cell(run["rank"]),
                count_cell(run["params_trained"]),
                num_cell(run["seed"]),
                esc(run["dtype"]),
                num_cell(run["learning_rate"], 3),
                num_cell(run["batch_size"]),
                num_cell(run["last_step"]),
                num_cell(len(run["steps"])),
                f"<span class='{cls}'>{esc(status)}</span>"
                + (
                    f" at step {run['diverged_step']}"
                    if run.get("diverged_step") is not None
                    else ""
                )
                + (f": {esc(run['message'])}" if run.get("message") else ""),
                num_cell(run["wall_s"], 3),
            ]
        )
        classes.append("" if status == "finished" else "failed")
    out.append(
        table(
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
    data = run_data(r.runs)
    out.append(
        "<p>"
        f"Base model: {esc(', '.join(data['model']) or 'unknown')}; fine-tuning data: "
        f"{esc(', '.join(data['task_data']) or 'unknown')}; forgetting corpus: "
        f"{esc(', '.join(data['forgetting_data']) or 'unknown')}.</p>"
    )
    # machine, versions, wall times: what the study passed in, else the runs' records
    kv = []
    words = {
        "runs_wall_s": "runs' wall time (s, every invocation)",
        "run_time_s": "where the runs' time went (s, summed over runs)",
    }
    for key, value in study.items():
        if key in ("command", "notes") or value is None:
            continue
        key = words.get(key, key)
        if isinstance(value, Mapping):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        elif isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value))
        kv.append([esc(key), esc(value)])
    if not any(k[0] == "versions" for k in kv):
        versions: dict[str, str] = {}
        for run in r.runs:
            versions.update(run.get("versions") or {})
        if versions:
            kv.append(
                [
                    "versions (from the runs)",
                    esc(", ".join(f"{k} {v}" for k, v in versions.items())),
                ]
            )
    cfg = dict(r.config)
    laws = cfg.pop("laws", {})
    kv.append(
        [
            "laws fitted",
            esc("; ".join(f"{SYMBOLS.get(t, t)}: {', '.join(v)}" for t, v in laws.items())),
        ]
    )
    kv.append(["analysis", esc(", ".join(f"{k} = {v}" for k, v in cfg.items()))])
    kv.append(["analysis time (s)", num_text(r.seconds.get("total"), 3)])
    out.append(table(None, kv))
    out.append(f"<p class='note'>{esc(between_machines(r))}</p>")
    return "".join(out)


def between_machines(r: StudyReport) -> str:
    """The sentence beside the machine: which of the report's figures move with the CPU."""
    machine = (r.study or {}).get("machine") or {}
    if not isinstance(machine, Mapping):  # a machine written as one line
        machine = {"cpu": str(machine)}
    cpu = machine.get("cpu") or "a CPU not recorded"
    gpus = ", ".join(machine.get("gpus") or [])
    where = f"These runs ran on {cpu}" + (f" with {gpus}" if gpus else "") + ". "
    dtypes = {str(run.get("dtype")) for run in r.runs if run.get("dtype")}
    if "bfloat16" in dtypes:
        why = (
            "In bfloat16 every measured figure (L_ft, L_f, KL, agreement) and every fitted "
            "parameter moves between machines in the third decimal: CPUs multiply bfloat16 "
            "with different kernels (native on AVX-512 BF16 or AMX, through float32 where "
            "neither exists), which round in a different order (an earlier default study's rank-8 "
            "L_f at step 150 was 2.1926 on an AMD EPYC and 2.1989 on an Intel Xeon). "
        )
    else:
        why = (
            "In float32 the measured figures move between machines only in the last digits "
            "(kernels sum in a different order). "
        )
    return (
        where + why + "Wall times move with the CPU and its load. Compare runs from one machine; "
        "the seed spread in the noise floor is the scale for a difference between them."
    )


def noise_floor(r: StudyReport) -> str:
    nf = r.noise_floor
    out = [f"<p class='note'>{esc(nf['text'])}</p>"]
    metrics = [m for m in ("forgetting_loss", "forgetting_loss_soft", "kl", "disagreement",
                           "finetune_loss") if any(m in s for s in nf["step0"])]  # fmt: skip
    if nf["step0"]:
        rows = [
            [esc(s["label"]), esc(s["dtype"]), num_cell(s.get("batch_size"))]
            + [num_cell(s.get(m), 4) for m in metrics]
            for s in nf["step0"]
        ]
        out.append(
            "<h3>Step 0: the base against its own reference</h3>"
            + table(["run", "dtype", "batch"] + [sym(m) for m in metrics], rows)
        )
    if nf["seed_spread"]:
        rows = []
        for s in nf["seed_spread"]:
            cells = [
                esc(s["label"]),
                esc(", ".join(map(str, s["seeds"]))),
                num_cell(len(s["steps"])),
            ]
            for m in metrics:
                v = s["summary"].get(m)
                cells.append(
                    "\x00"
                    + (f"{num_text(v['median'], 3)} / {num_text(v['max'], 3)}" if v else "n/a")
                )
            rows.append(cells)
        out.append(
            "<h3>Spread over seeds: max |difference| per step, median / max over steps &gt; 0</h3>"
            + table(["configuration", "seeds", "steps"] + [sym(m) for m in metrics], rows)
        )
    return "".join(out)


def noise_line(r: StudyReport) -> str:
    """The noise floor in one sentence, repeated under every figure."""
    nf = r.noise_floor
    spread = typical_spread(nf["seed_spread"])
    parts = [
        f"{SYMBOLS[m]} {num_text(spread[m], 2)}"
        for m in ("forgetting_loss", "forgetting_loss_soft", "finetune_loss")
        if m in spread
    ]
    s0 = nf["step0_summary"]
    floor = []
    if "kl" in s0:
        floor.append(f"KL {num_text(s0['kl']['max'], 2)}")
    if "disagreement" in s0:
        floor.append(f"1 - agreement {num_text(s0['disagreement']['max'], 2)}")
    out = []
    if parts:
        out.append("typical difference between seeds: " + ", ".join(parts))
    else:
        out.append("no configuration was run with two seeds: the seed-to-seed noise is unknown")
    if floor:
        out.append("the base against itself at step 0: " + ", ".join(floor))
    return "Noise floor: " + "; ".join(out) + "."


def figures(r: StudyReport, images: Mapping[str, bytes]) -> str:
    out: list[str] = []
    noise = esc(noise_line(r))
    if not images:
        out.append("<p>No figures: no run has finished.</p>")
    for name, fig in r.figures.items():
        png = images.get(name)
        if png is None:
            continue
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        out.append(
            f'<figure id="fig-{esc(name)}"><h3>{esc(fig["title"])}</h3>'
            f'<img src="{uri}" alt="{esc(fig["title"])}">'
            f"<figcaption>{esc(fig['caption'])} <b>{noise}</b> Data: <code>report.json</code> → "
            f"<code>figures.{esc(name)}.data</code>.</figcaption></figure>"
        )
    return "".join(out)
