"""``forgetscale sweep``: a grid of training runs on local workers, a Ray cluster or Slurm."""

from __future__ import annotations

import argparse

NAME = "sweep"
HELP = "run a grid of training runs (local workers, Ray or Slurm) into one results store"
DESCRIPTION = """\
Expand a sweep file (a base train config, overrides and grid:/zip: axes) into runs
and run those that are not finished, on local worker processes, a Ray cluster or
Slurm. Each run trains in its own folder under the store's folder; the driver
merges the folders into the one results store as runs finish. Stopped at any
moment (even killed), the same command finishes the sweep: partial runs resume
from their checkpoints, and no measurement is written twice. A run id is the hash
of its resolved config, as for `forgetscale train`, so runs done by either are
recognised by both.

  forgetscale sweep sweep.yaml --dry-run          # the runs, P, status, time left
  forgetscale sweep sweep.yaml --workers 2        # two local worker processes
  forgetscale sweep sweep.yaml --executor slurm --slurm-partition=gpu

The smallest sweep file:

  base: ./run.yaml             # any train config; keys given here override it
  store: ./sweep/results.db
  grid:
    rank: [2, 4]
    seed: [0, 1]

--key=value overrides any train config key for every run; executor options are
given as --EXECUTOR-OPTION=value (e.g. --ray-address=auto) or in the sweep file's
executor: block. Exit code 1 when a run failed (a diverged run is a result).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from forgetscale.commands._common import add_run_arguments

    parser.add_argument("sweep", help="sweep file (YAML)")
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from forgetscale.commands._common import load_from_args, take_own_flags
    from forgetscale.sweep.driver import run_sweep
    from forgetscale.sweep.options import executor_options
    from forgetscale.sweep.status import dry_run

    rest = take_own_flags(args, list(args.overrides or []))
    sweep, flags = load_from_args(args, args.sweep, rest)
    options = executor_options(sweep, sweep.executor, flags)
    if args.dry_run:
        dry_run(sweep, workers=getattr(options, "workers", None))
        return 0
    return run_sweep(sweep, flags=flags, progress=not args.no_progress)
