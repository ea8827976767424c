"""forgetscale plan: the rank and steps with the best task loss within a forgetting budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

NAME = "plan"
HELP = "choose P (or rank) and N: the lowest predicted L_ft whose forgetting stays within a budget"
DESCRIPTION = """\
Evaluate every candidate (P or LoRA rank, N steps) with laws fitted to a pilot's runs
(--from: a results store, CSV/parquet export or a study folder; or saved fits --fit)
and choose the one with the lowest predicted fine-tuning loss L_ft whose forgetting
stays within every --budget at the upper end of the central --coverage interval for
one new run (fit uncertainty from the bootstrap over runs, combined with the
run-to-run noise the runs show: seed replicates where there are some, the spread of
the residuals otherwise). Candidates beyond the fitted range are flagged, and so are
those beyond the extrapolation the held-out tests (held-out runs: largest P;
held-out steps: the last 20%) checked. Nothing is chosen (exit 0) when a law has a
parameter on a bound or no candidate meets the budgets; it says so.

budgets: TARGET<=VALUE on forgetting_loss, forgetting_loss_soft, kl or disagreement;
VALUE with a + is relative to the base model (step 0): forgetting_loss<=+0.5 = at most
0.5 above the base's L_f. A downstream metric of the store (its downstream table, e.g.
the probe's accuracy) is SUITE:METRIC>=VALUE or <=VALUE, a signed VALUE relative to the
base: probe:acc>=-0.05 = at most 0.05 below the base's accuracy. It is predicted through
the metric's measured relation to L_f: a straight line in the hard L_f fitted on the
store's runs (every run's value at a step with its L_f there, the base once), each draw
of the candidate's L_f interval put through the line refitted on a resample of the runs,
plus the scatter about the line; a >= budget holds at the lower end of that interval.

--verify STORE runs the chosen configuration (the train config --emit forgetscale
prints, recorded in STORE) and reports it as --check does: the planned run's L_ft and
forgetting against their intervals, inside or not, and its wall time beside the pilot's.
Rerun after an interruption: the run resumes from its checkpoint.

--emit prints the chosen configuration on stdout (the plan table goes to stderr):
peft (a peft.LoraConfig), trl (LoraConfig + trl.SFTConfig) or forgetscale (a train
YAML: the configuration of the pilot run nearest in rank, with the chosen rank and
max_steps).

examples:
  forgetscale plan --from results.db --budget "forgetting_loss<=+0.5" --ranks 4 8 16 32 \\
      --steps 100 200 400
  forgetscale plan --fit ft.json lf.json --budget "forgetting_loss<=2.4" --params 2e6 8e6 \\
      --steps 200 --json
  forgetscale plan --from study-out/ --budget "kl<=+0.05" --ranks 8 16 --steps 300 \\
      --emit forgetscale > planned.yaml
  forgetscale plan --from pilot.db --budget "forgetting_loss<=+0.3" --ranks 4 8 16 \\
      --steps 100 200 --verify planned.db
  forgetscale plan --from study-out/ --budget "probe:acc>=-0.05" --ranks 8 16 32 \\
      --steps 100 200
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="source",
        metavar="TABLE|FOLDER",
        help="the pilot's measurements: results store (.db), CSV or parquet export, or a "
        "study folder (its results.db)",
    )
    parser.add_argument(
        "--fit",
        nargs="+",
        metavar="FIT.json",
        help="saved fits (forgetscale fit --save) to plan with instead of fitting --from",
    )
    parser.add_argument(
        "--budget",
        nargs="+",
        required=True,
        metavar="TARGET<=VALUE",
        help="forgetting limits, absolute or +relative to step 0, or SUITE:METRIC>=VALUE "
        "(a downstream metric of --from's store; +/-VALUE relative to step 0); all must hold",
    )
    parser.add_argument(
        "--law", help="law to fit to --from (default: per target, the identified power law "
        "in P and N with the lowest held-out error)"
    )  # fmt: skip
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--params", type=float, nargs="+", metavar="P", help="candidate P")
    which.add_argument(
        "--ranks", type=int, nargs="+", metavar="R",
        help="candidate LoRA ranks (P per rank from the LoRA runs of --from)",
    )  # fmt: skip
    parser.add_argument(
        "--steps", type=float, nargs="+", required=True, metavar="N", help="candidate steps N"
    )
    parser.add_argument(
        "--coverage",
        type=float,
        default=0.9,
        help="central interval a budget must hold at its upper end (default: %(default)s)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=50, metavar="B",
        help="run resamples of each fit from --from, 0 or 2..100000 (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    parser.add_argument(
        "--min-step", type=float, default=1, metavar="N0",
        help="fit steps >= N0 (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"choice", "candidates", "law", "coverage", "budgets", "intervals", '
        '"held_out", "notes"}; each prediction {value, lo, hi}; NaN as null',
    )
    parser.add_argument(
        "--check",
        metavar="TABLE",
        help="the planned run, once run (a results store or export): report predicted "
        "against observed at the chosen P and N, inside the interval or not",
    )
    parser.add_argument(
        "--verify",
        metavar="STORE",
        help="run the chosen configuration (recorded in this results store, not the pilot's) "
        "and report it against its interval as --check does",
    )
    parser.add_argument(
        "--no-progress", action="store_true",
        help="no progress bar for the --verify run",
    )  # fmt: skip
    parser.add_argument(
        "--emit", choices=("peft", "trl", "forgetscale"), help="print the chosen configuration"
    )


