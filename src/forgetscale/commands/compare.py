"""forgetscale compare: rank laws on the same runs by their error on held-out points."""

from __future__ import annotations

import argparse
import json

from forgetscale.commands.fit import add_fit_data_arguments, holdout_arg

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
        "--starts", type=int, default=10, help="L-BFGS-B starts per law (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list, best first")


def run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError
    from forgetscale.laws.fitting import compare_laws
    from forgetscale.laws.report import format_compare
    from forgetscale.laws.table import read_table

    names = [n.strip() for n in args.laws.split(",") if n.strip()]
    if not names:
        raise UserError("--laws is empty")
    df = read_table(args.source)
    target = args.target or "forgetting_loss"
    rows = compare_laws(
        df,
        names,
        target,
        min_step=args.min_step,
        holdout=holdout_arg(args.holdout),
        n_starts=args.starts,
    )
    if args.json:
        print(json.dumps(rows))
    else:
        print(format_compare(rows, target, " ".join(args.holdout)))
    return 0
