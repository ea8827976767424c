"""``forgetscale study``: a sweep, its laws tested on runs they never saw, and one report.

A study file is a sweep file (see :mod:`forgetscale.sweep.spec`) plus an ``analysis:``
block (:class:`~forgetscale.study.analysis.AnalysisConfig`). :func:`run_study` runs the
sweep's runs that are not finished (on any executor; a rerun resumes), then analyses every
run of the study and writes ``report.html`` and ``report.json`` beside the store.

Built-in studies on the embedded default ship in ``forgetscale/study/studies/``:
``default`` (the study whose design identifies the laws), ``quick`` (a first look in a
few minutes, whose report says what it cannot show) and ``mitigation`` (plain LoRA against
replay, the KL-to-base penalty and full fine-tuning, on the learning–forgetting frontier). ``forgetscale study`` with no file
runs ``default``.
"""

from __future__ import annotations

import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from forgetscale.errors import UserError

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
BUILT_IN = ("default", "quick", "mitigation")
EXTRA_KEYS = ("analysis", "notes")
"""What a study file adds to a sweep file: the ``analysis:`` block and ``notes:`` (sentences
the report shows under its warnings, e.g. what a quick design cannot show)."""


@dataclass
class StudyOutcome:
    """What :func:`run_study` did."""

    exit_code: int
    """0, or 1 when a run failed (the report is written all the same)."""
    html: Path
    json: Path
    store: Path
    wall_s: float


def study_file(name_or_path: str | None) -> Path:
    """The study file: a path, or the name of a built-in study (``default``, ``quick``,
    ``mitigation``)."""
    if name_or_path is None:
        name_or_path = "default"
    if name_or_path in BUILT_IN:
        return STUDIES_DIR / f"{name_or_path}.yaml"
    path = Path(name_or_path)
    if path.is_dir():
        raise UserError(f"{name_or_path} is a folder; give the study file's path (or --out "
                        "FOLDER for where a study writes)")  # fmt: skip
    if not path.is_file():
        raise UserError(
            f"study file not found: {name_or_path} (or a built-in study: {', '.join(BUILT_IN)})"
        )
    return path


def summary(report: dict[str, Any], measurements: Any) -> str:
    """One screen for the terminal: the runs' end points, the study's checks, the warnings.
    ``report`` is the report's JSON (:meth:`StudyReport.to_json`), ``measurements`` the
    store's table (:func:`forgetscale.store.read_measurements`)."""

    def f(x: Any, spec: str = ".4f") -> str:
        return "-" if x is None else format(x, spec)

    step0 = {row["run_id"]: row for row in report["noise_floor"].get("step0", [])}
    w = max([8, *(len(str(run["label"])) for run in report["runs"])])
    lines = [
        f"{'run':<{w}} {'seed':>4} {'P':>11} {'steps':>5}  {'L_ft@0':>7} {'L_ft':>7}  "
        f"{'L_f@0':>7} {'L_f':>7}  {'KL':>7}  status"
    ]
    for run in report["runs"]:
        rows = measurements[measurements.run_id == run["run_id"]].sort_values("step")
        last = rows.iloc[-1].to_dict() if len(rows) else {}
        base = step0.get(run["run_id"], {})
        lines.append(
            f"{run['label']:<{w}} {f(run['seed'], 'd'):>4} {f(run['params_trained'], ','):>11} "
            f"{f(run['last_step'], 'd'):>5}  {f(base.get('finetune_loss')):>7} "
            f"{f(last.get('finetune_loss')):>7}  {f(base.get('forgetting_loss')):>7} "
            f"{f(last.get('forgetting_loss')):>7}  {f(last.get('kl')):>7}  {run['status']}"
        )
    lines.append("")
    lines.append("checks:")
    for check in report["checks"]:
        mark = {True: "met    ", False: "NOT MET", None: "n/a    "}[check["passed"]]
        lines.append(f"  [{mark}] {check['name']}: {check['detail']}")
    if report["warnings"]:
        lines.append(f"warnings: {len(report['warnings'])} (listed at the top of the report)")
    return "\n".join(lines)


