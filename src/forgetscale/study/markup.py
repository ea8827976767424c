"""The building blocks of ``report.html``: its style sheet, escaped text, numbers as
cells, and tables. Every cell is HTML already; a cell that starts with ``\\x00`` is a
number, right-aligned (:func:`num_cell`, :func:`count_cell`, :func:`ci_cell` make them).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

from forgetscale.study.config import EXTRAPOLATION_RATIO, SYMBOLS

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


def esc(x: Any) -> str:
    """``x`` as escaped HTML text (``None`` as nothing)."""
    return html.escape("" if x is None else str(x))


def num_text(x: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits; ``n/a`` for None, NaN and infinities."""
    if x is None or isinstance(x, bool):
        return "n/a" if x is None else str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return esc(x)
    if v != v or v in (float("inf"), float("-inf")):
        return "n/a"
    return f"{v:.{digits}g}"


def table(
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


def num_cell(x: Any, digits: int = 4) -> str:
    """A number as a right-aligned cell."""
    return "\x00" + num_text(x, digits)


def count_cell(x: Any) -> str:
    """A parameter count: digits with separators below a million, 3 significant above."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "\x00n/a"
    return "\x00" + (f"{int(round(v)):,}" if v < 1e6 else f"{v:.3g}")


def ratio_text(x: Any) -> str:
    """A held-out/in-sample ratio, in red above the acceptance ratio."""
    v = None if x is None else float(x)
    if v is None or v != v:
        return "n/a"
    s = f"{v:.2g}×"
    return f"<span class='bad'>{s}</span>" if v > EXTRAPOLATION_RATIO else s


def ci_cell(ci: Sequence[float] | None, digits: int = 4) -> str:
    """An interval ``[lo, hi]`` as a right-aligned cell (a dash when there is none)."""
    if not ci:
        return "\x00–"
    return f"\x00[{num_text(ci[0], digits)}, {num_text(ci[1], digits)}]"


def sym(t: str) -> str:
    """The symbol of a target (``L_f (hard)`` for ``forgetting_loss``), escaped."""
    return esc(SYMBOLS.get(t, t))