def _store_of(source: str, flag: str = "--from") -> Path:
    from forgetscale.errors import UserError

    p = Path(source)
    if p.is_dir():
        db = p / "results.db"
        if not db.is_file():
            raise UserError(f"{flag} {source}: a folder, but no study results store (results.db)")
        return db
    return p


def run(args: argparse.Namespace) -> int:
    from forgetscale.commands._common import deferred_warnings

    with deferred_warnings():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from forgetscale.errors import UserError
    from forgetscale.laws.fitfile import load_fit
    from forgetscale.laws.options import FitOptions, check_values
    from forgetscale.laws.plan_output import emit_snippet, format_plan
    from forgetscale.laws.planning import (
        LawUse,
        base_values,
        check_plan,
        fit_for_plan,
        make_plan,
        parse_budget,
        rank_to_params,
    )
    from forgetscale.laws.table import read_table
    from forgetscale.outputs import dumps, json_safe

    budgets = [parse_budget(b) for b in args.budget]
    if not (np.isfinite(args.coverage) and 0 < args.coverage < 1):
        raise UserError(f"--coverage must lie strictly between 0 and 1, got {args.coverage}")
    FitOptions(min_step=args.min_step, n_boot=args.bootstrap, seed=args.seed)
    steps = check_values(args.steps, "--steps", above=0)
    if args.params is not None:
        check_values(args.params, "--params", above=0)
    if args.ranks is not None and min(args.ranks) < 1:
        raise UserError(f"--ranks must be >= 1, got {min(args.ranks)}")
    if args.check is not None and not Path(args.check).exists():
        raise UserError(f"--check: no such file: {args.check}")
    if args.source is None and not args.fit:
        raise UserError("give --from (the pilot's runs) or --fit (saved fits)")
    if args.fit and args.law:
        raise UserError("--law fits a law to --from; with --fit the laws are the saved fits")
    if args.emit and args.ranks is None:
        raise UserError("--emit needs --ranks (a P alone names no LoRA configuration)")
    for flag, given in (("--emit", args.emit), ("--verify", args.verify)):
        fractional = [f"{n:g}" for n in steps if given and not float(n).is_integer()]
        if fractional:
            raise UserError(
                f"{flag} trains whole updates: --steps {' '.join(fractional)} is not a whole "
                "number of steps (the run would take a different N than the one planned)"
            )
    if args.verify is not None:
        if args.check is not None:
            raise UserError("--verify runs the planned run and checks it; --check is for one run")
        if args.ranks is None:
            raise UserError("--verify needs --ranks (a P alone names no LoRA configuration)")
    store = df = None
    if args.source is not None:
        store = _store_of(args.source)
        df = read_table(store)
    targets = ["finetune_loss", *dict.fromkeys(b.law_target for b in budgets)]
    for flag, given in (("--emit", args.emit), ("--verify", args.verify)):
        if given and (store is None or store.suffix.lower() not in (".db", ".sqlite")):
            raise UserError(
                f"{flag} needs --from a results store or study folder (the runs' configs)"
            )
    relations = {}
    for b in budgets:
        if not b.downstream or b.target in relations:
            continue
        if store is None or store.suffix.lower() not in (".db", ".sqlite"):
            raise UserError(
                f"--budget {b.text!r} is a downstream metric: it needs --from a results store "
                "or study folder (its downstream table)"
            )
        from forgetscale.laws.downstream_budget import fit_relation

        assert df is not None
        relations[b.target] = fit_relation(store, df, b.target, text=b.text,
                                           n_boot=args.bootstrap, seed=args.seed)  # fmt: skip
    if args.verify is not None:
        from forgetscale.verify import check_verify_store

        check_verify_store(args.verify, pilot=store)
    if args.ranks is not None:
        if df is None or "rank" not in df or "method" not in df:
            raise UserError("--ranks needs --from with the runs' method and rank; give --params")
        lora = df[(df["method"] == "lora") & df["rank"].notna() & df["params_trained"].notna()]
        per_run = lora.drop_duplicates("run_id")
        if not len(per_run):
            raise UserError("--ranks needs LoRA runs with a rank in --from; give --params")
        ppr = rank_to_params(per_run["rank"].astype(float), per_run["params_trained"].astype(float))
        params = [ppr["c"] * r for r in args.ranks]
    else:
        ppr = None
        params = list(args.params)
    if args.fit:
        laws: dict[str, Any] = {}
        for path in args.fit:
            fit = load_fit(path)
            if set(fit.law_spec.variables) != {"params_trained", "step"}:
                raise UserError(f"fit {path}: law {fit.law!r} is not a law in P and N")
            for t in fit.targets:
                laws.setdefault(t, LawUse.from_fit(fit))
        missing = [t for t in targets if t not in laws]
        if missing:
            raise UserError(f"no --fit predicts {', '.join(missing)}; give a fit for it")
    else:
        assert df is not None
        laws = fit_for_plan(df, targets, args.law, n_boot=args.bootstrap, seed=args.seed,
                            min_step=args.min_step)  # fmt: skip
    base = base_values(df, targets) if df is not None else None
    for key, rel in relations.items():
        if rel.base is not None:
            base = {**(base or {}), key: rel.base}
    result = make_plan(laws, budgets, params, list(steps), coverage=args.coverage, base=base,
                       ranks=args.ranks, relations=relations)  # fmt: skip
    if ppr is not None:
        result["params_per_rank"] = ppr
    if args.check is not None:
        if result["choice"] is None:
            result["notes"].append("nothing to check: no candidate was chosen")
        else:
            result["check"] = check_plan(
                laws,
                result["choice"],
                read_table(_store_of(args.check, "--check")),
                coverage=args.coverage,
            )
    if args.verify is not None:
        if result["choice"] is None:
            result["notes"].append("nothing to verify: no candidate was chosen")
        else:
            from forgetscale.verify import verify_plan

            assert store is not None
            result["check"] = verify_plan(
                laws, result["choice"], store, args.verify, coverage=args.coverage,
                candidates=result["candidates"], progress=not args.no_progress,
            )  # fmt: skip
    snippet = None
    if args.emit and result["choice"] is not None:
        assert store is not None
        snippet = emit_snippet(args.emit, store, result["choice"])
    elif args.emit:
        result["notes"].append("nothing to emit: no candidate was chosen")
    if args.json:
        d, notes = json_safe(result)
        d["notes"] += notes
        if snippet is not None:
            d["emit"] = {"format": args.emit, "text": snippet}
        print(dumps(d))
    else:
        text = format_plan(result)
        if snippet is not None:
            print(text, file=sys.stderr)
            print(snippet, end="")
        else:
            print(text)
    return 0
