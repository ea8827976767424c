"""What a study's runs say: the laws fitted and tested on runs they never saw, the noise
floor, hard against soft forgetting, and predictions for ranks not run.

:func:`analyse` reads a results store and returns a :class:`StudyReport`, every number
of the report as plain data (its :meth:`StudyReport.to_json` is strict JSON: NaN and
infinities become ``null``). The figures are data here too; :mod:`forgetscale.study.report`
draws them and writes ``report.html`` beside ``report.json``.

Each part of the report is computed in one module, in the order :func:`analyse` calls
them: ``runs`` (the runs, their labels and measurements, downstream rows), ``fits``
(the laws per target, held-out runs and steps, ranking, the best law), ``predictions``
(what would rank r forget), ``noise`` (noise floor, seed spread, hard against soft L_f),
``forgotten`` (the most-forgotten blocks of the largest rank), ``figure_data`` (the data
behind each figure), ``checks`` (the acceptance criteria) and ``paper`` (the paper's
constants beside this study's); ``config`` holds the ``analysis:`` block.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from forgetscale.outputs import dumps, json_safe
from forgetscale.study import frontier as _frontier
from forgetscale.study.checks import checks
from forgetscale.study.config import AnalysisConfig
from forgetscale.study.figure_data import figure_data
from forgetscale.study.fits import best_law, fit_laws, fit_warnings, rank_laws, shown_laws
from forgetscale.study.forgotten import most_forgotten
from forgetscale.study.noise import hard_vs_soft, noise_floor, typical_spread
from forgetscale.study.paper import paper_constants
from forgetscale.study.predictions import predictions
from forgetscale.study.replay_law import replay_law
from forgetscale.study.runs import read_runs, status_warnings

__all__ = ["REPORT_FORMAT", "AnalysisConfig", "StudyReport", "analyse"]

REPORT_FORMAT = "forgetscale-study-report/1"


@dataclass
class StudyReport:
    """Everything the report shows, as plain data.

    Attributes (the keys of ``report.json``, besides ``format``):
        created: Unix time of the analysis.
        store: The results store analysed.
        study: What was run, as the caller passed it (command, machine, versions, wall times).
        config: The :class:`AnalysisConfig` used.
        runs: One entry per run: id, label, method, rank, P, seed, dtype, learning rate,
            batch size, steps measured, status, wall time, model, data, versions, config.
        warnings: Plain sentences, shown first.
        checks: The study's acceptance criteria: ``name``, ``passed``, ``detail``.
        laws: ``{target: [law entry]}``: parameters with intervals and bound flags, in-sample
            R^2/RMSE, ``held_out_runs`` and ``held_out_steps`` evaluations, notes.
        ranking: ``{target: [...]}``, best first, by held-out error (the compare ranking).
        best: ``{target: {law, chosen_by, rmse}}`` among fits with no parameter on a bound
            (``None`` where none).
        shown_laws: ``{target: {law, identified}}``: the law drawn in the figures.
        predictions: ``rows`` for ranks not run (value and interval per target),
            ``observed`` for the ranks run, ``params_per_rank``, ``step``, ``note``.
        paper: The paper's Table 1 presets, this study's comparable constants, the sentence.
        noise_floor: ``step0`` values per run, ``seed_spread`` per configuration, ``text``.
        hard_vs_soft: ``cases`` where the hard L_f fell below step 0 while KL rose.
        forgotten: The most-forgotten blocks of the largest-rank run, or ``None``.
        downstream: ``rows`` of the store's ``downstream`` table, or ``None``.
        figures: ``{name: {title, caption, data}}``: the data each figure is drawn from.
        seconds: Wall time of the fits, of the figure data and in total.
        frontier: The learning–forgetting frontier (:mod:`~forgetscale.study.frontier`):
            ``arms`` with their runs' trajectories, ``rows`` comparing each arm with plain
            LoRA at matched L_ft, ``sentence``; ``None`` with fewer than two arms.
        replay_law: L_f against P, N and the replay fraction p
            (:mod:`~forgetscale.study.replay_law`), held-out strengths; ``None`` without
            replay arms.
    """

    created: float
    store: str
    study: dict[str, Any]
    config: dict[str, Any]
    runs: list[dict[str, Any]]
    warnings: list[str]
    checks: list[dict[str, Any]]
    laws: dict[str, list[dict[str, Any]]]
    ranking: dict[str, list[dict[str, Any]]]
    best: dict[str, dict[str, Any] | None]
    shown_laws: dict[str, dict[str, Any]]
    predictions: dict[str, Any]
    paper: dict[str, Any]
    noise_floor: dict[str, Any]
    hard_vs_soft: dict[str, Any]
    forgotten: dict[str, Any] | None
    downstream: dict[str, Any] | None
    figures: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)
    frontier: dict[str, Any] | None = None
    replay_law: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """Strict JSON data: ``format`` plus every field (NaN and infinities as ``null``)."""
        d, _ = json_safe({"format": REPORT_FORMAT, **asdict(self)})
        return d


def analyse(
    store: str | Path,
    config: AnalysisConfig | Mapping[str, Any] | None,
    *,
    run_ids: list[str] | None = None,
    adapters: dict[str, str] | None = None,
    reference: str | None = None,
    study: dict | None = None,
) -> StudyReport:
    """Analyse the runs of a results store: laws, held-out errors, noise floor, predictions.

    Args:
        store: The SQLite results store.
        config: The ``analysis:`` block (an :class:`AnalysisConfig`, or its mapping).
        run_ids: The runs of this study (default: every run in the store).
        adapters: ``{run_id: adapter folder}``; with ``reference``, the largest-rank run
            among them is measured again to show its most-forgotten blocks of text.
        reference: The reference file (``forgetscale reference``) of the forgetting corpus.
        study: What was run (command, machine, versions, wall times), passed through.
    """
    t_start = time.perf_counter()
    if config is None or isinstance(config, Mapping):
        config = AnalysisConfig.from_dict(config)
    if not isinstance(config, AnalysisConfig):
        raise TypeError("config must be an AnalysisConfig (or the analysis: mapping)")
    runs, meas, downstream = read_runs(store, run_ids)
    warnings = status_warnings(runs)
    fitted_ids = {r["run_id"] for r in runs if r["status"] == "finished"}
    labels = {r["run_id"]: r["label"] for r in runs}
    df = meas[meas["run_id"].isin(fitted_ids)].copy()

    t_fit = time.perf_counter()
    laws, fits = fit_laws(df, config, labels)
    seconds = {"fits": time.perf_counter() - t_fit}
    ranking = {t: rank_laws(e) for t, e in laws.items()}
    best = {t: best_law(e) for t, e in laws.items()}
    shown = shown_laws(ranking, best)
    warnings += fit_warnings(laws, best, df, config, any_finished=bool(fitted_ids))

    predicted = predictions(df, runs, laws, best, fits, config, fitted_ids)
    warnings += predicted["caveats"]
    noise = noise_floor(df, runs, fitted_ids)
    hard_soft, hard_soft_warnings = hard_vs_soft(df, runs, fitted_ids)
    warnings += hard_soft_warnings
    forgotten = None
    if adapters and reference:
        try:
            forgotten = most_forgotten(runs, adapters, reference)
        except Exception as exc:  # a report without the blocks beats no report
            warnings.append(f"The most-forgotten blocks could not be measured: {exc}")

    t_fig = time.perf_counter()
    front = _frontier.frontier(
        df, runs, typical_spread(noise["seed_spread"]).get("forgetting_loss")
    )
    figures = figure_data(df, runs, laws, shown, fits, noise, config, front)
    seconds["figure_data"] = time.perf_counter() - t_fig
    replay = replay_law(df, runs, config)
    seconds["total"] = time.perf_counter() - t_start
    return StudyReport(
        created=time.time(),
        store=str(store),
        # what the caller passed, as plain JSON (paths and other objects as text)
        study=json.loads(dumps(dict(study or {}))),
        config=config.to_dict(),
        runs=runs,
        warnings=warnings,
        checks=checks(
            laws,
            noise,
            config.min_step,
            replay=replay,
            distinct_params=len(
                {
                    r["params_trained"]
                    for r in runs
                    if r["status"] == "finished" and r["params_trained"]
                }
            ),
        ),  # fmt: skip
        laws=laws,
        ranking=ranking,
        best=best,
        shown_laws=shown,
        predictions=predicted,
        paper=paper_constants(runs, laws, config),
        noise_floor=noise,
        hard_vs_soft=hard_soft,
        forgotten=forgotten,
        downstream=downstream,
        figures=figures,
        seconds=seconds,
        frontier=front,
        replay_law=replay,
    )
