"""``forgetscale export``: write the measurements table (the one the laws are fitted on)."""

from __future__ import annotations

import argparse
import sys

NAME = "export"
HELP = "write the measurements of a results store as csv or parquet"
DESCRIPTION = """\
Write every measurement of a results store as one table, one row per (run, step),
with the columns: run_id, method, rank, params_trained (P), step (N; 0 = the
base model), finetune_loss (L_ft), forgetting_loss (L_f, hard), forgetting_loss_soft,
kl, agreement, train_loss, tokens_seen, wall_s. This is the table `forgetscale fit`
reads. Without --out the csv goes to stdout.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from", dest="store", required=True, metavar="STORE", help="results store (.db)"
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
        help="only runs with this status, e.g. finished (default: all runs)",
    )
    parser.add_argument("--run", action="append", metavar="ID", help="only this run (repeatable)")


def run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError
    from forgetscale.store import open_store, write_table

    with open_store(args.store, create=False) as store:
        df = store.measurements()
        if args.status:
            keep = {r.id for r in store.list_runs() if r.status == args.status}
            df = df[df.run_id.isin(keep)]
    if args.run:
        missing = set(args.run) - set(df.run_id)
        if missing:
            raise UserError(f"no measurements for run(s): {', '.join(sorted(missing))}")
        df = df[df.run_id.isin(args.run)]
    if args.out is None:
        if args.format == "parquet":
            raise UserError("parquet needs --out FILE")
        df.to_csv(sys.stdout, index=False)
        return 0
    fmt = write_table(df.reset_index(drop=True), args.out, args.format)
    print(f"wrote {len(df)} measurements of {df.run_id.nunique()} runs to {args.out} ({fmt})")
    return 0
