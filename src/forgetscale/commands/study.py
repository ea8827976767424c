"""``forgetscale study``: runs, laws tested on runs they never saw, one report."""

from __future__ import annotations

import argparse
import sys

NAME = "study"
HELP = "run a study (a sweep plus its analysis) and write report.html"
DESCRIPTION = """\
Run a forgetting study and write one report: the runs of a sweep (resumed when
interrupted), the laws of forgetting fitted to them and tested on runs and steps
they never saw, the noise floor, and what a rank not run would forget.

  forgetscale study                       # the built-in default study (embedded model)
  forgetscale study quick                 # a first look in a few minutes
  forgetscale study my-study.yaml --executor slurm
  forgetscale study --analyse-only        # only re-analyse the runs that exist

A study file is a sweep file (see `forgetscale sweep --help`) plus an analysis:
block (laws per target, min_step, holdout_runs, holdout_steps, bootstrap,
predict_ranks). The report goes beside the study's results store:
report.html (self-contained, opens from disk) and report.json (every number).
"""

OWN_FLAGS = ("--analyse-only", "--executor", "--workers", "--no-progress", "--out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forgetscale.sweep.executors import EXECUTORS

    parser.add_argument(
        "study", nargs="?", help="study file, or a built-in study: default (the default), quick"
    )
    parser.add_argument("--out", help="folder for the store, the runs and the report")
    parser.add_argument("--executor", choices=list(EXECUTORS), help="where the runs run")
    parser.add_argument("--workers", type=int, help="local executor: worker processes")
    parser.add_argument(
        "--analyse-only", action="store_true", help="skip the runs; analyse what is in the store"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="--key=value",
        help="train config overrides for every run, and --EXECUTOR-OPTION=value",
    )


def run(args: argparse.Namespace) -> int:
    from forgetscale.commands.sweep import split_flags
    from forgetscale.study.runner import run_study

    overrides, flags = split_flags(args.overrides or [])
    if args.workers is not None:
        flags["workers"] = args.workers
    outcome = run_study(
        args.study,
        out=args.out,
        overrides=overrides,
        executor=args.executor,
        flags=flags,
        analyse_only=args.analyse_only,
        progress=not args.no_progress,
        command=["forgetscale", *sys.argv[1:]],
    )
    print(f"report: {outcome.html}")
    print(f"data:   {outcome.json}")
    print(f"study took {outcome.wall_s / 60:.1f} min; results in {outcome.store}")
    return outcome.exit_code
