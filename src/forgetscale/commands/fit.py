"""forgetscale fit: fit a scaling law for forgetting to measured runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from forgetscale.config.fields import option_help
from forgetscale.laws.options import FitOptions
from forgetscale.laws.registry import TARGETS

NAME = "fit"
HELP = "fit a scaling law (linear, additive, multiplicative, kalajdzievski, ...) to measured runs"
DESCRIPTION = """\
Fit a law to a table of measurements (CSV, parquet, or a results store .db with
the export columns run_id, params_trained, replay_fraction, step, finetune_loss,
forgetting_loss, forgetting_loss_soft, kl, agreement) and print its parameters
with bootstrap confidence intervals (whole runs are resampled), R^2 and RMSE on
the loss scale, and, with --holdout, the error on points the fit never saw beside
the in-sample error (held-out runs: largest-P; held-out steps: largest-N).

laws:
  linear          L_f = s_f_ft - c_f_ft * L_ft                         (paper Eq. 4)
  additive        L = E +/- (A P^-alpha + B N^-beta)                   (Chinchilla form)
  multiplicative  L = E +/- A P^-alpha N^-beta                         (Zhang et al. 2024)
  kalajdzievski   the paper's joint laws for L_ft and L_f (form reconstructed from
                  its Table 1 constants); fits both targets at once
  linear_multiplicative
                  L_ft = E + A P^-alpha N^-beta and L_f = s_f_ft - c_f_ft * L_ft:
                  Eq. 4 through the L_ft law; fits both targets at once
  replay_power    L_f = L0 + A N^beta / (1 + B p), p = replay_fraction
                  (after Bethune et al. 2025; needs two or more values of p)
  replay_multiplicative
                  L_f = L0 + A (P/1e6)^alpha N^beta / (1 + B p)
  (+ for finetune_loss, which falls towards E; - for the forgetting targets
   forgetting_loss, forgetting_loss_soft, kl, disagreement, which rise)

targets (--target; linear models a forgetting target against finetune_loss, the
power laws model any target in P and N):
{targets}

Fitting: Huber loss (delta 1e-3) on log residuals, positive parameters in log
space, L-BFGS-B from the best points of a vectorised grid of starts. Step 0 (the
base model, N = 0) is never used by power laws in N.

examples:
  forgetscale fit --from runs.csv --law kalajdzievski --min-step 50
  forgetscale fit --from results.db --law additive --target forgetting_loss --holdout largest-P
  forgetscale fit --from runs.csv --law multiplicative --target kl --holdout largest-N
  forgetscale fit --from runs.csv --law linear --json --save linear.json --plots figs/
  forgetscale fit --from study/results.db --law replay_power --min-step 1
""".format(targets="\n".join(f"  {t.name:<21} {t.help}" for t in TARGETS.values()))


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
        choices=tuple(TARGETS),
        default=None,
        help="quantity to model (default: forgetting_loss; a joint law fits all its "
        "targets, and --target must be one of them)",
    )
    parser.add_argument(
        "--min-step",
        type=float,
        default=1,
        metavar="N0",
        help=option_help(FitOptions, "min_step") + " (default: %(default)s)",
    )
    parser.add_argument(
        "--holdout",
        nargs="+",
        default=holdout_default,
        metavar="WHICH",
        help="hold out largest-P (the runs with the largest P, fitted on the others), "
        "largest-N (the last 20%% of the steps of every run, fitted on the earlier ones) "
        "or RUN_ID ...; the fit reports its error on them"
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
        help=option_help(FitOptions, "n_boot") + " (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help=option_help(FitOptions, "seed") + " (default: %(default)s)",
    )
    parser.add_argument(
        "--starts",
        type=int,
        default=10,
        help=option_help(FitOptions, "n_starts") + " (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=option_help(FitOptions, "workers"),
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object (NaN/inf as null, with notes)"
    )
    parser.add_argument(
        "--save",
        metavar="FIT.json",
        help="write the fit for `forgetscale predict` (replaces only an earlier fit)",
    )
    parser.add_argument("--plots", metavar="DIR", help="write figures (PNG + CSV) to DIR")


def run(args: argparse.Namespace) -> int:
    from forgetscale.commands._common import deferred_warnings

    with deferred_warnings():  # e.g. rows repeated exactly, dropped: said once it worked
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from forgetscale.laws.fitting import fit_file_bytes, fit_law, resolve_fit_targets
    from forgetscale.laws.options import FitOptions
    from forgetscale.laws.plots import FIGURES_BYTES, figure_kinds, stage_figures
    from forgetscale.laws.registry import get_law
    from forgetscale.laws.report import format_fit
    from forgetscale.laws.table import read_table
    from forgetscale.outputs import (
        StagedOutputs,
        check_output,
        check_output_folder,
        dumps,
        json_safe,
    )

    # everything is checked before the table is read and the law fitted
    opts = FitOptions(
        min_step=args.min_step,
        holdout=args.holdout,
        n_boot=args.bootstrap,
        seed=args.seed,
        n_starts=args.starts,
        workers=args.workers,
    )
    law = get_law(args.law)
    resolve_fit_targets(law, args.target)
    inputs = [(args.source, "--from")]
    if args.save:
        check_output(
            args.save,
            what="--save",
            inputs=inputs,
            create_parents=True,
            needed=fit_file_bytes(law, opts.n_boot),
            kind="fit",
        )
    if args.plots:
        check_output_folder(
            args.plots, figure_kinds(), inputs=inputs, what="--plots", needed=FIGURES_BYTES
        )
    df = read_table(args.source)
    fit = fit_law(
        df,
        law,
        args.target,
        min_step=opts.min_step,
        holdout=opts.holdout,
        n_boot=opts.n_boot,
        seed=opts.seed,
        n_starts=opts.n_starts,
        workers=opts.workers,
    )
    with StagedOutputs() as staged:
        if args.save:
            staged.write_text(args.save, fit.to_file_text(), "--save")
        if args.plots:
            stage_figures(fit, df, args.plots, opts.holdout, staged, option="--plots")
        written = staged.commit()
    if args.json:
        d, notes = json_safe(fit.to_json())
        d["notes"] += notes
        print(dumps(d))
    else:
        print(format_fit(fit))
        for path in written:
            print(f"{'saved' if args.save and path == Path(args.save) else 'wrote'}: {path}")
    return 0
