"""``forgetscale export``: write the measurements table (the one the laws are fitted on)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from forgetscale.store import RUN_STATUSES

NAME = "export"
HELP = "write the measurements of a results store as csv or parquet"
DESCRIPTION = """\
Write every measurement of a results store as one table, one row per (run, step),
with the columns: run_id, method, rank, params_trained (P), replay_fraction (p) and
kl_weight (the run's config; 0 when it has none), step (N; 0 = the base model),
finetune_loss (L_ft), forgetting_loss (L_f, hard), forgetting_loss_soft, kl,
base_entropy, agreement, train_loss, tokens_seen, task_tokens_seen, replay_tokens_seen,
train_kl, wall_s. This is the table `forgetscale fit` reads (the replay laws read p).
Without --out the csv goes to stdout.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        "--store",
        dest="store",
        required=True,
        metavar="STORE",
        help="results store (.db); --store is the same option, spelled as train and sweep spell it",
    )
    parser.add_argument(
        "--format",
        choices=("csv", "parquet"),
        default=None,
        help="output format (default: from the --out suffix, else csv)",
    )
    parser.add_argument("--out", metavar="FILE", help="output file (default: csv on stdout)")
    parser.add_argument(
        "--status",
        default=None,
        choices=RUN_STATUSES,
        help="only runs with this status (default: all runs)",
    )
    parser.add_argument("--run", action="append", metavar="ID", help="only this run (repeatable)")
    parser.add_argument(
        "--table",
        choices=("measurements", "downstream"),
        default="measurements",
        help="measurements (one row per run and step; default) or downstream (long format: "
        "one row per run, step, suite and metric, with n and the interval)",
    )


def store_files(store: str) -> tuple[str, ...]:
    """The results store and SQLite's files beside it (an output must replace none of them)."""
    return (store, f"{store}-wal", f"{store}-shm", f"{store}-journal")


def output_format(out: str | None, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    return "parquet" if out is not None and out.lower().endswith(".parquet") else "csv"


def run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError
    from forgetscale.outputs import atomic_output, check_output
    from forgetscale.store import open_store, write_table

    fmt = output_format(args.out, args.format)
    out = None
    if args.out is None:
        if fmt == "parquet":
            raise UserError("parquet needs --out FILE")
    else:  # before reading anything
        suffix = {".csv": "csv", ".parquet": "parquet"}.get(Path(args.out).suffix.lower())
        if suffix is not None and suffix != fmt:
            raise UserError(
                f"--format {fmt} with --out {args.out}: the name says {suffix}; "
                f"give a .{fmt} name or --format {suffix}"
            )
        out = check_output(
            args.out, inputs=store_files(args.store), create_parents=True, kind="table"
        )
    with open_store(args.store, create=False) as store:
        df = store.measurements() if args.table == "measurements" else store.downstream()
        if args.status:
            keep = {r.id for r in store.list_runs() if r.status == args.status}
            df = df[df.run_id.isin(keep)]
    if args.run:
        missing = set(args.run) - set(df.run_id)
        if missing:
            raise UserError(f"no {args.table} for run(s): {', '.join(sorted(missing))}")
        df = df[df.run_id.isin(args.run)]
    if out is None:
        df.to_csv(sys.stdout, index=False)
        return 0
    with atomic_output(out) as tmp:
        write_table(df.reset_index(drop=True), tmp, fmt)
    what = "measurements" if args.table == "measurements" else "downstream results"
    print(f"wrote {len(df)} {what} of {df.run_id.nunique()} runs to {out} ({fmt})")
    return 0
