"""forgetscale compare: rank laws on the same runs by their error on held-out points."""

from __future__ import annotations

import argparse

from forgetscale.commands.fit import add_fit_data_arguments
from forgetscale.config.fields import option_help
from forgetscale.laws.options import FitOptions

NAME = "compare"
HELP = "rank laws on the same runs by held-out error"
DESCRIPTION = """\
Fit several laws to the same measurements, each on the same training rows, and
rank them by RMSE (loss scale) on held-out points: by default the runs with the
largest P, so the ranking says which law extrapolates to a larger adapter. A joint
law (kalajdzievski) is scored on --target. The linear law predicts L_f from the
observed L_ft of the held-out points, so it needs no extrapolation in P or N;
the table marks it.

examples:
  forgetscale compare --from runs.csv --laws additive,multiplicative,kalajdzievski
  forgetscale compare --from results.db --laws linear,additive --holdout largest-N --json
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_fit_data_arguments(parser, holdout_default=["largest-P"])
    parser.add_argument(
        "--laws",
        default="linear,additive,multiplicative,kalajdzievski",
        help="comma-separated law names (default: %(default)s)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=10,
        help=option_help(FitOptions, "n_starts") + ", per law (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list, best first (NaN/inf as null, said in the row's note)",
    )


def run(args: argparse.Namespace) -> int:
    from forgetscale.commands._common import deferred_warnings

    with deferred_warnings():  # e.g. rows repeated exactly, dropped: said once it worked
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError
    from forgetscale.laws.holdout import compare_laws
    from forgetscale.laws.report import format_compare
    from forgetscale.laws.table import Holdout
    from forgetscale.outputs import dumps, json_safe

    names = [n.strip() for n in args.laws.split(",")]
    if not any(names):
        raise UserError("--laws is empty")
    if not all(names):
        raise UserError(f"--laws {args.laws!r} has an empty name")
    target = args.target or "forgetting_loss"
    holdout = Holdout.parse(args.holdout)
    rows = compare_laws(
        args.source,
        names,
        target,
        min_step=args.min_step,
        holdout=holdout,
        n_starts=args.starts,
    )
    if args.json:
        clean = []
        for row in rows:
            row, notes = json_safe(row)
            row["note"] = "; ".join(n for n in [row["note"], *notes] if n)
            clean.append(row)
        print(dumps(clean))
    else:
        print(format_compare(rows, target, " ".join(args.holdout)))
    return 0
