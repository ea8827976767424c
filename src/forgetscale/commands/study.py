"""``forgetscale study``: runs, laws tested on runs they never saw, one report."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "study"
HELP = "run a study (a sweep plus its analysis) and write report.html"
DESCRIPTION = """\
Run a forgetting study and write one report: the runs of a sweep (resumed when
interrupted), the laws of forgetting fitted to them and tested on runs and steps
they never saw, the noise floor, and what a rank not run would forget.

  forgetscale study                       # the built-in default study (embedded model)
  forgetscale study quick                 # a first look in a few minutes
  forgetscale study mitigation            # replay, KL penalty, full FT vs plain LoRA
  forgetscale study my-study.yaml --executor slurm
  forgetscale study --analyse-only        # only re-analyse the runs that exist

A study file is a sweep file (see `forgetscale sweep --help`) plus an analysis:
block (laws per target, min_step, holdout_runs, holdout_steps, bootstrap,
predict_ranks). The report goes beside the study's results store:
report.html (self-contained, opens from disk) and report.json (every number).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forgetscale.commands._common import add_run_arguments

    parser.add_argument(
        "study",
        nargs="?",
        help="study file, or a built-in study: default (the default), quick, mitigation",
    )
    parser.add_argument("--out", help="folder for the store, the runs and the report")
    parser.add_argument(
        "--analyse-only", action="store_true", help="skip the runs; analyse what is in the store"
    )
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from forgetscale.commands._common import load_from_args, take_own_flags
    from forgetscale.study.runner import EXTRA_KEYS, analysis_of, notes_of, run_study, study_file

    rest = take_own_flags(
        args,
        list(args.overrides or []),
        switches=("--analyse-only", "--dry-run", "--no-progress"),
        valued=("--executor", "--workers", "--out"),
    )
    store = str(Path(args.out) / "results.db") if args.out else None
    sweep, flags = load_from_args(
        args, study_file(args.study), rest, extra_keys=EXTRA_KEYS, store=store
    )
    notes_of(sweep)  # checked before anything runs, --dry-run included
    analysis = analysis_of(sweep)
    if args.dry_run:
        from forgetscale.sweep.options import executor_options
        from forgetscale.sweep.status import dry_run

        options = executor_options(sweep, sweep.executor, flags)
        dry_run(sweep, workers=getattr(options, "workers", None))
        return 0
    outcome = run_study(
        sweep,
        analysis,
        flags=flags,
        analyse_only=args.analyse_only,
        progress=not args.no_progress,
        command=["forgetscale", *args._argv],
    )
    print(f"report: {outcome.html}")
    print(f"data:   {outcome.json}")
    print(f"study took {outcome.wall_s / 60:.1f} min; results in {outcome.store}")
    return outcome.exit_code
