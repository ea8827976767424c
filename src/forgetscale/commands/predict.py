"""forgetscale predict: forgetting (and fine-tuning loss) for a planned fine-tune."""

from __future__ import annotations

import argparse
import sys

NAME = "predict"
HELP = "predict L_ft and L_f for P trainable parameters after N steps"
DESCRIPTION = """\
Predict the fine-tuning loss L_ft and the forgetting loss L_f of a fine-tune you
have not run, from a saved fit (`forgetscale fit --save FIT.json`; intervals
come from its bootstrap refits) or from published constants (presets
kalajdzievski:openorca and kalajdzievski:news, the paper's Table 1, fitted on
Llama 2 7B LoRA runs with P of about 2e7..6.4e8 and steps 50..260). Several
--params and --steps values give every combination. Every value must be finite and
positive (steps > 0 for power laws in N).

Intervals (95%) are for one new run by default: the fit's uncertainty (bootstrap over
runs) combined with the run-to-run noise the fit measured (seed replicates where the
runs have them, the spread of its residuals otherwise); --interval mean gives the band
of the mean law only. The output says which kind it shows.

examples:
  forgetscale predict --law kalajdzievski:openorca --params 4e7 --steps 200
  forgetscale predict --law fit.json --params 2e7 8e7 --steps 100 500 --json
  forgetscale predict --law linear.json --finetune-loss 0.7
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--law", required=True, metavar="PRESET|FIT.json", help="a preset or a saved fit"
    )
    parser.add_argument(
        "--params", type=float, nargs="+", metavar="P", help="trainable parameters P"
    )
    parser.add_argument("--steps", type=float, nargs="+", metavar="N", help="update steps N")
    parser.add_argument(
        "--finetune-loss",
        type=float,
        nargs="+",
        metavar="L_FT",
        help="fine-tuning loss (for the linear law)",
    )
    parser.add_argument(
        "--interval",
        choices=("run", "mean"),
        default="run",
        help="run: 95%% interval for one new run (fit uncertainty + run-to-run noise); "
        "mean: the bootstrap band of the mean law (default: %(default)s)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON: one object (or a list) with keys finetune_loss, forgetting_loss "
        "(and any other target the fit predicts), ci, interval (its kind in words) and "
        "notes; NaN/inf as null",
    )


def run(args: argparse.Namespace) -> int:
    import itertools

    import numpy as np

    from forgetscale.laws.intervals import MEAN_LAW, NEW_RUN
    from forgetscale.laws.prediction import predict, resolve_law
    from forgetscale.laws.registry import TARGETS, get_preset
    from forgetscale.laws.report import format_prediction
    from forgetscale.outputs import dumps, json_safe

    fit = resolve_law(args.law)
    spec = fit.law_spec
    axes = {
        "params_trained": args.params,
        "step": args.steps,
        "finetune_loss": args.finetune_loss,
    }
    used = [v for v in axes if axes[v] is not None]  # predict() refuses any the law lacks
    combos = list(itertools.product(*(axes[v] for v in used)))
    columns = {v: [c[i] for c in combos] for i, v in enumerate(used)}
    result = predict(
        fit,
        **{v: columns.get(v) for v in ("params_trained", "step")},
        finetune_loss=columns.get("finetune_loss"),
        kind=NEW_RUN if args.interval == "run" else MEAN_LAW,
    )
    kinds = {t: r["interval"] for t, r in result.items()}
    rows = []
    for i in range(len(combos)):
        row: dict = {}
        for v in used:
            row["finetune_loss_in" if v == "finetune_loss" else v] = columns[v][i]
        row["finetune_loss"] = row["forgetting_loss"] = None
        row["ci"] = {}
        row["interval"] = kinds[fit.targets[0]] if len(set(kinds.values())) == 1 else kinds
        for t, r in result.items():
            row[t] = float(r["value"][i])
            if r["lo"] is not None and np.isfinite([r["lo"][i], r["hi"][i]]).all():
                row["ci"][t] = [float(r["lo"][i]), float(r["hi"][i])]
        rows.append(row)
    values = np.array([r[t] for r in rows for t in result])
    if args.json:
        out = []
        for r in rows:
            r = {("finetune_loss_given" if k == "finetune_loss_in" else k): v for k, v in r.items()}
            r, notes = json_safe(r)
            r["notes"] = notes
            out.append(r)
        print(dumps(out[0] if len(out) == 1 else out))
    else:
        if ":" in str(args.law) and not str(args.law).endswith(".json"):
            _, _, source = get_preset(args.law)
            header = f"{args.law} ({source}; form reconstructed from the constants)"
        else:
            header = f"{args.law}: law {spec.name} fitted on {fit.n_points} points"
        print(format_prediction(rows, header))
        for t, kind in kinds.items():
            print(f"{TARGETS[t].symbol}: {kind}")
    if not np.isfinite(values).all():
        print(
            "warning: some predictions are not finite (the law overflows at these inputs)",
            file=sys.stderr,
        )
    elif (values <= 0).any():
        print(
            "warning: some predictions are <= 0, which no loss can be; these inputs lie "
            "outside the range where the law holds",
            file=sys.stderr,
        )
    return 0
