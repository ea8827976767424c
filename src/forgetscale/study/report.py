"""``report.html`` and ``report.json`` from a :class:`~forgetscale.study.analysis.StudyReport`.

The HTML file is self-contained: the figures are PNG data URIs, the style is inline,
there is no script and nothing is fetched, so it opens from disk anywhere. Every number
it shows is in ``report.json`` (strict JSON), including the data behind each figure.
Both files are written atomically (:func:`forgetscale.outputs.atomic_write`).

The page, in the order of :data:`SECTIONS`: the warnings and the summary come first
(:mod:`~forgetscale.study.sections`: also what was run, the noise floor and the
figures), then the results (:mod:`~forgetscale.study.findings`: the laws, the paper's
constants, the predictions, hard vs soft L_f, what was forgotten). The building
blocks (style, cells, tables) are in :mod:`~forgetscale.study.markup`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path

from forgetscale.errors import UserError
from forgetscale.outputs import atomic_write, dumps
from forgetscale.study import findings, frontier, replay_law, sections
from forgetscale.study.analysis import StudyReport
from forgetscale.study.figures import draw
from forgetscale.study.markup import CSS, esc

#: The page's sections, in order: ``(anchor, title)``, linked from the top of the page.
SECTIONS = [
    ("summary", "Summary"),
    ("run", "What was run"),
    ("noise", "Noise floor"),
    ("figures", "Figures"),
    ("frontier", "Learning–forgetting frontier"),
    ("replaylaw", "Forgetting against p"),
    ("laws", "Laws"),
    ("paper", "The paper's constants"),
    ("predict", "What would rank r forget"),
    ("hardsoft", "Hard vs soft L_f"),
    ("forgotten", "What was forgotten"),
]


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
    atomic_write(json_path, dumps(data, indent=1) + "\n", what="the report")
    atomic_write(html_path, render_html(report, images), what="the report")
    return html_path, json_path


def render_html(report: StudyReport, images: Mapping[str, bytes]) -> str:
    """The whole page as one string; ``images`` are the PNGs of the figures by name."""
    body = "".join(
        [
            _header(report),
            sections.warnings(report),
            sections.study_notes(report),
            sections.summary(report),
            sections.what_was_run(report),
            sections.noise_floor(report),
            sections.figures(report, images),
            frontier.section(report),
            replay_law.section(report),
            findings.laws(report),
            findings.paper(report),
            findings.predictions(report),
            findings.hard_vs_soft(report),
            findings.forgotten(report),
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


def _header(r: StudyReport) -> str:
    when = _dt.datetime.fromtimestamp(r.created, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    optional = {"frontier": r.frontier, "replaylaw": r.replay_law}
    shown = [(k, v) for k, v in SECTIONS if optional.get(k, True)]
    nav = " ".join(f'<a href="#{k}">{esc(v)}</a>' for k, v in shown)
    return (
        "<h1>forgetscale study report</h1>"
        f'<p class="sub">Results store <code>{esc(r.store)}</code> · analysed {when} · '
        f"{len(r.runs)} run(s)</p><nav>{nav}</nav>"
    )
