"""``report.html`` and ``report.json`` from a :class:`~forgetscale.study.analysis.StudyReport`.

The HTML file is self-contained: the figures are PNG data URIs, the style is inline,
there is no script and nothing is fetched, so it opens from disk anywhere. Every number
it shows is in ``report.json`` (strict JSON), including the data behind each figure.
Both files are written atomically (:func:`forgetscale.outputs.atomic_write`).

The page, in the order of :data:`SECTIONS` (one list: the navigation, the headings and the
body come from it): the warnings and the summary come first
(:mod:`~forgetscale.study.sections`: also what was run, the noise floor and the
figures), then the results (:mod:`~forgetscale.study.findings`: the laws, the paper's
constants, the predictions, hard vs soft L_f, what was forgotten). The building
blocks (style, cells, tables) are in :mod:`~forgetscale.study.markup`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from forgetscale.errors import UserError
from forgetscale.figures import draw
from forgetscale.outputs import atomic_write, check_output_folder, dumps
from forgetscale.study import findings, frontier, replay_law, sections
from forgetscale.study.analysis import StudyReport
from forgetscale.study.markup import CSS, esc
from forgetscale.study.trust import trust_section


@dataclass(frozen=True)
class Section:
    """One part of the page: its anchor and title (linked from the top of the page and shown
    as its heading; none for the blocks before the summary) and what renders its body."""

    anchor: str | None
    title: str | None
    render: Callable[[StudyReport, Mapping[str, bytes]], str]
    #: Whether the study has this section (heading, link and body); always, unless given.
    shown: Callable[[StudyReport], bool] = lambda report: True


def _plain(render: Callable[[StudyReport], str]) -> Callable[[StudyReport, Mapping], str]:
    return lambda report, images: render(report)


#: The files a study writes beside its store, with their kinds (only earlier reports are replaced).
REPORT_FILES = {"report.html": "report-html", "report.json": "report-json"}

#: The page, in order: the one list the navigation and the body are made from. A new
#: section is its renderer (in sections.py or findings.py) and one line here.
SECTIONS: list[Section] = [
    Section(None, None, _plain(sections.warnings)),
    Section(None, None, _plain(sections.study_notes)),
    Section("summary", "Summary", _plain(sections.summary)),
    Section("run", "What was run", _plain(sections.what_was_run)),
    Section("noise", "Noise floor", _plain(sections.noise_floor)),
    Section("figures", "Figures", sections.figures),
    # only for studies with such arms (a mitigation, another method, replay fractions)
    Section(
        "frontier",
        "Learning–forgetting frontier",
        _plain(frontier.section),
        shown=lambda report: bool(getattr(report, "frontier", None)),
    ),
    Section(
        "replaylaw",
        "Forgetting against the replay fraction p",
        _plain(replay_law.section),
        shown=lambda report: bool(getattr(report, "replay_law", None)),
    ),
    Section("laws", "Laws", _plain(findings.laws)),
    Section("paper", "The paper's constants", _plain(findings.paper)),
    Section("predict", "What would rank r forget", _plain(findings.predictions)),
    Section("trust", "Can I trust these predictions?", _plain(trust_section)),
    Section("hardsoft", "Hard vs soft L_f", _plain(findings.hard_vs_soft)),
    Section("forgotten", "What was forgotten", _plain(findings.forgotten)),
]


def write_report(report: StudyReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` (self-contained) and ``report.json`` into ``out_dir``.

    Returns ``(html_path, json_path)``.
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report folder {out}: {exc.strerror}") from None
    check_output_folder(out, REPORT_FILES, what="the report folder")
    data = report.to_json()
    images = {name: draw(name, fig["data"]) for name, fig in data["figures"].items()}
    html_path, json_path = out / "report.html", out / "report.json"
    atomic_write(json_path, dumps(data, indent=1) + "\n", what="the report")
    atomic_write(html_path, render_html(report, images), what="the report")
    return html_path, json_path


def render_html(report: StudyReport, images: Mapping[str, bytes]) -> str:
    """The whole page as one string; ``images`` are the PNGs of the figures by name."""
    parts = [_header(report)]
    for section in SECTIONS:
        if not section.shown(report):
            continue
        if section.anchor is not None:
            parts.append(f'<h2 id="{section.anchor}">{esc(section.title)}</h2>')
        parts.append(section.render(report, images))
    parts.append(
        "<hr><p class='note'>Every number on this page is in <code>report.json</code> "
        "beside it. Made by forgetscale.</p>"
    )
    body = "".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<title>forgetscale study report</title>"
        f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n"
    )


def _header(r: StudyReport) -> str:
    when = _dt.datetime.fromtimestamp(r.created, _dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    nav = " ".join(
        f'<a href="#{s.anchor}">{esc(s.title)}</a>' for s in SECTIONS if s.anchor and s.shown(r)
    )
    return (
        "<h1>forgetscale study report</h1>"
        f'<p class="sub">Results store <code>{esc(r.store)}</code> · analysed {when} · '
        f"{len(r.runs)} run(s)</p><nav>{nav}</nav>"
    )