def analysis_of(sweep: Any) -> Any:
    """The checked ``analysis:`` block of a study's sweep (loaded with ``extra_keys``)."""
    from forgetscale.study.analysis import AnalysisConfig

    raw = sweep.extra.get("analysis")
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"{sweep.path}: analysis: a mapping of analysis keys")
    try:
        config = AnalysisConfig.from_dict(raw or {})
    except UserError as exc:
        raise UserError(f"{sweep.path}: {exc}") from None
    runs = len(sweep.runs)
    if config.holdout_runs >= runs:
        raise UserError(
            f"{sweep.path}: analysis.holdout_runs: holding out the runs of the "
            f"{config.holdout_runs} largest P leaves none of the study's {runs} runs to fit on"
        )
    last = max(run.config.max_steps for run in sweep.runs)
    if config.min_step > last:
        raise UserError(
            f"{sweep.path}: analysis.min_step: {config.min_step} is past every run's last "
            f"step ({last}): no step would be fitted"
        )
    return config


def notes_of(sweep: Any) -> list[str]:
    """The study file's ``notes:`` (a sentence or a list of them)."""
    notes = sweep.extra.get("notes") or []
    notes = [notes] if isinstance(notes, str) else notes
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise UserError(f"{sweep.path}: notes: a sentence or a list of sentences")
    return notes


def _machine() -> dict[str, Any]:
    import os

    import torch

    from forgetscale.environment import cpu_name

    cpu = cpu_name()
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpus": gpus,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_study(
    sweep: Any,
    analysis: Any,
    *,
    executor: str | None = None,
    flags: dict[str, Any] | None = None,
    analyse_only: bool = False,
    progress: bool = True,
    command: list[str] | None = None,
    err: TextIO | None = None,
) -> StudyOutcome:
    """Run (or resume) the study's runs and write its report; see the module docstring.

    ``sweep`` is the study file read as a sweep (``extra_keys=EXTRA_KEYS``), ``analysis`` its
    checked ``analysis:`` block (:func:`analysis_of`).
    """
    from forgetscale.environment import library_versions
    from forgetscale.outputs import check_output_folder
    from forgetscale.study.analysis import analyse
    from forgetscale.study.report import REPORT_FILES, write_report
    from forgetscale.sweep.driver import run_sweep
    from forgetscale.sweep.folders import read_json

    err = err or sys.stderr
    t0 = time.perf_counter()
    code = 0
    # before any run: the report may replace only an earlier report
    check_output_folder(sweep.folder, REPORT_FILES, what="the study folder")
    if analyse_only:
        if not sweep.store.is_file():
            raise UserError(f"--analyse-only: no results store at {sweep.store} (run the study)")
    else:
        code = run_sweep(sweep, executor=executor, flags=flags, err=err, progress=progress)
    # the runs' wall time over every invocation: what earlier reports in this folder recorded
    # plus this one's (none with --analyse-only, next to none when all runs were finished)
    earlier = ((read_json(sweep.folder / "report.json") or {}).get("study") or {}).get(
        "runs_wall_s"
    )
    t_runs: float | None = None if analyse_only else time.perf_counter() - t0
    if isinstance(earlier, (int, float)):
        t_runs = earlier + (t_runs or 0.0)
    run_ids = [run.run_id for run in sweep.runs]
    adapters = {run.run_id: str(adapter) for run in sweep.runs if (adapter := run.folder.adapter())}
    references = sorted(sweep.reference_dir.glob("ref-*.safetensors"))
    run_time: dict[str, float] = {}  # where the runs' time went, summed (from each run folder)
    for run in sweep.runs:
        for part, seconds in run.folder.timings().items():
            run_time[part] = round(run_time.get(part, 0.0) + seconds, 1)
    print(f"study: analysing {len(run_ids)} runs in {sweep.store}", file=err, flush=True)
    t_analysis = time.perf_counter()
    report = analyse(
        sweep.store,
        analysis,
        run_ids=run_ids,
        adapters=adapters,
        reference=str(references[0]) if len(references) == 1 else None,
        study={
            "name": sweep.name,
            "file": str(sweep.path.resolve()),
            # the command that reproduces the study: with --analyse-only it would only re-read
            # the store, without it the runs are run (or found finished) and then analysed
            "command": shlex.join([c for c in command if c != "--analyse-only"])
            if command
            else None,
            "machine": _machine(),
            "versions": library_versions(),
            "runs_wall_s": None if t_runs is None else round(t_runs, 1),
            "run_time_s": run_time or None,
            "store": str(sweep.store),
            "notes": notes_of(sweep),
        },
    )
    html, json_path = write_report(report, sweep.folder)
    from forgetscale.store import read_measurements

    print(summary(report.to_json(), read_measurements(sweep.store)))
    print(
        f"study: analysis and report took {time.perf_counter() - t_analysis:.1f} s",
        file=err,
        flush=True,
    )
    return StudyOutcome(code, html, json_path, sweep.store, time.perf_counter() - t0)
