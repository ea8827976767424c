"""forgetscale fit: fit a scaling law for forgetting to measured runs."""

from __future__ import annotations

import argparse
import json

NAME = "fit"
HELP = "fit a scaling law (linear, additive, multiplicative, kalajdzievski) to measured runs"
DESCRIPTION = """\
Fit a law to a table of measurements (CSV, parquet, or a results store .db with
the export columns run_id, params_trained, step, finetune_loss, forgetting_loss)
and print its parameters with bootstrap confidence intervals (whole runs are
resampled), R^2 and RMSE on the loss scale, and, with --holdout, the error on
points the fit never saw.

laws:
  linear          L_f = s_f_ft - c_f_ft * L_ft                         (paper Eq. 4)
  additive        L = E +/- (A P^-alpha + B N^-beta)                   (Chinchilla form)
  multiplicative  L = E +/- A P^-alpha N^-beta                         (Zhang et al. 2024)
  kalajdzievski   the paper's joint laws for L_ft and L_f (form reconstructed from
                  its Table 1 constants); fits both targets, --target does not apply
  (+ for finetune_loss, which falls towards E; - for forgetting_loss, which rises)

Fitting: Huber loss (delta 1e-3) on log residuals, positive parameters in log
space, L-BFGS-B from the best points of a vectorised grid of starts. Step 0 (the
base model, N = 0) is never used by power laws in N.

examples:
  forgetscale fit --from runs.csv --law kalajdzievski --min-step 50
  forgetscale fit --from results.db --law additive --target forgetting_loss --holdout largest-P
  forgetscale fit --from runs.csv --law linear --json --save linear.json --plots figs/
"""


def add_fit_data_arguments(parser: argparse.ArgumentParser, holdout_default=None) -> None:
    """--from, --target, --min-step, --holdout (shared with `compare`)."""
    parser.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="FILE",
        help="measurements: results store (.db), CSV or parquet with the export columns",
    )
    parser.add_argument(
        "--target",
        choices=("forgetting_loss", "finetune_loss"),
        default=None,
        help="quantity to model (default: forgetting_loss; ignored by joint laws)",
    )
    parser.add_argument(
        "--min-step",
        type=float,
        default=1,
        metavar="N0",
        help="exclude steps < N0 (default: %(default)s, i.e. only the base model; the paper used 50)",
    )
    parser.add_argument(
        "--holdout",
        nargs="+",
        default=holdout_default,
        metavar="WHICH",
        help="hold out largest-P (runs with the largest P), largest-N (the top 20%% of "
        "steps) or RUN_ID ...; the fit reports its error on them"
        + (f" (default: {holdout_default[0]})" if holdout_default else ""),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_fit_data_arguments(parser)
    parser.add_argument("--law", required=True, help="law name (see above)")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=100,
        metavar="B",
        help="bootstrap resamples of whole runs for the CIs, 0 = none (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)")
    parser.add_argument(
        "--starts",
        type=int,
        default=10,
        help="L-BFGS-B starts from the best grid points (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes for the bootstrap (default: all cores when it pays)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--save", metavar="FIT.json", help="write the fit for `forgetscale predict`"
    )
    parser.add_argument("--plots", metavar="DIR", help="write figures (PNG + CSV) to DIR")


def holdout_arg(values):
    if not values:
        return None
    return values[0] if len(values) == 1 and values[0] in ("largest-P", "largest-N") else values


def run(args: argparse.Namespace) -> int:
    from forgetscale.errors import UserError
    from forgetscale.laws.fitting import fit_law
    from forgetscale.laws.report import format_fit
    from forgetscale.laws.table import read_table

    if args.bootstrap < 0:
        raise UserError("--bootstrap must be >= 0")
    df = read_table(args.source)
    holdout = holdout_arg(args.holdout)
    fit = fit_law(
        df,
        args.law,
        args.target,
        min_step=args.min_step,
        holdout=holdout,
        n_boot=args.bootstrap,
        seed=args.seed,
        n_starts=args.starts,
        workers=args.workers,
    )
    if args.save:
        fit.save(args.save)
    written = []
    if args.plots:
        from forgetscale.plots import plot_fit

        written = plot_fit(fit, df, args.plots, holdout=holdout)
    if args.json:
        print(json.dumps(fit.to_json()))
    else:
        desc = " ".join(args.holdout) if args.holdout else None
        print(format_fit(fit, desc))
        if args.save:
            print(f"saved: {args.save}")
        for path in written:
            print(f"wrote: {path}")
    return 0
