""" "Can I trust these predictions?": what the held-out tests measured of the laws the
study predicts with.

For the best law per target (:func:`~forgetscale.study.fits.best_law`), each held-out
test (held-out runs, held-out steps) gives the share of its points inside the nominal
80% and 95% intervals for a new run, its error against the in-sample error, and the
extrapolation factor it covers in P and in N. :func:`trust_rows` is the data (also used
by ``forgetscale plan``'s wording), :func:`trust_section` the HTML.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from forgetscale.study.config import EXTRAPOLATION_RATIO, SYMBOLS, TARGET_ORDER
from forgetscale.study.fits import law_entry
from forgetscale.study.markup import esc, num_cell, num_text, ratio_text, sym, table

if TYPE_CHECKING:  # pragma: no cover
    from forgetscale.study.analysis import StudyReport

#: A share inside a nominal interval this many points or more below it is called short.
COVERAGE_SLACK = 0.10
TESTS = (("held_out_runs", "held-out runs"), ("held_out_steps", "held-out steps"))


def trust_rows(
    laws: Mapping[str, list[dict[str, Any]]], best: Mapping[str, dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """One row per (target with a best law, held-out test that ran): ``target``, ``law``,
    ``test``, ``coverage`` {"0.8", "0.95"}, ``ratio``, ``extrapolation`` {P, N}."""
    rows = []
    for t in TARGET_ORDER:
        if not best.get(t):
            continue
        entry = law_entry(laws, t, best[t]["law"])  # type: ignore[index]
        for key, name in TESTS:
            ev = entry.get(key) or {}
            if not ev or ev.get("error"):
                continue
            rows.append(
                {
                    "target": t,
                    "law": entry["law"],
                    "test": name,
                    "coverage": ev.get("coverage") or {},
                    "ratio": ev.get("ratio"),
                    "extrapolation": ev.get("extrapolation") or {},
                    "interval": ev.get("interval", ""),
                    "n_held_out": ev.get("n_held_out"),
                }
            )
    return rows


def verdict(rows: list[dict[str, Any]]) -> str:
    """One plain sentence on what the held-out tests say."""
    if not rows:
        return (
            "No held-out test ran on a law with every parameter identified, so nothing here "
            "says how far these predictions can be trusted."
        )
    short = [
        r
        for r in rows
        for level, share in r["coverage"].items()
        if share is not None and share < float(level) - COVERAGE_SLACK
    ]
    off = [r for r in rows if r["ratio"] is not None and r["ratio"] > EXTRAPOLATION_RATIO]
    reach_n = max((r["extrapolation"].get("step", 1.0) for r in rows), default=1.0)
    reach_p = max((r["extrapolation"].get("params_trained", 1.0) for r in rows), default=1.0)
    tested = f"up to {reach_n:.2g}x the fitted N and {reach_p:.2g}x the fitted P"
    if short or off:
        which = sorted({f"{SYMBOLS.get(r['target'], r['target'])} ({r['test']})"
                        for r in short + off})  # fmt: skip
        return (
            f"Not fully: the intervals hold fewer held-out points than they claim, or the law "
            f"misses them by more than {EXTRAPOLATION_RATIO:g}x its in-sample error, for "
            f"{', '.join(which)}; read those predictions as rough, and anything beyond "
            f"{tested} as untested."
        )
    return (
        f"Within what was tested ({tested}), yes: the intervals held about the share of "
        "held-out points they claim; beyond that range nothing has checked them."
    )


def trust_section(r: StudyReport) -> str:
    rows = trust_rows(r.laws, r.best)
    out = [f"<p><b>{esc(verdict(rows))}</b></p>"]
    if not rows:
        return "".join(out)
    kinds = sorted({row["interval"] for row in rows if row["interval"]})
    out.append(
        "<p class='note'>Each law was refitted without the held-out points and asked for "
        "intervals for a new run there; the table gives the share of held-out points that "
        "fell inside the nominal 80% and 95% intervals (a calibrated interval holds about "
        "80% and 95%), the held-out error against the in-sample error, and how far beyond "
        "the fitted range the test reaches (a factor of 1 is inside it). Intervals: "
        + esc("; ".join(kinds) or "none")
        + ".</p>"
    )
    head = ["target", "law", "test", "points", "inside 80%", "inside 95%", "error ratio",
            "reaches N", "reaches P"]  # fmt: skip
    cells = []
    for row in rows:
        cov, ext = row["coverage"], row["extrapolation"]
        cells.append(
            [
                sym(row["target"]),
                esc(row["law"]),
                esc(row["test"]),
                num_cell(row["n_held_out"]),
                num_cell(None if cov.get("0.8") is None else 100 * cov["0.8"], 3),
                num_cell(None if cov.get("0.95") is None else 100 * cov["0.95"], 3),
                ratio_text(row["ratio"]),
                esc(f"{num_text(ext.get('step'), 2)}x") if ext.get("step") else "-",
                esc(f"{num_text(ext.get('params_trained'), 2)}x")
                if ext.get("params_trained")
                else "-",
            ]
        )
    out.append(table(head, cells))
    return "".join(out)
