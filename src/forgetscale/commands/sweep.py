"""``forgetscale sweep``: a grid of training runs on local workers, a Ray cluster or Slurm."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

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

OWN_FLAGS = ("--dry-run", "--executor", "--workers", "--no-progress")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep", help="sweep file (YAML)")
    add_run_arguments(parser)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a command that runs a sweep (``sweep``, ``study``): the executor, the dry
    run, local workers, the progress bar, config overrides, and the executors' own options
    listed when help is asked for. Read back by :func:`take_own_flags` and
    :func:`load_from_args`."""
    from forgetscale.sweep.executors import EXECUTORS

    parser.add_argument(
        "--executor",
        choices=list(EXECUTORS),
        help="where the runs run (default: the sweep file's executor.default, else local)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs (id, grid values, P, steps, status, time left) and exit",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="local executor: worker processes (default: one per GPU when there are several, "
        "else 1)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "overrides",
        nargs=argparse.REMAINDER,
        metavar="--key=value",
        help="train config overrides for every run, and --EXECUTOR-OPTION=value",
    )
    original = parser.format_help

    def format_help() -> str:  # executor options are listed only when help is asked for
        parser.epilog = executor_help()
        return original()

    parser.format_help = format_help  # type: ignore[method-assign]


def executor_help() -> str:
    from forgetscale.sweep.executors import EXECUTORS, get_executor

    lines = ["executor options (flags, or the sweep file's executor: {NAME: {...}} block):"]
    for name in EXECUTORS:
        try:
            cls = get_executor(name)
        except Exception as exc:  # noqa: BLE001 - help must print whatever a module does
            lines.append(f"  {name}: unavailable ({exc})")
            continue
        for f in dataclasses.fields(cls.Options):
            flag = f.metadata.get("flag") or f"--{name}-{f.name.replace('_', '-')}"
            lines.append(f"  {flag}  ({name}) {f.metadata.get('help', '')}")
    return "\n".join(lines)


def take_own_flags(
    args: argparse.Namespace,
    items: list[str],
    switches: tuple[str, ...] = ("--dry-run", "--no-progress"),
    valued: tuple[str, ...] = ("--executor", "--workers"),
) -> list[str]:
    """Our own flags may come after the sweep file, among the overrides."""
    rest: list[str] = []
    i = 0
    while i < len(items):
        item = items[i]
        key, eq, value = item.partition("=")
        key = key.replace("_", "-")
        if key in switches:
            setattr(args, key[2:].replace("-", "_"), True)
        elif key in valued:
            if not eq:
                if i + 1 >= len(items):
                    from forgetscale.errors import UserError

                    raise UserError(f"{key} needs a value")
                value = items[i + 1]
                i += 1
            setattr(args, key[2:].replace("-", "_"), value)
        else:
            rest.append(item)
        i += 1
    return rest


def split_executor_flags(
    overrides: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Separate ``--EXECUTOR-OPTION`` flags (``ray_address``) from train config overrides."""
    from forgetscale.sweep.executors import EXECUTORS

    flags: dict[str, dict[str, Any]] = {}
    train: dict[str, Any] = {}
    for key, value in overrides.items():
        owner = next((n for n in EXECUTORS if key.startswith(n + "_")), None)
        if owner is None:
            train[key] = value
        else:
            flags.setdefault(owner, {})[key[len(owner) + 1 :]] = value
    return flags, train


def load_from_args(
    args: argparse.Namespace,
    path: str | Path,
    rest: list[str],
    *,
    extra_keys: tuple[str, ...] = (),
    store: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The sweep of ``path`` with the command line's overrides (``rest``), and the flags of its
    executor; ``store`` moves the sweep's store. Shared by ``sweep`` and ``study``."""
    from forgetscale.config import parse_overrides
    from forgetscale.errors import UserError
    from forgetscale.sweep.executors import EXECUTORS
    from forgetscale.sweep.spec import load_sweep

    if args.executor is not None and args.executor not in EXECUTORS:
        raise UserError(f"unknown executor {args.executor!r}; one of: {', '.join(EXECUTORS)}")
    by_executor, train_overrides = split_executor_flags(parse_overrides(rest))
    if store is not None:
        train_overrides["store"] = store
    sweep = load_sweep(path, train_overrides, executor=args.executor, extra_keys=extra_keys)
    existing = sweep.folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():  # --dry-run included: this sweep could never run
        where = "--out" if store is not None else "the sweep's store folder"
        raise UserError(f"{where} {sweep.folder}: {existing} is a file, not a folder")
    for name, given in by_executor.items():
        if name != sweep.executor:
            key = next(iter(given))
            raise UserError(
                f"--{name}-{key.replace('_', '-')} is an option of --executor {name} "
                f"(this sweep runs on {sweep.executor})"
            )
    flags = dict(by_executor.get(sweep.executor, {}))
    if args.workers is not None:
        try:
            flags["workers"] = int(args.workers)
        except ValueError:
            raise UserError(f"--workers must be an integer, got {args.workers!r}") from None
    return sweep, flags


def run(args: argparse.Namespace) -> int:
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
